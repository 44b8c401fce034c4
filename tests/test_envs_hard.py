"""Hard MDPs for softmax PG (dsorl.envs.hard_mdps): the properties the papers state (optimal
policy a1 / advance everywhere, the optimal values, the buffer states' action values),
checked by planners and NumPy solves independent of the closed forms."""
import jax.numpy as jnp
import numpy as np
import pytest

import dsorl
from dsorl import envs, planning
from dsorl.envs.hard_mdps import (A0, A1, A2, li_chain, li_chain_layout, li_chain_optimum,
                                  reset_chain, reset_chain_optimum)
from dsorl.estimators.reinforce import absorbing_states


def _q_star(mdp, gamma):
    """Q* by NumPy value iteration to machine precision (independent of dsorl.planning)."""
    P, R = np.asarray(mdp.P), np.asarray(mdp.R)
    mask = np.asarray(mdp.action_mask)
    v = np.zeros(P.shape[0])
    for _ in range(20000):
        q = np.where(mask, R + gamma * P @ v, -np.inf)
        new = q.max(axis=1)
        if np.max(np.abs(new - v)) < 1e-15:
            break
        v = new
    return q, v


@pytest.mark.parametrize("H,gamma,m", [(3, 0.96, 1), (8, 0.97, 1), (16, 0.98, 3)])
def test_li_chain_a1_optimal_with_the_stated_values(H, gamma, m):
    env = li_chain(H, gamma, buffer_size=m)
    mdp = env.mdp
    lay = li_chain_layout(H, m)
    q, v = _q_star(mdp, gamma)
    # V*(s) = gamma^(2s), V*(sbar) = gamma^(2s+1) (the statement), by the planners too
    np.testing.assert_allclose(v, li_chain_optimum(H, gamma, m), atol=1e-12)
    sol = planning.policy_iteration(mdp, gamma)
    np.testing.assert_allclose(sol.value, v, atol=1e-10)
    for s, i in lay["primary"].items():
        assert v[i] == pytest.approx(gamma ** (2 * s), abs=1e-12)
        assert np.argmax(q[i]) == A1 and int(sol.actions[i]) == A1
    for s, i in lay["adjoint"].items():
        assert v[i] == pytest.approx(gamma ** (2 * s + 1), abs=1e-12)
        assert np.argmax(q[i]) == A1 and int(sol.actions[i]) == A1
    # buffer states: Q(a0) = -gamma^(2k), Q(a1) = gamma^(2k), a2 unavailable
    for k in (1, 2):
        for b in lay[f"buffer{k}"]:
            np.testing.assert_allclose(q[b, [A0, A1]], [-gamma ** (2 * k), gamma ** (2 * k)])
            assert q[b, A2] == -np.inf
    # the paper's setting: three actions, rho uniform over every state, terminal 0 absorbing
    assert mdp.R.shape == (lay["n_states"], 3) and lay["n_states"] == 2 * H - 1 + 2 * m
    np.testing.assert_allclose(mdp.rho, 1 / lay["n_states"])
    np.testing.assert_array_equal(env.terminal, absorbing_states(mdp))
    assert np.flatnonzero(env.terminal).tolist() == [0]


def test_li_chain_switch_from_a0_to_a2_at_the_threshold():
    """Our reward choice: Q(s, a2) - Q(s, a0) = p gamma (V((s-2)bar) - tau_{s-2}) for any
    policy; checked on the uniform policy's exact values."""
    H, gamma, c_p = 6, 0.97, 0.5
    env = li_chain(H, gamma, c_p=c_p)
    mdp, lay = env.mdp, li_chain_layout(H)
    pi = dsorl.policies.tabular_softmax(*mdp.R.shape, mdp.action_mask).probs(
        jnp.zeros(mdp.R.shape))
    P_pi = np.einsum("sa,sat->st", np.asarray(pi), np.asarray(mdp.P))
    r_pi = np.sum(np.asarray(pi) * np.asarray(mdp.R), axis=1)
    v = np.linalg.solve(np.eye(len(r_pi)) - gamma * P_pi, r_pi)
    q = np.asarray(mdp.R) + gamma * np.asarray(mdp.P) @ v
    p = c_p * (1 - gamma)
    for s, i in lay["primary"].items():
        tau = 0.5 * gamma ** (2 * (s - 2) / 3)
        assert q[i, A2] - q[i, A0] == pytest.approx(p * gamma * (v[lay["adjoint"][s - 2]] - tau),
                                                    abs=1e-14)
        # under the uniform start a1 looks worst: softmax PG first pushes it down
        assert q[i, A1] < min(q[i, A0], q[i, A2])


def test_li_chain_refuses_a_chain_too_long_for_gamma():
    with pytest.raises(ValueError, match=r"H = 60 is too long for gamma = 0.96: at primary state"):
        li_chain(60, 0.96)
    for bad, match in (({"H": 2}, "H = 2"), ({"buffer_size": 0}, "buffer_size = 0"),
                       ({"gamma": 1.0}, "gamma"), ({"c_p": -1.0}, "c_p = -1.0")):
        kwargs = {"H": 5, "gamma": 0.97, **bad}
        with pytest.raises(ValueError, match=match):
            li_chain(**kwargs)


@pytest.mark.parametrize("n,A,gamma", [(1, 2, 0.9), (5, 4, 0.95), (9, 3, 0.99)])
def test_reset_chain_advance_optimal(n, A, gamma):
    env = reset_chain(n, A)
    q, v = _q_star(env.mdp, gamma)
    np.testing.assert_allclose(v, reset_chain_optimum(n, gamma), atol=1e-12)
    assert np.all(np.argmax(q[:n], axis=1) == 0)
    np.testing.assert_allclose(env.mdp.rho, np.eye(n + 1)[0])
    np.testing.assert_allclose(reset_chain(n, A, "uniform").mdp.rho, np.r_[np.full(n, 1 / n), 0])
    np.testing.assert_array_equal(env.terminal, absorbing_states(env.mdp))


def test_reset_chain_uniform_policy_value_is_exponentially_small():
    """From state 0 under the uniform policy the reward needs n advances in a row (each of
    probability 1/A, discounted by gamma): two more states shrink V_uniform(0) by about
    (gamma/A)^2 (exact solves against that geometric rate)."""
    gamma, A = 0.9, 3
    values = []
    for n in (2, 4, 6, 8):
        mdp = reset_chain(n, A).mdp
        pi = dsorl.policies.tabular_softmax(n + 1, A, mdp.action_mask).probs(
            jnp.zeros((n + 1, A)))
        values.append(float(dsorl.discounted_value(dsorl.induced_chain(mdp, pi), gamma)[0]))
    ratios = np.array(values[1:]) / np.array(values[:-1])
    assert np.all(ratios < (gamma / A) ** 2 * 1.5)  # two more states: about (gamma/A)^2


def test_registered():
    assert {"li_chain", "reset_chain"} <= set(envs.names())
    np.testing.assert_array_equal(envs.make("li_chain", H=4, gamma=0.97).mdp.P,
                                  li_chain(4, 0.97).mdp.P)
    with pytest.raises(ValueError, match="start must be"):
        reset_chain(3, 2, "middle")
