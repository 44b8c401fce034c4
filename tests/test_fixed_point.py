"""Optimal and soft-optimal values: forward against enumeration and the Bellman
equations, derivatives (implicit function theorem) against finite differences."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dsorl
from helpers import central_difference, random_mdp

S, A = 4, 3


def enumerated_optimum(mdp, gamma):
    """max over all deterministic policies of v_pi, state by state (NumPy)."""
    P, R = np.asarray(mdp.P), np.asarray(mdp.R)
    best = np.full(S, -np.inf)
    for actions in itertools.product(range(A), repeat=S):
        Pp = P[np.arange(S), actions]
        rp = R[np.arange(S), actions]
        best = np.maximum(best, np.linalg.solve(np.eye(S) - gamma * Pp, rp))
    return best


def numpy_soft_value_iteration(mdp, gamma, tau, mu, sweeps=5000):
    P, R = np.asarray(mdp.P), np.asarray(mdp.R)
    v = np.zeros(S)
    for _ in range(sweeps):
        q = R + gamma * P @ v
        m = q.max(1, keepdims=True)
        v = (m + tau * np.log((mu * np.exp((q - m) / tau)).sum(1, keepdims=True)))[:, 0]
    return v


@pytest.mark.parametrize("seed, gamma", [(0, 0.5), (1, 0.9), (2, 0.99)])
def test_optimal_value_matches_enumeration(seed, gamma):
    mdp = random_mdp(seed, S, A)
    np.testing.assert_allclose(dsorl.optimal_value(mdp, gamma), enumerated_optimum(mdp, gamma),
                               rtol=1e-10, atol=1e-10)


def _with_R(mdp, R):
    return dsorl.MDP(mdp.P, R, mdp.rho)


def _with_logits(mdp, logits):
    return dsorl.MDP(jax.nn.softmax(logits, -1), mdp.R, mdp.rho)


_OPT = jax.jit(lambda m, g: dsorl.optimal_value(m, g))
_SOFT = jax.jit(lambda m, g, t: dsorl.soft_optimal_value(m, g, t))


def test_optimal_value_gradients_match_central_differences():
    mdp = random_mdp(3, S, A)
    w = np.arange(1.0, S + 1)
    logits = np.log(np.asarray(mdp.P))
    f_R = lambda R: w @ _OPT(_with_R(mdp, R), 0.9)
    f_P = lambda L: w @ _OPT(_with_logits(mdp, L), 0.9)
    f_g = lambda g: w @ _OPT(mdp, g)
    np.testing.assert_allclose(jax.grad(f_R)(mdp.R), central_difference(f_R, mdp.R), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(jax.grad(f_P)(logits), central_difference(f_P, logits), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(jax.grad(f_g)(0.9), central_difference(f_g, 0.9), rtol=1e-6)
    # forward mode gives the same derivative
    np.testing.assert_allclose(jax.jacfwd(f_R)(mdp.R), jax.grad(f_R)(mdp.R), rtol=1e-10)


def test_optimal_value_gradient_is_the_greedy_policys_occupancy():
    """d v*(rho) / d R[s, a] = m_{pi*}(s) 1[a = pi*(s)] (envelope theorem)."""
    mdp = random_mdp(4, S, A)
    sol = dsorl.policy_iteration(mdp, 0.9)
    m = dsorl.occupancy(dsorl.induced_chain(mdp, sol.policy), mdp.rho, 0.9)
    grad = jax.grad(lambda R: mdp.rho @ dsorl.optimal_value(_with_R(mdp, R), 0.9))(mdp.R)
    np.testing.assert_allclose(grad, m[:, None] * sol.policy, rtol=1e-10, atol=1e-12)


def test_soft_optimal_value_solves_the_soft_bellman_equation():
    mdp = random_mdp(5, S, A)
    mu = np.random.default_rng(5).dirichlet(np.ones(A), size=S)
    for gamma, tau in [(0.9, 0.5), (0.99, 0.05)]:
        v = dsorl.soft_optimal_value(mdp, gamma, tau, mu)
        np.testing.assert_allclose(v, numpy_soft_value_iteration(mdp, gamma, tau, mu), rtol=1e-9,
                                   atol=1e-9)


def test_soft_optimum_tends_to_the_optimum_as_tau_vanishes():
    mdp = random_mdp(6, S, A)
    v_star = enumerated_optimum(mdp, 0.9)
    gaps = [np.abs(np.asarray(dsorl.soft_optimal_value(mdp, 0.9, tau)) - v_star).max()
            for tau in (1e-1, 1e-2, 1e-3)]
    # with a uniform reference, 0 <= v* - V*_tau <= tau log A / (1 - gamma)
    for gap, tau in zip(gaps, (1e-1, 1e-2, 1e-3)):
        assert gap <= tau * np.log(A) / (1 - 0.9) + 1e-12
    assert gaps[2] < gaps[1] < gaps[0]


def test_soft_optimal_value_gradients_match_central_differences():
    mdp = random_mdp(7, S, A)
    w = np.arange(1.0, S + 1)
    logits = np.log(np.asarray(mdp.P))
    f_R = lambda R: w @ _SOFT(_with_R(mdp, R), 0.9, 0.3)
    f_P = lambda L: w @ _SOFT(_with_logits(mdp, L), 0.9, 0.3)
    f_g = lambda g: w @ _SOFT(mdp, g, 0.3)
    f_t = lambda t: w @ _SOFT(mdp, 0.9, t)
    for f, x in [(f_R, mdp.R), (f_P, logits), (f_g, 0.9), (f_t, 0.3)]:
        np.testing.assert_allclose(jax.grad(f)(x), central_difference(f, x), rtol=1e-6, atol=1e-7)
    # second derivatives exist (the soft operator is smooth): Hessian in tau vs differences
    d2 = jax.grad(jax.grad(f_t))(0.3)
    np.testing.assert_allclose(d2, central_difference(jax.grad(f_t), 0.3), rtol=1e-5)


def test_soft_value_gradient_wrt_reference_measure():
    mdp = random_mdp(8, S, A)
    mu_logits = np.random.default_rng(8).normal(size=(S, A))
    f = jax.jit(lambda L: jnp.sum(dsorl.soft_optimal_value(mdp, 0.9, 0.5, jax.nn.softmax(L, -1))))
    np.testing.assert_allclose(jax.grad(f)(mu_logits), central_difference(f, mu_logits),
                               rtol=1e-6, atol=1e-8)


def test_fixed_points_vmap_over_gamma_and_tau():
    mdp = random_mdp(9, S, A)
    gammas = jnp.array([0.3, 0.8, 0.95])
    batched = jax.vmap(lambda g: dsorl.optimal_value(mdp, g))(gammas)
    for i, g in enumerate(gammas):
        np.testing.assert_allclose(batched[i], enumerated_optimum(mdp, float(g)), rtol=1e-10)
    taus = jnp.array([0.1, 1.0])
    grad = jax.grad(lambda t: dsorl.soft_optimal_value(mdp, 0.9, t).sum())
    grads = jax.jit(jax.vmap(grad))(taus)
    single = jax.jit(grad)
    for i, t in enumerate(taus):
        np.testing.assert_allclose(grads[i], single(t), rtol=1e-10)


def test_masked_actions_are_excluded_from_the_optimum():
    mdp = random_mdp(10, S, A)
    R = np.asarray(mdp.R).copy()
    R[:, 2] = 100.0  # a tempting action that is masked everywhere
    mask = np.ones((S, A), bool)
    mask[:, 2] = False
    masked = dsorl.MDP(mdp.P, R, mdp.rho, mask)
    unmasked_two = dsorl.MDP(np.asarray(mdp.P)[:, :2], R[:, :2], mdp.rho)
    np.testing.assert_allclose(dsorl.optimal_value(masked, 0.9), dsorl.optimal_value(unmasked_two, 0.9),
                               rtol=1e-12)
    np.testing.assert_allclose(dsorl.soft_optimal_value(masked, 0.9, 0.2),
                               dsorl.soft_optimal_value(unmasked_two, 0.9, 0.2), rtol=1e-12)


@pytest.mark.parametrize("call, message", [
    (lambda m: dsorl.optimal_value(m, 1.0), "gamma"),
    (lambda m: dsorl.soft_optimal_value(m, 0.9, 0.0), "tau"),
    (lambda m: dsorl.soft_optimal_value(m, 0.9, -1.0), "tau"),
    (lambda m: dsorl.soft_optimal_value(m, 0.9, 0.1, np.ones((S, A))), "reference-measure row"),
])
def test_bad_inputs_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call(random_mdp(0, S, A))
