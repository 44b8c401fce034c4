"""Fisher matrices against dense NumPy references with closed-form scores."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsorl import envs, policies
from dsorl.fisher import (analytic_bias_fisher, barrier_preconditioner, bias_fisher,
                          discounted_fisher, gain_fisher, policy_fisher, score_table)
from dsorl.mdp import MDP
from helpers import check_variants, random_mdp

S, A = 4, 3


def softmax_scores(theta):
    """Closed form: d log pi(a|s) / d theta[s', b] = [s = s'] ([a = b] - pi(b|s))."""
    pi = np.exp(theta - theta.max(1, keepdims=True))
    pi /= pi.sum(1, keepdims=True)
    n_s, n_a = theta.shape
    psi = np.zeros((n_s, n_a, n_s * n_a))
    for s in range(n_s):
        for a in range(n_a):
            psi[s, a, s * n_a:(s + 1) * n_a] = np.eye(n_a)[a] - pi[s]
    return pi, psi


def sigmoid_scores(w, n_s):
    """Closed form: psi(s, a0) = (1 - pi0) x_s, psi(s, a1) = -pi0 x_s with x_s = (s, 1)."""
    x = np.stack([np.arange(n_s), np.ones(n_s)], 1)
    p0 = 1 / (1 + np.exp(-(x @ w)))
    pi = np.stack([p0, 1 - p0], 1)
    psi = np.stack([(1 - p0)[:, None] * x, -p0[:, None] * x], 1)
    return pi, psi


def chain_of(mdp, pi):
    P = np.einsum("sa,sat->st", pi, np.asarray(mdp.P))
    return P, np.sum(pi * np.asarray(mdp.R), 1)


def stationary(P):
    vals, vecs = np.linalg.eig(P.T)
    p = np.real(vecs[:, np.argmin(np.abs(vals - 1))])
    return p / p.sum()


def state_fishers(pi, psi):
    return np.einsum("sa,sai,saj->sij", pi, psi, psi)


@pytest.fixture(scope="module")
def case():
    mdp = random_mdp(3, S, A)
    theta = np.random.default_rng(4).normal(size=(S, A))
    return mdp, policies.tabular_softmax(S, A), theta


def test_scores_and_policy_fisher_match_closed_forms(case):
    mdp, policy, theta = case
    pi, psi = softmax_scores(theta)
    scores, fishers = jax.jit(lambda th: (score_table(policy, th), policy_fisher(policy, th)))(
        jnp.asarray(theta))
    np.testing.assert_allclose(scores, psi, atol=1e-13)
    np.testing.assert_allclose(fishers, state_fishers(pi, psi), atol=1e-13)
    w = np.array([0.4, -1.3])
    pi2, psi2 = sigmoid_scores(w, 5)
    np.testing.assert_allclose(jax.jit(policy_fisher, static_argnums=0)(policies.sigmoid(5), w),
                               state_fishers(pi2, psi2), atol=1e-13)


def test_gain_discounted_and_bias_fishers_match_numpy(case):
    mdp, policy, theta = case
    pi, psi = softmax_scores(theta)
    F = state_fishers(pi, psi)
    P, _ = chain_of(mdp, pi)
    p = stationary(P)
    th = jnp.asarray(theta)
    np.testing.assert_allclose(gain_fisher(mdp, policy, th), np.einsum("s,sij->ij", p, F),
                               atol=1e-12)
    gamma = 0.9
    d = (1 - gamma) * np.linalg.solve((np.eye(S) - gamma * P).T, np.asarray(mdp.rho))
    np.testing.assert_allclose(discounted_fisher(mdp, policy, th, gamma),
                               np.einsum("s,sij->ij", d, F), atol=1e-12)
    s0 = 2
    for tau in (0, 1, 2, 5):
        weights = sum(np.linalg.matrix_power(P, t)[s0] for t in range(tau)) + tau * p
        np.testing.assert_allclose(bias_fisher(mdp, policy, th, s0, absorption_time=tau),
                                   np.einsum("s,sij->ij", weights, F), atol=1e-12)
    weights = sum(np.abs(np.linalg.matrix_power(P, t)[s0] - p) for t in range(200))
    np.testing.assert_allclose(analytic_bias_fisher(mdp, policy, th, s0),
                               np.einsum("s,sij->ij", weights, F), atol=1e-11)


def test_sampling_enabler_equals_analytic_when_absorption_is_mixing():
    # Env A2: every path reaches the absorbing s4 at t = 3 exactly, so the minimum absorption
    # time equals the mixing time and eq. 19 with tau = 3 keeps every term of eq. 18.
    mdp = envs.nbw_env("A2")
    policy, w = policies.sigmoid(mdp.n_states), jnp.array([0.7, -0.2])
    three, two, analytic = jax.jit(lambda w: (
        bias_fisher(mdp, policy, w, 0, absorption_time=3), bias_fisher(mdp, policy, w, 0),
        analytic_bias_fisher(mdp, policy, w, 0)))(w)
    np.testing.assert_allclose(three, analytic, atol=1e-12)
    assert not np.allclose(two, analytic)


def test_fisher_variants_jit_and_vmap(case):
    mdp, policy, theta = case
    thetas = jnp.asarray(np.random.default_rng(5).normal(size=(3, S, A)))
    fn = lambda th, g: jnp.stack([gain_fisher(mdp, policy, th),
                                  discounted_fisher(mdp, policy, th, g),
                                  bias_fisher(mdp, policy, th, 1),
                                  analytic_bias_fisher(mdp, policy, th, 1)])
    check_variants(fn, (jnp.asarray(theta), 0.8), (thetas, jnp.array([0.1, 0.5, 0.9])), (0, 0))


def test_barrier_preconditioner_is_eq_26_and_psd():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(2, 3, 3))
    Fb, Fg, grad = X @ X.T, Y @ Y.T, rng.normal(size=3)
    beta, gap = 2.5, 0.4
    C = barrier_preconditioner(Fb, Fg, grad, beta, gap)
    np.testing.assert_allclose(C, Fb + beta / gap * Fg + beta / gap ** 2 * np.outer(grad, grad),
                               rtol=1e-14)
    assert np.linalg.eigvalsh(np.asarray(C)).min() > 0
    batched = jax.vmap(barrier_preconditioner, (None, None, None, 0, 0))(
        Fb, Fg, grad, jnp.array([1.0, 2.0]), jnp.array([0.5, 1.5]))
    np.testing.assert_allclose(batched[1], barrier_preconditioner(Fb, Fg, grad, 2.0, 1.5))


@pytest.mark.parametrize("beta, gap, match", [(0.0, 1.0, "beta"), (-1.0, 1.0, "beta"),
                                              (1.0, 0.0, "gap"), (1.0, -0.5, "gap")])
def test_barrier_preconditioner_rejects_bad_weights(beta, gap, match):
    with pytest.raises(ValueError, match=match):
        barrier_preconditioner(np.eye(2), np.eye(2), np.ones(2), beta, gap)


def test_analytic_bias_fisher_undefined_for_periodic_chain():
    P = np.zeros((2, 2, 2))
    P[0, :, 1] = P[1, :, 0] = 1  # period 2: P^t alternates and never mixes
    mdp = MDP(P, np.zeros((2, 2)), np.array([1.0, 0.0]))
    policy = policies.sigmoid(2)
    with pytest.raises(ValueError, match="periodic or slowly mixing"):
        analytic_bias_fisher(mdp, policy, jnp.zeros(2), 0, max_steps=20)
    bias_fisher(mdp, policy, jnp.zeros(2), 0)  # eq. 19 needs no mixing


def test_bad_state_and_absorption_time():
    mdp = envs.nbw_env("B1")
    policy = policies.sigmoid(2)
    with pytest.raises(ValueError, match="state index"):
        bias_fisher(mdp, policy, jnp.zeros(2), 2)
    with pytest.raises(ValueError, match="absorption_time"):
        bias_fisher(mdp, policy, jnp.zeros(2), 0, absorption_time=-1)


def test_score_clip_is_the_fisher_of_clamped_probabilities():
    # torch.distributions.Categorical(probs).log_prob differentiates log clamp(pi, eps,
    # 1 - eps): scores d log clamp(p_a) = [eps <= p_a <= 1 - eps] dp_a / p_a, zero where the
    # clamp binds. Sigmoid logits x_s . w = (-40, -28, -16, -4, 8, 20, 32, 44): states 0 and
    # 7 are clipped at eps = float64 eps (|logit| > 36), at eps = 1e-9 also states 1 and 6.
    mdp = random_mdp(7, 8, 2)
    policy, w = policies.sigmoid(8), np.array([12.0, -40.0])
    x = np.stack([np.arange(8), np.ones(8)], 1)
    p0, p1 = 1 / (1 + np.exp(-(x @ w))), 1 / (1 + np.exp(x @ w))  # no 1 - p0 cancellation
    pi = np.stack([p0, p1], 1)
    for eps, clipped in ((np.finfo(np.float64).eps, [0, 7]), (1e-9, [0, 1, 6, 7])):
        dp = np.stack([p0 * p1, -p0 * p1], 1)  # d p_a / d logit
        inside = (pi >= eps) & (pi <= 1 - eps)
        psi = np.where(inside, dp / pi, 0.0)[:, :, None] * x[:, None, :]
        F = state_fishers(pi, psi)
        np.testing.assert_array_equal(np.flatnonzero(~inside.all(1)), clipped)
        got = jax.jit(lambda w: policy_fisher(policy, w, score_clip=eps))(jnp.asarray(w))
        np.testing.assert_allclose(got, F, rtol=1e-10, atol=1e-300)
        assert np.all(np.asarray(got)[clipped] == 0)
        p = stationary(chain_of(mdp, pi)[0])
        np.testing.assert_allclose(gain_fisher(mdp, policy, jnp.asarray(w), score_clip=eps),
                                   np.einsum("s,sij->ij", p, F), rtol=1e-10, atol=1e-300)
    exact = policy_fisher(policy, jnp.asarray(w))  # default: exact scores, nonzero everywhere
    assert np.all(np.asarray(exact)[:, 1, 1] > 0)
    with pytest.raises(ValueError, match="score_clip"):
        score_table(policy, jnp.asarray(w), score_clip=0.5)
