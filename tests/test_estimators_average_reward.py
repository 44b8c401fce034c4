"""Sampled gain/bias gradients and Fishers: sample means vs exact values within 5 standard errors.

The reference for each estimator is its exact expectation at the finite episode length T,
computed here in NumPy from the state laws `P^t(s0, .)` and closed-form sigmoid scores;
where episodes mix exactly (Env A2) it is also the exact gradient / Fisher itself.
"""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsorl import envs, policies
from dsorl.bias_gradient import bias_gradient, gain_gradient
from dsorl.estimators.average_reward import (episode_estimates, check_mixing, mean_estimates,
                                             oracle_critic, sample_estimates)
from dsorl.fisher import bias_fisher, gain_fisher
from dsorl.mdp import MDP
from dsorl.sampling import Trajectory

N = 4000  # episodes: standard errors ~1-3% of the estimated quantities here
Z = 5.0   # tolerance in standard errors


def numpy_reference(mdp, w, T, tau=2):
    """Exact expectations of every per-episode estimate at episode length T (from s0 = 0)."""
    S = mdp.n_states
    x = np.stack([np.arange(S), np.ones(S)], 1)
    p0 = 1 / (1 + np.exp(-(x @ w)))
    pi = np.stack([p0, 1 - p0], 1)
    psi = np.stack([(1 - p0)[:, None] * x, -p0[:, None] * x], 1)
    Pa, R = np.asarray(mdp.P), np.asarray(mdp.R)
    P = np.einsum("sa,sat->st", pi, Pa)
    r = (pi * R).sum(1)
    vals, vecs = np.linalg.eig(P.T)
    p = np.real(vecs[:, np.argmin(np.abs(vals - 1))])
    p /= p.sum()
    Pstar = np.outer(np.ones(S), p)
    H = np.linalg.solve(np.eye(S) - P + Pstar, np.eye(S) - Pstar)
    g, h = p @ r, H @ r
    q = R - g + Pa @ h
    w_off = -H @ h
    q_w = Pa @ w_off - h[:, None]
    u = np.einsum("sa,sa,sad->sd", pi, q, psi)           # E_a[q_b psi | s]
    F = np.einsum("sa,sai,saj->sij", pi, psi, psi)
    post_w = np.einsum("sa,sa,sad->sd", pi, q_w, psi)
    rows = [np.linalg.matrix_power(P, t)[0] for t in range(T + 1)]
    zT = rows[T] @ u
    return dict(
        gain_gradient=zT,
        gain_fisher=np.einsum("s,sij->ij", rows[T], F),
        bias_pre_mixing=sum(rows[t] @ u for t in range(T)) - T * zT,
        bias_post_mixing=rows[T] @ post_w,
        bias_fisher=sum(np.einsum("s,sij->ij", rows[t], F) for t in range(tau))
        + tau * np.einsum("s,sij->ij", rows[T], F),
    )


def zscores(samples, reference):
    out = {}
    for name, ref in reference.items():
        x = np.asarray(getattr(samples, name))
        se = x.std(0, ddof=1) / np.sqrt(len(x))
        out[name] = (x.mean(0) - ref, se)
    return out


def assert_within(samples, reference, z=Z):
    for name, (diff, se) in zscores(samples, reference).items():
        bad = np.abs(diff) > z * se + 1e-12
        assert not bad.any(), f"{name}: mean - exact = {diff}, {z} SE = {z * se}"


_POLICIES = {n: policies.sigmoid(n) for n in (2, 5)}


@partial(jax.jit, static_argnames=("T", "post_mixing", "baseline"))
def _sample(key, mdp, w, *, T, post_mixing, baseline):
    # One compiled sampler per (shape, T, options): MDPs of equal size share it.
    return sample_estimates(key, mdp, _POLICIES[mdp.n_states], w, 0, episode_length=T,
                            n_episodes=N, post_mixing=post_mixing, baseline=baseline)


def make_sampler(mdp, T, post_mixing="score", baseline=True):
    check_mixing(mdp)  # the jitted sampler sees a traced MDP and skips it
    return lambda key, w: _sample(key, mdp, w, T=T, post_mixing=post_mixing, baseline=baseline)


@pytest.mark.parametrize("name, T, w, form, baseline", [
    ("A2", 8, [0.3, -0.7], "score", True),
    ("B2", 8, [-0.4, 0.9], "score", True),
    ("A2", 8, [0.3, -0.7], "critic_gradient", False),
    ("B2", 8, [-0.4, 0.9], "critic_gradient", False),
])
def test_sample_means_match_finite_horizon_expectations(name, T, w, form, baseline):
    # T = 8 < B2's mixing time: the finite-T expectation is the reference, and the variance
    # of the T z_T term stays small enough for a sharp test.
    mdp = envs.nbw_env(name)
    samples = make_sampler(mdp, T, post_mixing=form, baseline=baseline)(
        jax.random.key(1), jnp.asarray(w))
    assert_within(samples, numpy_reference(mdp, np.asarray(w), T))


def test_exact_mixing_gives_unbiased_gradients_and_fishers():
    # Env A2: P^3(s0, .) = p* exactly, so every estimator is unbiased for its exact value.
    mdp = envs.nbw_env("A2")
    policy, w = policies.sigmoid(5), jnp.array([0.3, -0.7])
    samples = make_sampler(mdp, 8)(jax.random.key(2), w)
    exact = jax.jit(lambda w: dict(gain_gradient=gain_gradient(mdp, policy, w),
                                   gain_fisher=gain_fisher(mdp, policy, w),
                                   bias_fisher=bias_fisher(mdp, policy, w, 0),
                                   bias_gradient=bias_gradient(mdp, policy, w, 0)))(w)
    grad_h = np.asarray(exact.pop("bias_gradient"))
    assert_within(samples, exact)
    grads = np.asarray(samples.bias_gradient)
    diff = grads.mean(0) - grad_h
    assert np.all(np.abs(diff) <= Z * grads.std(0, ddof=1) / np.sqrt(N))


def test_the_check_is_sharp_enough_to_catch_a_wrong_estimator():
    # Dropping the post-mixing term, or counting T - 1 gain subtractions instead of T,
    # must be detected at N episodes: otherwise the tests above could not fail.
    mdp, T, w = envs.nbw_env("B2"), 8, np.array([-0.4, 0.9])
    samples = make_sampler(mdp, T)(jax.random.key(3), jnp.asarray(w))
    ref = numpy_reference(mdp, w, T)
    pre = np.asarray(samples.bias_pre_mixing)
    se = pre.std(0, ddof=1) / np.sqrt(N)
    off_by_one = pre + np.asarray(samples.gain_gradient)  # "- (T - 1) z_T"
    assert np.any(np.abs(off_by_one.mean(0) - ref["bias_pre_mixing"]) > Z * se)
    grads = np.asarray(samples.bias_gradient)
    exact = ref["bias_pre_mixing"] + ref["bias_post_mixing"]
    assert np.any(np.abs(pre.mean(0) - exact) > Z * grads.std(0, ddof=1) / np.sqrt(N))


def test_oracle_critic_matches_numpy_and_finite_differences():
    mdp = envs.nbw_env("B3")
    policy, w = policies.sigmoid(7), np.array([0.2, -0.5])
    critic = jax.jit(lambda w: oracle_critic(mdp, policy, w))(jnp.asarray(w))
    x = np.stack([np.arange(7), np.ones(7)], 1)

    def q_of(w):
        p0 = 1 / (1 + np.exp(-(x @ w)))
        pi = np.stack([p0, 1 - p0], 1)
        P = np.einsum("sa,sat->st", pi, np.asarray(mdp.P))
        vals, vecs = np.linalg.eig(P.T)
        p = np.real(vecs[:, np.argmin(np.abs(vals - 1))])
        p /= p.sum()
        Pstar = np.outer(np.ones(7), p)
        h = np.linalg.solve(np.eye(7) - P + Pstar, (np.eye(7) - Pstar) @ (pi * mdp.R).sum(1))
        return np.asarray(mdp.R) - p @ (pi * mdp.R).sum(1) + np.asarray(mdp.P) @ h

    np.testing.assert_allclose(critic.q_bias, q_of(w), atol=1e-10)
    eps = 1e-6
    fd = np.stack([(q_of(w + eps * e) - q_of(w - eps * e)) / (2 * eps) for e in np.eye(2)], -1)
    np.testing.assert_allclose(critic.grad_q_bias, fd, atol=1e-7)


def test_variants_jit_vmap_and_reproducibility():
    mdp = envs.nbw_env("B1")
    policy = policies.sigmoid(2)

    key, w = jax.random.key(5), jnp.array([0.5, -0.5])
    critic = jax.jit(lambda w: oracle_critic(mdp, policy, w))(w)  # eager: the sampling part

    def fn(key, w):
        return mean_estimates(sample_estimates(key, mdp, policy, w, 0, episode_length=6,
                                               n_episodes=32, critic=critic))

    eager, jitted = fn(key, w), jax.jit(fn)(key, w)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), eager,
                           jitted)
    keys = jax.random.split(key, 3)
    batched = jax.jit(jax.vmap(fn, (0, None)))(keys, w)
    for i in range(3):
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-12),
                               batched, jax.jit(fn)(keys[i], w))
    assert not np.allclose(batched.bias_pre_mixing[0], batched.bias_pre_mixing[1])


def test_episode_estimates_by_hand():
    # One episode s = (0, 1, 1), a = (1, 0, 1) of Env B1 with T = 2, tau = 2, no baseline.
    mdp = envs.nbw_env("B1")
    policy, w = policies.sigmoid(2), jnp.array([0.3, 0.1])
    critic = jax.jit(lambda w: oracle_critic(mdp, policy, w))(w)
    x = np.array([[0.0, 1.0], [1.0, 1.0]])
    p0 = 1 / (1 + np.exp(-(x @ np.asarray(w))))
    psi = np.stack([(1 - p0)[:, None] * x, -p0[:, None] * x], 1)
    ep = Trajectory(jnp.array([0, 1, 1, 0]), jnp.array([1, 0, 1]), jnp.zeros(3))
    est = jax.jit(lambda ep: episode_estimates(ep, jnp.asarray(psi), critic, baseline=False,
                                               post_mixing="critic_gradient"))(ep)
    q = np.asarray(critic.q_bias)
    z = [q[0, 1] * psi[0, 1], q[1, 0] * psi[1, 0], q[1, 1] * psi[1, 1]]
    np.testing.assert_allclose(est.gain_gradient, z[2])
    np.testing.assert_allclose(est.bias_pre_mixing, z[0] + z[1] - 2 * z[2])
    np.testing.assert_allclose(est.bias_post_mixing, np.asarray(critic.grad_q_bias)[1, 1] + z[2])
    outer = lambda v: np.outer(v, v)
    np.testing.assert_allclose(est.bias_fisher, outer(psi[0, 1]) + outer(psi[1, 0])
                               + 2 * outer(psi[1, 1]))
    np.testing.assert_allclose(est.gain_fisher, outer(psi[1, 1]))


def test_bad_input_raises():
    mdp, policy, w = envs.nbw_env("B1"), policies.sigmoid(2), jnp.zeros(2)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="n_episodes"):
        sample_estimates(key, mdp, policy, w, 0, episode_length=5, n_episodes=0)
    with pytest.raises(ValueError, match="absorption_time"):
        sample_estimates(key, mdp, policy, w, 0, episode_length=1, n_episodes=4)
    with pytest.raises(ValueError, match="post_mixing"):
        sample_estimates(key, mdp, policy, w, 0, episode_length=5, n_episodes=4,
                         post_mixing="nope")
    P = np.zeros((2, 2, 2))
    P[0, :, 0] = P[1, :, 1] = 1
    with pytest.raises(ValueError, match="multichain"):
        check_mixing(MDP(P, np.ones((2, 2)), np.array([1.0, 0.0])))
    P = np.zeros((2, 2, 2))
    P[0, :, 1] = P[1, :, 0] = 1
    with pytest.raises(ValueError, match="periodic"):
        sample_estimates(key, MDP(P, np.ones((2, 2)), np.array([1.0, 0.0])), policy, w, 0,
                         episode_length=5, n_episodes=4)
    check_mixing(MDP(P, np.ones((2, 2)), np.array([1.0, 0.0])), aperiodic=False)
