"""Sampled trajectories: empirical laws against exact ones, within standard errors."""
import jax
import jax.numpy as jnp
import numpy as np

import dsorl
from dsorl import sampling
from helpers import random_mdp, random_policy

N = 4000


def _binomial_z(counts, probs, n):
    """Largest |z|-score of observed frequencies against exact probabilities."""
    se = np.sqrt(np.maximum(probs * (1 - probs), 1e-300) / n)
    return np.max(np.abs(counts / n - probs) / se)


def test_state_action_laws_match_the_exact_marginals():
    mdp = random_mdp(0, 4, 3)
    pi = random_policy(1, 4, 3)
    T = 5
    traj = jax.jit(lambda k: sampling.rollouts(k, mdp, pi, T, N))(jax.random.key(0))
    assert traj.states.shape == (N, T + 1) and traj.actions.shape == (N, T)
    chain = dsorl.induced_chain(mdp, pi)
    law = np.asarray(mdp.rho)
    for t in range(T + 1):
        counts = np.bincount(np.asarray(traj.states[:, t]), minlength=4)
        # 16 cells x 6 times ~ 100 z-scores: 4.5 standard errors rarely trips by chance
        assert _binomial_z(counts, law, N) < 4.5
        if t < T:
            joint = law[:, None] * pi
            pairs = np.asarray(traj.states[:, t] * 3 + traj.actions[:, t])
            assert _binomial_z(np.bincount(pairs, minlength=12), joint.ravel(), N) < 4.5
        law = law @ np.asarray(chain.P)
    # rewards are the expected rewards of the visited pairs
    np.testing.assert_allclose(traj.rewards, np.asarray(mdp.R)[traj.states[:, :-1], traj.actions])


def test_reward_noise_has_the_requested_mean_and_spread():
    mdp = random_mdp(2, 2, 2)
    pi = np.array([[1.0, 0.0], [1.0, 0.0]])
    std = np.full((2, 2), 3.0)
    traj = sampling.rollouts(jax.random.key(1), mdp, pi, 1, N, initial_state=0, reward_std=std)
    noise = np.asarray(traj.rewards[:, 0]) - float(mdp.R[0, 0])
    assert abs(noise.mean()) < 4.5 * 3.0 / np.sqrt(N)
    assert abs(noise.std() - 3.0) < 4.5 * 3.0 / np.sqrt(2 * N)


def test_masked_actions_are_never_drawn():
    mdp = random_mdp(3, 3, 3)
    mask = np.array([[True, False, True]] * 3)
    masked = dsorl.MDP(mdp.P, mdp.R, mdp.rho, mask)
    pi = dsorl.policies.tabular_softmax(3, 3, mask)(jnp.zeros((3, 3)))
    traj = sampling.rollouts(jax.random.key(2), masked, pi, 10, 500)
    assert not np.any(np.asarray(traj.actions) == 1)


def test_chain_rollout_law_and_keys():
    chain = dsorl.induced_chain(random_mdp(4, 3, 2), random_policy(4, 3, 2))
    x0 = np.array([0.2, 0.5, 0.3])
    xs = jax.vmap(lambda k: sampling.chain_rollout(k, chain, 3, x0))(jax.random.split(jax.random.key(3), N))
    law = x0 @ np.linalg.matrix_power(np.asarray(chain.P), 3)
    assert _binomial_z(np.bincount(np.asarray(xs[:, 3]), minlength=3), law, N) < 4.5
    same = jax.vmap(lambda k: sampling.chain_rollout(k, chain, 3, x0))(jax.random.split(jax.random.key(3), N))
    np.testing.assert_array_equal(xs, same)


def test_chain_rollout_never_draws_zero_probability_states():
    # zero-probability states first, in the middle and last, and rows that sum to 1 only
    # within rounding: inversion of the cumulative law must never land on them
    P = np.array([[0.0, 0.3, 0.0, 0.7 - 1e-12, 0.0],
                  [0.0, 0.0, 1.0, 0.0, 0.0],
                  [0.1, 0.0, 0.0, 0.9, 0.0],
                  [0.0, 0.5, 0.5, 0.0, 0.0],
                  [0.2, 0.2, 0.2, 0.2, 0.2]])
    chain = dsorl.Chain(P, np.zeros(5))
    x0 = np.array([0.0, 0.5, 0.0, 0.5, 0.0])
    xs = np.asarray(jax.vmap(lambda k: sampling.chain_rollout(k, chain, 20, x0))(
        jax.random.split(jax.random.key(4), 2000)))
    assert np.all(P[xs[:, :-1], xs[:, 1:]] > 0) and np.all(x0[xs[:, 0]] > 0)
    assert not np.any(xs == 4)  # unreachable from the start states


def test_rollout_is_sample_episode_of_a_stationary_policy():
    """Same key, same uniforms: `rollout` is `sample_episode` with `pi[s]` (so two policies
    or two MDPs run with one key share their random numbers), noise and start included."""
    mdp = random_mdp(5, 4, 3)
    pi = random_policy(6, 4, 3)
    std = np.full((4, 3), 0.5)
    key = jax.random.key(7)
    for start in (None, 2):
        got = sampling.rollout(key, mdp, pi, 6, initial_state=start, reward_std=std)
        ref = sampling.sample_episode(key, mdp, lambda t, s: jnp.asarray(pi)[s], 6,
                                      initial_state=start, reward_std=std)
        for a, b in zip(got, ref):
            np.testing.assert_array_equal(a, b)
    assert int(got.states[0]) == 2


def test_chain_rollout_inverts_its_documented_uniforms():
    """`x_0 = draw(initial, uniform(k0))`, `x_{t+1} = draw(P[x_t], uniform(k_t))` with
    `k0, k = split(key)`, `k_1..k_T = split(k, T)`: the NumPy inverse CDF of the same
    uniforms gives the same states."""
    chain = dsorl.induced_chain(random_mdp(8, 5, 2), random_policy(8, 5, 2))
    x0 = np.array([0.1, 0.0, 0.4, 0.2, 0.3])
    key = jax.random.key(9)
    xs = np.asarray(sampling.chain_rollout(key, chain, 12, x0))
    k0, k = jax.random.split(key)
    us = [jax.random.uniform(k0, dtype=jnp.float64)] + [
        jax.random.uniform(kt, dtype=jnp.float64) for kt in jax.random.split(k, 12)]
    P = np.asarray(chain.P)
    ref = [int(np.searchsorted(np.cumsum(x0), float(us[0]) * np.sum(x0), side="right"))]
    for u in us[1:]:
        c = np.cumsum(P[ref[-1]])
        ref.append(int(np.searchsorted(c, float(u) * c[-1], side="right")))
    np.testing.assert_array_equal(xs, ref)
    assert xs.dtype == np.int32


def test_rollout_never_draws_zero_probability_states():
    mdp = random_mdp(10, 4, 2)
    P = np.array(mdp.P)
    P[:, :, 1] = 0  # state 1 unreachable, start law without it
    P /= P.sum(-1, keepdims=True)
    rho = np.array([0.5, 0.0, 0.25, 0.25])
    sparse = dsorl.MDP(P, mdp.R, rho)
    traj = sampling.rollouts(jax.random.key(5), sparse, random_policy(11, 4, 2), 15, 500)
    assert not np.any(np.asarray(traj.states) == 1)
