"""MDP container, validation, marginalisation and action values."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dsorl
from helpers import check_variants, random_mdp, random_policy


def test_induced_chain_matches_loops():
    mdp = random_mdp(0, 5, 3)
    pi = random_policy(1, 5, 3)
    c = dsorl.induced_chain(mdp, pi)
    P, R = np.asarray(mdp.P), np.asarray(mdp.R)
    for s in range(5):
        np.testing.assert_allclose(c.P[s], sum(pi[s, a] * P[s, a] for a in range(3)), rtol=1e-14)
        np.testing.assert_allclose(c.r[s], sum(pi[s, a] * R[s, a] for a in range(3)), rtol=1e-14)


def test_action_values_satisfy_bellman_equations():
    mdp = random_mdp(2, 6, 3)
    pi = random_policy(3, 6, 3)
    gamma = 0.85
    Q = np.asarray(dsorl.action_values(mdp, pi, gamma))
    v = (pi * Q).sum(1)
    P, R = np.asarray(mdp.P), np.asarray(mdp.R)
    np.testing.assert_allclose(Q, R + gamma * P @ v, rtol=1e-12, atol=1e-12)
    # against the explicit linear system over state-action pairs
    S, A = R.shape
    Ppi_sa = np.einsum("sat,tb->satb", P, pi).reshape(S * A, S * A)
    Q_ref = np.linalg.solve(np.eye(S * A) - gamma * Ppi_sa, R.ravel()).reshape(S, A)
    np.testing.assert_allclose(Q, Q_ref, rtol=1e-11, atol=1e-11)


def test_bias_action_values():
    mdp = random_mdp(4, 5, 2)
    pi = random_policy(5, 5, 2)
    q = np.asarray(dsorl.bias_action_values(mdp, pi))
    c = dsorl.induced_chain(mdp, pi)
    h, g = np.asarray(dsorl.bias(c)), float(dsorl.gain(c))
    np.testing.assert_allclose((pi * q).sum(1), h, atol=1e-12)  # v-form of the bias
    np.testing.assert_allclose(q, np.asarray(mdp.R) - g + np.asarray(mdp.P) @ h, atol=1e-12)


def test_entropy_regularised_chain_and_soft_action_values():
    mdp = random_mdp(6, 4, 3)
    pi = random_policy(7, 4, 3)
    tau, gamma = 0.3, 0.9
    c = dsorl.entropy_regularised_chain(mdp, pi, tau)
    entropy = -(pi * np.log(pi)).sum(1)
    # uniform reference: KL(pi || uniform) = log A - entropy
    np.testing.assert_allclose(c.r, (pi * np.asarray(mdp.R)).sum(1) - tau * (np.log(3) - entropy),
                               rtol=1e-12)
    mu = random_policy(8, 4, 3)
    Q = np.asarray(dsorl.soft_action_values(mdp, pi, gamma, tau, mu))
    v = np.asarray(dsorl.discounted_value(dsorl.entropy_regularised_chain(mdp, pi, tau, mu), gamma))
    np.testing.assert_allclose((pi * (Q - tau * np.log(pi / mu))).sum(1), v, rtol=1e-11)


def test_action_mask_zeroes_masked_rows_and_policies():
    rng = np.random.default_rng(0)
    P = rng.dirichlet(np.ones(3), size=(3, 2))
    P[1, 1] = 0.0  # masked action: its row is ignored
    R = rng.normal(size=(3, 2))
    R[1, 1] = 1e6
    mask = np.array([[True, True], [True, False], [True, True]])
    mdp = dsorl.MDP(P, R, np.ones(3) / 3, mask)
    policy = dsorl.policies.tabular_softmax(3, 2, mask)
    pi = policy(jnp.zeros((3, 2), jnp.float64))
    assert float(pi[1, 1]) == 0.0 and float(pi[1, 0]) == 1.0
    c = dsorl.induced_chain(mdp, pi)
    np.testing.assert_allclose(c.P.sum(1), 1, rtol=1e-14)
    assert float(c.r[1]) == R[1, 0]
    with pytest.raises(ValueError, match=r"pi\[1, 1\].*masked"):
        dsorl.induced_chain(mdp, np.full((3, 2), 0.5))


def test_mdp_is_a_pytree_that_vmaps():
    mdps = [random_mdp(s, 4, 2) for s in range(3)]
    batch = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *mdps)
    assert batch.P.shape == (3, 4, 2, 4)
    pi = random_policy(0, 4, 2)
    check_variants(lambda m, p: dsorl.action_values(m, p, 0.9), (mdps[0], pi), (batch, pi), (0, None))
    pis = jnp.stack([random_policy(s, 4, 2) for s in range(3)])
    check_variants(lambda m, p: dsorl.action_values(m, p, 0.9), (mdps[0], pi), (mdps[0], pis),
                   (None, 0))


def valid():
    P = np.full((2, 2, 2), 0.5)
    return P, np.zeros((2, 2)), np.array([1.0, 0.0])


@pytest.mark.parametrize("change, message", [
    (lambda P, R, rho: (P[:, :, :1], R, rho), r"P must have shape \[S, A, S\]"),
    (lambda P, R, rho: (P, R[:1], rho), r"R must have shape \[S, A\] = \(2, 2\)"),
    (lambda P, R, rho: (P, R, rho[:1]), r"rho must have shape \[S\]"),
    (lambda P, R, rho: (P * np.array([1, 1, 1, 0.9]).reshape(2, 2, 1), R, rho),
     r"transition row P\[1, 1, :\] sums to"),
    (lambda P, R, rho: (P + np.array([0.6, -0.6]) * np.eye(2)[0][:, None, None], R, rho),
     r"P\[0, 0, 1\] = -0.1 is negative"),
    (lambda P, R, rho: (P, R + np.array([[0, np.nan], [0, 0]]), rho), r"R\[0, 1\] = nan"),
    (lambda P, R, rho: (P, R, np.array([0.7, 0.7])), "initial distribution rho"),
    (lambda P, R, rho: (P, R, np.array([1.5, -0.5])), r"rho\[1\] = -0.5 is negative"),
])
def test_bad_mdps_raise_naming_the_entry(change, message):
    with pytest.raises(ValueError, match=message):
        dsorl.MDP(*change(*valid()))


def test_mask_leaving_a_state_without_actions_raises():
    with pytest.raises(ValueError, match="leaves state 1 without actions"):
        dsorl.MDP(*valid(), action_mask=np.array([[True, False], [False, False]]))


def test_rows_of_float32_mdp_use_float32_tolerance():
    P, R, rho = valid()
    P = P.astype(np.float32)
    P[0, 0] = [0.5, 0.50002]  # off by 2e-5: within sqrt(eps32) ~ 3.5e-4, beyond sqrt(eps64)
    dsorl.MDP(P, R.astype(np.float32), rho.astype(np.float32))
    with pytest.raises(ValueError, match="sums to"):
        dsorl.MDP(P.astype(np.float64), R, rho)


def test_reference_measure_must_charge_available_actions():
    mdp = random_mdp(0, 3, 2)
    with pytest.raises(ValueError, match=r"mu\[0, 1\] = 0"):
        dsorl.reference_measure(mdp, np.array([[1.0, 0.0], [0.5, 0.5], [0.5, 0.5]]))


def test_reference_measure_closed_over_inside_jit():
    # a concrete MDP and a concrete jax-array mu captured by a traced function: mu stays
    # concrete, so it is validated, and that must not touch the (staged) default mask
    mdp = random_mdp(0, 3, 2)
    mu = jnp.asarray([[0.3, 0.7], [0.5, 0.5], [0.9, 0.1]])
    pi = jnp.asarray([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    f = lambda p: dsorl.entropy_regularised_return(mdp, p, 0.9, 0.5, mu)
    np.testing.assert_allclose(jax.jit(f)(pi), f(pi), rtol=1e-13)
    np.testing.assert_allclose(jax.jit(jax.grad(f))(pi), jax.grad(f)(pi), rtol=1e-12)
