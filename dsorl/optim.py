"""Optimiser pieces shared by the algorithms: natural-gradient preconditioning as optax.

`natural_direction` turns a gradient `g` into `(F + damping I)^{-1} g` (or `F^+ g` with a
pseudo-inverse) for a Fisher-type matrix `F` handed in at each step as an extra argument,
so it chains with any optax transformation:
`optax.chain(natural_direction(1e-3), optax.scale(-lr))` and
`tx.update(grads, state, params, fisher=F)`. The matrix acts on the parameters flattened
by `jax.flatten_util.ravel_pytree` (Amari 1998; Kakade 2001).

Rewards are maximised everywhere, optax minimises: `ascent(tx)` is the one place that
turns an ascent direction into optax's convention, and `maximise` is the one optax
inner loop (Chain Iteration's surrogate, PCO's epochs, DynPG's bandits).
"""
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

__all__ = ["NaturalDirectionState", "natural_direction", "ascent", "maximise"]


class NaturalDirectionState(NamedTuple):
    """Stateless, but keeps the last preconditioned direction's norm for traces."""

    direction_norm: jax.Array


def natural_direction(damping: float = 0.0, *, pseudo_inverse: bool = False,
                      rcond: Optional[float] = None) -> optax.GradientTransformationExtraArgs:
    """Precondition updates by a Fisher matrix passed as `fisher=[d, d]` to `update`.

    `pseudo_inverse=False`: solve `(F + damping I) x = g` (damping may be 0 only if `F`
    is nonsingular). `pseudo_inverse=True`: `x = (F + damping I)^+ g` by SVD, singular
    values below `rcond * max` dropped (default, `rcond=None`: JAX's
    `jnp.linalg.pinv` cutoff `10 * max(M, N) * eps` of the dtype, not NumPy's fixed 1e-15). Traced `damping` works
    (wrap with `optax.inject_hyperparams` to sweep it).
    """

    def init(params):
        # the norm in the parameters' dtype, so a float32 run keeps a float32 scan carry
        return NaturalDirectionState(jnp.zeros((), ravel_pytree(params)[0].dtype))

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


def ascent(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """`tx` fed the negated updates: hand it a gradient of an objective to *maximise*.

    `ascent(optax.sgd(lr)).update(g, state, params)` gives `+lr g`; extra arguments (e.g.
    `fisher=` for `natural_direction` inside `tx`) pass through.
    """
    tx = optax.with_extra_args_support(tx)

    def update(updates, state, params=None, **extra):
        return tx.update(jax.tree_util.tree_map(jnp.negative, updates), state, params, **extra)

    return optax.GradientTransformationExtraArgs(tx.init, update)


def maximise(objective: Callable, params, tx: optax.GradientTransformation, n_steps: int):
    """`n_steps` steps of `ascent(tx)` on `objective(params) -> scalar` from `params`, one
    `lax.scan` (the optimiser state starts fresh): returns the final parameters."""
    tx = ascent(tx)

    def body(carry, _):
        theta, opt_state = carry
        updates, opt_state = tx.update(jax.grad(objective)(theta), opt_state, theta)
        return (optax.apply_updates(theta, updates), opt_state), None

    (theta, _), _ = lax.scan(body, (params, tx.init(params)), None, length=n_steps)
    return theta
