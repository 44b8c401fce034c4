"""Bias gradient: autodiff vs finite differences of a NumPy bias, and Thm 3.1's decomposition."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dsorl import envs, policies
from dsorl.bias_gradient import (bias_gradient, bias_gradient_decomposition, bias_offset_values,
                                 gain_gradient)
from dsorl.mdp import MDP
from helpers import central_difference, random_mdp, random_policy

S, A = 4, 3
POLICY = policies.tabular_softmax(S, A)


def numpy_chain(mdp, theta):
    pi = np.exp(theta - theta.max(1, keepdims=True))
    pi /= pi.sum(1, keepdims=True)
    P = np.einsum("sa,sat->st", pi, np.asarray(mdp.P))
    return pi, P, np.sum(pi * np.asarray(mdp.R), 1)


def numpy_gain_bias(P, r):
    """Dense references: p* from the eigenvector of P^T, H = (I - P + P*)^-1 (I - P*)."""
    vals, vecs = np.linalg.eig(P.T)
    p = np.real(vecs[:, np.argmin(np.abs(vals - 1))])
    p /= p.sum()
    n = len(r)
    Pstar = np.outer(np.ones(n), p)
    H = np.linalg.solve(np.eye(n) - P + Pstar, np.eye(n) - Pstar)
    return p, p @ r, H @ r, H


@jax.jit
def _decompose(mdp, theta, state):
    return bias_gradient_decomposition(mdp, POLICY, theta, state, eps=1e-12, max_terms=300)


@jax.jit
def _exact(mdp, theta, state):
    return bias_gradient(mdp, POLICY, theta, state), gain_gradient(mdp, POLICY, theta)


def test_gradients_match_finite_differences():
    mdp = random_mdp(1, S, A)
    theta = np.random.default_rng(2).normal(size=(S, A))
    grad_h, grad_g = _exact(mdp, jnp.asarray(theta), 1)
    bias_of = lambda th: numpy_gain_bias(*numpy_chain(mdp, th.reshape(S, A))[1:])[2][1]
    gain_of = lambda th: numpy_gain_bias(*numpy_chain(mdp, th.reshape(S, A))[1:])[1]
    np.testing.assert_allclose(grad_h, central_difference(bias_of, theta.ravel()), atol=1e-8)
    np.testing.assert_allclose(grad_g, central_difference(gain_of, theta.ravel()), atol=1e-8)


def test_bias_offset_values_match_numpy():
    mdp = random_mdp(5, S, A)
    theta = np.random.default_rng(6).normal(size=(S, A))
    pi, P, r = numpy_chain(mdp, theta)
    p, _, h, H = numpy_gain_bias(P, r)
    w, q_w = jax.jit(bias_offset_values)(mdp, jnp.asarray(pi))
    np.testing.assert_allclose(w, -H @ h, atol=1e-11)
    np.testing.assert_allclose(w, -h + P @ w, atol=1e-11)  # w = -h + P_pi w
    np.testing.assert_allclose(q_w, np.asarray(mdp.P) @ w - h[:, None], atol=1e-11)


def test_decomposition_terms_match_numpy_and_sum_within_bound():
    mdp = random_mdp(7, S, A, density=0.6)
    theta = np.random.default_rng(8).normal(size=(S, A))
    pi, P, r = numpy_chain(mdp, theta)
    p, g, h, _ = numpy_gain_bias(P, r)
    # closed-form softmax scores, flattened per state block
    psi = np.zeros((S, A, S * A))
    for s in range(S):
        psi[s, :, s * A:(s + 1) * A] = np.eye(A) - pi[s]
    q = np.asarray(mdp.R) - g + np.asarray(mdp.P) @ h
    u = np.einsum("sa,sa,sad->sd", pi, q, psi)
    grad_g = p @ u
    dec = _decompose(mdp, jnp.asarray(theta), 0)
    t_mix = int(dec.mixing_time)
    rows = [np.linalg.matrix_power(P, t)[0] for t in range(t_mix + 1)]
    assert np.abs(rows[-1] - p).max() <= 1e-12 < np.abs(rows[-2] - p).max()
    expected = np.array([row @ u - grad_g for row in rows[:-1]])
    np.testing.assert_allclose(dec.pre_mixing_terms[:t_mix], expected, atol=1e-12)
    assert not np.any(dec.pre_mixing_terms[t_mix:])
    # post-mixing: p* . grad h with grad h(s) by finite differences of the NumPy bias
    jac_h = np.stack([central_difference(
        lambda th, s=s: numpy_gain_bias(*numpy_chain(mdp, th.reshape(S, A))[1:])[2][s],
        theta.ravel()) for s in range(S)])
    np.testing.assert_allclose(dec.post_mixing, p @ jac_h, atol=1e-8)
    exact = _exact(mdp, jnp.asarray(theta), 0)[0]
    assert np.linalg.norm(dec.total - exact) <= dec.error_bound + 1e-13
    assert dec.error_bound <= 1e-12 * np.linalg.norm(jac_h, axis=1).sum() * (1 + 1e-6)


def test_decomposition_exact_when_mixing_is_exact():
    # Next-state law independent of (s, a): P_pi = 1 mu^T, so P^1 = P* exactly.
    rng = np.random.default_rng(9)
    mu = rng.random(S) + 0.1
    P = np.broadcast_to(mu / mu.sum(), (S, A, S)).copy()
    mdp = MDP(P, rng.normal(size=(S, A)), np.full(S, 1 / S))
    theta = jnp.asarray(rng.normal(size=(S, A)))
    dec = _decompose(mdp, theta, 2)
    assert int(dec.mixing_time) == 1 and float(dec.error_bound) < 1e-14
    np.testing.assert_allclose(dec.total, _exact(mdp, theta, 2)[0], atol=1e-10)
    # Env A2 with the paper's sigmoid: absorbed (and mixed) exactly at t = 3
    mdp = envs.nbw_env("A2")
    policy = policies.sigmoid(5)
    fn = jax.jit(lambda w: (bias_gradient_decomposition(mdp, policy, w, 0),
                            bias_gradient(mdp, policy, w, 0)))
    for w in ([0.3, -0.7], [-2.0, 4.0], [6.0, -9.0]):
        dec, exact = fn(jnp.asarray(w))
        assert int(dec.mixing_time) == 3 and float(dec.mixing_distance) == 0.0
        np.testing.assert_allclose(dec.total, exact, atol=1e-10)


@given(seed=st.integers(0, 10_000))
def test_decomposition_bound_holds_on_random_mdps(seed):
    mdp = random_mdp(seed, S, A, density=0.5)
    theta = jnp.asarray(np.log(random_policy(seed + 1, S, A)))
    state = seed % S
    dec = _decompose(mdp, theta, state)
    exact = _exact(mdp, theta, state)[0]
    assert float(dec.mixing_distance) <= 1e-12
    assert np.linalg.norm(dec.total - exact) <= float(dec.error_bound) + 1e-12


def test_variants_jit_and_vmap():
    mdp = random_mdp(11, S, A)
    thetas = jnp.asarray(np.random.default_rng(12).normal(size=(2, S, A)))
    fn = lambda th: (bias_gradient(mdp, POLICY, th, 3),
                     bias_gradient_decomposition(mdp, POLICY, th, 3, max_terms=30).total)
    # eager vs jit on one input; jit(vmap) vs jit on each (un-jitted vmap only re-tests vmap
    # rules at many times the cost)
    eager, jitted, batched = fn(thetas[0]), jax.jit(fn), jax.jit(jax.vmap(fn))(thetas)
    np.testing.assert_allclose(jitted(thetas[0]), eager, rtol=1e-10, atol=1e-12)
    for i in range(len(thetas)):
        np.testing.assert_allclose(jax.tree_util.tree_map(lambda x: x[i], batched),
                                   jitted(thetas[i]), rtol=1e-10, atol=1e-12)


def test_periodic_chain_never_mixes():
    P = np.zeros((3, 2, 3))
    P[0, :, 1] = P[1, :, 2] = P[2, :, 0] = 1  # a 3-cycle under every policy
    mdp = MDP(P, np.arange(6.0).reshape(3, 2), np.array([1.0, 0, 0]))
    with pytest.raises(ValueError, match="did not mix"):
        bias_gradient_decomposition(mdp, policies.sigmoid(3), jnp.zeros(2), 0, max_terms=30)


def test_multichain_and_bad_state_raise():
    P = np.zeros((2, 2, 2))
    P[0, :, 0] = P[1, :, 1] = 1  # two absorbing states: multichain
    mdp = MDP(P, np.ones((2, 2)), np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="unichain"):
        bias_gradient_decomposition(mdp, policies.sigmoid(2), jnp.zeros(2), 0)
    with pytest.raises(ValueError, match="state index"):
        bias_gradient(envs.nbw_env("B1"), policies.sigmoid(2), jnp.zeros(2), 5)
