"""Resolvent solves and the shared-Hessenberg path for sweeps over gamma.

References are independent of the code under test: SciPy's LAPACK `getrf` of the same
matrix, dense NumPy solves, central differences, and `jnp.linalg.solve` vmapped over gamma
(the plain path, one LU per gamma). Error bounds come from the conditioning of
`I - gamma P`: a backward-stable solve has a normwise backward error of a small multiple
of eps, and a forward error at most about the condition number times that (Higham,
Accuracy and Stability of Numerical Algorithms, 2nd ed., ch. 7 and 9).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import dsorl
from dsorl import gamma_sweep
from helpers import central_difference, check_variants

EPS = np.finfo(np.float64).eps
SWEEP_STATES = 300  # >= MIN_STATES: vmap over gamma takes the shared-Hessenberg path
SWEEP_GAMMAS = np.concatenate([[0.0, 0.3, 0.9, 0.99, 0.999, 0.9999, 0.99999, 0.5],
                               np.linspace(0.1, 0.95, 8)])


def random_stochastic(seed, n, *, density=1.0):
    rng = np.random.default_rng(seed)
    P = rng.random((n, n)) + 0.01
    if density < 1:
        P *= rng.random((n, n)) < density
        P[:, 0] += 0.01
    return P / P.sum(1, keepdims=True)


def backward_error(A, x, b):
    """Normwise backward error `||b - A x|| / (||A|| ||x|| + ||b||)` (Rigal & Gaches 1967)."""
    A, x, b = (np.asarray(z, np.float64) for z in (A, x, b))
    return np.linalg.norm(b - A @ x, np.inf) / (np.linalg.norm(A, np.inf) * np.linalg.norm(x, np.inf)
                                               + np.linalg.norm(b, np.inf))


def uses_hessenberg(fn, *args) -> bool:
    return "hessenberg" in str(jax.make_jaxpr(fn)(*args))


def test_thresholds_put_the_sweep_tests_on_the_fast_path():
    assert gamma_sweep.MIN_STATES <= SWEEP_STATES
    assert gamma_sweep.MIN_BATCH <= len(SWEEP_GAMMAS)


# --- the O(S^2) Hessenberg LU ---------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 40])
def test_hessenberg_lu_is_lapack_partial_pivoting(n):
    """Same factors and pivots as LAPACK's getrf on the explicit matrix (ties aside)."""
    rng = np.random.default_rng(n)
    swaps = 0
    for trial in range(6):
        H = rng.normal(size=(n, n)) + 5 * np.tril(rng.normal(size=(n, n)))  # garbage below
        gamma = rng.uniform(0.1, 3.0)
        lu, piv = jax.jit(gamma_sweep.hessenberg_lu)(H, gamma)
        A = np.eye(n) - gamma * np.triu(H, -1)
        lu_ref, piv_ref = scipy.linalg.lu_factor(A)
        np.testing.assert_array_equal(piv, piv_ref)
        np.testing.assert_allclose(lu, lu_ref, rtol=1e-12, atol=1e-12 * np.abs(lu_ref).max())
        swaps += int(np.sum(np.asarray(piv) != np.arange(n)))
    if n > 2:
        assert swaps > 0  # both branches of the pivot choice were exercised


def test_hessenberg_lu_solves_with_lu_solve():
    n = 40
    rng = np.random.default_rng(3)
    H = np.triu(rng.normal(size=(n, n)), -1)
    b = rng.normal(size=n)
    lu_piv = gamma_sweep.hessenberg_lu(H, 0.7)
    A = np.eye(n) - 0.7 * H
    for trans, M in ((0, A), (1, A.T)):
        x = jax.scipy.linalg.lu_solve(lu_piv, b, trans=trans)
        np.testing.assert_allclose(x, np.linalg.solve(M, b), rtol=1e-9, atol=1e-9)


def test_gamma_sweep_factor_reconstructs_the_resolvent():
    n = 30
    P = random_stochastic(0, n)
    gammas = np.array([0.0, 0.5, 0.99])
    Q, lu, piv = gamma_sweep.gamma_sweep_factor(P, gammas)
    Q = np.asarray(Q)
    np.testing.assert_allclose(Q.T @ Q, np.eye(n), atol=1e2 * n * EPS)
    for g, lu_g, piv_g in zip(gammas, np.asarray(lu), np.asarray(piv)):
        L, U = np.tril(lu_g, -1) + np.eye(n), np.triu(lu_g)
        perm = np.arange(n)
        for k, p in enumerate(piv_g):  # LAPACK's sequential row exchanges
            perm[[k, p]] = perm[[p, k]]
        M = np.empty((n, n))
        M[perm] = L @ U  # Pi^T (I - g H) = L U
        np.testing.assert_allclose(Q @ M @ Q.T, np.eye(n) - g * P, atol=1e2 * n * EPS)


# --- resolvent_solve, one gamma ------------------------------------------------------------


@pytest.mark.parametrize("transpose", [False, True])
def test_resolvent_solve_matches_numpy(transpose):
    n = 9
    P = random_stochastic(1, n)
    b = np.random.default_rng(2).normal(size=(n, 3))
    for gamma in (0.0, 0.6, 0.999):
        A = np.eye(n) - gamma * P
        x = gamma_sweep.resolvent_solve(P, gamma, b, transpose=transpose)
        np.testing.assert_allclose(x, np.linalg.solve(A.T if transpose else A, b),
                                   rtol=1e-10, atol=1e-10)


def test_resolvent_solve_variants():
    n = 6
    P = random_stochastic(4, n)
    b = np.random.default_rng(4).normal(size=n)
    gammas = np.linspace(0.1, 0.95, 4)
    check_variants(gamma_sweep.resolvent_solve, (P, 0.8, b), (P, gammas, b), (None, 0, None))
    Ps = np.stack([random_stochastic(s, n) for s in range(4)])
    check_variants(gamma_sweep.resolvent_solve, (P, 0.8, b), (Ps, gammas, b), (0, 0, None))


@pytest.mark.parametrize("transpose", [False, True])
def test_resolvent_solve_gradients_match_finite_differences(transpose):
    n = 4
    rng = np.random.default_rng(5)
    P, b, w = random_stochastic(5, n), rng.normal(size=n), rng.normal(size=n)
    gamma = 0.9

    def objective(P, gamma, b):
        return w @ gamma_sweep.resolvent_solve(P, gamma, b, transpose=transpose)

    def reference(P, gamma, b):  # NumPy, independent of the code under test
        A = np.eye(n) - gamma * P
        return w @ np.linalg.solve(A.T if transpose else A, b)

    gP, gg, gb = jax.jit(jax.grad(objective, argnums=(0, 1, 2)))(P, gamma, b)
    np.testing.assert_allclose(gP, central_difference(lambda x: reference(x, gamma, b), P),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gg, central_difference(lambda x: reference(P, x, b), gamma),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gb, central_difference(lambda x: reference(P, gamma, x), b),
                               rtol=1e-6, atol=1e-8)
    # forward mode and second order: d^2 x / d gamma^2 = 2 (A^{-1} P)^2 A^{-1} b
    A_inv = np.linalg.inv(np.eye(n) - gamma * P)
    M = (A_inv @ P).T if transpose else A_inv @ P
    x0 = np.linalg.solve((np.eye(n) - gamma * P).T if transpose else np.eye(n) - gamma * P, b)
    hess = jax.jit(jax.hessian(objective, argnums=1))(P, gamma, b)
    np.testing.assert_allclose(hess, w @ (2 * M @ M @ x0), rtol=1e-9)


# --- the sweep path under vmap -----------------------------------------------------------


@pytest.fixture(scope="module")
def sweep_problem():
    S = SWEEP_STATES
    P = random_stochastic(7, S, density=0.3)
    rng = np.random.default_rng(8)
    return P, rng.normal(size=S), rng.dirichlet(np.ones(S))


def plain_value(P, gamma, r):
    return jnp.linalg.solve(jnp.eye(P.shape[-1]) - gamma * P, r)


def test_vmap_over_gamma_takes_the_sweep_path_only_when_it_pays(sweep_problem):
    P, r, _ = sweep_problem
    gammas = jnp.asarray(SWEEP_GAMMAS)
    solve = gamma_sweep.resolvent_solve
    assert uses_hessenberg(jax.vmap(solve, (None, 0, None)), P, gammas, r)
    assert uses_hessenberg(jax.vmap(jax.grad(lambda g: r @ solve(P, g, r))), gammas)
    # a batch too small, a chain too small, a batch of chains: independent LUs
    small = gammas[:gamma_sweep.MIN_BATCH - 1]
    assert not uses_hessenberg(jax.vmap(solve, (None, 0, None)), P, small, r)
    n = gamma_sweep.MIN_STATES - 1
    assert not uses_hessenberg(jax.vmap(solve, (None, 0, None)), P[:n, :n], gammas, r[:n])
    Ps = jnp.broadcast_to(P, (len(gammas),) + P.shape)
    assert not uses_hessenberg(jax.vmap(solve, (0, 0, None)), Ps, gammas, r)


def test_sweep_path_is_backward_stable_near_gamma_one(sweep_problem):
    """gamma up to 0.99999 at S = 300: backward error of a stable dense solve, and the
    same solution as one LU per gamma to within the conditioning of I - gamma P."""
    P, r, _ = sweep_problem
    S = P.shape[-1]

    @jax.jit
    @jax.vmap
    def both(g):
        return (gamma_sweep.resolvent_solve(P, g, r),
                gamma_sweep.resolvent_solve(P, g, r, transpose=True))

    for transpose, xs in enumerate(both(jnp.asarray(SWEEP_GAMMAS))):
        for g, x in zip(SWEEP_GAMMAS, np.asarray(xs)):
            A = np.eye(S) - g * P
            A = A.T if transpose else A
            assert backward_error(A, x, r) <= S * EPS
            x_ref = np.linalg.solve(A, r)
            kappa = np.linalg.cond(A, np.inf)
            err = np.linalg.norm(x - x_ref, np.inf) / np.linalg.norm(x_ref, np.inf)
            assert err <= 2 * kappa * S * EPS, (g, err, kappa)


def relative_errors(a, b):
    """Per-gamma `max |a - b| / max |b|` over all but the leading axis."""
    a, b = (np.asarray(z).reshape(len(z), -1) for z in (a, b))
    return np.max(np.abs(a - b), 1) / np.maximum(np.max(np.abs(b), 1), np.finfo(float).tiny)


def test_discounted_value_and_occupancy_sweeps_equal_the_plain_path(sweep_problem):
    P, r, rho = sweep_problem
    chain = dsorl.Chain(P, r)
    gammas = jnp.asarray(SWEEP_GAMMAS)
    assert uses_hessenberg(jax.vmap(dsorl.discounted_value, (None, 0)), chain, gammas)
    assert uses_hessenberg(jax.vmap(dsorl.occupancy, (None, None, 0)), chain, rho, gammas)

    @jax.jit
    @jax.vmap
    def sweep_and_plain(g):
        return ((dsorl.discounted_value(chain, g), dsorl.occupancy(chain, rho, g)),
                (plain_value(P, g, r), plain_value(P.T, g, rho)))

    (v, m), (v_ref, m_ref) = sweep_and_plain(gammas)
    kappa = np.array([np.linalg.cond(np.eye(len(r)) - g * P, np.inf) for g in SWEEP_GAMMAS])
    for x, ref in ((v, v_ref), (m, m_ref)):
        err = relative_errors(x, ref)
        assert np.all(err <= 4 * kappa * len(r) * EPS), err / kappa


def test_sweep_gradients_equal_the_plain_path(sweep_problem):
    """vmap(grad) over gamma of one chain, with respect to P, gamma and r."""
    P, r, rho = sweep_problem
    gammas = jnp.asarray(SWEEP_GAMMAS)

    def grads(solve, g):
        return jax.grad(lambda P, g, r: rho @ solve(P, g, r), argnums=(0, 1, 2))(P, g, r)

    fast, plain = jax.jit(jax.vmap(lambda g: (grads(gamma_sweep.resolvent_solve, g),
                                              grads(plain_value, g))))(gammas)
    kappa = np.array([np.linalg.cond(np.eye(len(r)) - g * P, np.inf) for g in SWEEP_GAMMAS])
    for name, a, b in zip(("P", "gamma", "r"), fast, plain):
        err = relative_errors(a, b)
        # each gradient is a product of two solves: their relative errors add up
        assert np.all(err <= 4 * kappa * len(r) * EPS), (name, err / kappa)


def test_nested_vmap_over_chains_then_gammas(sweep_problem):
    P, r, _ = sweep_problem
    Ps = jnp.stack([P, P[::-1]])
    gammas = jnp.asarray(SWEEP_GAMMAS[:gamma_sweep.MIN_BATCH])
    inner = jax.vmap(gamma_sweep.resolvent_solve, (None, 0, None))
    nested = jax.vmap(inner, (0, None, None))
    assert uses_hessenberg(nested, Ps, gammas, r)
    x = jax.jit(nested)(Ps, gammas, r)
    for P_i, x_i in zip(Ps, np.asarray(x)):
        for g, x_ig in zip(np.asarray(gammas), x_i):
            assert backward_error(np.eye(len(r)) - g * np.asarray(P_i), x_ig, r) <= len(r) * EPS


def test_float32_sweep(sweep_problem):
    """float32 works on the sweep path and is as accurate as float32 LUs (gamma <= 0.99)."""
    P, r, _ = sweep_problem
    P32, r32 = jnp.asarray(P, jnp.float32), jnp.asarray(r, jnp.float32)
    gammas = jnp.asarray(np.tile(SWEEP_GAMMAS[:4], 4), jnp.float32)
    sweep = jax.vmap(gamma_sweep.resolvent_solve, (None, 0, None))
    assert uses_hessenberg(sweep, P32, gammas, r32)
    x = jax.jit(sweep)(P32, gammas, r32)
    assert x.dtype == jnp.float32
    eps32 = np.finfo(np.float32).eps
    for g, x_g in zip(np.asarray(gammas, np.float64), np.asarray(x, np.float64)):
        assert backward_error(np.eye(len(r)) - g * np.asarray(P32, np.float64), x_g,
                              np.asarray(r32, np.float64)) <= len(r) * eps32
