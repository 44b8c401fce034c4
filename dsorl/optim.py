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
    would otherwise always run `max_tries` evaluations). Under `vmap` the members do not wait
    for the slowest: after the first trial, those still searching are evaluated in waves of
    an eighth of the batch (`_while_unsynchronised`), each member with the same trials, in the
    same order, as alone. `g` and `d` are flat vectors; `value_fn` is any jittable
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
    instead of 0 on failure, and has no rounding-level stop.)
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
        k, alpha, accepted, _, _ = _while_unsynchronised(searching, trial, start)
        alpha = jnp.where(accepted, alpha, 0)
        return ravel_pytree(updates)[1](alpha * d), ArmijoState(alpha, k)

    return optax.GradientTransformationExtraArgs(init, update)


def _while_unsynchronised(cond, body, start, *, wave_fraction: int = 8):
    """`lax.while_loop(cond, body, start)` for one instance; under `vmap`, members that are
    still searching advance in waves of `ceil(B / wave_fraction)` instead of all `B` together.

    `vmap` of a `while_loop` runs the body for every member until the slowest is done (the
    finished ones compute and discard): with a line search, each of the slowest member's
    trials costs an objective evaluation for the whole batch. Here the first iteration runs
    for the whole batch (nearly every member searches once); after it, each iteration
    gathers the first `ceil(B / wave_fraction)` members still searching, runs `body` on them
    and scatters the results back, so a trial costs an evaluation of a wave, not of the
    batch. Every member goes through the same `body` calls in the same order as alone, so
    its result is the sequential loop's (to the rounding of batched evaluation). The closed-
    over values of `cond` and `body` become explicit operands (`jax.make_jaxpr`), so the
    batching rule (`jax.custom_batching.custom_vmap`) knows which are batched. Nested `vmap`s
    apply the rule to the innermost axis; the outer ones run in lock-step as before.
    """
    from jax.extend.core import ClosedJaxpr, jaxpr_as_fun

    leaves, treedef = jax.tree_util.tree_flatten(start)

    def explicit(fn):
        # fn(carry) as (jaxpr, consts): what it closes over becomes explicit operands
        closed = jax.make_jaxpr(lambda *c: fn(treedef.unflatten(c)))(*leaves)
        return closed.jaxpr, closed.consts

    cond_jaxpr, cond_consts = explicit(cond)
    body_jaxpr, body_consts = explicit(body)

    def call(jaxpr, consts, carry):
        return jaxpr_as_fun(ClosedJaxpr(jaxpr, list(consts)))(*carry)

    def searching(consts, carry):
        return call(cond_jaxpr, consts, carry)[0]

    def trial(consts, carry):
        return list(call(body_jaxpr, consts, carry))

    @jax.custom_batching.custom_vmap
    def loop(cond_c, body_c, carry):
        out = lax.while_loop(lambda c: searching(cond_c, c), lambda c: trial(body_c, c),
                             list(carry))
        return list(out)

    @loop.def_vmap
    def loop_batched(axis_size, in_batched, cond_c, body_c, carry):
        cond_b, body_b, carry_b = in_batched
        carry = [c if b else jnp.broadcast_to(c, (axis_size,) + jnp.shape(c))
                 for c, b in zip(carry, carry_b)]
        axes = lambda flags: [0 if b else None for b in flags]
        active = jax.vmap(searching, (axes(cond_b), 0))
        run = jax.vmap(trial, (axes(body_b), 0))
        # first iteration: the whole batch (members that are not searching keep their carry)
        moved = run(body_c, carry)
        going = active(cond_c, carry)
        carry = [jnp.where(going.reshape((-1,) + (1,) * (c.ndim - 1)), m, c)
                 for m, c in zip(moved, carry)]
        wave = -(-axis_size // wave_fraction)

        def wave_step(carry):
            # the first `wave` members still searching; the fill index (axis_size) is
            # clipped when gathering and dropped when scattering back
            idx = jnp.nonzero(active(cond_c, carry), size=wave, fill_value=axis_size)[0]
            take = lambda a: jnp.take(a, idx, axis=0, mode="clip")
            sub_consts = [take(c) if b else c for c, b in zip(body_c, body_b)]
            moved = run(sub_consts, [take(c) for c in carry])
            return [c.at[idx].set(m, mode="drop") for c, m in zip(carry, moved)]

        carry = lax.while_loop(lambda c: jnp.any(active(cond_c, c)), wave_step, carry)
        return carry, [True] * len(carry)

    return treedef.unflatten(loop(list(cond_consts), list(body_consts), leaves))
