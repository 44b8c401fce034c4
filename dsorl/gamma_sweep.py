"""Resolvent solves `(I - gamma P) x = b`, and a fast path for sweeps over gamma.

Every discounted quantity of a chain solves a system with the resolvent matrix
`I - gamma P`. One LU per gamma costs `2/3 S^3` flops. A sweep over many discount
factors of ONE chain can share most of that work: reduce `P` once to upper Hessenberg
form by an orthogonal similarity, `P = Q H Q^T` (Householder reflections: `10/3 S^3` flops
for H and `4/3 S^3` more for Q; Golub & Van Loan, Matrix Computations, 4th ed., §7.4), so
that

    I - gamma P = Q (I - gamma H) Q^T,

and `I - gamma H` is upper Hessenberg for every gamma. Its LU factorisation with partial
pivoting has one sub-diagonal entry per column to eliminate (`O(S^2)` flops per gamma):
partial pivoting only ever exchanges adjacent rows, and its growth factor is at most S on
Hessenberg matrices (Wilkinson; Higham, Accuracy and Stability of Numerical Algorithms,
2nd ed., ch. 9), so it is as stable as dense partial pivoting, also for gamma -> 1.

`resolvent_factor` is the single entry point: called on one `(P, gamma)` it returns a
dense LU; under `jax.vmap` over gamma with an unbatched `P` of at least
`MIN_STATES` states and a batch of at least `MIN_BATCH` discount factors (on the CPU,
where XLA has a Hessenberg reduction) it takes the shared-reduction path instead
(`jax.custom_batching.custom_vmap`). Both paths return the same factorisation format,
`(Q, lu, piv)` with `I - gamma P = Q Pi L U Q^T` and `(lu, piv)` in LAPACK's layout, so
`jax.scipy.linalg.lu_solve` serves both. `resolvent_solve` differentiates implicitly
(`lax.custom_linear_solve`): gradients with respect to `P`, `gamma` and `b` cost one more
solve with the same factorisation, never a backward pass through the elimination.
"""
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_batching import custom_vmap

__all__ = ["resolvent_factor", "resolvent_solve", "gamma_sweep_factor", "hessenberg_lu",
           "MIN_STATES", "MIN_BATCH"]

Array = jax.Array

# Smallest chain and batch of discount factors for which the shared reduction is used.
# Measured (benchmarks/core_eval.py, 2-core Zen 5, float64, B = 64, one OpenBLAS thread):
# factorisations 4.8x / 2.2x / 3.2x faster than one LU per gamma at S = 100 / 300 / 1000,
# values 1.5x / 1.4x / 2.2x, value gradients 1.1x (S = 300) and 1.8x (S = 1000); at
# S = 64 break-even near B = 8. Set conservatively: LAPACK's Hessenberg reduction with
# multithreaded OpenBLAS on an oversubscribed CPU was measured 100x slower than with one
# thread (190 ms vs 1.5 ms at S = 130), while small LUs are not affected.
MIN_STATES = 256
MIN_BATCH = 16


def hessenberg_lu(H: Array, gamma) -> tuple:
    """LU with partial pivoting of `I - gamma H` for upper-Hessenberg `H[S, S]`, in O(S^2).

    Returns `(lu[S, S], piv[S])` in LAPACK's `getrf` layout (`Pi^T (I - gamma H) = L U`,
    `piv[k]` the row exchanged with row k at step k), as `jax.scipy.linalg.lu_factor`
    returns it: the factors LAPACK's partial pivoting computes. Column k has one entry below
    the diagonal, so step k compares rows k and k+1 only. Entries of `H` below its first
    sub-diagonal are ignored. Single gamma; `vmap` batches it.
    """
    S = H.shape[-1]
    dtype = jnp.result_type(H, gamma)
    H = jnp.triu(jnp.asarray(H, dtype), -1)
    eye = jnp.eye(S, dtype=dtype)
    columns = jnp.arange(S)

    def row(k):  # row k of I - gamma H
        return eye[k] - gamma * H[k]

    def eliminate(carry, k):
        # `current`: row k after steps 0..k-1, multipliers (L) left of column k and U from
        # column k on, as in LAPACK's getrf; row k+1 is untouched (zero left of column k).
        lu, current = carry
        below = row(k + 1)
        swap = jnp.abs(below[k]) > jnp.abs(current[k])
        pivot = jnp.where(swap, below, current)
        other = jnp.where(swap, current, below)
        multiplier = other[k] / pivot[k]
        # an exchange moves the multipliers of `current` down with it: `other` keeps them
        following = other - multiplier * jnp.where(columns > k, pivot, 0)
        return (lu.at[k].set(pivot), following.at[k].set(multiplier)), swap

    init = (jnp.zeros((S, S), dtype), row(0))
    (lu, last), swaps = lax.scan(eliminate, init, jnp.arange(S - 1))
    piv = jnp.arange(S, dtype=jnp.int32) + jnp.append(swaps, False)
    return lu.at[S - 1].set(last), piv


def gamma_sweep_factor(P: Array, gammas: Array) -> tuple:
    """Factorisations of `I - gamma P` for every gamma in `gammas[B]`, sharing one reduction.

    `P = Q H Q^T` (Householder reduction to upper Hessenberg `H`, orthogonal `Q`), then
    `hessenberg_lu(H, gamma)` for each gamma: `I - gamma P = Q Pi_b L_b U_b Q^T`. Returns
    `(Q[S, S], lu[B, S, S], piv[B, S])`. Cost `~5 S^3 + B O(S^2)` flops instead of
    `B 2/3 S^3` for independent LUs. CPU only (XLA's Hessenberg reduction); the path
    `vmap` over gamma takes through `resolvent_factor` when it pays.
    """
    H, Q = jax.scipy.linalg.hessenberg(jnp.asarray(P, jnp.result_type(P, gammas)), calc_q=True)
    lu, piv = jax.vmap(hessenberg_lu, in_axes=(None, 0))(H, gammas)
    return Q, lu, piv


@custom_vmap
def resolvent_factor(P: Array, gamma) -> tuple:
    """Factorisation `(Q, lu, piv)` of `I - gamma P` with `I - gamma P = Q Pi L U Q^T`.

    `P[S, S]`, scalar gamma; `(lu, piv)` in `jax.scipy.linalg.lu_factor`'s layout. On one
    gamma, `Q = I` and `(lu, piv)` is the dense LU of `I - gamma P`. Under `jax.vmap` over
    gamma with an unbatched `P`, `S >= MIN_STATES` and a batch of at least `MIN_BATCH`,
    the discount factors share one Hessenberg reduction (`gamma_sweep_factor`); otherwise
    each batch member gets its dense LU. Not differentiable (use `resolvent_solve`).
    """
    return _identity(P, gamma), *_dense_lu(P, gamma)


@resolvent_factor.def_vmap
def _resolvent_factor_batched(axis_size, in_batched, P, gamma):
    P_batched, gamma_batched = in_batched
    if gamma_batched and not P_batched and _sweep_pays(P.shape[-1], axis_size):
        factors = lax.platform_dependent(P, gamma, cpu=gamma_sweep_factor,
                                         default=_dense_sweep_factor)
    else:
        in_axes = (0 if P_batched else None, 0 if gamma_batched else None)
        lu, piv = jax.vmap(_dense_lu, in_axes=in_axes, axis_size=axis_size)(P, gamma)
        factors = (_identity(P, gamma), lu, piv)
    return factors, (False, True, True)


def _sweep_pays(n_states: int, batch: int) -> bool:
    return n_states >= MIN_STATES and batch >= MIN_BATCH


def _identity(P, gamma):
    return jnp.eye(P.shape[-1], dtype=jnp.result_type(P, gamma))


def _dense_lu(P, gamma):
    return jax.scipy.linalg.lu_factor(_identity(P, gamma) - gamma * P)


def _dense_sweep_factor(P, gammas):
    """`gamma_sweep_factor`'s output from one LU per gamma (no Hessenberg reduction off CPU)."""
    lu, piv = jax.vmap(_dense_lu, in_axes=(None, 0))(P, gammas)
    return _identity(P, gammas), lu, piv


def resolvent_solve(P: Array, gamma, b: Array, *, transpose: bool = False) -> Array:
    """`x = (I - gamma P)^{-1} b`, or `(I - gamma P)^{-T} b` with `transpose=True`.

    `P[S, S]`, scalar gamma, `b[S]` (or `[S, K]`). Differentiable in `P`, `gamma` and `b`
    by the implicit function theorem (`lax.custom_linear_solve`: a tangent or cotangent
    costs one more solve with the same factorisation). Under `jax.vmap` over gamma of one
    `P` it takes the shared-Hessenberg path of `resolvent_factor` when that pays.
    """
    Q, lu, piv = resolvent_factor(lax.stop_gradient(P), lax.stop_gradient(gamma))

    def solve(_, y, trans=0):
        return Q @ jax.scipy.linalg.lu_solve((lu, piv), Q.T @ y, trans=trans)

    def solve_t(_, y):
        return solve(_, y, trans=1)

    def resolvent(x):
        return x - gamma * (P @ x)

    def resolvent_t(x):
        return x - gamma * (P.T @ x)

    if transpose:
        return lax.custom_linear_solve(resolvent_t, b, solve_t, solve)
    return lax.custom_linear_solve(resolvent, b, solve, solve_t)
