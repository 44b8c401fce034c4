"""Sampled Kemeny's constant and its gradient (dsorl.estimators.mixing) and the nBw
Algorithm 2 regularised with them (`nbw.Config.mixing_gradient="sampled"`).

References: `jax.grad` of `dsorl.mixing.policy_mixing_measure` (exact, implicit) where the
episodes mix, and otherwise the exact finite-T expectations computed here in NumPy from the
state laws `P^t(s, .)` (matrix powers), a NumPy deviation matrix and closed-form sigmoid
scores. Sample means must lie within Z standard errors of the sample's own standard
deviation; each biased case is also checked to lie many standard errors from the unbiased
value, so the tests can tell the two apart.
"""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsorl import policies
from dsorl.algorithms import nbw
from dsorl.estimators.average_reward import common_uniforms
from dsorl.estimators.mixing import (kemeny_critics, kemeny_episodes, kemeny_gradient_samples,
                                     kemeny_value_samples)
from dsorl.jobs import mixing_study
from dsorl.mdp import MDP
from dsorl.mixing import policy_mixing_measure

N = 4000  # samples (bundles of one episode per state)
Z = 5.0   # tolerance in standard errors
W = np.array([0.4, -0.3])


def _mdp():
    """3 states, 2 actions, dense Dirichlet rows: |l_2| = 0.103 under the policy W, so
    P^14 = P* to 1e-13 while K still depends on the policy."""
    rng = np.random.default_rng(0)
    return MDP(rng.dirichlet(np.full(3, 3.0), (3, 2)), rng.random((3, 2)), np.ones(3) / 3)


MDP3 = _mdp()
POLICY = policies.sigmoid(3)


def numpy_chain(Pa, w):
    """Sigmoid policy `pi[S, 2]`, scores `psi[S, 2, 2]`, induced `P`, `p*` and `H`."""
    S = len(Pa)
    x = np.stack([np.arange(S), np.ones(S)], 1)
    p0 = 1 / (1 + np.exp(-(x @ w)))
    pi = np.stack([p0, 1 - p0], 1)
    psi = np.stack([(1 - p0)[:, None] * x, -p0[:, None] * x], 1)
    P = np.einsum("sa,sat->st", pi, Pa)
    vals, vecs = np.linalg.eig(P.T)
    p = np.real(vecs[:, np.argmin(np.abs(vals - 1))])
    p /= p.sum()
    Pstar = np.outer(np.ones(S), p)
    H = np.linalg.solve(np.eye(S) - P + Pstar, np.eye(S) - Pstar)
    return pi, psi, P, p, H


def numpy_gradient_expectation(Pa, w, T):
    """`sum_s E[g_hat_s]`: for reward e_s from start s, `sum_{t<T} rho_t.u - T rho_T.u +
    rho_T.post` with `u = E_a[q_b psi]`, `post = E_a[q_w psi]` (critic of e_s)."""
    pi, psi, P, p, H = numpy_chain(Pa, w)
    S = len(Pa)
    total = 0.0
    for s in range(S):
        R = np.zeros((S, 2))
        R[s] = 1.0
        h = H[:, s]
        q = R - p[s] + Pa @ h
        q_w = Pa @ (-H @ h) - h[:, None]
        u = np.einsum("sa,sa,sad->sd", pi, q, psi)
        post = np.einsum("sa,sa,sad->sd", pi, q_w, psi)
        rows = [np.linalg.matrix_power(P, t)[s] for t in range(T + 1)]
        total = total + sum(rows[t] @ u for t in range(T)) - T * rows[T] @ u + rows[T] @ post
    return total


def numpy_value_expectation(Pa, w, T, M):
    """`1 + sum_s E[h_hat_s]` = `1 + sum_{t<T} tr P^t - (T/M) sum_{T<=t<T+M} tr P^t`."""
    P = numpy_chain(Pa, w)[2]
    tr = [np.trace(np.linalg.matrix_power(P, t)) for t in range(T + M)]
    return 1 + sum(tr[:T]) - T / M * sum(tr[T:])


@partial(jax.jit, static_argnames="T")
def _gradients(key, w, *, T):
    return kemeny_gradient_samples(key, MDP3, POLICY, w, episode_length=T, n_episodes=N)


@partial(jax.jit, static_argnames=("T", "M"))
def _values(key, w, *, T, M):
    u = common_uniforms(key, T + M, 3 * N).reshape(3, N, T + M, 2)
    return kemeny_value_samples(kemeny_episodes(MDP3, POLICY.probs(w), u), episode_length=T)


def _mean_se(x):
    x = np.asarray(x)
    return x.mean(0), x.std(0, ddof=1) / np.sqrt(len(x))


@jax.jit
def _exact_kemeny(w):
    return jax.value_and_grad(lambda w: policy_mixing_measure(MDP3, POLICY.probs(w)))(w)


def test_gradient_is_unbiased_once_every_start_has_mixed():
    P = numpy_chain(np.asarray(MDP3.P), W)[2]
    T = 14
    assert np.abs(np.linalg.matrix_power(P, T) - np.linalg.matrix_power(P, 400)).max() < 1e-12
    mean, se = _mean_se(_gradients(jax.random.key(0), jnp.asarray(W), T=T))
    grad_K = np.asarray(_exact_kemeny(jnp.asarray(W))[1])
    assert np.all(np.abs(mean - grad_K) <= Z * se), (mean, grad_K, se)
    assert np.all(np.abs(grad_K) > 0.1)  # K depends on the policy here: a real test


def test_gradient_mean_is_the_finite_horizon_expectation_when_biased():
    Pa, T = np.asarray(MDP3.P), 1
    mean, se = _mean_se(_gradients(jax.random.key(1), jnp.asarray(W), T=T))
    expected = numpy_gradient_expectation(Pa, W, T)
    assert np.all(np.abs(mean - expected) <= Z * se), (mean, expected, se)
    grad_K = np.asarray(_exact_kemeny(jnp.asarray(W))[1])
    assert np.all(np.abs(expected - grad_K) > 10 * se)  # biased, and resolved at N
    # the NumPy reference is the exact gradient once mixed (checks the reference itself)
    np.testing.assert_allclose(numpy_gradient_expectation(Pa, W, 30), grad_K, atol=1e-10)
    # the critics are those of the indicator rewards: bias H[:, s], gain p*_s
    critics = jax.jit(lambda w: kemeny_critics(MDP3, POLICY, w))(jnp.asarray(W))
    _, _, _, p, H = numpy_chain(Pa, W)
    np.testing.assert_allclose(critics.bias, H.T, atol=1e-12)
    np.testing.assert_allclose(critics.gain, p, atol=1e-12)


def test_value_estimates_have_the_finite_horizon_mean_which_is_k_once_mixed():
    K = float(_exact_kemeny(jnp.asarray(W))[0])
    assert numpy_value_expectation(np.asarray(MDP3.P), W, 14, 14) == pytest.approx(K, abs=1e-11)
    mean, se = _mean_se(_values(jax.random.key(3), jnp.asarray(W), T=1, M=2))
    expected = numpy_value_expectation(np.asarray(MDP3.P), W, 1, 2)
    assert abs(mean - expected) <= Z * se, (mean, expected, se)
    assert abs(expected - K) > 10 * se


@pytest.mark.slow  # one more compilation
def test_value_estimates_unbiased_once_every_start_has_mixed():
    K = float(_exact_kemeny(jnp.asarray(W))[0])
    mean, se = _mean_se(_values(jax.random.key(2), jnp.asarray(W), T=14, M=14))
    assert abs(mean - K) <= Z * se, (mean, K, se)


def _same(a, b):
    return all(np.array_equal(x, y, equal_nan=True)
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


_CFG = nbw.Config(POLICY, n_steps=3, episode_length=4, n_episodes=8, line_search_episodes=4,
                  mixing_measure="kemeny")


@pytest.mark.slow  # two compilations of Algorithm 2 per line search, ~5-8 s each
@pytest.mark.parametrize("line_search", nbw.LINE_SEARCHES)
def test_sampled_regulariser_runs_under_jit_and_zero_weight_changes_nothing(line_search):
    hp, w0, key = nbw.HParams(), jnp.array([0.5, -0.5]), jax.random.key(4)
    cfg = _CFG._replace(line_search=line_search)
    nbw.validate_sampled(MDP3, hp, cfg._replace(mixing_gradient="sampled"))

    @partial(jax.jit, static_argnames="gradient")
    def run(weight, *, gradient):
        return nbw.SAMPLED.run(MDP3, w0, hp._replace(mixing_weight=weight), key,
                               config=cfg._replace(mixing_gradient=gradient))

    assert _same(run(0.0, gradient="exact"), run(0.0, gradient="sampled"))
    state, trace = run(1.0, gradient="sampled")
    assert np.all(np.isfinite(np.asarray(trace.objective)))
    assert not _same((state, trace), run(1.0, gradient="exact"))
    # longer episodes for the Kemeny estimators only (mixing_episode_length)
    longer = nbw.run_sampled(MDP3, w0, hp._replace(mixing_weight=1.0), key,
                             config=cfg._replace(mixing_gradient="sampled",
                                                 mixing_episode_length=7))
    assert np.all(np.isfinite(np.asarray(longer[1].objective)))
    assert not _same(longer, (state, trace))


def test_bad_mixing_gradient_options_are_refused():
    hp = nbw.HParams()
    with pytest.raises(ValueError, match="mixing_gradient = 'noisy'"):
        nbw.validate_sampled(MDP3, hp, _CFG._replace(mixing_gradient="noisy"))
    with pytest.raises(ValueError, match="mixing_measure = 'kemeny' only, not 'deviation_norm'"):
        nbw.validate_sampled(MDP3, hp, _CFG._replace(mixing_gradient="sampled",
                                                     mixing_measure="deviation_norm"))
    with pytest.raises(ValueError, match="not None"):
        nbw.validate_sampled(MDP3, hp, _CFG._replace(mixing_gradient="sampled",
                                                     mixing_measure=None))
    with pytest.raises(ValueError, match="mixing_gradient = 'sampled' needs the sampled"):
        nbw.validate(MDP3, hp, _CFG._replace(mixing_gradient="sampled"))
    with pytest.raises(ValueError, match="mixing_gradient = 'sampled' needs the sampled"):
        nbw.run(MDP3, jnp.zeros(2), hp._replace(mixing_weight=1.0),  # Algorithm 1
                config=_CFG._replace(mixing_gradient="sampled"))
    with pytest.raises(ValueError, match="mixing_episode_length = 5 is used by"):
        nbw.validate_sampled(MDP3, hp, _CFG._replace(mixing_episode_length=5))
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=f"mixing_episode_length = {bad!r} must be"):
            nbw.validate_sampled(MDP3, hp, _CFG._replace(mixing_gradient="sampled",
                                                         mixing_episode_length=bad))
    with pytest.raises(ValueError, match="mixing_gradient = 'noisy'"):  # the study job's key
        mixing_study.mixing_tables({"envs": ["A1"], "mixing_gradient": "noisy",
                                    "correlation": None})
    with pytest.raises(ValueError, match=r"must be \[S = 3, N, L, 2\]"):
        kemeny_episodes(MDP3, POLICY.probs(jnp.zeros(2)), jnp.zeros((2, 4, 5, 2)))
    with pytest.raises(ValueError, match="n_episodes"):
        kemeny_gradient_samples(jax.random.key(0), MDP3, POLICY, jnp.zeros(2),
                                episode_length=3, n_episodes=0)
    cycle = MDP(np.array([[[0.0, 1.0]] * 2, [[1.0, 0.0]] * 2]), np.zeros((2, 2)),
                np.array([1.0, 0.0]))  # P^t has no limit: the last state is no draw from p*
    with pytest.raises(ValueError, match="periodic"):
        kemeny_gradient_samples(jax.random.key(0), cycle, policies.sigmoid(2), jnp.zeros(2),
                                episode_length=3, n_episodes=2)


@pytest.mark.slow  # two small mixing_study runs (compilations dominate)
def test_mixing_study_passes_the_sampled_gradient_through():
    study = {"envs": [{"name": "coupled_clusters", "n": 2, "coupling": 0.05}],
             "lambdas": [0.0, 0.3], "starts": [[0.0, 0.0]], "seeds": 1, "n_steps": 4,
             "episode_length": 3, "estimate_episodes": 50, "correlation": None}
    runs = {g: mixing_study.mixing_tables({**study, "mixing_gradient": g})["runs"]
            for g in nbw.MIXING_GRADIENTS}
    exact, sampled = (runs[g].set_index("lam") for g in nbw.MIXING_GRADIENTS)
    # lambda = 0: the same iterates; lambda = 0.3: another (sampled) regulariser gradient
    assert exact.loc[0.0, "final_bias"] == sampled.loc[0.0, "final_bias"]
    assert exact.loc[0.3, "final_bias"] != sampled.loc[0.3, "final_bias"]
    assert np.isfinite(sampled["final_measure"]).all()
