"""Sweep DSO optimisers over γ × step size (× clip × seed) on the marginal chain of an MDP.

Todorov (arXiv 2506.08340): the tabular softmax policy of an MDP marginalised into a
parameterised chain (`dsorl.chain_models.marginal`, its eq. 12), optimised by exact
gradient ascent, natural gradient (chain Fisher), Chain Iteration or sampled Proximal
Chain Optimisation (`dsorl.algorithms.dso`). One row per member: the final objective
`J`, the optimal return `rho . v*` of its γ and the gap between them. The exact methods
are deterministic (a `seed` axis only labels repeats); PCO samples its episodes from
the key `jax.random.key(seed)`.
"""
import jax.numpy as jnp

import dsorl
from dsorl import _checks, chain_models, policies
from dsorl.config import Free
from dsorl.jobs.sweep_pg import make_env
from dsorl.sweep import Grid

__all__ = ["DEFAULTS", "sweep_spec"]

DEFAULTS = {
    "algorithm": "chain_iteration",  # ascent, natural, chain_iteration or pco
    "env": {"name": "garnet", "n_states": 10, "n_actions": 3, "branching": 3, "seed": 0},
    # ascent/natural: gamma, step_size, damping; chain_iteration: gamma, step_size,
    # proximal; pco: gamma, step_size, clip (and seed: its samples)
    "grid": Free(gamma=[0.5, 0.9, 0.99], step_size=[0.1]),
    "n_steps": 20,
    "inner_steps": 50,  # chain_iteration: optimiser steps per outer iteration
    "n_episodes": 64,   # pco: episodes per batch
    "horizon": 60,      # pco: steps per episode
    "epochs": 4,        # pco: optimiser steps per batch
    "output_dir": "results/sweep_dso",
}

_AXES = {"ascent": {"gamma", "step_size", "damping"},
         "natural": {"gamma", "step_size", "damping"},
         "chain_iteration": {"gamma", "step_size", "proximal"},
         "pco": {"gamma", "step_size", "clip"}}


def _check_grid(grid: Grid) -> None:
    """Every axis value in its range (the runs are traced under vmap and check nothing)."""
    values = {name: ax.values for name, ax in grid.axes.items()}
    _checks.check_discount(values["gamma"])
    _checks.check_positive("step_size", values["step_size"])
    for name in ("damping", "proximal"):
        if name in values:
            _checks.check_positive(name, values[name], allow_zero=True)
    if "clip" in values and not (values["clip"] > 0).all():  # inf: no clipping
        raise ValueError(f"clip = {values['clip']} must be > 0 (inf: no clipping).")


def sweep_spec(config: dict) -> dict:
    """Keyword arguments of `dsorl.sweep.sweep` for this config."""
    from dsorl.algorithms import dso

    algorithm = config["algorithm"]
    if algorithm not in _AXES:
        raise ValueError(f"config key 'algorithm' must be one of {', '.join(_AXES)}, got {algorithm!r}.")
    grid = dict(config["grid"])
    keys = _AXES[algorithm] | {"seed"}
    if set(grid) - keys or not {"gamma", "step_size"} <= set(grid):
        raise ValueError(f"config key 'grid' for {algorithm} takes {', '.join(sorted(keys))}"
                         f" (gamma and step_size required); got {', '.join(sorted(grid))}.")
    grid = Grid(**grid)
    _check_grid(grid)
    mdp = make_env(config["env"])
    model = chain_models.marginal(mdp, policies.tabular_softmax(*mdp.R.shape).probs)
    n = config["n_steps"]
    if algorithm == "chain_iteration":
        run = dso.CHAIN_ITERATION
        static = dso.ChainIterationConfig(n_steps=n, inner_steps=config["inner_steps"])
    elif algorithm == "pco":
        run = dso.PCO
        static = dso.PCOConfig(n_steps=n, n_episodes=config["n_episodes"],
                               horizon=config["horizon"], epochs=config["epochs"])
    else:
        run = dso.GRADIENT_ASCENT
        static = dso.AscentConfig(n_steps=n, natural=algorithm == "natural")
    make = lambda p: {k: p[k] for k in p if k in _AXES[algorithm]}

    def metrics(final_state, trace, member):
        # the objective after the last step, and the optimum of the member's gamma
        J = chain_models.objective(model, final_state.params, member.hparams.gamma)
        best = mdp.rho @ dsorl.optimal_value(mdp, member.hparams.gamma)
        return {"objective": J, "optimal": best, "gap": best - J}

    return {"run": run, "mdp": model, "grid": grid, "config": static,
            "params0": jnp.zeros(mdp.R.shape, mdp.R.dtype), "hparams": make, "metrics": metrics}
