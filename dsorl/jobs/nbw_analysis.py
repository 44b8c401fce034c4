"""Exact analysis of the six nearly-Blackwell benchmark MDPs (Dewanto & Gallagher 2021).

For each environment: the optimal gain and bias at s0 and the nBw-optimal deterministic
policies (enumeration), and the gain and bias at s0 of the paper's sigmoid policy over
its grid of parameters (one vmapped, jitted call per environment). Checks the enumerated
optimum against the published reference values and reports how close the sigmoid family
comes to it.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from dsorl import envs, policies, progress, timing
from dsorl.markov import bias, gain
from dsorl.mdp import induced_chain
from dsorl.planning import nearly_blackwell_optimal

__all__ = ["DEFAULTS", "run"]

DEFAULTS = {
    "envs": list(envs.NBW_NAMES),
    "grid": {"low": -10.0, "high": 10.0, "step": 0.5},
    "gain_tolerance": 1e-4,
    "output_dir": "results/nbw_analysis",
}


def run(config: dict) -> dict:
    """Returns `{"tables": {"summary": rows}, "arrays": landscapes}`."""
    grid = policies.sigmoid_grid(**config["grid"], dtype=jnp.float64)
    rows, arrays = [], {"grid": np.asarray(grid)}
    for name in progress.track(config["envs"], "nbw_analysis", unit="environments"):
        mdp = envs.nbw_env(name)
        ref = envs.nbw_reference(name)
        start = time.perf_counter()
        opt = nearly_blackwell_optimal(mdp)
        policy = policies.sigmoid(mdp.n_states)

        def landscape(ws):
            def one(w):
                chain = induced_chain(mdp, policy(w))
                return gain(chain), bias(chain)[0]
            return jax.vmap(one)(ws)

        compiled, _ = timing.compile(landscape, grid, what=f"{name} landscape ({len(grid)} starts)")
        gains, biases = (np.asarray(x) for x in compiled(grid))
        seconds = time.perf_counter() - start
        near = gains >= opt.gain - config["gain_tolerance"]
        best_bias = float(biases[near].max()) if near.any() else float("nan")
        rows.append({
            "env": name,
            "states": mdp.n_states,
            "optimal_gain": opt.gain,
            "optimal_bias_s0": float(opt.bias[0]),
            "reference_bias_s0": ref["optimal_bias_s0"],
            "nbw_policies": len(opt.nbw_optimal),
            "matches_reference": bool(
                abs(opt.gain - ref["optimal_gain"]) < 1e-9
                and abs(opt.bias[0] - ref["optimal_bias_s0"]) < 1e-9
                and opt.nbw_optimal.tolist() == ref["nbw_optimal"]),
            "grid_max_gain": float(gains.max()),
            "grid_frac_gain_optimal": float(near.mean()),
            "grid_best_bias_s0": best_bias,
            "grid_bias_gap": float(opt.bias[0]) - best_bias,
            "seconds": seconds,
        })
        arrays[f"{name}_gain"] = gains
        arrays[f"{name}_bias_s0"] = biases
    return {"tables": {"summary": rows}, "arrays": arrays}
