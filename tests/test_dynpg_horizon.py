"""DynPG's horizon-adjustment options: the `fixed_steps` schedule and epochs of several horizon
steps at once (`Config.horizon_block`): the block gradient against an occupancy formula
computed in NumPy, the REINFORCE estimate against it, long runs against backward induction,
the frozen-policy bookkeeping, and bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsorl.algorithms import dynpg
from dsorl.mdp import MDP
from dsorl.policies import tabular_softmax
from helpers import random_mdp, random_policy

GAMMA = 0.9


def _mdp():
    base = random_mdp(3, 4, 3)
    mask = np.ones((4, 3), bool)
    mask[2, 1] = False
    return MDP(base.P, base.R, np.full(4, 0.25), action_mask=mask)


def _softmax(theta, mask):
    z = np.where(mask, theta, -np.inf)
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def test_fixed_steps_keeps_the_authors_step_size_and_one_count():
    hp = dynpg.HParams(0.99, 1.0, 60.0)
    for h in range(6):
        eta, n = dynpg.epoch_schedule(h, hp, "fixed_steps")
        assert float(eta) == float(dynpg.epoch_schedule(h, hp)[0])
        assert int(n) == 60
    assert int(dynpg.epoch_schedule(3, dynpg.HParams(0.9, 1.0, 7.5), "fixed_steps")[1]) == 8
    _, trace = dynpg.run(_mdp(), jnp.zeros((4, 3)), dynpg.HParams(GAMMA, 1.0, 20.0),
                         config=dynpg.Config(n_steps=4, schedule="fixed_steps"))
    np.testing.assert_array_equal(trace.inner_steps, [20] * 4)
    np.testing.assert_array_equal(trace.steps, [20, 40, 60, 80])


def test_block_gradient_equals_the_occupancy_formula():
    """grad_j[s, a] = gamma^j d_j(s) pi_j(a|s) (Q_j(s, a) - V_j(s)), d_0 = mu,
    d_{j+1} = d_j P_{pi_j}, Q_j = R + gamma P V_{j+1}, V_m = the tail value (NumPy)."""
    mdp = _mdp()
    P, R, mask, mu = (np.asarray(x) for x in (mdp.P, mdp.R, mdp.allowed, mdp.rho))
    rng = np.random.default_rng(1)
    m = 3
    thetas = rng.normal(size=(m, 4, 3))
    tail = rng.normal(size=4)
    pis = [_softmax(t, mask) for t in thetas]
    vs = [tail]
    qs = []
    for j in reversed(range(m)):
        q = np.where(mask, R + GAMMA * P @ vs[0], 0)
        qs.insert(0, q)
        vs.insert(0, (pis[j] * q).sum(1))
    d, expected = mu, []
    for j in range(m):
        expected.append(GAMMA ** j * d[:, None] * pis[j] * (qs[j] - vs[j][:, None]))
        d = d @ np.einsum("sa,sat->st", pis[j], P)
    got = dynpg.block_gradient(mdp, jnp.asarray(thetas), jnp.asarray(tail), GAMMA)
    np.testing.assert_allclose(got, np.array(expected), rtol=1e-10, atol=1e-13)
    assert float(dynpg.block_objective(mdp, jnp.asarray(thetas), jnp.asarray(tail), GAMMA)) \
        == pytest.approx(mu @ vs[0], rel=1e-12)
    # a block of one is the contextual bandit of plain DynPG
    one = dynpg.block_gradient(mdp, jnp.asarray(thetas[:1]), jnp.asarray(tail), GAMMA)[0]
    q = jnp.asarray(np.where(mask, R + GAMMA * P @ tail, 0))
    np.testing.assert_allclose(one, dynpg.softmax_bandit_gradient(
        jnp.asarray(thetas[0]), q, mdp.rho, mdp.action_mask), rtol=1e-10, atol=1e-13)


@pytest.mark.slow
def test_sampled_block_gradient_mean_matches_exact():
    mdp = _mdp()
    rng = np.random.default_rng(2)
    m, frozen = 2, 2
    thetas = jnp.asarray(rng.normal(size=(m, 4, 3)))
    tail_pis = [random_policy(5 + i, 4, 3) * np.asarray(mdp.allowed) for i in range(frozen)]
    tail_pis = [p / p.sum(1, keepdims=True) for p in tail_pis]
    log_tail = jnp.log(jnp.asarray(np.array(tail_pis)))
    # the tail's value: log_tail[0] acts last (oldest first)
    P, R = np.asarray(mdp.P), np.asarray(mdp.R)
    v = np.zeros(4)
    for pi in tail_pis:
        v = (pi * (R + GAMMA * P @ v)).sum(1)
    exact = dynpg.block_gradient(mdp, thetas, jnp.asarray(v), GAMMA)
    B = 40000
    grad, used = dynpg.sampled_block_gradient(jax.random.key(0), mdp, thetas, log_tail,
                                              frozen, GAMMA, batch_size=B,
                                              episode_length=frozen + m)
    # no terminal states here: every episode plays its whole horizon
    assert int(used) == B * (frozen + m)
    # returns are below 4 max|R| in size: a standard error of a few 1e-3
    np.testing.assert_allclose(grad, exact, atol=0.03)
    assert float(jnp.max(jnp.abs(grad - exact))) < 0.1 * float(jnp.max(jnp.abs(exact)))


@pytest.mark.slow
def test_a_long_block_run_reaches_backward_induction():
    mdp = _mdp()
    H = 6
    greedy = dynpg.run(mdp, jnp.zeros((4, 3)), dynpg.HParams(GAMMA),
                       config=dynpg.Config(n_steps=H, solver="greedy"))[1]
    P, R, mask = (np.asarray(x) for x in (mdp.P, mdp.R, mdp.allowed))
    uniform, v = mask / mask.sum(1, keepdims=True), np.zeros(4)
    for _ in range(H):
        v = (uniform * (R + GAMMA * P @ v)).sum(1)
    assert np.all(np.asarray(greedy.tail_value[-1]) - v > 0.1)
    for m in (2, 3):
        state, trace = dynpg.run(mdp, jnp.zeros((4, 3)), dynpg.HParams(GAMMA, 1.0, 3000.0),
                                 config=dynpg.Config(n_steps=H // m, horizon_block=m))
        # softmax ascent converges sublinearly: within 1e-2 (the uniform policy's H-step
        # values are more than 0.1 below, checked above)
        np.testing.assert_allclose(trace.tail_value[-1], greedy.tail_value[-1], atol=1e-2)
        assert float(trace.objective[-1]) == pytest.approx(float(greedy.objective[-1]),
                                                           abs=1e-2)
        # the schedule at the block's longest horizon, N steps for the block
        n = [int(dynpg.epoch_schedule((h + 1) * m - 1, dynpg.HParams(GAMMA, 1.0, 3000.0))[1])
             for h in range(H // m)]
        np.testing.assert_array_equal(trace.inner_steps, n)
        assert state.log_tail.shape == (H, 4, 3)


def test_block_frozen_policies_are_stored_oldest_first():
    """After one block epoch, row m - 1 - j of log_tail holds the policy acting at t = j;
    the output is the policy acting first."""
    mdp = _mdp()
    m = 3
    one, trace = dynpg.run(mdp, jnp.zeros((4, 3)), dynpg.HParams(GAMMA, 1.0, 50.0),
                           config=dynpg.Config(n_steps=1, horizon_block=m))
    policy = tabular_softmax(4, 3, mdp.action_mask)
    np.testing.assert_allclose(one.log_tail[m - 1], policy.log_probs(one.params))
    # the frozen rows, replayed oldest first, give the epoch's value
    P, R = np.asarray(mdp.P), np.asarray(mdp.R)
    v = np.zeros(4)
    for row in np.exp(np.asarray(one.log_tail)):
        v = (row * (R + GAMMA * P @ v)).sum(1)
    np.testing.assert_allclose(v, trace.tail_value[0], rtol=1e-10)


@pytest.mark.slow
def test_sampled_block_run_counts_interactions_and_learns():
    mdp = _mdp()
    cfg = dynpg.Config(n_steps=2, horizon_block=2, estimator="reinforce",
                       max_steps_per_epoch=400, batch_size=4)
    hp = dynpg.HParams(GAMMA, 1.0, 100.0)
    state, trace = dynpg.run(mdp, jnp.zeros((4, 3)), hp, jax.random.key(1), config=cfg)
    inner = np.asarray(trace.inner.valid)
    n = np.asarray(trace.inner_steps)
    np.testing.assert_array_equal(inner.sum(1), n)
    # every episode plays its whole horizon here (no terminal state): 2 then 4 steps
    np.testing.assert_array_equal(trace.interactions, np.cumsum(n * 4 * np.array([2, 4])))
    # the output after two epochs beats the uniform policy the first step starts from
    assert float(trace.objective[-1]) > float(trace.inner.objective[0, 0]) + 0.1


def test_horizon_options_bad_input():
    mdp = _mdp()
    z = jnp.zeros((4, 3))
    hp = dynpg.HParams(GAMMA)
    with pytest.raises(ValueError, match="horizon_block = 0"):
        dynpg.run(mdp, z, hp, config=dynpg.Config(n_steps=2, horizon_block=0))
    with pytest.raises(ValueError, match="horizon_block = 2 needs solver='gradient'"):
        dynpg.run(mdp, z, hp, config=dynpg.Config(n_steps=2, horizon_block=2, solver="greedy"))
    with pytest.raises(ValueError, match="schedule must be one of"):
        dynpg.run(mdp, z, hp, config=dynpg.Config(n_steps=2, schedule="fixed"))
    with pytest.raises(ValueError, match="horizon_block=1"):
        dynpg.run_interactions(mdp, z, hp, jax.random.key(0), budget=10,
                               config=dynpg.Config(n_steps=2, estimator="reinforce",
                                                   horizon_block=2))
    # sampled blocks: the scan must cover the schedule at the block's longest horizon
    need = int(dynpg.epoch_schedule(3, hp)[1])
    with pytest.raises(ValueError, match=f"largest epoch \\({need} steps\\)"):
        dynpg.run(mdp, z, hp, jax.random.key(0),
                  config=dynpg.Config(n_steps=2, horizon_block=2, estimator="reinforce",
                                      max_steps_per_epoch=need - 1))
