"""Planners: value/policy iteration, soft value iteration, nBw optimality by enumeration."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dsorl
from dsorl import envs
from helpers import random_mdp

S, A = 5, 3


def numpy_value_iteration(mdp, gamma, sweeps):
    P, R = np.asarray(mdp.P), np.asarray(mdp.R)
    v = np.zeros(len(R))
    for _ in range(sweeps):
        v = (R + gamma * P @ v).max(1)
    return v


def test_policy_iteration_is_optimal_and_value_iteration_is_within_tolerance():
    mdp = random_mdp(0, S, A)
    gamma = 0.95
    pi_sol = dsorl.policy_iteration(mdp, gamma)
    # optimality: no action improves on the policy (Bellman optimality equation)
    q = np.asarray(mdp.R) + gamma * np.asarray(mdp.P) @ np.asarray(pi_sol.value)
    np.testing.assert_allclose(q.max(1), pi_sol.value, rtol=1e-12)
    np.testing.assert_array_equal(pi_sol.actions, q.argmax(1))
    vi = dsorl.value_iteration(mdp, gamma, tol=1e-9)
    assert np.abs(np.asarray(vi.value) - np.asarray(pi_sol.value)).max() <= 1e-9 * max(1, np.abs(pi_sol.value).max())
    # value iteration's iterates are those of the textbook recursion
    np.testing.assert_allclose(vi.value, numpy_value_iteration(mdp, gamma, int(vi.iterations)), rtol=1e-13)
    np.testing.assert_array_equal(vi.actions, pi_sol.actions)


def test_policy_iteration_policy_is_the_best_deterministic_policy():
    mdp = random_mdp(1, 4, 2)
    gamma = 0.8
    P, R, rho = (np.asarray(x) for x in (mdp.P, mdp.R, mdp.rho))
    returns = {}
    for actions in itertools.product(range(2), repeat=4):
        v = np.linalg.solve(np.eye(4) - gamma * P[np.arange(4), actions], R[np.arange(4), actions])
        returns[actions] = rho @ v
    best = max(returns, key=returns.get)
    sol = dsorl.policy_iteration(mdp, gamma)
    assert tuple(np.asarray(sol.actions)) == best


def test_planners_vmap_over_gamma_and_batches_of_mdps():
    mdps = [random_mdp(s, S, A) for s in range(3)]
    batch = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *mdps)
    values = jax.jit(jax.vmap(lambda m: dsorl.policy_iteration(m, 0.9).value))(batch)
    for i, m in enumerate(mdps):
        np.testing.assert_allclose(values[i], dsorl.optimal_value(m, 0.9), rtol=1e-12)
    gammas = jnp.array([0.0, 0.5, 0.99])
    vi = jax.jit(jax.vmap(lambda g: dsorl.value_iteration(mdps[0], g, tol=1e-10).value))(gammas)
    pi = jax.jit(jax.vmap(lambda g: dsorl.policy_iteration(mdps[0], g).value))(gammas)
    np.testing.assert_allclose(vi, pi, rtol=1e-9, atol=1e-9)


def test_soft_policy_iteration_policy_and_q_are_consistent():
    mdp = random_mdp(2, S, A)
    gamma, tau = 0.9, 0.4
    sol = dsorl.soft_policy_iteration(mdp, gamma, tau)
    pi = np.asarray(sol.policy)
    mu = np.full((S, A), 1 / A)
    np.testing.assert_allclose(pi, mu * np.exp((np.asarray(sol.q) - np.asarray(sol.value)[:, None]) / tau),
                               rtol=1e-10)
    # the soft-optimal policy's regularised value is the soft-optimal value ...
    v_pi = dsorl.discounted_value(dsorl.entropy_regularised_chain(mdp, sol.policy, tau), gamma)
    np.testing.assert_allclose(v_pi, sol.value, rtol=1e-10)
    # ... and no other policy does better (a random one, a greedy one)
    for other in (np.random.default_rng(0).dirichlet(np.ones(A), size=S),
                  np.asarray(dsorl.policy_iteration(mdp, gamma).policy)):
        other = np.clip(other, 1e-12, None)
        other /= other.sum(1, keepdims=True)
        v_other = dsorl.discounted_value(dsorl.entropy_regularised_chain(mdp, other, tau), gamma)
        assert np.all(np.asarray(v_other) <= np.asarray(sol.value) + 1e-10)
    assert int(sol.iterations) < 20  # Newton: a handful of iterations


def test_soft_policy_iteration_converges_near_gamma_one():
    mdp = random_mdp(3, S, A)
    sol = dsorl.soft_policy_iteration(mdp, 0.9999, 0.1)
    q = np.asarray(mdp.R) + 0.9999 * np.asarray(mdp.P) @ np.asarray(sol.value)
    m = q.max(1, keepdims=True)
    backup = (m + 0.1 * np.log(np.exp((q - m) / 0.1).mean(1, keepdims=True)))[:, 0]
    np.testing.assert_allclose(backup, sol.value, rtol=1e-11)


@pytest.mark.parametrize("name", envs.NBW_NAMES)
def test_nearly_blackwell_optimal_policies_match_the_published_environments(name):
    sol = dsorl.nearly_blackwell_optimal(envs.nbw_env(name))
    ref = envs.nbw_reference(name)
    np.testing.assert_allclose(sol.gain, ref["optimal_gain"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sol.bias[0], ref["optimal_bias_s0"], rtol=1e-10, atol=1e-12)
    assert sol.nbw_optimal.tolist() == ref["nbw_optimal"]


def test_bias_optimal_policy_maximises_bias_in_every_state_by_brute_force():
    mdp = random_mdp(4, 3, 2)
    sol = dsorl.nearly_blackwell_optimal(mdp)
    P, R = np.asarray(mdp.P), np.asarray(mdp.R)
    results = []
    for actions in itertools.product(range(2), repeat=3):
        Pp, rp = P[np.arange(3), actions], R[np.arange(3), actions]
        w, V = np.linalg.eig(Pp.T)
        p = np.real(V[:, np.argmin(np.abs(w - 1))])
        p /= p.sum()
        Pstar = np.outer(np.ones(3), p)
        h = np.linalg.inv(np.eye(3) - Pp + Pstar) @ (np.eye(3) - Pstar) @ rp
        results.append((p @ rp, h, actions))
    g_star = max(g for g, _, _ in results)
    gain_opt = [(h, a) for g, h, a in results if g > g_star - 1e-9]
    h_star = np.max([h for h, _ in gain_opt], axis=0)
    np.testing.assert_allclose(sol.gain, g_star, rtol=1e-12)
    np.testing.assert_allclose(sol.bias, h_star, rtol=1e-9, atol=1e-12)
    expected = sorted(a for h, a in gain_opt if np.all(h > h_star - 1e-9))
    assert sorted(map(tuple, sol.nbw_optimal.tolist())) == expected


def test_enumeration_refuses_multichain_mdps_and_large_mdps():
    P = np.zeros((2, 2, 2))
    P[0, 0, 0] = P[0, 1, 1] = P[1, 0, 1] = P[1, 1, 0] = 1.0  # policy (0, 0) splits the chain
    mdp = dsorl.MDP(P, np.zeros((2, 2)), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="multichain"):
        dsorl.nearly_blackwell_optimal(mdp)
    with pytest.raises(ValueError, match="exceed max_policies"):
        dsorl.deterministic_policies(random_mdp(0, 12, 4), max_policies=1000)


@pytest.mark.parametrize("call", [
    lambda m: dsorl.value_iteration(m, 1.0),
    lambda m: dsorl.policy_iteration(m, -0.5),
    lambda m: dsorl.soft_policy_iteration(m, 0.9, 0.0),
])
def test_bad_planner_inputs_raise(call):
    with pytest.raises(ValueError):
        call(random_mdp(0, S, A))
