"""Chain quantities against dense NumPy references, closed forms and limits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dsorl
from helpers import central_difference, check_variants, random_chain


def np_stationary(P):
    """Left eigenvector of P for eigenvalue 1 (independent of the LU route)."""
    w, V = np.linalg.eig(P.T)
    p = np.real(V[:, np.argmin(np.abs(w - 1))])
    return p / p.sum()


def np_deviation(P):
    S = len(P)
    Pstar = np.outer(np.ones(S), np_stationary(P))
    return np.linalg.inv(np.eye(S) - P + Pstar) @ (np.eye(S) - Pstar)


def two_state(a, b, r0, r1):
    return dsorl.Chain(np.array([[1 - a, a], [b, 1 - b]]), np.array([r0, r1]))


# --- discounted criterion ----------------------------------------------------------


@given(st.integers(0, 10_000), st.sampled_from([1, 3, 8]), st.floats(0.0, 0.999))
def test_discounted_value_and_occupancy_match_numpy(seed, n, gamma):
    c = random_chain(seed, n)
    P, r = np.asarray(c.P), np.asarray(c.r)
    rho = np.random.default_rng(seed + 1).dirichlet(np.ones(n))
    A = np.eye(n) - gamma * P
    np.testing.assert_allclose(dsorl.discounted_value(c, gamma), np.linalg.solve(A, r),
                               rtol=1e-10, atol=1e-10)
    m = dsorl.occupancy(c, rho, gamma)
    np.testing.assert_allclose(m, np.linalg.solve(A.T, rho), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(m.sum(), 1 / (1 - gamma), rtol=1e-10)
    np.testing.assert_allclose(dsorl.occupancy(c, rho, gamma, normalised=True).sum(), 1, rtol=1e-10)
    # rho . v = m . r: the two sides of the discounted return
    np.testing.assert_allclose(rho @ np.asarray(dsorl.discounted_value(c, gamma)), m @ r, rtol=1e-9)


def test_discounted_value_two_state_closed_form():
    a, b, gamma = 0.3, 0.6, 0.9
    c = two_state(a, b, 1.0, 0.0)
    # v0 = 1 + g((1-a) v0 + a v1), v1 = g(b v0 + (1-b) v1) solved by hand
    v1_over_v0 = gamma * b / (1 - gamma * (1 - b))
    v0 = 1 / (1 - gamma * (1 - a) - gamma * a * v1_over_v0)
    np.testing.assert_allclose(dsorl.discounted_value(c, gamma), [v0, v0 * v1_over_v0], rtol=1e-13)


@pytest.mark.parametrize("gamma", [1.0, -0.1, 1.5, float("nan")])
def test_discount_outside_unit_interval_raises(gamma):
    with pytest.raises(ValueError, match="gamma"):
        dsorl.discounted_value(random_chain(0, 3), gamma)
    with pytest.raises(ValueError, match="gamma"):
        dsorl.occupancy(random_chain(0, 3), np.ones(3) / 3, gamma)


# --- average reward -------------------------------------------------------------------


def test_two_state_closed_forms():
    a, b, r0, r1 = 0.2, 0.5, 3.0, -1.0
    c = two_state(a, b, r0, r1)
    p = np.array([b, a]) / (a + b)
    g = p @ [r0, r1]
    np.testing.assert_allclose(dsorl.stationary_distribution(c), p, rtol=1e-14)
    np.testing.assert_allclose(dsorl.gain(c), g, rtol=1e-14)
    # bias of a 2-state chain: h = (r - g) / (a + b) * (b?...): solve h0 - h1 = (r0 - g)/a,
    # p . h = 0 (from h0 = r0 - g + (1-a) h0 + a h1)
    d = (r0 - g) / a
    h1 = -p[0] * d
    np.testing.assert_allclose(dsorl.bias(c), [h1 + d, h1], rtol=1e-13)


@given(st.integers(0, 10_000), st.sampled_from([2, 5, 9]), st.sampled_from([1.0, 0.4]))
def test_average_reward_quantities_match_numpy(seed, n, density):
    c = random_chain(seed, n, density=density)
    P, r = np.asarray(c.P), np.asarray(c.r)
    p = np_stationary(P)
    H = np_deviation(P)
    np.testing.assert_allclose(dsorl.stationary_distribution(c), p, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dsorl.gain(c), p @ r, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dsorl.deviation_matrix(c), H, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(dsorl.bias(c), H @ r, rtol=1e-8, atol=1e-10)


@given(st.integers(0, 10_000), st.sampled_from([3, 6]))
def test_deviation_matrix_identities(seed, n):
    c = random_chain(seed, n, density=0.5)
    P = np.asarray(c.P)
    H = np.asarray(dsorl.deviation_matrix(c))
    p = np.asarray(dsorl.stationary_distribution(c))
    Pstar = np.outer(np.ones(n), p)
    np.testing.assert_allclose(H @ np.ones(n), 0, atol=1e-11)
    np.testing.assert_allclose(p @ H, 0, atol=1e-11)
    np.testing.assert_allclose((np.eye(n) - P) @ H, np.eye(n) - Pstar, atol=1e-11)
    np.testing.assert_allclose(p @ P, p, atol=1e-13)


def test_bias_is_the_limit_of_discounted_values():
    """h = lim_{gamma->1} (v_gamma - g/(1-gamma)), with error O(1 - gamma)."""
    c = random_chain(7, 6, density=0.5)
    g, h = float(dsorl.gain(c)), np.asarray(dsorl.bias(c))
    errors = []
    for k in (2, 3, 4, 5):
        gamma = 1 - 10.0 ** -k
        v = np.asarray(dsorl.discounted_value(c, gamma))
        errors.append(np.abs(v - g / (1 - gamma) - h).max())
    errors = np.array(errors)
    assert errors[-1] < 1e-4 * np.abs(h).max() + 1e-9
    # first-order convergence: each decade of (1 - gamma) divides the error by ~10
    np.testing.assert_allclose(errors[:-1] / errors[1:], 10, rtol=0.05)


def test_periodic_chain_uses_the_cesaro_limit():
    c = dsorl.Chain(np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([1.0, 0.0]))
    np.testing.assert_allclose(dsorl.stationary_distribution(c), [0.5, 0.5], atol=1e-15)
    np.testing.assert_allclose(dsorl.gain(c), 0.5, atol=1e-15)
    # bias: Cesàro-limit of sum_t (P^t r - g): h = (+1/4, -1/4)
    np.testing.assert_allclose(dsorl.bias(c), [0.25, -0.25], atol=1e-15)
    with pytest.raises(ValueError, match="did not mix"):
        dsorl.mixing_time(c, 1e-3, max_steps=50)


def multichain():
    P = np.array([[1.0, 0, 0], [0, 1.0, 0], [0.5, 0.5, 0]])
    return dsorl.Chain(P, np.array([1.0, 2.0, 0.0]))


@pytest.mark.parametrize("fn", [dsorl.gain, dsorl.bias, dsorl.stationary_distribution,
                                dsorl.deviation_matrix])
def test_multichain_raises_a_clear_error(fn):
    with pytest.raises(ValueError, match="unichain.*2 closed recurrent classes"):
        fn(multichain())


@given(st.integers(0, 10_000), st.sampled_from([2, 4, 7]), st.floats(0.1, 0.5))
def test_is_unichain_traced_matches_graph_search(seed, n, density):
    rng = np.random.default_rng(seed)
    P = rng.random((n, n)) * (rng.random((n, n)) < density)
    P[np.arange(n), rng.integers(0, n, n)] += 0.1  # every row nonzero
    c = dsorl.Chain(P / P.sum(1, keepdims=True), np.zeros(n))
    host = bool(dsorl.is_unichain(c))
    assert host == (len(dsorl.closed_classes(c.P)) == 1)
    assert bool(jax.jit(dsorl.is_unichain)(c)) == host


def test_is_unichain_examples():
    assert not bool(dsorl.is_unichain(multichain()))
    assert not bool(jax.jit(dsorl.is_unichain)(multichain()))
    assert bool(dsorl.is_unichain(random_chain(0, 4, density=0.3)))
    transient_to_one = dsorl.Chain(np.array([[0.5, 0.5], [0.0, 1.0]]), np.zeros(2))
    assert bool(jax.jit(dsorl.is_unichain)(transient_to_one))


def test_mixing_time_matches_matrix_powers():
    c = random_chain(3, 5, density=0.5)
    P = np.asarray(c.P)
    p = np_stationary(P)
    eps = 1e-6

    def reference(rows):
        Pt = np.eye(5)
        for t in range(10_000):
            if np.abs(Pt[rows] - p).max() <= eps:
                return t
            Pt = Pt @ P

    assert int(dsorl.mixing_time(c, eps)) == reference(slice(None))
    assert int(dsorl.mixing_time(c, eps, state=2)) == reference(2)
    assert int(jax.jit(lambda c: dsorl.mixing_time(c, eps, state=2))(c)) == reference(2)
    # traced input that does not mix reports max_steps + 1 instead of raising
    slow = jax.jit(lambda c: dsorl.mixing_time(c, 1e-14, max_steps=3))(c)
    assert int(slow) == 4


def test_mixing_time_exact_for_one_step_chain():
    """Rows all equal to p*: P^1 = P* exactly, so t_mix = 1 (and 0 only if P^0 = I = P*)."""
    p = np.array([0.2, 0.3, 0.5])
    c = dsorl.Chain(np.tile(p, (3, 1)), np.zeros(3))
    assert int(dsorl.mixing_time(c, 1e-12)) == 1


# --- gradients --------------------------------------------------------------------------


def logits_chain(logits, r):
    return dsorl.Chain(jax.nn.softmax(logits, axis=-1), r)


_READOUTS = {
    "value": lambda L, r, w: w @ dsorl.discounted_value(logits_chain(L, r), 0.8),
    "gain": lambda L, r, w: dsorl.gain(logits_chain(L, r)),
    "bias": lambda L, r, w: w @ dsorl.bias(logits_chain(L, r)),
    "stationary": lambda L, r, w: w @ dsorl.stationary_distribution(logits_chain(L, r)),
    "deviation": lambda L, r, w: w @ dsorl.deviation_matrix(logits_chain(L, r)) @ w,
}
_COMPILED = {name: (jax.jit(f), jax.jit(jax.grad(f)), jax.jit(jax.jacfwd(f)))
             for name, f in _READOUTS.items()}


@settings(max_examples=8)
@given(st.integers(0, 10_000))
def test_gradients_match_central_differences(seed):
    rng = np.random.default_rng(seed)
    n = 4
    logits, r = rng.normal(size=(n, n)), rng.normal(size=n)
    w = rng.normal(size=n)  # a random read-out of the vector quantities
    for name, (f, grad, jacfwd) in _COMPILED.items():
        reverse = grad(logits, r, w)
        np.testing.assert_allclose(reverse, central_difference(lambda L: f(L, r, w), logits),
                                   rtol=1e-6, atol=1e-8, err_msg=name)
        np.testing.assert_allclose(jacfwd(logits, r, w), reverse, rtol=1e-10, atol=1e-12,
                                   err_msg=name)


def test_gradient_with_respect_to_gamma():
    c = random_chain(1, 5)
    f = lambda g: dsorl.discounted_value(c, g)[0]
    np.testing.assert_allclose(jax.grad(f)(0.9), central_difference(f, 0.9), rtol=1e-7)


# --- jit and vmap -----------------------------------------------------------------------


def test_variants_over_gamma_and_chains():
    chains = [random_chain(s, 4) for s in range(3)]
    batch = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *chains)
    gammas = jnp.linspace(0.0, 0.99, 5)
    check_variants(dsorl.discounted_value, (chains[0], 0.5), (chains[0], gammas), (None, 0))
    check_variants(dsorl.discounted_value, (chains[0], 0.5), (batch, 0.7), (0, None))
    for fn in (dsorl.gain, dsorl.bias, dsorl.stationary_distribution, dsorl.deviation_matrix,
               dsorl.is_unichain):
        check_variants(fn, (chains[0],), (batch,), (0,))
    rho = jnp.ones(4) / 4
    check_variants(dsorl.occupancy, (chains[0], rho, 0.5), (chains[0], rho, gammas),
                   (None, None, 0))


def test_vmap_of_gradient_over_gamma():
    c = random_chain(2, 4)
    gammas = jnp.linspace(0.1, 0.95, 8)
    grads = jax.vmap(jax.grad(lambda g: dsorl.discounted_value(c, g).sum()))(gammas)
    loop = [jax.grad(lambda g: dsorl.discounted_value(c, g).sum())(g) for g in gammas]
    np.testing.assert_allclose(grads, loop, rtol=1e-12)


def test_float32_precision_is_reasonable():
    c64 = random_chain(4, 10)
    c32 = dsorl.Chain(np.asarray(c64.P, np.float32), np.asarray(c64.r, np.float32))
    assert c32.P.dtype == jnp.float32
    for fn in (dsorl.gain, dsorl.bias, lambda c: dsorl.discounted_value(c, 0.9)):
        a, b = np.asarray(fn(c32)), np.asarray(fn(c64))
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize("P, r, message", [
    (np.ones((2, 3)) / 3, np.zeros(2), "shape"),
    (np.array([[1.5, -0.5], [0.5, 0.5]]), np.zeros(2), r"P\[0, 1\] = -0.5 is negative"),
    (np.array([[0.5, 0.4], [0.5, 0.5]]), np.zeros(2), r"P\[0, :\] sums to"),
    (np.array([[np.nan, 1.0], [0.5, 0.5]]), np.zeros(2), r"P\[0, 0\] = nan is not finite"),
    (np.eye(2), np.array([0.0, np.inf]), r"r\[1\] = inf is not finite"),
    (np.eye(2), np.zeros(3), "r must have shape"),
])
def test_bad_chains_raise(P, r, message):
    with pytest.raises(ValueError, match=message):
        dsorl.Chain(P, r)


def test_chain_built_from_tracers_is_not_validated():
    out = jax.jit(lambda P, r: dsorl.gain(dsorl.Chain(P, r)))(np.eye(2) * 0.5 + 0.25, np.ones(2))
    np.testing.assert_allclose(out, 1.0)
