"""Sweep vanilla softmax PG or DynPG over γ × step size × seed on one MDP (exact gradients).

One row per member: the final objective `rho . V^pi`, the optimal return `rho . v*` of
the member's γ (policy iteration, `dsorl.optimal_value`) and the gap between them. The
comparison of Klein et al. (arXiv 2411.04913): DynPG's epochs against vanilla softmax PG
(Li et al., arXiv 2102.11270), whose iterations can grow exponentially in 1/(1-γ).
"""
import jax
import jax.numpy as jnp

import dsorl
from dsorl.config import Free
from dsorl.sweep import Grid, check_grid

__all__ = ["DEFAULTS", "REFERENCES", "make_env", "sweep_spec", "trace_axis"]

# the optimum of each γ is drawn as a reference line in the objective's figure
REFERENCES = {"optimal": "objective"}

DEFAULTS = {
    "algorithm": "pg",  # pg (vanilla softmax PG) or dynpg
    "env": {"name": "garnet", "n_states": 10, "n_actions": 3, "branching": 3, "seed": 0},
    # pg: gamma, step_size, seed; dynpg: gamma, step_size, steps_coefficient, seed
    "grid": Free(gamma=[0.5, 0.9, 0.99], step_size=[1.0], seed=[0, 1, 2, 3]),
    "n_steps": 200,       # pg: gradient steps
    "max_epochs": 20,     # dynpg: epochs (horizon of the output policy)
    "init_scale": 0.0,    # pg: theta0 = init_scale * N(0, I) from the seed's key
    "output_dir": "results/sweep_pg",
}


def make_env(spec: dict):
    """The MDP a config's `env` mapping names: a garnet, an nBw benchmark or Sutton-extended."""
    name = spec["name"]
    if name == "garnet":
        return dsorl.envs.garnet(jax.random.key(spec["seed"]), spec["n_states"],
                                 spec["n_actions"], spec["branching"])
    if name in dsorl.envs.NBW_NAMES:
        return dsorl.envs.nbw_env(name)
    if name == "sutton_extended":
        from dsorl.envs.dynpg import sutton_extended

        return sutton_extended().mdp
    raise ValueError(f"config key 'env.name' must be garnet, sutton_extended or one of"
                     f" {', '.join(dsorl.envs.NBW_NAMES)}; got {name!r}.")


def _metrics(final_state, trace, member):
    gamma = member.hparams.gamma
    objective = trace.objective[-1]
    best = member.mdp.rho @ dsorl.optimal_value(member.mdp, gamma)
    return {"objective": objective, "optimal": best, "gap": best - objective}


def sweep_spec(config: dict) -> dict:
    """Keyword arguments of `dsorl.sweep.sweep` for this config."""
    algorithm = config["algorithm"]
    grid = dict(config["grid"])
    mdp = make_env(config["env"])
    params0 = jnp.zeros(mdp.R.shape, mdp.R.dtype)
    hparams = None  # an algorithm's HParams are built from the grid point
    if algorithm == "pg":
        from dsorl.algorithms import pg

        scale = config["init_scale"]
        static = pg.Config(n_steps=config["n_steps"])
        keys = {"gamma", "step_size", "seed"}
        if scale:
            def run(mdp, params0, hparams, key, *, config):  # a random start per seed
                start = params0 + scale * jax.random.normal(key, params0.shape, params0.dtype)
                return pg.run(mdp, start, hparams, key, config=config)
            # a wrapper is no algorithm: check the grid with pg's own validate before compiling
            _check_axes(algorithm, grid, keys)
            check_grid(pg, mdp, Grid(**grid), config=static, params0=params0)
            hparams = lambda point: pg.HParams(**point)
        else:
            run = pg
    elif algorithm == "dynpg":
        from dsorl.algorithms import dynpg

        run = dynpg  # the algorithm: the sweep validates every grid point before compiling
        static = dynpg.Config(n_steps=config["max_epochs"])
        keys = {"gamma", "step_size", "steps_coefficient", "seed"}
    else:
        raise ValueError(f"config key 'algorithm' must be pg or dynpg, got {algorithm!r}.")
    _check_axes(algorithm, grid, keys)
    return {"run": run, "mdp": mdp, "grid": Grid(**grid), "config": static,
            "params0": params0, "hparams": hparams, "metrics": _metrics}


def trace_axis(config: dict) -> str:
    """What one trace row counts (the x axis of `dsorl plot`): a DynPG step is an epoch."""
    return "epoch" if config.get("algorithm") == "dynpg" else "step"


def _check_axes(algorithm: str, grid: dict, keys: set) -> None:
    unknown = sorted(set(grid) - keys)
    if unknown or "gamma" not in grid:
        raise ValueError(f"config key 'grid' for {algorithm} takes {', '.join(sorted(keys))}"
                         f" (gamma required); got {', '.join(sorted(grid))}.")
