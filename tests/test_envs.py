"""Environments: garnets, the nBw benchmarks, Gymnasium toy-text imports."""
import jax
import numpy as np
import pytest

import dsorl
from dsorl import envs


def test_garnet_structure_and_determinism():
    mdp = envs.garnet(jax.random.key(0), 20, 4, 3)
    P = np.asarray(mdp.P)
    assert P.shape == (20, 4, 20)
    np.testing.assert_array_equal((P > 0).sum(-1), 3)  # exactly `branching` successors
    np.testing.assert_allclose(P.sum(-1), 1, rtol=1e-14)
    assert np.all((np.asarray(mdp.R) >= 0) & (np.asarray(mdp.R) < 1))
    again = envs.garnet(jax.random.key(0), 20, 4, 3)
    np.testing.assert_array_equal(again.P, mdp.P)
    other = envs.garnet(jax.random.key(1), 20, 4, 3)
    assert not np.array_equal(other.P, mdp.P)


def test_garnet_batches_with_vmap_and_jit():
    keys = jax.random.split(jax.random.key(2), 8)
    batch = jax.jit(jax.vmap(lambda k: envs.garnet(k, 10, 2, 4)))(keys)
    assert batch.P.shape == (8, 10, 2, 10)
    np.testing.assert_allclose(batch.P[3], envs.garnet(keys[3], 10, 2, 4).P, rtol=1e-15)
    dsorl.MDP(batch.P[5], batch.R[5], batch.rho[5])  # each member passes validation


def test_garnet_rejects_bad_sizes():
    with pytest.raises(ValueError, match="branching"):
        envs.garnet(jax.random.key(0), 5, 2, 6)


def test_nbw_envs_and_unknown_name():
    for name in envs.NBW_NAMES:
        mdp = envs.nbw_env(name)
        assert mdp.n_actions == 2 and float(mdp.rho[0]) == 1.0
    with pytest.raises(ValueError, match="unknown nBw environment 'C1'"):
        envs.nbw_env("C1")


gymnasium = pytest.importorskip("gymnasium")  # in the `test` extra: always present in CI


def test_frozenlake_deterministic_closed_form():
    """Shortest path to the goal of the 4x4 map takes 6 moves: v*(start) = gamma^5."""
    mdp = envs.from_gymnasium("FrozenLake-v1", is_slippery=False)
    assert mdp.n_states == 17  # 16 cells + the absorbing terminal state
    v = dsorl.optimal_value(mdp, 0.9)
    np.testing.assert_allclose(v[0], 0.9 ** 5, rtol=1e-12)


def test_cliffwalking_closed_form():
    """The safe optimum walks up, 11 steps right, down: 13 rewards of -1."""
    mdp = envs.from_gymnasium("CliffWalking-v1")
    gamma = 0.95
    v = dsorl.optimal_value(mdp, gamma)
    np.testing.assert_allclose(mdp.rho @ v, -sum(gamma ** t for t in range(13)), rtol=1e-12)


def _gym_discounted_return(env, policy_actions, gamma, seed, max_steps=500):
    state, _ = env.reset(seed=seed)
    total, discount = 0.0, 1.0
    for _ in range(max_steps):
        state, reward, terminated, truncated, _ = env.step(int(policy_actions[state]))
        total += discount * reward
        discount *= gamma
        if terminated:
            break
    return state, total


def test_taxi_values_equal_returns_simulated_in_gymnasium():
    """Taxi is deterministic after the first state: the simulated discounted return of the
    greedy policy equals the computed value of its first state, episode by episode."""
    mdp = envs.from_gymnasium("Taxi-v4")
    gamma = 0.9
    sol = dsorl.policy_iteration(mdp, gamma)
    env = gymnasium.make("Taxi-v4").unwrapped
    for seed in range(10):
        s0, _ = env.reset(seed=seed)
        _, ret = _gym_discounted_return(env, np.asarray(sol.actions), gamma, seed)
        np.testing.assert_allclose(ret, float(sol.value[s0]), rtol=1e-10)


def test_slippery_frozenlake_value_equals_monte_carlo_in_gymnasium():
    mdp = envs.from_gymnasium("FrozenLake-v1", is_slippery=True)
    gamma = 0.95
    sol = dsorl.policy_iteration(mdp, gamma)
    env = gymnasium.make("FrozenLake-v1", is_slippery=True).unwrapped
    returns = np.array([_gym_discounted_return(env, np.asarray(sol.actions), gamma, seed)[1]
                        for seed in range(1500)])
    se = returns.std(ddof=1) / np.sqrt(len(returns))
    # truncation after 500 steps changes the mean by at most gamma^500 ~ 7e-12
    assert abs(returns.mean() - float(sol.value[0])) < 4.5 * se
