"""Environments: random garnets, gridworlds, the nBw benchmarks, DynPG's episodic MDPs,
chains, control problems, LMDPs and Gymnasium toy-text imports.

Every constructor is in the registry: `make(name, **kwargs)` builds environment `name`
(`make("garnet", key=jax.random.key(0), n_states=10, n_actions=3, branching=3)`,
`make("B2")`), `names()` lists them and `registry()` maps each to its description
(`dsorl list` prints it). A new constructor is one line of `_REGISTRY`.
"""
import functools
import importlib

from dsorl.envs.garnet import garnet, sparse_garnet
from dsorl.envs.gridworld import large_gridworld
from dsorl.envs.gymnasium_toytext import from_gymnasium, from_transition_table
from dsorl.envs.nbw import NAMES as NBW_NAMES
from dsorl.envs.nbw import nbw_env, nbw_reference

__all__ = ["garnet", "sparse_garnet", "large_gridworld", "from_gymnasium", "from_transition_table", "NBW_NAMES", "nbw_env",
           "nbw_reference", "make", "names", "registry"]

# name -> "module:constructor" (imported when used), with keyword arguments bound first
_REGISTRY = {
    "garnet": ("dsorl.envs.garnet:garnet", {}),
    "sparse_garnet": ("dsorl.envs.garnet:sparse_garnet", {}),
    "gridworld": ("dsorl.envs.gridworld:gridworld", {}),
    "large_gridworld": ("dsorl.envs.gridworld:large_gridworld", {}),
    "committal_chain": ("dsorl.envs.chains:committal_chain", {}),
    "coupled_clusters": ("dsorl.envs.chains:coupled_clusters", {}),
    "li_chain": ("dsorl.envs.hard_mdps:li_chain", {}),
    "reset_chain": ("dsorl.envs.hard_mdps:reset_chain", {}),
    "blackwell_tie": ("dsorl.envs.blackwell:blackwell_tie", {}),
    "linear_quadratic_regulator": ("dsorl.envs.control:linear_quadratic_regulator", {}),
    "soft_lqr": ("dsorl.envs.control:soft_lqr", {}),
    "sutton_extended": ("dsorl.envs.dynpg:sutton_extended", {}),
    "episodic_mdp": ("dsorl.envs.dynpg:episodic_mdp", {}),
    "random_walk_lmdp": ("dsorl.envs.lmdp:random_walk_lmdp", {}),
    "random_lmdp": ("dsorl.envs.lmdp:random_lmdp", {}),
    "gymnasium": ("dsorl.envs.gymnasium_toytext:from_gymnasium", {}),
    "transition_table": ("dsorl.envs.gymnasium_toytext:from_transition_table", {}),
    **{name: ("dsorl.envs.nbw:nbw_env", {"name": name}) for name in NBW_NAMES},
}


def names() -> list:
    """The registered environment names."""
    return list(_REGISTRY)


def _constructor(name: str):
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown environment {name!r}; the registry has: {', '.join(_REGISTRY)}.")
    path, bound = _REGISTRY[name]
    module, attr = path.split(":")
    fn = getattr(importlib.import_module(module), attr)
    return functools.partial(fn, **bound) if bound else fn


def make(name: str, **kwargs):
    """Environment `name` built by its constructor with `kwargs` (see `registry()`)."""
    return _constructor(name)(**kwargs)


def registry() -> dict:
    """`{name: description}`: the constructor's first docstring paragraph, on one line
    (an nBw benchmark names the paper)."""
    out = {}
    for name, (path, bound) in _REGISTRY.items():
        fn = _constructor(name)
        fn = getattr(fn, "func", fn)
        paragraph = (fn.__doc__ or "").strip().split("\n\n")[0]
        text = " ".join(paragraph.split())
        if bound:
            text = f"{text} [{', '.join(f'{k}={v!r}' for k, v in bound.items())}]"
        out[name] = f"{path.split(':')[1]}: {text}" if path.split(":")[1] != name else text
    return out
