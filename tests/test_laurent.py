"""Laurent coefficients of v_gamma (Puterman 1994, §8.2) against NumPy and the series itself."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dsorl
from dsorl import markov
from dsorl.sparse import SparseTransitions
from helpers import central_difference, check_variants, random_chain


def np_laurent(P, r, n):
    """y_{-1..n} from the fundamental matrix Z = (I - P + P*)^{-1} (Kemeny & Snell), with
    p* the null vector of (I - P)^T by an SVD and H = Z - P*: no LU, no bordered system."""
    S = len(P)
    p = np.linalg.svd(np.eye(S) - P.T)[2][-1]
    p /= p.sum()
    Pstar = np.outer(np.ones(S), p)
    H = np.linalg.inv(np.eye(S) - P + Pstar) - Pstar
    ys = [Pstar @ r]
    Hk = np.eye(S)
    for k in range(n + 1):
        Hk = Hk @ H
        ys.append((-1) ** k * Hk @ r)
    return np.array(ys), H


@pytest.mark.parametrize("seed, n, density", [(0, 4, 1.0), (1, 6, 0.5), (2, 3, 0.4)])
def test_coefficients_match_the_fundamental_matrix(seed, n, density):
    c = random_chain(seed, 6, density=density)
    y = np.asarray(markov.laurent_coefficients(c, n))
    ref, _ = np_laurent(np.asarray(c.P), np.asarray(c.r), n)
    assert y.shape == (n + 2, 6)
    scale = np.abs(ref).max(axis=1, keepdims=True)  # |y_k| grows like |H|^k: compare rows
    np.testing.assert_allclose(y / scale, ref / scale, atol=1e-12)
    # the first two rows are the gain (constant) and the bias of the existing functions
    np.testing.assert_allclose(y[0], dsorl.gain(c), rtol=1e-12)
    np.testing.assert_allclose(y[1], dsorl.bias(c), rtol=1e-10, atol=1e-12)
    assert markov.laurent_coefficients(c, -1).shape == (1, 6)


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_truncated_series_error_falls_like_rho_to_the_n_plus_one(n):
    """e(rho) = v_gamma - (1 + rho) sum_{k<=n} rho^k y_k = c(rho) (-1)^{n+1} (I + rho H)^{-1} a,
    c = (1 + rho) rho^{n+1}, a = H^{n+2} r. With eps = rho |H| / (1 - rho |H|) (inf-norms),
    |e| / (c |a|) lies in [1 - eps, 1 + eps]; so the ratio of errors at two gammas over the
    predicted c1 / c2 lies in [(1 - eps1) / (1 + eps2), (1 + eps1) / (1 - eps2)], widened by
    the rounding of v_gamma (relative residual ~ eps_mach cond(I - gamma P))."""
    c = random_chain(11, 5, density=0.6)
    P, r = np.asarray(c.P), np.asarray(c.r)
    y = np.asarray(markov.laurent_coefficients(c, n))
    _, H = np_laurent(P, r, 0)
    a = np.linalg.matrix_power(H, n + 2) @ r
    H_norm = np.abs(H).sum(1).max()
    bounds = []
    errors = []
    for gamma in (0.95, 0.98):
        rho = (1 - gamma) / gamma
        assert rho * H_norm < 0.5  # inside the radius of convergence, with room
        v = np.linalg.solve(np.eye(5) - gamma * P, r)
        series = (1 + rho) * sum(rho ** k * y[k + 1] for k in range(-1, n + 1))
        err = np.abs(v - series).max()
        size = (1 + rho) * rho ** (n + 1) * np.abs(a).max()
        rounding = 1e3 * np.finfo(float).eps * np.abs(r).max() / (1 - gamma) ** 2
        bounds.append(rho * H_norm / (1 - rho * H_norm) + rounding / size)
        errors.append((err, size / np.abs(a).max()))
    (e1, c1), (e2, c2) = errors
    ratio = (e1 / e2) / (c1 / c2)
    eps1, eps2 = bounds
    assert (1 - eps1) / (1 + eps2) <= ratio <= (1 + eps1) / (1 - eps2), (ratio, bounds)
    # the predicted power is the one measured: n or n + 2 would be far outside the bounds
    rho1, rho2 = (1 - 0.95) / 0.95, (1 - 0.98) / 0.98
    for wrong in (n, n + 2):
        wrong_ratio = (e1 / e2) / ((1 + rho1) * rho1 ** wrong / ((1 + rho2) * rho2 ** wrong))
        assert not (1 - eps1) / (1 + eps2) <= wrong_ratio <= (1 + eps1) / (1 - eps2)


def _readout(logits, r, w):
    P = jax.nn.softmax(logits, axis=-1)
    return jnp.sum(w * markov.laurent_coefficients(dsorl.Chain(P, r), 3))


def test_gradients_match_central_differences():
    rng = np.random.default_rng(5)
    logits, r, w = rng.normal(size=(4, 4)), rng.normal(size=4), rng.normal(size=(5, 4))
    f = jax.jit(_readout)
    grad_logits, grad_r = jax.jit(jax.grad(_readout, argnums=(0, 1)))(logits, r, w)
    np.testing.assert_allclose(grad_logits, central_difference(lambda L: f(L, r, w), logits),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grad_r, central_difference(lambda x: f(logits, x, w), r),
                               rtol=1e-6, atol=1e-8)
    forward = jax.jit(jax.jacfwd(_readout))(logits, r, w)
    np.testing.assert_allclose(forward, grad_logits, rtol=1e-10, atol=1e-12)


def test_jit_and_vmap_over_chains():
    chains = [random_chain(s, 4, density=0.7) for s in range(3)]
    batch = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *chains)
    fn = lambda c: markov.laurent_coefficients(c, 2)
    check_variants(fn, (chains[0],), (batch,), (0,), rtol=1e-10, atol=1e-11)


def test_bad_inputs_raise_clear_errors():
    P = np.array([[1.0, 0, 0], [0, 1.0, 0], [0.5, 0.5, 0]])
    multichain = dsorl.Chain(P, np.array([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="laurent_coefficients needs a unichain.*2 closed"):
        markov.laurent_coefficients(multichain, 2)
    c = random_chain(0, 3)
    for n in (-2, 1.5, True):
        with pytest.raises(ValueError, match="integer order n >= -1"):
            markov.laurent_coefficients(c, n)
    sparse = dsorl.Chain(SparseTransitions(np.array([[1], [0]], np.int32), np.ones((2, 1))),
                         np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="dense chains only"):
        markov.laurent_coefficients(sparse, 1)


# --- mixing measures: Kemeny's constant and hitting times ------------------------------


def np_hitting_times(P, j):
    """m_i = 1 + sum_{k != j} P_ik m_k, solved directly (no deviation matrix)."""
    S = len(P)
    off = P.copy()
    off[:, j] = 0
    return np.linalg.solve(np.eye(S) - off, np.ones(S))


@pytest.mark.parametrize("seed, density", [(0, 1.0), (3, 0.5)])
def test_kemeny_constant_and_hitting_times_match_numpy(seed, density):
    c = random_chain(seed, 6, density=density)
    P = np.asarray(c.P)
    eigenvalues = np.linalg.eigvals(P)
    others = np.delete(eigenvalues, np.argmin(np.abs(eigenvalues - 1)))
    K = float(markov.kemeny_constant(c))
    np.testing.assert_allclose(K, 1 + np.real(np.sum(1 / (1 - others))), rtol=1e-10)
    p = np.linalg.svd(np.eye(6) - P.T)[2][-1]
    p /= p.sum()
    recurrent = np.flatnonzero(p > 1e-12)
    M = np.stack([np_hitting_times(P, j) for j in recurrent], axis=1)  # M[i, j] = m_ij
    for col, j in enumerate(recurrent):
        np.testing.assert_allclose(markov.hitting_times(c, j), M[:, col], rtol=1e-10)
    if recurrent.size == 6:  # Kemeny: sum_j p_j m_ij = K from every start (irreducible P)
        np.testing.assert_allclose(M @ p, K, rtol=1e-10)


def lazy_ring(eps, n=6):
    """A random walk on a ring with drift, moving w.p. eps: mixes more slowly as eps -> 0."""
    Q = np.zeros((n, n))
    for i in range(n):
        Q[i, (i + 1) % n], Q[i, (i - 1) % n] = 0.7, 0.3
    return dsorl.Chain((1 - eps) * np.eye(n) + eps * Q, np.zeros(n))


def test_kemeny_constant_and_hitting_times_track_the_mixing_time():
    epsilons = [0.02, 0.05, 0.1, 0.2, 0.5]
    kemeny = [float(markov.kemeny_constant(lazy_ring(e))) for e in epsilons]
    hitting = [float(markov.hitting_times(lazy_ring(e), 0)[3]) for e in epsilons]
    mixing = [int(dsorl.mixing_time(lazy_ring(e), 1e-3)) for e in epsilons]
    assert np.all(np.diff(mixing) < 0), mixing  # slower walks mix later ...
    assert np.all(np.diff(kemeny) < 0), kemeny  # ... and have larger mixing measures
    assert np.all(np.diff(hitting) < 0), hitting
    # here both scale exactly like 1 / eps, the mixing time only roughly
    np.testing.assert_allclose(np.array(kemeny[:-1]) - 1, (kemeny[-1] - 1) * 0.5 / np.array(epsilons[:-1]),
                               rtol=1e-10)


def test_mixing_measure_gradients_match_central_differences():
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(4, 4))
    chain = lambda L: dsorl.Chain(jax.nn.softmax(L, axis=-1), jnp.zeros(4))
    for f in (lambda L: markov.kemeny_constant(chain(L)),
              lambda L: markov.hitting_times(chain(L), 2) @ jnp.arange(4.0)):
        np.testing.assert_allclose(jax.jit(jax.grad(f))(logits),
                                   central_difference(jax.jit(f), logits), rtol=1e-6, atol=1e-8)
    batch = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs),
                                   *[random_chain(s, 4, density=0.7) for s in range(3)])
    check_variants(markov.kemeny_constant, (random_chain(0, 4, density=0.7),), (batch,), (0,))


def test_mixing_measures_reject_bad_input():
    P = np.array([[1.0, 0, 0], [0, 1.0, 0], [0.5, 0.5, 0]])
    with pytest.raises(ValueError, match="kemeny_constant needs a unichain"):
        markov.kemeny_constant(dsorl.Chain(P, np.zeros(3)))
    transient = dsorl.Chain(np.array([[0.0, 1.0], [0.0, 1.0]]), np.zeros(2))
    with pytest.raises(ValueError, match="state 0 is transient"):
        markov.hitting_times(transient, 0)
    with pytest.raises(ValueError, match="state = 5 is not a state"):
        markov.hitting_times(transient, 5)
