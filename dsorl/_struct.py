"""Frozen dataclasses that are JAX pytrees.

Rebuilding a node from its leaves (inside `jit`, `vmap`, `grad`, `tree.map`) bypasses
`__init__`, so the validation in `__post_init__` runs only when a user builds an object.
"""
import dataclasses

import jax


def pytree_dataclass(cls):
    """Make `cls` a frozen dataclass whose fields are all pytree children."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    names = tuple(f.name for f in dataclasses.fields(cls))

    def flatten_with_keys(obj):
        return [(jax.tree_util.GetAttrKey(n), getattr(obj, n)) for n in names], None

    def unflatten(_, children):
        obj = object.__new__(cls)
        for n, c in zip(names, children):
            object.__setattr__(obj, n, c)
        return obj

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten)
    return cls


def unchecked(cls, **fields):
    """An instance of a `pytree_dataclass` built without running its validation."""
    obj = object.__new__(cls)
    for f in dataclasses.fields(cls):
        object.__setattr__(obj, f.name, fields.get(f.name, f.default))
    return obj
