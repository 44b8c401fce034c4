"""Validation at the API boundary, on concrete values only.

Inside `jit`/`vmap`/`grad` the inputs are tracers and nothing is checked (docs/design.md §4): a
quantity is validated once, where a user hands it to dsorl, never again inside a loop.
"""
import jax
import jax.numpy as jnp
import numpy as np

from dsorl.graph import closed_classes, period


def is_concrete(*xs) -> bool:
    """True when no leaf of `xs` is a JAX tracer (so its values can be inspected)."""
    return not any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(xs))


def stochastic_tolerance(dtype) -> float:
    """How far a probability row may sum from 1: sqrt(machine epsilon) of `dtype`."""
    return float(np.sqrt(np.finfo(dtype).eps))


def float_dtype(*xs):
    """The floating dtype the inputs promote to (float32 unless jax_enable_x64)."""
    return jnp.result_type(*[jnp.asarray(x) for x in xs], jnp.float32)


def _index(idx) -> str:
    return ", ".join(str(int(i)) for i in idx)


def check_finite(name: str, x) -> None:
    x = np.asarray(x)
    bad = np.argwhere(~np.isfinite(x))
    if bad.size:
        raise ValueError(f"{name}[{_index(bad[0])}] = {x[tuple(bad[0])]} is not finite"
                         f" ({len(bad)} non-finite entries in all).")


def check_nonnegative(name: str, x) -> None:
    x = np.asarray(x)
    bad = np.argwhere(x < 0)
    if bad.size:
        raise ValueError(f"{name}[{_index(bad[0])}] = {x[tuple(bad[0])]:.6g} is negative:"
                         " probabilities must be >= 0.")


def check_rows_sum_to_one(name: str, x, mask=None, what: str = "row") -> None:
    """Rows along the last axis sum to 1 (within the dtype's tolerance) where `mask` holds."""
    x = np.asarray(x)
    sums = x.sum(axis=-1)
    tol = stochastic_tolerance(x.dtype)
    bad = np.abs(sums - 1) > tol
    if mask is not None:
        bad &= np.asarray(mask, bool)
    idx = np.argwhere(bad)
    if idx.size:
        i = tuple(idx[0])
        raise ValueError(f"{what} {name}[{_index(i)}, :] sums to {sums[i]!r}, not 1 (tolerance"
                         f" {tol:.1e} for {x.dtype}); {len(idx)} such rows in all.")


def check_shape(name: str, x, shape, meaning: str) -> None:
    if tuple(np.shape(x)) != tuple(shape):
        raise ValueError(f"{name} must have shape {meaning} = {tuple(shape)}, got {np.shape(x)}.")


def check_discount(gamma, *, allow_one: bool = False) -> None:
    """γ in [0, 1) (or [0, 1] when `allow_one`); traced γ passes unchecked."""
    if not is_concrete(gamma):
        return
    g = np.asarray(gamma)
    if not np.all(np.isfinite(g)):
        raise ValueError(f"discount factor gamma = {g} is not finite.")
    hi_ok = g <= 1 if allow_one else g < 1
    if not np.all((g >= 0) & hi_ok):
        interval = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(f"discount factor gamma = {g} must lie in {interval}.")


def check_positive(name: str, x, *, allow_zero: bool = False) -> None:
    if not is_concrete(x):
        return
    v = np.asarray(x)
    ok = v >= 0 if allow_zero else v > 0
    if not np.all(np.isfinite(v) & ok):
        sign = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} = {v} must be finite and {sign}.")


def check_unichain(P, subject: str, consequence: str, *, aperiodic: bool = False) -> None:
    """The support `P[S, S] > 0` has one closed class (and, if `aperiodic`, of period 1);
    else `ValueError` "{subject} has K closed recurrent classes (...): {consequence}."
    Traced `P` passes unchecked."""
    if not is_concrete(P):
        return
    classes = closed_classes(P)
    if len(classes) != 1:
        shown = "; ".join(str(c[:8].tolist()).rstrip("]") + ("...]" if len(c) > 8 else "]")
                          for c in classes[:4])
        raise ValueError(f"{subject} has {len(classes)} closed recurrent classes ({shown}):"
                         f" {consequence}.")
    if aperiodic:
        d = period(P, classes[0])
        if d != 1:
            raise ValueError(f"the recurrent class {classes[0].tolist()[:8]} is periodic"
                             f" (period {d}): P^t never converges, so episodes never mix.")


def check_actions_available(action_mask) -> None:
    """Every state keeps at least one action: `ValueError` naming the first that has none
    (a terminal state keeps one absorbing zero-reward action). Traced masks pass."""
    if action_mask is None or not is_concrete(action_mask):
        return
    empty = np.flatnonzero(~np.asarray(action_mask, bool).any(axis=-1))
    if empty.size:
        raise ValueError(f"the action mask leaves state {empty[0]} without actions ({empty.size}"
                         " such states): with not a single action available no policy exists"
                         " there; a terminal state keeps one absorbing zero-reward action (a"
                         " state without any action is not allowed).")


def check_covers(target, cover, *, what: str, symbols=("p", "b"), consequence: str,
                 skip_rows=None) -> None:
    """Every transition of `target[X, X]` is one of `cover[X, X]` (`cover > 0` wherever
    `target > 0`, rows in `skip_rows` excepted), as importance weights `target / cover` and
    `KL(target || cover)` need; else `ValueError` "{what}: b(y|x) = 0 but p(y|x) = ... > 0,
    {consequence}" with `symbols = (target, cover)`. Traced input passes unchecked."""
    if not is_concrete(target, cover, skip_rows):
        return
    target, cover = np.asarray(target), np.asarray(cover)
    bad = (target > 0) & (cover <= 0)
    if skip_rows is not None:
        bad &= ~np.asarray(skip_rows, bool)[:, None]
    idx = np.argwhere(bad)
    if idx.size:
        (x, y), (t, b) = idx[0], symbols
        raise ValueError(f"{what}: {b}({y}|{x}) = 0 but {t}({y}|{x}) = {target[x, y]:.3g} > 0,"
                         f" {consequence} ({len(idx)} such transitions).")
