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
`armijo_backtracking` is the step-length rule of nBw PG (a line search for maximisation).
"""
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

__all__ = ["NaturalDirectionState", "natural_direction", "ascent", "maximise",
           "ArmijoState", "armijo_backtracking"]


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


class ArmijoState(NamedTuple):
    """The last accepted `step_size` (0 if none) and the number of objective `evaluations`."""

    step_size: jax.Array
    evaluations: jax.Array


def armijo_backtracking(*, alpha0=1.0, c=1e-4, shrink=0.5, max_tries: int = 100,
                        max_expansions: int = 0) -> optax.GradientTransformationExtraArgs:
    """Armijo backtracking for maximisation, as an optax transformation.

    `update(direction, state, params, value=f(x), grad=g, value_fn=f)` returns
    `alpha * direction` for the first `alpha = alpha0 shrink^k`, `k < max_tries`, with
    `f(x + alpha d) >= f(x) + c alpha g.d` and a finite `f(x + alpha d)` (Boyd & Vandenberghe
    2004, Alg. 9.2; Dewanto & Gallagher §6.3), and 0 when none qualifies or `g.d <= 0`
    (a non-ascent direction, possible with sampled gradients). The search also gives up
    (step 0) once the first-order increase `alpha g.d` falls below the rounding level of
    `f`, `4 eps max(1, |f|)`: past it the test compares rounding errors (at a converged point it
    would otherwise always run `max_tries` evaluations, and a `vmap` of the search runs as
    long as its slowest member). `g` and `d` are flat vectors; `value_fn` is any jittable
    scalar function of the flat parameters.

    For objectives estimated from coupled samples (`dsorl.algorithms.nbw.run_sampled`),
    piecewise constant in the step, `value_fn` may return `(f, resolved)`: `resolved` False
    says the trial's samples cannot decide it (they draw as at `x`, or show an increase too
    small to be significant) and that a shorter step would decide even less. The search
    stops (step 0) at an unresolved rejected trial, except that while every trial so far
    was unresolved it lengthens the step instead (`alpha / shrink`, at most
    `max_expansions` times); after an expansion, the first resolved trial decides
    (accepted, or step 0). Without `resolved`, `max_expansions` has no effect.

    The state keeps the last `step_size` and the number of `evaluations`. The numbers may be
    traced. (`optax.scale_by_backtracking_linesearch` minimises, returns its last tiny trial
    instead of 0 on failure, and has no rounding-level stop, which is what keeps a vmapped
    grid of searches short.)
    """

    def init(params):
        dtype = ravel_pytree(params)[0].dtype
        return ArmijoState(jnp.zeros((), dtype), jnp.zeros((), jnp.int32))

    def update(updates, state, params, *, value, grad, value_fn, **extra):
        del state, extra
        x, d = ravel_pytree(params)[0], ravel_pytree(updates)[0]
        slope = jnp.vdot(ravel_pytree(grad)[0], d)
        resolution = 4 * jnp.finfo(x.dtype).eps * jnp.maximum(1, jnp.abs(value))

        def searching(carry):
            k, alpha, _, done, _ = carry
            return ~done & (k < max_tries) & (alpha * slope > resolution)

        def trial(carry):
            k, alpha, _, _, grown = carry
            out = value_fn(x + alpha * d)
            f, resolved = out if isinstance(out, tuple) else (out, True)
            resolved = jnp.asarray(resolved, bool)
            accepted = jnp.isfinite(f) & (f >= value + c * alpha * slope)
            # expand only while every trial so far has expanded (grown == k)
            expand = ~accepted & ~resolved & (grown == k) & (grown < max_expansions)
            done = accepted | (~resolved & ~expand) | (resolved & (grown > 0))
            alpha = jnp.where(accepted, alpha, jnp.where(expand, alpha / shrink,
                                                         alpha * shrink))
            return k + 1, alpha, accepted, done, grown + expand

        start = (jnp.int32(0), jnp.asarray(alpha0, x.dtype), jnp.asarray(False),
                 jnp.asarray(False), jnp.int32(0))
        k, alpha, accepted, _, _ = lax.while_loop(searching, trial, start)
        alpha = jnp.where(accepted, alpha, 0)
        return ravel_pytree(updates)[1](alpha * d), ArmijoState(alpha, k)

    return optax.GradientTransformationExtraArgs(init, update)
