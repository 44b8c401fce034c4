"""Episodic MDPs: Sutton-extended (against the authors' reference values), committal chains,
gridworlds."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dsorl
from dsorl.envs.chains import ADVANCE, EXIT, committal_chain, committal_chain_optimum
from dsorl.envs.dynpg import (SUTTON_EXTENDED, episodic_mdp, longest_episode, sutton_extended,
                              sutton_extended_reference)
from dsorl.envs.gridworld import cell_states, gridworld
from dsorl.estimators.reinforce import absorbing_states
from dsorl.sampling import sample_episode


def _backward_induction(P, R, gamma, mask, sweeps):
    """Independent V* by `sweeps` Bellman sweeps in NumPy (exact for acyclic MDPs)."""
    v = np.zeros(P.shape[0])
    for _ in range(sweeps):
        v = np.where(mask, R + gamma * P @ v, -np.inf).max(axis=1)
    return v


def test_sutton_extended_structure():
    env = sutton_extended()
    P, R = np.asarray(env.mdp.P), np.asarray(env.mdp.R)
    mask = np.asarray(env.mdp.action_mask)
    assert P.shape == (7, 300, 7)
    assert mask.sum(axis=1).tolist() == [1, 300, 3, 1, 5, 5, 1]
    np.testing.assert_array_equal(env.terminal, [1, 0, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(absorbing_states(env.mdp), env.terminal)
    np.testing.assert_allclose(env.mdp.rho, [0, .25, .25, 0, .25, .25, 0])
    assert env.max_episode_length == 3
    assert np.all(P[1, :300, 0] == 1) and np.all(P[4, :5, 5] == 1) and np.all(P[5, :5, 6] == 1)
    np.testing.assert_array_equal(P[2, :3].argmax(-1), [1, 3, 4])
    np.testing.assert_array_equal(R[1, :300], -0.75)
    np.testing.assert_array_equal(env.reward_std[1, :300], 10)
    np.testing.assert_array_equal(env.reward_std[4, :5], 1.25)


@pytest.mark.parametrize("gamma", [0.99, 0.9])
def test_sutton_extended_reference_values(gamma):
    env = sutton_extended()
    ref = sutton_extended_reference(gamma)
    mdp = env.mdp
    v_star = _backward_induction(np.asarray(mdp.P), np.asarray(mdp.R), gamma,
                                 np.asarray(mdp.action_mask), 4)
    for s, v in ref["v_star"].items():
        assert v_star[s] == pytest.approx(v, abs=1e-12)
    assert float(mdp.rho @ v_star) == pytest.approx(ref["mean_v_star"], abs=1e-12)
    uniform = dsorl.policies.tabular_softmax(7, 300, mdp.action_mask).probs(jnp.zeros((7, 300)))
    v_unif = np.asarray(dsorl.discounted_value(dsorl.induced_chain(mdp, uniform), gamma))
    # the data file rounds the uniform policy's mean value to 6 decimals
    assert float(mdp.rho @ v_unif) == pytest.approx(ref["mean_v_uniform"], abs=1e-6)
    # uniform policy by hand: V(2) = gamma (V(1) + 0 + V(4)) / 3
    v4 = 1.25 + gamma * 1.25
    assert v_unif[2] == pytest.approx(gamma * (-0.75 + v4) / 3, abs=1e-12)
    with pytest.raises(ValueError, match="reference values"):
        sutton_extended_reference(0.5)


def test_sutton_extended_reward_noise():
    """Rewards from state 1 are Normal(-0.75, 10): mean within 5 standard errors, and the
    sample variance within 5 of its own standard errors (normal theory)."""
    env = sutton_extended()
    mdp = env.mdp
    pi = dsorl.policies.tabular_softmax(7, 300, mdp.action_mask).probs(jnp.zeros((7, 300)))
    n = 8000
    eps = jax.jit(jax.vmap(lambda k: sample_episode(k, mdp, lambda t, s: pi[s], 1,
                                                    reward_std=env.reward_std)))(
        jax.random.split(jax.random.key(3), n))
    s0 = np.asarray(eps.states[:, 0])
    r = np.asarray(eps.rewards[:, 0])[s0 == 1]
    assert abs(r.mean() + 0.75) < 5 * 10 / np.sqrt(r.size)
    assert abs(r.var() - 100) < 5 * 100 * np.sqrt(2 / r.size)
    # initial states uniform on {1, 2, 4, 5}
    counts = np.bincount(s0, minlength=7)
    assert counts[[0, 3, 6]].sum() == 0
    assert np.all(np.abs(counts[[1, 2, 4, 5]] / n - 0.25) < 5 * np.sqrt(0.25 * 0.75 / n))


def test_episodic_mdp_errors():
    succ = {1: [{0: 1.0}]}
    mean = {1: [1.0]}
    episodic_mdp([0, 1], [0], succ, mean)  # valid
    with pytest.raises(ValueError, match="not terminal but has no available action"):
        episodic_mdp([0, 0], [0], succ, mean)
    with pytest.raises(ValueError, match="terminal state 1 has 1 actions"):
        episodic_mdp([0, 1], [0, 1], succ, mean)
    with pytest.raises(ValueError, match="2 entries for 1 available"):
        episodic_mdp([0, 1], [0], {1: [{0: 1.0}, {0: 1.0}]}, mean)
    with pytest.raises(ValueError, match="no entry for non-terminal state 1"):
        episodic_mdp([0, 1], [0], {}, mean)
    with pytest.raises(ValueError, match="negative"):
        episodic_mdp([0, 1], [0], succ, mean, {1: [-1.0]})


def test_longest_episode():
    P = np.zeros((3, 1, 3))
    P[0, 0, 1] = P[1, 0, 0] = P[2, 0, 2] = 1
    assert longest_episode(P, np.ones((3, 1), bool), [False, False, True]) is None
    assert committal_chain(5, 0.9).max_episode_length == 5
    P = np.asarray(committal_chain(5, 0.9).mdp.P)
    assert longest_episode(P, np.ones((6, 2), bool), [True] + [False] * 5) == 5


@pytest.mark.parametrize("n,gamma", [(1, 0.5), (6, 0.9), (12, 0.99)])
def test_committal_chain_optimum(n, gamma):
    mdp = committal_chain(n, gamma).mdp
    P, R = np.asarray(mdp.P), np.asarray(mdp.R)
    v = _backward_induction(P, R, gamma, np.asarray(mdp.action_mask), n + 1)
    v_star, gap = committal_chain_optimum(n, gamma)
    np.testing.assert_allclose(v, v_star, atol=1e-12)
    Q = (R + gamma * P @ v)[1:]
    assert np.all(Q[:, ADVANCE] > Q[:, EXIT])
    assert np.min(Q[:, ADVANCE] - Q[:, EXIT]) == pytest.approx(gap, rel=1e-12)


def test_committal_chain_is_committal_under_uniform_policy():
    """The mechanism of the family: under the uniform initial policy exiting looks better
    than advancing in every state s >= 3, though advancing is optimal."""
    n, gamma = 10, 0.99
    mdp = committal_chain(n, gamma).mdp
    uniform = np.full((n + 1, 2), 0.5)
    uniform[0] = [1, 0]
    Q = np.asarray(dsorl.action_values(mdp, uniform, gamma))
    assert np.all(Q[3:, EXIT] > Q[3:, ADVANCE])


def test_committal_chain_traced_gamma():
    rewards = jax.vmap(lambda g: committal_chain(3, g).mdp.R)(jnp.array([0.5, 0.9]))
    np.testing.assert_allclose(rewards[1], committal_chain(3, 0.9).mdp.R)
    with pytest.raises(ValueError, match="positive integer"):
        committal_chain(0, 0.9)


def test_gridworld_deterministic_values_are_shortest_paths():
    layout = ["S..#",
              ".#.G",
              "...X"]
    env = gridworld(layout)
    mdp = env.mdp
    cells = cell_states(layout)
    gamma = 0.9
    mask = np.asarray(mdp.action_mask)
    v = _backward_induction(np.asarray(mdp.P), np.asarray(mdp.R), gamma, mask, 50)
    # moves to G: from (0,0) right, right, down, right = 4 steps; reward on entering G
    dist = {(0, 0): 4, (0, 1): 3, (0, 2): 2, (1, 2): 1, (1, 0): 5, (2, 0): 4, (2, 1): 3,
            (2, 2): 2}
    for cell, d in dist.items():
        assert v[cells[cell]] == pytest.approx(gamma ** (d - 1), abs=1e-12)
    assert abs(v[cells[(1, 3)]]) < 1e-12 and abs(v[cells[(2, 3)]]) < 1e-12
    np.testing.assert_array_equal(env.terminal, [c in ((1, 3), (2, 3)) for c in cells])
    assert np.asarray(mdp.rho)[cells[(0, 0)]] == 1
    assert env.max_episode_length is None


def test_gridworld_slip_and_step_reward():
    env = gridworld(["S.G"], slip=0.4, step_reward=-0.1, goal_reward=2.0)
    P, R = np.asarray(env.mdp.P), np.asarray(env.mdp.R)
    # from the middle cell, "right" reaches G w.p. 0.6 + 0.1; "up"/"down" stay put except
    # for the slip mass, "left" goes back
    np.testing.assert_allclose(P[1, 3], [0.1, 0.2, 0.7])
    np.testing.assert_allclose(P[1, 0], [0.1, 0.8, 0.1])
    assert R[1, 3] == pytest.approx(0.7 * 2 - 0.1)
    assert R[2].tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="unknown layout"):
        gridworld(["S.Z"])
    with pytest.raises(ValueError, match="terminal cell"):
        gridworld(["S.."])
    with pytest.raises(ValueError, match="slip"):
        gridworld(["S.G"], slip=1.5)


def test_facts_carried_from_the_authors_configuration():
    facts = SUTTON_EXTENDED
    assert facts["experiment"]["runs"] == 2000 and facts["experiment"]["epsilon"] == 0.01
    assert facts["actions_per_state"] == (0, 300, 3, 0, 5, 5, 0)


def test_episodic_container_lives_beside_the_mdp():
    """Algorithms take `dsorl.episodic.EpisodicMDP`; the environments build that class."""
    from dsorl import episodic
    from dsorl.envs import dynpg as envs_dynpg

    assert envs_dynpg.EpisodicMDP is episodic.EpisodicMDP
    assert isinstance(sutton_extended(), episodic.EpisodicMDP)
    assert isinstance(committal_chain(3, 0.9), episodic.EpisodicMDP)
    assert isinstance(gridworld(["S.G"]), episodic.EpisodicMDP)
    env = sutton_extended()
    mdp, std = episodic.mdp_and_noise(env)
    assert mdp is env.mdp and std.dtype == mdp.R.dtype
    np.testing.assert_array_equal(std, env.reward_std)
    mdp, std = episodic.mdp_and_noise(env.mdp)
    np.testing.assert_array_equal(std, 0)
    with pytest.raises(TypeError, match="dsorl.MDP"):
        episodic.problem_mdp(np.zeros(3))
