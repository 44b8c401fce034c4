"""Sweep nearly Blackwell-optimal PG (exact, Algorithm 1) from the paper's grid of starts.

Dewanto & Gallagher (arXiv 2105.13609, §6): the sigmoid policy from every initial
parameter of [-10, 10]² at resolution 0.5 (41 × 41 = 1681 starts) on each of the six
benchmark MDPs, with the paper's barrier settings per environment kind. One row per
(environment, start): final gain and bias at s0, and their gaps to the optimal gain and
the nBw-optimal bias (enumeration reference carried in `dsorl.envs.nbw`).
"""
from typing import Any, NamedTuple

import numpy as np

from dsorl import envs, policies
from dsorl.sweep import Grid, axis

__all__ = ["DEFAULTS", "sweep_spec"]

DEFAULTS = {
    "envs": list(envs.NBW_NAMES),
    "grid": {"low": -10.0, "high": 10.0, "step": 0.5},
    "n_steps": 100,
    "steps_per_outer": None,
    "output_dir": "results/sweep_nbw",
}


def sweep_spec(config: dict) -> dict:
    """Keyword arguments of `dsorl.sweep.sweep` for this config."""
    from dsorl.algorithms import nbw
    from dsorl.envs.nbw import paper_hyperparams

    unknown = sorted(set(config["envs"]) - set(envs.NBW_NAMES))
    if unknown or not config["envs"]:
        raise ValueError(f"config key 'envs' takes a non-empty list of {', '.join(envs.NBW_NAMES)};"
                         f" got {config['envs']!r}.")
    starts = np.asarray(policies.sigmoid_grid(**config["grid"], dtype=np.float64))
    static = {"n_steps": config["n_steps"], "steps_per_outer": config["steps_per_outer"]}

    def run(mdp, params0, hparams, key, *, config):
        # the sigmoid policy of the MDP's size (static under tracing)
        policy = policies.sigmoid(mdp.P.shape[0])
        return nbw.run(mdp, params0, hparams.barrier, key, config=nbw.Config(policy, **config))

    def hparams(point):
        ref = envs.nbw_reference(point["env"])
        return _Hparams(nbw.HParams(**paper_hyperparams(point["env"])), ref["optimal_gain"],
                        ref["optimal_bias_s0"])

    def metrics(final_state, trace, member):
        gain, bias = trace.gain[-1], trace.bias[-1]
        return {"gain": gain, "bias_s0": bias, "gain_gap": member.hparams.optimal_gain - gain,
                "bias_gap": member.hparams.optimal_bias_s0 - bias}

    return {"run": run, "mdp": {name: envs.nbw_env(name) for name in config["envs"]},
            "grid": Grid(params0=axis(starts, w_x=starts[:, 0], w_y=starts[:, 1])),
            "config": static, "hparams": hparams, "metrics": metrics}


class _Hparams(NamedTuple):
    """The paper's settings of an environment and its references (for the gaps)."""

    barrier: Any
    optimal_gain: float
    optimal_bias_s0: float
