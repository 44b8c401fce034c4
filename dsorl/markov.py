"""Exact quantities of a Markov reward process (a `Chain`): all linear solves.

Everything about actions becomes a chain first (`dsorl.induced_chain`); this module
knows nothing about actions (docs/design.md §3). Every function takes one chain; batch with
`jax.vmap`. Gradients flow through the solves implicitly (`lax.custom_linear_solve`),
never through an unrolled iteration.

Average-reward quantities follow Puterman (1994), Markov Decision Processes, §8.2 and
Appendix A: for a unichain `P`, the stationary law `p*` solves `p*^T (I - P) = 0`,
`sum(p*) = 1`; the gain is `g = p* . r`; the bias `h` solves `h = r - g 1 + P h` with
`p* . h = 0`; the deviation matrix is `H = (I - P + P*)^{-1} (I - P*)`, `P* = 1 p*^T`.
One LU factorisation of `B = I - P` with its last column replaced by ones yields all of
them: `p*^T B = e_S^T` and `B [w; g] = r` (relative values `w` with `w_S = 0` in the first
S-1 slots, the gain in the last). `B` is nonsingular exactly when `P` is unichain.

A chain whose `P` is a `dsorl.sparse.SparseTransitions` (a large MDP's induced chain) gets
the same quantities matrix-free (docs/design.md §6), by BiCGSTAB on products with `P` and `P^T`
(`dsorl.krylov`), with implicit gradients. The bordered matrix above is dense-only; the
sparse path solves the rank-one-corrected systems (Kemeny & Snell 1960, the fundamental
matrix; Puterman 1994, Appendix A.5)

    p*^T (I - P + 1 c^T) = c^T,   c = 1/S,         (stationary law)
    (I - P + 1 p*^T) h = r - g 1,  g = p* . r,     (bias; then p* . h = 0)

whose matrices are nonsingular exactly when `P` is unichain and keep the spectrum of
`I - P` except that its zero eigenvalue moves to 1, which Krylov methods like.
Deviation-matrix products use `H = (I - P + P*)^{-1} (I - P*)` without forming `H`.
A sparse solve that misses its tolerance raises `ValueError` on concrete input and gives
NaN under `jit`; `return_info=True` also returns its `dsorl.krylov.SolveInfo`.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dsorl import _checks, krylov
from dsorl._struct import pytree_dataclass
from dsorl.gamma_sweep import resolvent_solve
from dsorl.graph import closed_classes
from dsorl.sparse import SparseTransitions, is_sparse, validate_sparse

__all__ = ["Chain", "validate_chain", "discounted_value", "occupancy", "stationary_distribution",
           "gain", "bias", "deviation_matrix", "deviation_product", "mixing_time", "is_unichain",
           "laurent_coefficients", "kemeny_constant", "hitting_times"]

Array = jax.Array


@pytree_dataclass
class Chain:
    """A Markov reward process: transition matrix `P[s, s']` and reward `r[s]`.

    `P` is a dense `[S, S]` array or a `dsorl.sparse.SparseTransitions` `[S, K]`.
    Built from concrete arrays it is validated (`validate_chain`): `P` square, entries
    finite and >= 0, rows summing to 1 within sqrt(eps) of the dtype; `r` finite with one
    entry per state. Built from tracers (inside `jit`/`vmap`/`grad`) nothing is checked.
    """

    P: Array
    r: Array

    def __post_init__(self):
        if is_sparse(self.P):
            dtype = _checks.float_dtype(self.P.probs, self.r)
            P, r = self.P.astype(dtype), jnp.asarray(self.r, dtype)
        else:
            dtype = _checks.float_dtype(self.P, self.r)
            P, r = jnp.asarray(self.P, dtype), jnp.asarray(self.r, dtype)
        if _checks.is_concrete(P, r):
            validate_chain(P, r)
        object.__setattr__(self, "P", P)
        object.__setattr__(self, "r", r)

    @property
    def n_states(self) -> int:
        return self.P.shape[-1]


def validate_chain(P, r=None) -> None:
    """Raise `ValueError` naming the offending entry unless `P` (and `r`) form a chain."""
    if is_sparse(P):
        if P.successors.ndim != 2:
            raise ValueError(f"a sparse chain kernel must be [S, K], got {P.successors.shape}.")
        validate_sparse(P.successors, P.probs)
    else:
        P = np.asarray(P)
        if P.ndim != 2 or P.shape[0] != P.shape[1]:
            raise ValueError(f"chain P must have shape [S, S], got {P.shape}.")
        _checks.check_finite("P", P)
        _checks.check_nonnegative("P", P)
        _checks.check_rows_sum_to_one("P", P)
    if r is not None:
        _checks.check_shape("r", r, P.shape[:1], "[S]")
        _checks.check_finite("r", r)


# ----------------------------------------------------------------------------------------
# Discounted criterion


def discounted_value(chain: Chain, gamma, *, return_info: bool = False) -> Array:
    """Discounted value `v = (I - gamma P)^{-1} r`, shape `[S]`.

    gamma in [0, 1) (checked when concrete; traced gamma, e.g. under `vmap`, is not).
    The condition number of `I - gamma P` grows like 1/(1 - gamma): use float64 near 1.
    """
    _checks.check_discount(gamma)
    if is_sparse(chain.P):
        return _reported(_sparse_discounted_value(chain, gamma), "discounted_value", return_info)
    v = _discounted_value(chain, gamma)
    return (v, _dense_info(_resolvent(chain.P, gamma)[0], v, chain.r)) if return_info else v


def occupancy(chain: Chain, rho: Array, gamma, *, normalised: bool = False,
              return_info: bool = False) -> Array:
    """Discounted state occupancy `m^T = rho^T (I - gamma P)^{-1}`, shape `[S]`.

    `m(s) = sum_t gamma^t Pr(s_t = s | s_0 ~ rho)` sums to 1/(1 - gamma); with
    `normalised=True` returns the discounted state distribution `d = (1 - gamma) m`.
    """
    _checks.check_discount(gamma)
    if _checks.is_concrete(rho):
        _checks.check_shape("rho", rho, (chain.n_states,), "[S]")
    rho = jnp.asarray(rho, chain.P.dtype)
    if is_sparse(chain.P):
        return _reported(_sparse_occupancy(chain, rho, gamma, normalised), "occupancy",
                         return_info)
    m = _occupancy(chain, rho, gamma, normalised)
    if not return_info:
        return m
    scale = (1 - gamma) if normalised else 1
    return m, _dense_info(_resolvent(chain.P, gamma)[1], m / scale, rho)


# ----------------------------------------------------------------------------------------
# Average-reward criterion (unichain chains)


def stationary_distribution(chain: Chain, *, return_info: bool = False) -> Array:
    """Stationary law `p*[S]` of a unichain chain (`p*^T P = p*^T`, `sum p* = 1`).

    For a periodic chain it is the Cesàro limit. Raises `ValueError` on a concrete
    multichain chain (the stationary law is not unique there).
    """
    _require_unichain(chain, "stationary_distribution")
    if is_sparse(chain.P):
        return _reported(_sparse_stationary(chain.P), "stationary_distribution", return_info)
    p = _stationary_distribution(chain.P)
    if not return_info:
        return p
    S = chain.n_states
    return p, _dense_info(_stationary_system(chain.P)[1], p, jnp.full(S, 1 / S, p.dtype))


def gain(chain: Chain, *, return_info: bool = False) -> Array:
    """Gain (long-run average reward) `g = p* . r` of a unichain chain: a scalar.

    Raises `ValueError` on a concrete multichain chain, whose gain depends on the state.
    """
    _require_unichain(chain, "gain")
    if is_sparse(chain.P):
        return _reported(_sparse_gain(chain), "gain", return_info)
    g = _gain(chain)
    if not return_info:
        return g
    return g, stationary_distribution(chain, return_info=True)[1]


def bias(chain: Chain, *, return_info: bool = False) -> Array:
    """Bias `h[S] = H r`: the solution of `h = r - g 1 + P h` with `p* . h = 0`.

    Equivalently `h = lim_{gamma -> 1} (v_gamma - g / (1 - gamma))` (Puterman 1994, §8.2,
    the Laurent expansion of v_gamma; Dewanto & Gallagher, arXiv 2105.13609, eq. 1). Raises `ValueError` on a
    concrete multichain chain.
    """
    _require_unichain(chain, "bias")
    if is_sparse(chain.P):
        return _reported(_sparse_deviation_product(chain.P, chain.r, False), "bias", return_info)
    h = _centred_relative_values(chain.P, chain.r)
    return (h, _bias_info(chain.P, chain.r, h)) if return_info else h


def deviation_matrix(chain: Chain) -> Array:
    """Deviation matrix `H = (I - P + P*)^{-1} (I - P*)`, `P* = 1 p*^T`, shape `[S, S]`.

    `H 1 = 0`, `p*^T H = 0`, `(I - P) H = I - P*`, and `bias(chain) = H r`
    (Puterman 1994, Appendix A.5). Column j is the bias of the reward `e_j`. Dense chains
    only: for a sparse chain use `deviation_product` (H itself is dense, `S^2` entries).
    """
    _require_unichain(chain, "deviation_matrix")
    if is_sparse(chain.P):
        raise ValueError("deviation_matrix of a sparse chain would be a dense [S, S] matrix:"
                         " use deviation_product(chain, x) for H x or x^T H.")
    return _centred_relative_values(chain.P, _eye_like(chain.P))


def deviation_product(chain: Chain, x: Array, *, transpose: bool = False,
                      return_info: bool = False) -> Array:
    """`H x` (or `x^T H` with `transpose=True`) without forming the deviation matrix `H`.

    `H = (I - P + P*)^{-1} (I - P*)` commutes with `P*` (Puterman 1994, Appendix A.5), so
    `H x = A^{-1} (x - (p* . x) 1)` and `H^T x = A^{-T} (x - (1 . x) p*)` with
    `A = I - P + 1 p*^T`. `H x` is the bias of the reward `x`. `x[S]`; unichain required.
    """
    _require_unichain(chain, "deviation_product")
    if _checks.is_concrete(x):
        _checks.check_shape("x", x, (chain.n_states,), "[S]")
        _checks.check_finite("x", x)
    x = jnp.asarray(x, chain.P.dtype)
    if is_sparse(chain.P):
        return _reported(_sparse_deviation_product(chain.P, x, transpose), "deviation_product",
                         return_info)
    y = _dense_deviation_product(chain.P, x, transpose)
    if not return_info:
        return y
    p = _stationary_distribution(chain.P)
    matvec = _bias_system(chain.P, p)[1 if transpose else 0]
    centred = x - p * jnp.sum(x) if transpose else x - p @ x
    return y, _dense_info(matvec, y, centred)


def mixing_time(chain: Chain, eps, *, state=None, max_steps: int = 10_000) -> Array:
    """Smallest t with `max |P^t - P*| <= eps` (entrywise), an int32 scalar.

    With `state` given, only the row of that initial state counts:
    `max_s' |P^t(state, s') - p*(s')| <= eps` (Dewanto & Gallagher, arXiv 2105.13609,
    Def. 2.1 with the entrywise distance of their §7). The full-matrix error is
    non-increasing in t; a single row's need not be, and the first crossing is returned.
    A periodic chain never mixes (`P^t` has no limit, only a Cesàro one). If `eps` is not
    reached within `max_steps`, concrete input raises `ValueError` and traced input returns
    `max_steps + 1`. Cost: one `[S, S]` product per step (`[S]` with `state`). A sparse
    chain needs `state` (the full matrix `P^t` is dense).
    """
    _checks.check_positive("eps", eps)
    _require_unichain(chain, "mixing_time")
    if is_sparse(chain.P) and state is None:
        raise ValueError("mixing_time of a sparse chain needs `state` (P^t itself is dense).")
    t = _mixing_time(chain.P, eps, state, max_steps)
    if _checks.is_concrete(t) and int(t) > max_steps:
        raise ValueError(f"the chain did not mix to eps = {eps} within {max_steps} steps"
                         " (periodic or slowly mixing; raise max_steps or eps).")
    return t


@partial(jax.jit, static_argnames=("max_steps",))
def _mixing_time(P, eps, state, max_steps):
    if is_sparse(P):  # one row, a vector: `X @ P` is the segment-sum product
        p = _sparse_stationary(P)[0]
        X0 = _unit(P.n_states, state, P.dtype)
    else:
        p = _stationary_distribution(P)
        X0 = _eye_like(P)
        if state is not None:
            X0 = X0[state][None]

    def error(X):
        return jnp.max(jnp.abs(X - p))

    def not_mixed(carry):
        t, X = carry
        return (error(X) > eps) & (t < max_steps)

    def step(carry):
        t, X = carry
        return t + 1, X @ P

    t, X = lax.while_loop(not_mixed, step, (jnp.int32(0), X0))
    return jnp.where(error(X) <= eps, t, max_steps + 1)


def is_unichain(chain: Chain) -> Array:
    """True when the chain has exactly one closed recurrent class (plus transient states).

    Structural: depends only on which `P[s, s']` are > 0. Equivalent test used here: some
    state is reachable from every state. Jittable (reachability by ceil(log2 S) boolean
    matrix squarings, O(S^3 log S)); on concrete input a graph search (O(S^2)) is used.
    """
    if _checks.is_concrete(chain.P):
        return jnp.asarray(len(closed_classes(chain.P)) == 1)
    if is_sparse(chain.P):
        raise ValueError("is_unichain of a traced sparse chain is not available: call it on"
                         " concrete arrays, outside jit (a graph search).")
    return _is_unichain_traced(chain.P)


@jax.jit
def _is_unichain_traced(P: Array) -> Array:
    S = P.shape[-1]
    reach = ((P > 0) | jnp.eye(S, dtype=bool)).astype(P.dtype)
    n_squarings = max(1, int(np.ceil(np.log2(S))))
    reach = lax.fori_loop(0, n_squarings, lambda _, R: ((R @ R) > 0).astype(R.dtype), reach)
    return jnp.any(jnp.all(reach > 0, axis=0))


def _require_unichain(chain: Chain, what: str) -> None:
    _checks.check_unichain(chain.P, f"{what} needs a unichain chain, but this one",
                           "its average-reward quantities depend on the initial state")


def laurent_coefficients(chain: Chain, n: int) -> Array:
    """Coefficients `y[n + 2, S]` = `(y_{-1}, y_0, ..., y_n)` of the Laurent series of `v_gamma`.

    Puterman (1994), §8.2, Thm 8.2.3: with the interest rate `rho = (1 - gamma) / gamma`
    (so `gamma = 1 / (1 + rho)`) and `v_gamma = (I - gamma P)^{-1} r`,

        v_gamma = (1 + rho) sum_{k >= -1} rho^k y_k,     0 < rho < 1 / sigma(H),

    where `sigma(H)` is the spectral radius of the deviation matrix `H`, and

        y_{-1} = P* r = g 1,    y_0 = H r = h,    y_k = (-1)^k H^{k+1} r = -H y_{k-1}  (k >= 1).

    Row `k + 1` of the result holds `y_k`. Mind the factor `(1 + rho) = 1 / gamma`: the
    truncation `(1 + rho) sum_{k=-1}^{n} rho^k y_k` misses `v_gamma` by
    `(1 + rho) rho^{n+1} (-1)^{n+1} H^{n+2} (I + rho H)^{-1} r = O(rho^{n+1})`. The `y_k` are
    the coefficients of Veinott's n-discount optimality (`dsorl.planning.n_discount_optimal`).

    `n >= -1` is static (it sets the shape). One LU of `I - P` with its last column replaced
    by ones serves every `H` product (`H x` is the bias of the reward `x`); gradients flow
    through the solves implicitly. Unichain dense chains only (checked when concrete); batch
    with `jax.vmap`.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < -1:
        raise ValueError(f"laurent_coefficients needs an integer order n >= -1, got n = {n!r}.")
    if is_sparse(chain.P):
        raise ValueError("laurent_coefficients takes dense chains only; for a sparse chain"
                         " apply deviation_product(chain, .) repeatedly: y_k = -H y_{k-1}.")
    _require_unichain(chain, "laurent_coefficients")
    return _laurent_coefficients(chain.P, chain.r, int(n))


@partial(jax.jit, static_argnums=2)
def _laurent_coefficients(P: Array, r: Array, n: int) -> Array:
    solve, solve_t = _lu_solvers(_gain_matrix(P))
    p = solve_t(_last_unit(P))

    def deviation(x):  # H x: the bias of reward x (see `_centred_relative_values`)
        w = solve(x).at[-1].set(0)
        return w - p @ w

    gain_row = jnp.full_like(r, p @ r)
    if n == -1:
        return gain_row[None]
    h = deviation(r)
    _, higher = lax.scan(lambda y, _: (-deviation(y),) * 2, h, None, length=n)
    return jnp.concatenate([gain_row[None], h[None], higher])


def kemeny_constant(chain: Chain) -> Array:
    """Kemeny's constant `K = tr(Z) = tr(H) + 1`, a scalar: a differentiable mixing measure.

    `Z = (I - P + P*)^{-1} = H + P*` is the fundamental matrix (Kemeny & Snell 1960,
    Finite Markov Chains, §4.4). `K = 1 + sum_{lambda != 1} 1 / (1 - lambda)` over the other
    eigenvalues of `P`, so slow mixing (eigenvalues near 1) makes it large; for an
    irreducible `P`, `K = sum_j p*_j m_ij` for every start i, the expected time to reach a
    state drawn from `p*` (`hitting_times`, with the return time `m_ii = 1 / p*_i`). Morimura et al. (AAAI 2014) regularise the
    average-reward policy gradient by such a mixing measure of the induced chain, to keep
    sampled estimates reliable. One LU (the deviation matrix), implicit gradients. Unichain
    dense chains only (checked when concrete); batch with `jax.vmap`.
    """
    if is_sparse(chain.P):
        raise ValueError("kemeny_constant takes dense chains only (tr(H) needs all S columns"
                         " of the deviation matrix).")
    _require_unichain(chain, "kemeny_constant")
    return _kemeny_constant(chain.P)


def hitting_times(chain: Chain, state) -> Array:
    """Expected hitting times `m[S]` of `state` j: `m_i = E[min{t >= 1: s_t = j} | s_0 = i]`.

    For i != j it is the mean first passage time `m_ij = (h_jj - h_ij) / p*_j` with the
    deviation matrix `H = (h_ij)` (Kemeny & Snell 1960, Thm 4.4.7, with `Z = H + P*`);
    `m_j = 1 / p*_j` is the mean return time; together `m_i = 1 + sum_{k != j} P_ik m_k` for
    every i. A mixing measure relative to a reference state (Morimura et al., AAAI 2014).
    One LU, implicit gradients; unichain dense chains only. `state` must be recurrent
    (checked when concrete: `p*_j > sqrt(eps)`): a transient j is never reached again once left.
    """
    if is_sparse(chain.P):
        raise ValueError("hitting_times takes dense chains only.")
    _require_unichain(chain, "hitting_times")
    S = chain.n_states
    if _checks.is_concrete(state):
        if not (0 <= int(state) < S):
            raise ValueError(f"state = {state} is not a state of this chain (0 <= state < {S}).")
    if _checks.is_concrete(state, chain.P):
        p = np.asarray(_stationary_distribution(chain.P))
        if p[int(state)] <= np.sqrt(np.finfo(p.dtype).eps):
            raise ValueError(f"state {int(state)} is transient (p*[{int(state)}] ="
                             f" {p[int(state)]:.3g}): the recurrent class never reaches it.")
    return _hitting_times(chain.P, state)


@jax.jit
def _kemeny_constant(P: Array) -> Array:
    return jnp.trace(_centred_relative_values(P, _eye_like(P))) + 1


@jax.jit
def _hitting_times(P: Array, state) -> Array:
    solve, solve_t = _lu_solvers(_gain_matrix(P))
    p = solve_t(_last_unit(P))
    w = solve(_unit(P.shape[-1], state, P.dtype)).at[-1].set(0)
    column = w - p @ w  # H e_j: the bias of the reward e_j
    m = (column[state] - column) / p[state]
    return m.at[state].set(1 / p[state])


# Jitted kernels: the public functions validate concrete input, then call these (one
# compiled call instead of an op-by-op dispatch; inlined when traced from outside).


# `resolvent_solve`: one LU of I - gamma P, or, under vmap over gamma of one chain, one
# Hessenberg reduction shared by all gammas (dsorl.gamma_sweep).
@jax.jit
def _discounted_value(chain: Chain, gamma) -> Array:
    return resolvent_solve(chain.P, gamma, chain.r)


@partial(jax.jit, static_argnums=3)
def _occupancy(chain: Chain, rho: Array, gamma, normalised: bool) -> Array:
    m = resolvent_solve(chain.P, gamma, rho, transpose=True)
    return (1 - gamma) * m if normalised else m


@jax.jit
def _stationary_distribution(P: Array) -> Array:
    _, solve_t = _lu_solvers(_gain_matrix(P))
    return solve_t(_last_unit(P))


@jax.jit
def _gain(chain: Chain) -> Array:
    solve, _ = _lu_solvers(_gain_matrix(chain.P))
    return solve(chain.r)[-1]


def _gain_matrix(P: Array) -> Array:
    """`I - P` with its last column replaced by ones (nonsingular iff unichain)."""
    return (_eye_like(P) - P).at[:, -1].set(1)


@jax.jit
def _centred_relative_values(P: Array, r: Array) -> Array:
    """Bias for reward `r` (`[S]` or one column per reward `[S, K]`) from one LU."""
    solve, solve_t = _lu_solvers(_gain_matrix(P))
    w = solve(r).at[-1].set(0)  # relative values, w[S-1] = 0 (the slot held the gain)
    p = solve_t(_last_unit(P))
    return w - p @ w


def _lu_solvers(B: Array):
    """Solvers for `B x = b` and `B^T x = b` sharing one LU, differentiable implicitly."""
    lu_piv = jax.scipy.linalg.lu_factor(lax.stop_gradient(B))
    solve = lambda _, b: jax.scipy.linalg.lu_solve(lu_piv, b, trans=0)
    solve_t = lambda _, b: jax.scipy.linalg.lu_solve(lu_piv, b, trans=1)
    forward = lambda b: lax.custom_linear_solve(lambda x: B @ x, b, solve, solve_t)
    transposed = lambda b: lax.custom_linear_solve(lambda x: B.T @ x, b, solve_t, solve)
    return forward, transposed


def _eye_like(P: Array) -> Array:
    return jnp.eye(P.shape[-1], dtype=P.dtype)


def _last_unit(P: Array) -> Array:
    return jnp.zeros(P.shape[-1], P.dtype).at[-1].set(1)


# ----------------------------------------------------------------------------------------
# Matrix-free path (sparse chains): operators, Krylov kernels, reports


def _resolvent(P, gamma) -> tuple:
    """`(x -> (I - gamma P) x, y -> (I - gamma P)^T y)`: products only, any form of `P`."""
    return (lambda x: x - gamma * (P @ x)), (lambda y: y - gamma * (y @ P))


def _stationary_system(P) -> tuple:
    """`A = I - P + 1 c^T` with `c = 1/S`, as `(A x, A^T y)`: `p*^T A = c^T`."""
    S = P.shape[-1]
    return ((lambda x: x - P @ x + jnp.sum(x) / S),
            (lambda y: y - y @ P + jnp.sum(y) / S))


def _bias_system(P, p) -> tuple:
    """`A = I - P + 1 p*^T`, as `(A x, A^T y)`."""
    return (lambda x: x - P @ x + p @ x), (lambda y: y - y @ P + p * jnp.sum(y))


def _krylov(system, b, options, transpose=False):
    matvec, rmatvec = system
    if transpose:
        matvec, rmatvec = rmatvec, matvec
    return krylov.solve(matvec, rmatvec, b, options=options)


@jax.jit
def _sparse_discounted_value(chain: Chain, gamma):
    return _krylov(_resolvent(chain.P, gamma), chain.r, chain.P.krylov)


@partial(jax.jit, static_argnums=3)
def _sparse_occupancy(chain: Chain, rho, gamma, normalised: bool):
    m, info = _krylov(_resolvent(chain.P, gamma), rho, chain.P.krylov, transpose=True)
    return ((1 - gamma) * m if normalised else m), info


@jax.jit
def _sparse_stationary(P: SparseTransitions):
    # a barrier keeps XLA from constant-folding reductions of c (seconds at S = 10^6)
    c = lax.optimization_barrier(jnp.full(P.n_states, 1 / P.n_states, P.dtype))
    return _krylov(_stationary_system(P), c, P.krylov, transpose=True)


@jax.jit
def _sparse_gain(chain: Chain):
    p, info = _sparse_stationary(chain.P)
    return p @ chain.r, info


@partial(jax.jit, static_argnums=2)
def _sparse_deviation_product(P: SparseTransitions, x, transpose: bool):
    p, first = _sparse_stationary(P)
    centred = x - p * jnp.sum(x) if transpose else x - p @ x
    y, second = _krylov(_bias_system(P, p), centred, P.krylov, transpose)
    return y, _merged(first, second)


@partial(jax.jit, static_argnums=2)
def _dense_deviation_product(P, x, transpose: bool):
    if not transpose:
        return _centred_relative_values(P, x)
    p = _stationary_distribution(P)
    A = _eye_like(P) - P + p[None, :]
    return jnp.linalg.solve(A.T, x - p * jnp.sum(x))


def _merged(a: krylov.SolveInfo, b: krylov.SolveInfo) -> krylov.SolveInfo:
    """One report for two solves in sequence: worst residual, total iterations."""
    return krylov.SolveInfo(residual=jnp.maximum(a.residual, b.residual),
                            iterations=a.iterations + b.iterations,
                            converged=a.converged & b.converged)


def _dense_info(matvec, x, b) -> krylov.SolveInfo:
    """The report of a direct (LU) solve: its relative residual, zero iterations."""
    norm = jnp.linalg.norm(b)
    residual = jnp.linalg.norm(matvec(x) - b) / jnp.where(norm > 0, norm, 1)
    return krylov.SolveInfo(residual=residual, iterations=jnp.int32(0),
                            converged=jnp.isfinite(residual))


def _bias_info(P, r, h):
    p = _stationary_distribution(P)
    return _dense_info(_bias_system(P, p)[0], h, r - (p @ r))


def _reported(result, what: str, return_info: bool):
    """Raise on a concrete solve that missed its tolerance; else the value (and report)."""
    value, info = result
    if _checks.is_concrete(info.converged) and not bool(np.all(info.converged)):
        raise ValueError(
            f"{what}: the Krylov solve did not converge (relative residual"
            f" {float(np.max(info.residual)):.3g} after {int(np.max(info.iterations))}"
            " iterations). Raise max_iters or loosen tol in the kernel's Krylov settings"
            " (dsorl.krylov.Krylov); for average-reward quantities check that the chain is"
            " unichain; near gamma = 1 the discounted system is ill-conditioned.")
    return (value, info) if return_info else value


def _unit(S: int, state, dtype) -> Array:
    return jnp.zeros(S, dtype).at[state].set(1)
