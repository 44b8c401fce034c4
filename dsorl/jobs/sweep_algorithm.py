"""Sweep any algorithm that follows the contract of `dsorl.algorithms.base`, by import path.

`algorithm` names a module that defines the contract (`dsorl.algorithms.pg`, or your own
`my_algorithm` on the Python path) or `module:attribute` for an `Algorithm` record
(`dsorl.algorithms.dso:CHAIN_ITERATION`). The problem is the MDP `env` names, or with
`model: marginal` its DSO chain under the tabular softmax (`chain_models.marginal`), the
problem of the DSO records. `config` holds the keyword arguments of its
`Config`, `hparams` fixed `HParams` fields, and `grid` the swept axes (any `HParams` field,
plus `seed`). Every member starts from zeros of the algorithm's `expected_params` shape.
No adapter is written per algorithm: the grid's values are validated by the algorithm's
own `validate` before compiling, and the table holds the last value of every trace.
"""
import importlib

import jax
import jax.numpy as jnp

from dsorl.config import Free
from dsorl.jobs.sweep_pg import make_env
from dsorl.sweep import Grid

__all__ = ["DEFAULTS", "load_algorithm", "sweep_spec"]

DEFAULTS = {
    "algorithm": "dsorl.algorithms.pg",
    "env": {"name": "garnet", "n_states": 10, "n_actions": 3, "branching": 3, "seed": 0},
    "model": "none",               # none: the MDP; marginal: its DSO chain (tabular softmax)
    "config": Free(n_steps=100),   # keyword arguments of the algorithm's Config
    "hparams": Free(),             # fixed HParams fields (grid axes take precedence)
    "grid": Free(gamma=[0.9], step_size=[1.0], seed=[0]),
    "output_dir": "results/sweep_algorithm",
}


def load_algorithm(path: str):
    """The `Algorithm` record named by `module` or `module:attribute`."""
    from dsorl.algorithms import base

    module_name, _, attribute = str(path).partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"config key 'algorithm': cannot import {module_name!r} ({err}).") from err
    if attribute:
        if not hasattr(obj, attribute):
            raise ValueError(f"config key 'algorithm': {module_name} has no {attribute!r}.")
        obj = getattr(obj, attribute)
    try:
        return base.as_algorithm(obj)
    except TypeError as err:
        raise ValueError(f"config key 'algorithm': {err}") from err


def sweep_spec(config: dict) -> dict:
    """Keyword arguments of `dsorl.sweep.sweep` for this config."""
    algorithm = load_algorithm(config["algorithm"])
    mdp = make_env(config["env"])
    problem = _problem(mdp, config["model"])
    try:
        static = algorithm.Config(**config["config"])
    except TypeError as err:
        raise ValueError(f"config key 'config' for {algorithm.name}: {err}") from err
    shape = None if algorithm.expected_params is None else algorithm.expected_params(problem,
                                                                                      static)
    if shape is None:
        raise ValueError(f"{algorithm.name} does not state its parameters' shape"
                         " (expected_params): sweep it from Python with params0=...")
    params0 = jax.tree_util.tree_map(lambda s: jnp.zeros(s, mdp.R.dtype), shape,
                                     is_leaf=lambda s: isinstance(s, tuple))
    return {"run": algorithm, "mdp": problem, "grid": Grid(**config["grid"]), "config": static,
            "params0": params0, "hparams": dict(config["hparams"]) or None}


def _problem(mdp, model: str):
    if model == "none":
        return mdp
    if model == "marginal":
        from dsorl import chain_models
        from dsorl.policies import tabular_softmax

        return chain_models.marginal(mdp, tabular_softmax(*mdp.R.shape, mdp.action_mask))
    raise ValueError(f"config key 'model' must be none or marginal, got {model!r}.")
