"""Sweep exact DSO optimisers over γ × learning rate on the marginal chain of an MDP.

Todorov (arXiv 2506.08340): the tabular softmax policy of an MDP marginalised into a
parameterised chain (`dsorl.chain_models.marginal`, its eq. 12), optimised by exact
gradient ascent, natural gradient (chain Fisher) or Chain Iteration
(`dsorl.algorithms.dso`). One row per member: the final objective `J`, the optimal
return `rho . v*` of its γ and the gap between them. The methods are deterministic; the
`seed` axis, if any, only labels repeats.
"""
import jax.numpy as jnp

import dsorl
from dsorl import chain_models, policies
from dsorl.config import Free
from dsorl.jobs.sweep_pg import make_env
from dsorl.sweep import Grid

DEFAULTS = {
    "algorithm": "chain_iteration",  # ascent, natural or chain_iteration
    "env": {"name": "garnet", "n_states": 10, "n_actions": 3, "branching": 3, "seed": 0},
    # ascent/natural: gamma, learning_rate, damping; chain_iteration: gamma,
    # learning_rate, proximal
    "grid": Free(gamma=[0.5, 0.9, 0.99], learning_rate=[0.1]),
    "iterations": 20,
    "inner_steps": 50,  # chain_iteration: optimiser steps per outer iteration
    "output_dir": "results/sweep_dso",
}

_AXES = {"ascent": {"gamma", "learning_rate", "damping"},
         "natural": {"gamma", "learning_rate", "damping"},
         "chain_iteration": {"gamma", "learning_rate", "proximal"}}


def sweep_spec(config: dict) -> dict:
    """Keyword arguments of `dsorl.sweep.sweep` for this config."""
    from dsorl.algorithms import dso

    algorithm = config["algorithm"]
    if algorithm not in _AXES:
        raise ValueError(f"config key 'algorithm' must be one of {', '.join(_AXES)}, got {algorithm!r}.")
    grid = dict(config["grid"])
    keys = _AXES[algorithm] | {"seed"}
    if set(grid) - keys or "gamma" not in grid:
        raise ValueError(f"config key 'grid' for {algorithm} takes {', '.join(sorted(keys))}"
                         f" (gamma required); got {', '.join(sorted(grid))}.")
    mdp = make_env(config["env"])
    model = chain_models.marginal(mdp, policies.tabular_softmax(*mdp.R.shape).probs)
    if algorithm == "chain_iteration":
        run = dso.chain_iteration
        static = dso.ChainIterationConfig(iterations=config["iterations"],
                                          inner_steps=config["inner_steps"])
        make = lambda p: dso.ChainIterationHParams(**{k: p[k] for k in p if k in _AXES[algorithm]})
    else:
        run = dso.gradient_ascent
        static = dso.AscentConfig(iterations=config["iterations"], natural=algorithm == "natural")
        make = lambda p: dso.AscentHParams(**{k: p[k] for k in p if k in _AXES[algorithm]})

    def metrics(final_state, trace, member):
        # the objective after the last step, and the optimum of the member's gamma
        J = chain_models.objective(model, final_state.params, member.hparams.gamma)
        best = mdp.rho @ dsorl.optimal_value(mdp, member.hparams.gamma)
        return {"objective": J, "optimal": best, "gap": best - J}

    return {"run": run, "mdp": model, "grid": Grid(**grid), "config": static,
            "params0": jnp.zeros(mdp.R.shape, mdp.R.dtype), "hparams": make, "metrics": metrics}
