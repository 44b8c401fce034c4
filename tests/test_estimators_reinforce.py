"""REINFORCE estimators: exact pieces against NumPy, sampled means against exact gradients
within standard-error tolerances."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dsorl
from dsorl.envs.chains import committal_chain
from dsorl.envs.dynpg import sutton_extended
from dsorl.estimators.reinforce import (absorbing_states, bandit_gradient, interactions,
                                        reinforce_gradient, returns_to_go)
from dsorl.policies import tabular_softmax
from dsorl.sampling import Trajectory, cumulative, draw, sample_episode
from helpers import check_variants

N_SE = 5  # tolerance in standard errors of the sample mean


def _assert_mean_matches(samples, exact):
    """Every coordinate of the sample mean within N_SE standard errors of `exact`."""
    samples = np.asarray(samples).reshape(samples.shape[0], -1)
    exact = np.asarray(exact).ravel()
    mean = samples.mean(0)
    se = samples.std(0, ddof=1) / np.sqrt(samples.shape[0])
    bad = np.abs(mean - exact) > N_SE * se + 1e-12
    assert not bad.any(), (mean[bad], exact[bad], se[bad])
    return se


def _score(pi_row, a):
    g = -np.asarray(pi_row, float).copy()
    g[a] += 1
    return g


def test_returns_to_go_against_loop():
    r = np.array([1.0, -2.0, 0.5, 3.0])
    G = np.zeros(4)
    acc = 0.0
    for t in reversed(range(4)):
        acc = r[t] + 0.9 * acc
        G[t] = acc
    np.testing.assert_allclose(returns_to_go(jnp.asarray(r), 0.9), G, rtol=1e-14)
    check_variants(lambda g: returns_to_go(jnp.asarray(r), g), (0.9,), (jnp.array([0.5, 0.9]),),
                   (0,))


def test_reinforce_gradient_on_a_fixed_episode():
    """Against the score function written out by hand, both weightings, with a cut."""
    S, A, gamma = 3, 2, 0.8
    theta = jnp.asarray(np.random.default_rng(0).normal(size=(S, A)))
    policy = tabular_softmax(S, A)
    pi = np.asarray(policy.probs(theta))
    ep = Trajectory(jnp.array([0, 2, 1, 1]), jnp.array([1, 0, 1]), jnp.array([1.0, 2.0, -1.0]))
    for discount_steps in (False, True):
        for length in (None, 2):
            T = 3 if length is None else length
            r = np.array([1.0, 2.0, -1.0])[:T]
            ref = np.zeros((S, A))
            for t in range(T):
                G = sum(gamma ** (k - t) * r[k] for k in range(t, T))
                w = gamma ** t if discount_steps else 1
                s, a = int(ep.states[t]), int(ep.actions[t])
                ref[s] += w * G * _score(pi[s], a)
            got = jax.jit(reinforce_gradient, static_argnums=0,
                          static_argnames="discount_steps")(
                policy.log_probs, theta, ep, gamma, length=length,
                discount_steps=discount_steps)
            np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)
    got = bandit_gradient(policy.log_probs, theta, ep, gamma, length=2)
    ref = np.zeros((S, A))
    ref[0] = (1.0 + gamma * 2.0) * _score(pi[0], 1)
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_interactions_and_absorbing_states():
    env = sutton_extended()
    np.testing.assert_array_equal(absorbing_states(env.mdp), env.terminal)
    terminal = jnp.asarray(env.terminal)
    ep = Trajectory(jnp.array([2, 4, 5, 6]), jnp.array([2, 0, 0]), jnp.zeros(3))
    assert int(interactions(ep, terminal)) == 3
    assert int(interactions(ep, terminal, 2)) == 2
    ep = Trajectory(jnp.array([2, 3, 3, 3]), jnp.array([1, 0, 0]), jnp.zeros(3))
    assert int(interactions(ep, terminal)) == 1


def test_sample_episode_frequencies():
    """First actions follow pi(.|s0), next states follow P: frequencies within 5 SE."""
    mdp = committal_chain(3, 0.9).mdp
    pi = np.array([[1.0, 0.0], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]])
    n = 6000
    eps = jax.jit(jax.vmap(lambda k: sample_episode(k, mdp, lambda t, s: jnp.asarray(pi)[s],
                                                    3)))(jax.random.split(jax.random.key(0), n))
    s0, a0, s1 = (np.asarray(x) for x in (eps.states[:, 0], eps.actions[:, 0], eps.states[:, 1]))
    assert not np.any(s0 == 0)  # rho is uniform on 1..3
    for s in (1, 2, 3):
        sel = a0[s0 == s]
        p = pi[s, 1]
        assert abs(sel.mean() - p) < N_SE * np.sqrt(p * (1 - p) / sel.size)
        np.testing.assert_array_equal(s1[(s0 == s) & (a0 == 1)], s - 1)
        np.testing.assert_array_equal(s1[(s0 == s) & (a0 == 0)], 0)


def _finite_horizon_expected_gradient(mdp, pi, gamma, T, discount_steps):
    """E[sum_{t<T} w_t grad log pi(a_t|s_t) G_t] by dynamic programming in NumPy:
    sum_t sum_s P(s_t = s) sum_a pi(a|s) score(s, a) Q_{T-t}(s, a) w_t, with Q_k the
    k-step discounted action values."""
    P, R, rho = (np.asarray(x) for x in (mdp.P, mdp.R, mdp.rho))
    S, A = R.shape
    V = [np.zeros(S)]
    Q = [None]
    for k in range(1, T + 1):
        Q.append(R + gamma * P @ V[k - 1])
        V.append((pi * Q[k]).sum(1))
    grad = np.zeros((S, A))
    d = rho.copy()
    for t in range(T):
        w = gamma ** t if discount_steps else 1.0
        for s in range(S):
            for a in range(A):
                grad[s] += w * d[s] * pi[s, a] * Q[T - t][s, a] * _score(pi[s], a)
        d = np.einsum("s,sa,sat->t", d, pi, P)
    return grad


@pytest.mark.parametrize("discount_steps", [True, False])
def test_reinforce_mean_matches_exact(discount_steps):
    """Episodes of the committal chain end within n = 4 steps, so with w_t = gamma^t the
    mean is the exact policy gradient (jax.grad of the discounted return); with w_t = 1
    it is the finite-horizon expectation computed by dynamic programming."""
    n, gamma = 4, 0.9
    mdp = committal_chain(n, gamma).mdp
    policy = tabular_softmax(n + 1, 2, mdp.action_mask)
    theta = jnp.asarray(np.random.default_rng(1).normal(size=(n + 1, 2)))
    pi = policy.probs(theta)
    m = 20000
    grads = jax.jit(jax.vmap(lambda k: reinforce_gradient(
        policy.log_probs, theta,
        sample_episode(k, mdp, lambda t, s: pi[s], n), gamma,
        discount_steps=discount_steps)))(jax.random.split(jax.random.key(7), m))
    exact = _finite_horizon_expected_gradient(mdp, np.asarray(pi), gamma, n, discount_steps)
    if discount_steps:
        full = jax.grad(lambda th: dsorl.discounted_return(mdp, policy.probs(th), gamma))(theta)
        np.testing.assert_allclose(exact, full, atol=1e-12)
    se = _assert_mean_matches(grads, exact)
    assert se.max() < 0.02  # sharp: a wrong weighting would be caught


@pytest.mark.parametrize("n", [1, 2, 3, 7, 17, 300, 301])
def test_draw_inverts_the_cumulative_distribution(n):
    """`draw` returns NumPy's searchsorted index of u * total in cumsum(probs), the same
    index as the plain inverse CDF (hence the same law), and never a zero-probability
    entry, including u next to 1 and rows with zero blocks."""
    rng = np.random.default_rng(n)
    p = rng.random(n) * (rng.random(n) < 0.6)
    p[min(n - 1, 2)] = 0.5
    p[: n // 3] = 0  # a leading run of zeros spans whole blocks when n is large
    if n > 2:
        p[-1] = 0  # trailing zeros
    u = np.concatenate([rng.random(4000), [0.0, 1 - 2 ** -53]])
    got = np.asarray(jax.jit(jax.vmap(lambda v: draw(jnp.asarray(p), v)))(jnp.asarray(u)))
    cdf = np.cumsum(p)
    ref = np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), n - 1)
    np.testing.assert_array_equal(got, ref)
    assert np.all(p[got] > 0)
    # a precomputed table row draws the same index
    table = cumulative(jnp.asarray(np.stack([p, p[::-1]])))
    rows = np.asarray(jax.jit(jax.vmap(lambda v: draw(table.row(0), v)))(jnp.asarray(u)))
    np.testing.assert_array_equal(rows, ref)
