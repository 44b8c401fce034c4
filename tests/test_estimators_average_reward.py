"""Sampled gain/bias gradients, Fishers and objective values: sample means vs exact values
within 5 standard errors; common random numbers.

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
from dsorl.estimators.average_reward import (check_mixing, common_uniforms, coupled_episodes,
                                             episode_estimates, mean_estimates, oracle_critic,
                                             sample_estimates, value_samples)
from dsorl.fisher import bias_fisher, gain_fisher
from dsorl.mdp import MDP
from dsorl.sampling import Trajectory
from helpers import check_variants

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


# ----------------------------------------------------------------------------------------
# Objective values from coupled episodes (the sampled line search)



def numpy_values(mdp, w, T, M, s0=0):
    """Exact law facts for `value_samples`: (E g_hat, E h_hat, g, h(s0), e_T, spans)."""
    S = mdp.n_states
    x = np.stack([np.arange(S), np.ones(S)], 1)
    p0 = 1 / (1 + np.exp(-(x @ np.asarray(w))))
    pi = np.stack([p0, 1 - p0], 1)
    P = np.einsum("sa,sat->st", pi, np.asarray(mdp.P))
    r = (pi * np.asarray(mdp.R)).sum(1)
    rows = [np.linalg.matrix_power(P, t)[s0] for t in range(T + M)]
    mean_g = np.mean([rows[t] @ r for t in range(T, T + M)])
    mean_h = sum(rows[t] @ r for t in range(T)) - T * mean_g
    vals, vecs = np.linalg.eig(P.T)
    p = np.real(vecs[:, np.argmin(np.abs(vals - 1))])
    p /= p.sum()
    Pstar = np.outer(np.ones(S), p)
    h = np.linalg.solve(np.eye(S) - P + Pstar, (np.eye(S) - Pstar) @ r)
    e_T = np.abs(rows[T] - p).sum()
    return dict(mean_g=mean_g, mean_h=mean_h, g=p @ r, h=h[s0], e_T=e_T,
                span_r=np.ptp(r), span_h=np.ptp(h))


@partial(jax.jit, static_argnames=("T", "M", "n"))
def _values(key, mdp, w, *, T, M, n=N):
    pi = _POLICIES[mdp.n_states].probs(w)
    u = common_uniforms(key, T + M, n, w.dtype)
    return value_samples(coupled_episodes(mdp, pi, 0, u), episode_length=T)


@pytest.mark.parametrize("name, T, M, w", [
    ("B2", 8, 8, [-0.4, 0.9]),   # T below the mixing time: finite-T expectations
    ("A2", 3, 1, [0.3, -0.7]),   # P^3(s0, .) = p*: unbiased for g and h(s0) themselves
    ("B1", 4, 4, [0.5, -0.5]),
])
def test_value_samples_match_finite_horizon_expectations(name, T, M, w):
    mdp = envs.nbw_env(name)
    v = _values(jax.random.key(11), mdp, jnp.asarray(w), T=T, M=M)
    ref = numpy_values(mdp, w, T, M)
    for est, exact in ((v.gain, ref["mean_g"]), (v.bias, ref["mean_h"])):
        est = np.asarray(est)
        se = est.std(ddof=1) / np.sqrt(len(est))
        assert abs(est.mean() - exact) <= Z * se + 1e-12, (est.mean(), exact, se)
    if name == "A2":
        np.testing.assert_allclose([ref["mean_g"], ref["mean_h"]], [ref["g"], ref["h"]],
                                   atol=1e-12)


@pytest.mark.parametrize("name, T", [("B2", 5), ("B2", 8), ("B3", 20), ("A3", 20)])
def test_value_truncation_bias_is_within_the_documented_bound(name, T):
    # |E h_hat - h(s0)| <= e_T (T span(r_pi) + span(h)) / 2, |E g_hat - g| <= e_T span(r_pi)/2
    mdp, w = envs.nbw_env(name), np.array([0.3, -0.5])
    ref = numpy_values(mdp, w, T, T)
    assert abs(ref["mean_g"] - ref["g"]) <= ref["e_T"] * ref["span_r"] / 2 + 1e-12
    bound = ref["e_T"] * (T * ref["span_r"] + ref["span_h"]) / 2
    assert abs(ref["mean_h"] - ref["h"]) <= bound + 1e-12
    assert ref["e_T"] > 1e-8  # the bound is not trivially 0 here: no exact mixing


def test_value_check_is_sharp_enough_to_catch_a_wrong_estimator():
    # Subtracting (T - 1) g_hat instead of T g_hat must be detected at N episodes.
    mdp, T, M, w = envs.nbw_env("B2"), 8, 8, np.array([-0.4, 0.9])
    v = _values(jax.random.key(12), mdp, jnp.asarray(w), T=T, M=M)
    wrong = np.asarray(v.bias + v.gain)
    se = wrong.std(ddof=1) / np.sqrt(N)
    assert abs(wrong.mean() - numpy_values(mdp, w, T, M)["mean_h"]) > Z * se


@partial(jax.jit, static_argnames=("T", "M"))
def _paired(key_a, key_b, mdp, w, w2, *, T, M):
    paired = _values(key_a, mdp, w2, T=T, M=M)   # same uniforms as `base`
    base = _values(key_a, mdp, w, T=T, M=M)
    independent = _values(key_b, mdp, w2, T=T, M=M)
    return base, paired, independent


@pytest.mark.parametrize("name, T", [("B2", 8), ("B1", 4)])
def test_common_random_numbers_pair_the_difference(name, T):
    # D_i = f_i(w2) - f_i(w) on shared uniforms: mean = exact finite-T difference (within
    # 5 SE), variance far below that of independent estimates. The coupled episodes differ
    # only if some uniform falls between the two cumulative laws, with probability
    # <= sum_t max_s |pi_w2(a0|s) - pi_w(a0|s)| (~0.1 per step here), so
    # Var D <= P(differ) E[D^2 | differ], while independent estimates give Var f(w) + Var f(w2).
    mdp, M = envs.nbw_env(name), T
    w, w2 = np.array([-0.4, 0.9]), np.array([-0.35, 0.95])
    base, paired, indep = _paired(jax.random.key(13), jax.random.key(14), mdp, jnp.asarray(w),
                                  jnp.asarray(w2), T=T, M=M)
    r1, r2 = numpy_values(mdp, w, T, M), numpy_values(mdp, w2, T, M)
    for field, key in (("gain", "mean_g"), ("bias", "mean_h")):
        d = np.asarray(getattr(paired, field) - getattr(base, field))
        se = d.std(ddof=1) / np.sqrt(N)
        assert abs(d.mean() - (r2[key] - r1[key])) <= Z * se + 1e-12
        var_paired = d.var(ddof=1)
        var_indep = np.var(np.asarray(getattr(indep, field) - getattr(base, field)), ddof=1)
        # sample variances of 4000 draws: relative SE about sqrt(2 / N) ~ 2%, so a factor 3
        # is beyond any sampling error; measured ratios are 0.05-0.09
        assert var_paired < var_indep / 3, (field, var_paired, var_indep)


def test_coupled_episodes_invert_the_cumulative_laws():
    # Env B1, pi(a0|s) = (0.3, 0.8): a_t = [u >= pi(a0|s_t)]; s1 --a0--> {s0, s1} by halves.
    mdp = envs.nbw_env("B1")
    pi = jnp.array([[0.3, 0.7], [0.8, 0.2]])
    u = jnp.array([[[0.1, 0.9], [0.5, 0.2], [0.9, 0.99], [0.95, 0.0]]])
    eps = jax.jit(coupled_episodes)(mdp, pi, 0, u)
    # s0 a0 -> s1 (P = 1); s1 a0 (u=.5<.8), next s0 (u=.2<.5); s0 a1 (u=.9) -> s1; s1 a1 -> s1
    np.testing.assert_array_equal(eps.states[0], [0, 1, 0, 1, 1])
    np.testing.assert_array_equal(eps.actions[0], [0, 0, 1, 1])
    np.testing.assert_allclose(eps.rewards[0], [1.0, 0.5, 3.0, 4.0])
    # zero-probability actions and states are never drawn, even at u = 0 and near 1
    masked = jnp.array([[0.0, 1.0], [1.0, 0.0]])
    edge = jnp.array([[[0.0, 0.0], [1 - 1e-16, 1 - 1e-16], [0.0, 0.0]]])
    eps = coupled_episodes(mdp, masked, 0, edge)
    # s0 a1 -> s1 (u = 0 skips P = 0 at s0); s1 a0 (u ~ 1 skips pi = 0) -> s1; s1 a0 -> s0
    np.testing.assert_array_equal(eps.actions[0], [1, 0, 0])
    np.testing.assert_array_equal(eps.states[0], [0, 1, 1, 0])


def test_value_samples_variants_and_bad_input():
    mdp = envs.nbw_env("B1")
    pi = lambda w: _POLICIES[2].probs(w)
    fn = lambda key, w: value_samples(coupled_episodes(mdp, pi(w), 0, common_uniforms(
        key, 6, 8, w.dtype)), episode_length=4)
    keys = jax.random.split(jax.random.key(5), 3)
    ws = jnp.array([[0.5, -0.5], [1.0, 0.0], [-2.0, 1.0]])
    check_variants(fn, (keys[0], ws[0]), (keys, ws), (0, 0))
    with pytest.raises(ValueError, match="gain window"):
        value_samples(coupled_episodes(mdp, pi(ws[0]), 0, common_uniforms(keys[0], 4, 8)),
                      episode_length=4)
    with pytest.raises(ValueError, match="n_episodes"):
        common_uniforms(keys[0], 4, 0)
