"""Optimiser pieces shared by the algorithms: natural-gradient preconditioning as optax.

`natural_direction` turns a gradient `g` into `(F + damping I)^{-1} g` (or `F^+ g` with a
pseudo-inverse) for a Fisher-type matrix `F` handed in at each step as an extra argument,
so it chains with any optax transformation:
`optax.chain(natural_direction(1e-3), optax.scale(-lr))` and
`tx.update(grads, state, params, fisher=F)`. The matrix acts on the parameters flattened
by `jax.flatten_util.ravel_pytree` (Amari 1998; Kakade 2001).
"""
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree


class NaturalDirectionState(NamedTuple):
    """Stateless, but keeps the last preconditioned direction's norm for traces."""

    direction_norm: jax.Array


def natural_direction(damping: float = 0.0, *, pseudo_inverse: bool = False,
                      rcond: Optional[float] = None) -> optax.GradientTransformationExtraArgs:
    """Precondition updates by a Fisher matrix passed as `fisher=[d, d]` to `update`.

    `pseudo_inverse=False`: solve `(F + damping I) x = g` (damping may be 0 only if `F`
    is nonsingular). `pseudo_inverse=True`: `x = (F + damping I)^+ g` by SVD, singular
    values below `rcond * max` dropped (default: numpy's rule). Traced `damping` works
    (wrap with `optax.inject_hyperparams` to sweep it).
    """

    def init(params):
        del params
        return NaturalDirectionState(jnp.zeros(()))

    def update(updates, state, params=None, *, fisher, **extra):
        del state, params, extra
        flat, unravel = ravel_pytree(updates)
        F = jnp.asarray(fisher, flat.dtype)
        if F.shape != (flat.size, flat.size):
            raise ValueError(f"fisher must have shape [{flat.size}, {flat.size}] (flattened"
                             f" parameters), got {F.shape}.")
        F = F + damping * jnp.eye(flat.size, dtype=flat.dtype)
        if pseudo_inverse:
            direction = jnp.linalg.pinv(F, rtol=rcond) @ flat
        else:
            direction = jnp.linalg.solve(F, flat)
        return unravel(direction), NaturalDirectionState(jnp.linalg.norm(direction))

    return optax.GradientTransformationExtraArgs(init, update)
