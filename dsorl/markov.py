"""Exact quantities of a Markov reward process (a `Chain`): all linear solves.

Everything about actions becomes a chain first (`dsorl.induced_chain`); this module
knows nothing about actions (DESIGN 3). Every function takes one chain; batch with
`jax.vmap`. Gradients flow through the solves implicitly (`lax.custom_linear_solve`),
never through an unrolled iteration.

Average-reward quantities follow Puterman (1994), Markov Decision Processes, §8.2 and
Appendix A: for a unichain `P`, the stationary law `p*` solves `p*^T (I - P) = 0`,
`sum(p*) = 1`; the gain is `g = p* . r`; the bias `h` solves `h = r - g 1 + P h` with
`p* . h = 0`; the deviation matrix is `H = (I - P + P*)^{-1} (I - P*)`, `P* = 1 p*^T`.
One LU factorisation of `B = I - P` with its last column replaced by ones yields all of
them: `p*^T B = e_S^T` and `B [w; g] = r` (relative values `w` with `w_S = 0` in the first
S-1 slots, the gain in the last). `B` is nonsingular exactly when `P` is unichain.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dsorl import _checks
from dsorl._struct import pytree_dataclass
from dsorl.gamma_sweep import resolvent_solve
from dsorl.graph import closed_classes

__all__ = ["Chain", "validate_chain", "discounted_value", "occupancy", "stationary_distribution",
           "gain", "bias", "deviation_matrix", "mixing_time", "is_unichain"]

Array = jax.Array


@pytree_dataclass
class Chain:
    """A Markov reward process: transition matrix `P[s, s']` and reward `r[s]`.

    Built from concrete arrays it is validated (`validate_chain`): `P` square, entries
    finite and >= 0, rows summing to 1 within sqrt(eps) of the dtype; `r` finite with one
    entry per state. Built from tracers (inside `jit`/`vmap`/`grad`) nothing is checked.
    """

    P: Array
    r: Array

    def __post_init__(self):
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


def discounted_value(chain: Chain, gamma) -> Array:
    """Discounted value `v = (I - gamma P)^{-1} r`, shape `[S]`.

    gamma in [0, 1) (checked when concrete; traced gamma, e.g. under `vmap`, is not).
    The condition number of `I - gamma P` grows like 1/(1 - gamma): use float64 near 1.
    """
    _checks.check_discount(gamma)
    return _discounted_value(chain, gamma)


def occupancy(chain: Chain, rho: Array, gamma, *, normalised: bool = False) -> Array:
    """Discounted state occupancy `m^T = rho^T (I - gamma P)^{-1}`, shape `[S]`.

    `m(s) = sum_t gamma^t Pr(s_t = s | s_0 ~ rho)` sums to 1/(1 - gamma); with
    `normalised=True` returns the discounted state distribution `d = (1 - gamma) m`.
    """
    _checks.check_discount(gamma)
    if _checks.is_concrete(rho):
        _checks.check_shape("rho", rho, (chain.n_states,), "[S]")
    return _occupancy(chain, jnp.asarray(rho, chain.P.dtype), gamma, normalised)


# ----------------------------------------------------------------------------------------
# Average-reward criterion (unichain chains)


def stationary_distribution(chain: Chain) -> Array:
    """Stationary law `p*[S]` of a unichain chain (`p*^T P = p*^T`, `sum p* = 1`).

    For a periodic chain it is the Cesàro limit. Raises `ValueError` on a concrete
    multichain chain (the stationary law is not unique there).
    """
    _require_unichain(chain, "stationary_distribution")
    return _stationary_distribution(chain.P)


def gain(chain: Chain) -> Array:
    """Gain (long-run average reward) `g = p* . r` of a unichain chain: a scalar.

    Raises `ValueError` on a concrete multichain chain, whose gain depends on the state.
    """
    _require_unichain(chain, "gain")
    return _gain(chain)


def bias(chain: Chain) -> Array:
    """Bias `h[S] = H r`: the solution of `h = r - g 1 + P h` with `p* . h = 0`.

    Equivalently `h = lim_{gamma -> 1} (v_gamma - g / (1 - gamma))` (Puterman 1994, §8.2,
    the Laurent expansion of v_gamma; Dewanto & Gallagher, arXiv 2105.13609, eq. 1). Raises `ValueError` on a
    concrete multichain chain.
    """
    _require_unichain(chain, "bias")
    return _centred_relative_values(chain.P, chain.r)


def deviation_matrix(chain: Chain) -> Array:
    """Deviation matrix `H = (I - P + P*)^{-1} (I - P*)`, `P* = 1 p*^T`, shape `[S, S]`.

    `H 1 = 0`, `p*^T H = 0`, `(I - P) H = I - P*`, and `bias(chain) = H r`
    (Puterman 1994, Appendix A.5). Column j is the bias of the reward `e_j`.
    """
    _require_unichain(chain, "deviation_matrix")
    return _centred_relative_values(chain.P, _eye_like(chain.P))


def mixing_time(chain: Chain, eps, *, state=None, max_steps: int = 10_000) -> Array:
    """Smallest t with `max |P^t - P*| <= eps` (entrywise), an int32 scalar.

    With `state` given, only the row of that initial state counts:
    `max_s' |P^t(state, s') - p*(s')| <= eps` (Dewanto & Gallagher, arXiv 2105.13609,
    Def. 2.1 with the entrywise distance of their §7). The full-matrix error is
    non-increasing in t; a single row's need not be, and the first crossing is returned.
    A periodic chain never mixes (`P^t` has no limit, only a Cesàro one). If `eps` is not
    reached within `max_steps`, concrete input raises `ValueError` and traced input returns
    `max_steps + 1`. Cost: one `[S, S]` product per step (`[S]` with `state`).
    """
    _checks.check_positive("eps", eps)
    _require_unichain(chain, "mixing_time")
    t = _mixing_time(chain.P, eps, state, max_steps)
    if _checks.is_concrete(t) and int(t) > max_steps:
        raise ValueError(f"the chain did not mix to eps = {eps} within {max_steps} steps"
                         " (periodic or slowly mixing; raise max_steps or eps).")
    return t


@partial(jax.jit, static_argnames=("max_steps",))
def _mixing_time(P, eps, state, max_steps):
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
