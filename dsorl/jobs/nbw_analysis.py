"""Exact analysis of the six nearly-Blackwell benchmark MDPs (Dewanto & Gallagher 2021).

For each environment: the optimal gain and bias at s0 and the nBw-optimal deterministic
policies (enumeration), and the gain and bias at s0 of the paper's sigmoid policy over
its grid of parameters (one vmapped, jitted call per environment). Checks the enumerated
optimum against the published reference values and reports how close the sigmoid family
comes to it.

Table `summary`, one row per environment: env, states, optimal_gain, optimal_bias_s0,
reference_bias_s0, nbw_policies (how many deterministic policies are nBw-optimal),
matches_reference (bool); grid_max_gain, grid_frac_gain_optimal (share of the grid within
`gain_tolerance` of the optimal gain), grid_best_bias_s0 (the best bias among those; NaN
if none), grid_bias_gap; seconds (compile included). Arrays: grid [starts, 2],
`<env>_gain` and `<env>_bias_s0` [starts]. Figure (`figures`): the two landscapes.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from dsorl import envs, policies, progress, timing
from dsorl.markov import bias, gain
from dsorl.mdp import induced_chain
from dsorl.planning import nearly_blackwell_optimal

__all__ = ["DEFAULTS", "run", "figures"]

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


def figures(tables, arrays, config, plt) -> dict:
    """`landscapes`: the gain and the bias at s0 of the sigmoid policy over the parameter
    grid, one column per environment (a landscape of one value says so)."""
    from dsorl import plots

    grid = np.asarray(arrays["grid"])
    wx, wy = np.unique(grid[:, 0]), np.unique(grid[:, 1])
    names = [n for n in config["envs"] if f"{n}_gain" in arrays]
    fig, axs = plots.facets(plt, 2 * len(names), ncols=len(names), width=3.6, height=3.2)
    for j, name in enumerate(names):
        for i, (key, what) in enumerate((("gain", "gain g"), ("bias_s0", "bias h(s0)"))):
            # the grid is w_x-major (sigmoid_grid): reshape to [w_x, w_y], draw [w_y, w_x]
            values = np.asarray(arrays[f"{name}_{key}"]).reshape(len(wx), len(wy)).T
            plots.heatmap(fig, axs[i * len(names) + j], wx, wy, values, "w_x", "w_y",
                          f"{name}: {what}")
    g = config["grid"]
    fig.suptitle(f"{plots.describe(config)}: the sigmoid policy's gain and bias at s0 over"
                 f" w in [{g['low']:g}, {g['high']:g}]^2, step {g['step']:g}", fontsize=10)
    fig.tight_layout()
    return {"landscapes": fig}
