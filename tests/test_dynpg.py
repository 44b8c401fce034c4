"""DynPG: bandit objective and gradient, backward induction, error bounds, the sampled
estimator, whole runs (jit, vmap), and bad input."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dsorl._struct import unchecked
from dsorl.algorithms import dynpg
from dsorl.envs.dynpg import sutton_extended, sutton_extended_reference
from dsorl.episodic import EpisodicMDP
from dsorl.mdp import MDP
from dsorl.policies import tabular_softmax
from helpers import check_compiled_variants, check_variants, random_mdp

GAMMA = 0.9


def _bellman_iterates(mdp, gamma, H):
    """`T^h 0` for h = 0..H by NumPy sweeps (independent of dsorl)."""
    P, R, mask = np.asarray(mdp.P), np.asarray(mdp.R), np.asarray(mdp.allowed)
    vs = [np.zeros(R.shape[0])]
    for _ in range(H):
        vs.append(np.where(mask, R + gamma * P @ vs[-1], -np.inf).max(1))
    return np.array(vs)


def _value(mdp, pi, gamma):
    P, R = np.asarray(mdp.P), np.asarray(mdp.R)
    Ppi = np.einsum("sa,sat->st", pi, P)
    return np.linalg.solve(np.eye(len(R)) - gamma * Ppi, (pi * R).sum(1))


def _masked_mdp():
    """A random 4-state MDP with one action masked in two states, uniform rho."""
    base = random_mdp(11, 4, 3)
    mask = np.ones((4, 3), bool)
    mask[1, 2] = mask[3, 0] = False
    return MDP(base.P, base.R, np.full(4, 0.25), action_mask=mask)


def test_epoch_schedule_is_the_authors():
    hp = dynpg.HParams(0.99)
    for h in range(8):
        eta, n = dynpg.epoch_schedule(h, hp)
        span = sum(0.99 ** k for k in range(h + 1))  # (1 - g^(h+1)) / (1 - g)
        assert float(eta) == pytest.approx(2 / span, rel=1e-12)
        assert int(n) == int(np.ceil(45 * span - 1e-9))
    assert [int(dynpg.epoch_schedule(h, hp)[1]) for h in range(3)] == [45, 90, 134]
    eta, n = dynpg.epoch_schedule(5, dynpg.HParams(0.9, 0.5, 7.0), "constant")
    assert float(eta) == 0.5 and int(n) == 7
    with pytest.raises(ValueError, match="schedule"):
        dynpg.epoch_schedule(0, hp, "cosine")


def test_softmax_bandit_gradient_equals_autodiff():
    rng = np.random.default_rng(0)
    mdp = _masked_mdp()
    mask = mdp.action_mask
    theta = jnp.asarray(rng.normal(size=(4, 3)))
    q = jnp.asarray(rng.normal(size=(4, 3)))
    mu = jnp.asarray(rng.dirichlet(np.ones(4)))
    policy = tabular_softmax(4, 3, mask)
    objective = lambda th: jnp.sum(mu[:, None] * policy.probs(th) * jnp.where(mask, q, 0))
    got = dynpg.softmax_bandit_gradient(theta, q, mu, mask)
    np.testing.assert_allclose(got, jax.grad(objective)(theta), rtol=1e-12, atol=1e-15)
    assert np.all(np.asarray(got)[~np.asarray(mask)] == 0)
    check_variants(lambda th: dynpg.softmax_bandit_gradient(th, q, mu, mask), (theta,),
                   (jnp.stack([theta, 2 * theta]),), (0,))


@pytest.mark.parametrize("make", [_masked_mdp, lambda: sutton_extended().mdp])
def test_greedy_bandits_give_backward_induction(make):
    """Each bandit solved exactly: V_h = T^h 0 for every h, and the output acts greedily."""
    mdp = make()
    H = 6
    cfg = dynpg.Config(n_steps=H, solver="greedy", evaluate=False)
    state, trace = jax.jit(lambda: dynpg.run(mdp, jnp.zeros(mdp.R.shape), dynpg.HParams(GAMMA),
                                             jax.random.key(0), config=cfg))()
    ref = _bellman_iterates(mdp, GAMMA, H)
    np.testing.assert_allclose(trace.tail_value, ref[1:], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(trace.bandit_gap, 0, atol=1e-13)
    assert int(state.epoch) == H and int(state.steps) == 0


def test_exact_dynpg_solves_a_slippery_gridworld():
    from dsorl.envs.gridworld import gridworld

    env = gridworld(["S..", ".#G", "..X"], slip=0.2, step_reward=-0.05)
    mdp = env.mdp
    rho = np.where(env.terminal, 0.0, 1.0)
    mdp = MDP(mdp.P, mdp.R, rho / rho.sum(), action_mask=mdp.action_mask)  # full support
    cfg = dynpg.Config(n_steps=30)
    _, trace = jax.jit(lambda: dynpg.run(mdp, jnp.zeros(mdp.R.shape),
                                         dynpg.HParams(GAMMA, 1.0, 2000.0),
                                         jax.random.key(0), config=cfg))()
    v_star = _bellman_iterates(mdp, GAMMA, 400)[-1]
    gap = float(np.asarray(mdp.rho) @ v_star) - np.asarray(trace.objective)
    assert np.all(gap > -1e-12) and gap[-1] < 1e-2 * gap[0]


def test_bandit_objective_equals_rollout_enumeration():
    """J_h = mu . V_{h+1}: the expected discounted return of h + 1 steps with the fresh
    policy first and the frozen ones after it, by enumerating every path."""
    mdp = random_mdp(3, 3, 2)
    H = 3
    cfg = dynpg.Config(n_steps=H, schedule="constant")
    state, trace = dynpg.run(mdp, jnp.zeros((3, 2)), dynpg.HParams(GAMMA, 1.0, 5.0),
                             jax.random.key(0), config=cfg)
    pis = np.exp(np.asarray(state.log_tail))  # policy of epoch h at row h
    P, R, rho = (np.asarray(x) for x in (mdp.P, mdp.R, mdp.rho))
    for h in range(H):
        total = 0.0
        for path in itertools.product(range(3), range(2), repeat=h + 1):
            states, actions = path[0::2], path[1::2]
            prob = rho[states[0]]
            ret = 0.0
            for t in range(h + 1):
                s, a = states[t], actions[t]
                prob *= pis[h - t][s, a]  # t = 0: the newest policy, then older ones
                if t < h:
                    prob *= P[s, a, states[t + 1]]
                ret += GAMMA ** t * R[s, a]
            total += prob * ret
        assert float(rho @ np.asarray(trace.tail_value[h])) == pytest.approx(total, rel=1e-12)


def test_error_bounds_hold_along_a_run():
    """With delta_h = max_a Q_h - V_{h+1} (recomputed here) and V* by NumPy:
    ||V* - V_{h+1}|| <= gamma ||V* - V_h|| + ||delta_h|| and
    ||V* - V^{pi_h}|| <= (2 gamma ||V* - V_h|| + ||delta_h||) / (1 - gamma)."""
    mdp = _masked_mdp()
    H = 25
    hp = dynpg.HParams(GAMMA, 1.0, 500.0)  # bandits solved to about 1e-2
    cfg = dynpg.Config(n_steps=H)
    state, trace = dynpg.run(mdp, jnp.zeros((4, 3)), hp, jax.random.key(0), config=cfg)
    P, R, rho, mask = (np.asarray(x) for x in (mdp.P, mdp.R, mdp.rho, mdp.allowed))
    v_star = _bellman_iterates(mdp, GAMMA, 600)[-1]
    pis = np.exp(np.asarray(state.log_tail))
    v_prev = np.zeros(4)
    errors = []
    for h in range(H):
        q = np.where(mask, R + GAMMA * P @ v_prev, 0)
        v_next = (pis[h] * q).sum(1)
        delta = np.where(mask, q, -np.inf).max(1) - v_next
        np.testing.assert_allclose(trace.tail_value[h], v_next, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(trace.bandit_gap[h], delta, rtol=1e-9, atol=1e-12)
        assert np.all(delta >= -1e-12)
        a = np.abs(v_star - v_prev).max()
        b = np.abs(v_star - v_next).max()
        assert b <= GAMMA * a + delta.max() + 1e-12
        v_pi = _value(mdp, pis[h], GAMMA)
        assert np.abs(v_star - v_pi).max() <= (2 * GAMMA * a + delta.max()) / (1 - GAMMA) + 1e-12
        assert float(trace.objective[h]) == pytest.approx(rho @ v_pi, rel=1e-12)
        errors.append(np.abs(v_star - v_pi).max())
        v_prev = v_next
    uniform = np.where(mask, 1.0, 0.0) / mask.sum(1, keepdims=True)
    assert errors[-1] < 0.1 * np.abs(v_star - _value(mdp, uniform, GAMMA)).max()
    steps = np.cumsum([int(dynpg.epoch_schedule(h, hp)[1]) for h in range(H)])
    np.testing.assert_array_equal(trace.steps, steps)


def test_run_variants_over_gamma_and_step_size():
    mdp = _masked_mdp()
    cfg = dynpg.Config(n_steps=3, optimizer=optax.sgd)

    def final_objective(gamma, scale):
        return dynpg.run(mdp, jnp.zeros((4, 3)), dynpg.HParams(gamma, scale),
                         jax.random.key(0), config=cfg)[1].objective

    check_compiled_variants(final_objective, (jnp.array([0.5, 0.8]), jnp.array([1.0, 0.5])),
                            rtol=1e-9)


def test_sampled_bandit_gradient_mean_matches_exact():
    """DynPG's REINFORCE estimate at epoch h = 2 with noisy rewards and non-trivial frozen
    policies: mean within 5 standard errors of softmax_bandit_gradient(theta, Q_h, mu)."""
    env = sutton_extended()
    mdp = env.mdp
    rng = np.random.default_rng(5)
    S, A = mdp.R.shape
    policy = tabular_softmax(S, A, mdp.action_mask)
    log_tail = jnp.stack([policy.log_probs(jnp.asarray(rng.normal(size=(S, A))))
                          for _ in range(3)])
    theta = jnp.asarray(rng.normal(size=(S, A)))
    epoch = 2
    m = 20000
    directions = rng.normal(size=(300, 4))

    def sample(k):  # the checked coordinates only (the full [S, A] samples are 336 MB)
        g, used = dynpg.sampled_bandit_gradient(k, mdp, theta, log_tail, epoch, 0.99,
                                                batch_size=1, episode_length=3,
                                                reward_std=env.reward_std)
        return g[jnp.array([2, 4, 5]), :5], g[1] @ directions, jnp.abs(g[jnp.array([0, 3, 6])]).sum(), used

    rows, projected, outside, used = (np.asarray(x) for x in jax.jit(jax.vmap(sample))(
        jax.random.split(jax.random.key(1), m)))
    # Q_h from the frozen policies of epochs 0 and 1, by NumPy
    P, R = np.asarray(mdp.P), np.asarray(mdp.R)
    pis = np.exp(np.asarray(log_tail))
    v = np.zeros(S)
    for h in range(epoch):
        v = (pis[h] * (R + 0.99 * P @ v)).sum(1)
    q = R + 0.99 * P @ v
    exact = np.asarray(dynpg.softmax_bandit_gradient(theta, jnp.asarray(q), mdp.rho,
                                                     mdp.action_mask))
    allowed = np.asarray(mdp.action_mask)
    # states 2, 4, 5: every coordinate; state 1 (300 actions, a few rarely drawn, whose
    # sample standard errors are unreliable): 4 random linear functionals of its row
    checks = [rows[:, i, allowed[s, :5]] - exact[s, :5][allowed[s, :5]]
              for i, s in enumerate((2, 4, 5))]
    checks.append(projected - exact[1] @ directions)
    for c in checks:
        se = c.std(0, ddof=1) / np.sqrt(m)
        assert np.all(np.abs(c.mean(0)) <= 5 * se + 1e-12)
    assert np.all(outside == 0)
    # interactions: one per step from s0, until the terminal state or the horizon (3)
    assert 1 <= int(np.min(used)) and int(np.max(used)) <= 3


def test_sampled_run_counts_interactions_and_learns():
    env = sutton_extended()
    mdp = env.mdp
    cfg = dynpg.Config(n_steps=3, estimator="reinforce", max_steps_per_epoch=134,
                       episode_length=3, evaluation_sweeps=4)
    run = jax.jit(jax.vmap(lambda k: dynpg.run(env, jnp.zeros(mdp.R.shape), dynpg.HParams(0.99),
                                               k, config=cfg)))
    state, epochs = run(jax.random.split(jax.random.key(0), 32))
    steps = epochs.inner
    # epoch 0 has horizon 1: exactly one interaction per step (every s0 is non-terminal)
    np.testing.assert_array_equal(epochs.interactions[:, 0], 45)
    np.testing.assert_array_equal(epochs.steps[0], [45, 135, 269])
    valid = np.asarray(steps.valid[0])
    assert valid.sum(axis=-1).tolist() == [45, 90, 134]
    inter = np.asarray(steps.interactions)
    assert np.all(np.diff(inter.reshape(32, -1), axis=1) >= 0)
    ref = sutton_extended_reference(0.99)
    gap = ref["mean_v_star"] - np.asarray(epochs.objective)
    assert np.all(gap >= -1e-12)
    # most runs are near-optimal after 3 epochs (some commit to a noisy wrong action in
    # state 2: the maximisation-bias trap the environment is built to set)
    uniform_gap = ref["mean_v_star"] - ref["mean_v_uniform"]
    assert np.mean(gap[:, -1] < 0.1 * uniform_gap) > 0.5
    # the first recorded step of each epoch is the uniform restart
    np.testing.assert_allclose(steps.objective[:, :, 0], ref["mean_v_uniform"], atol=1e-6)


def test_sparse_sgd_matches_optax_sgd():
    """The default optimiser (plain SGD on the sampled rows) gives the numbers of
    `optax.sgd` on the dense gradient, key for key."""
    mdp = _masked_mdp()
    out = []
    for optimizer in (None, optax.sgd):
        cfg = dynpg.Config(n_steps=3, estimator="reinforce", max_steps_per_epoch=20,
                           schedule="constant", optimizer=optimizer, batch_size=2)
        state, epochs = jax.jit(lambda k: dynpg.run(
            EpisodicMDP(mdp, jnp.ones(mdp.R.shape)), jnp.zeros(mdp.R.shape),
            dynpg.HParams(0.9, 0.5, 20.0), k, config=cfg))(jax.random.key(4))
        out.append((state.params, epochs.inner.objective, epochs.interactions))
    for a, b in zip(*out):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_bad_input():
    mdp = _masked_mdp()
    zeros = jnp.zeros((4, 3))
    cfg = dynpg.Config(n_steps=2)
    for gamma in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="gamma"):
            dynpg.run(mdp, zeros, dynpg.HParams(gamma), jax.random.key(0), config=cfg)
    rho = np.asarray(mdp.rho).copy()
    rho[2], rho[0] = 0.0, rho[0] + rho[2]
    partial = MDP(mdp.P, mdp.R, rho, action_mask=mdp.action_mask)
    with pytest.raises(ValueError, match="full support"):
        dynpg.run(partial, zeros, dynpg.HParams(0.9), jax.random.key(0), config=cfg)
    # terminal states may have zero mass (Sutton-extended's rho): no error
    env = sutton_extended()
    dynpg.validate(env.mdp, dynpg.HParams(0.9), cfg)
    # a mask that empties a non-terminal state (an MDP built without validation)
    mask = np.asarray(mdp.action_mask).copy()
    mask[2] = False
    broken = unchecked(MDP, P=mdp.P, R=mdp.R, rho=mdp.rho, action_mask=jnp.asarray(mask))
    with pytest.raises(ValueError, match="leaves state 2 without actions"):
        dynpg.run(broken, zeros, dynpg.HParams(0.9), jax.random.key(0), config=cfg)
    with pytest.raises(ValueError, match="leaves state 2 without"):
        MDP(mdp.P, mdp.R, mdp.rho, action_mask=mask)
    with pytest.raises(ValueError, match="max_steps_per_epoch"):
        dynpg.run(mdp, zeros, dynpg.HParams(0.9), jax.random.key(0),
                  config=dynpg.Config(n_steps=3, estimator="reinforce",
                                      max_steps_per_epoch=50))
    for bad in (dict(schedule="cosine"), dict(estimator="td"), dict(solver="newton"),
                dict(n_steps=0)):
        with pytest.raises(ValueError):
            dynpg.run(mdp, zeros, dynpg.HParams(0.9), jax.random.key(0),
                      config=dynpg.Config(**{"n_steps": 2, **bad}))
    with pytest.raises(ValueError, match="step_size"):
        dynpg.run(mdp, zeros, dynpg.HParams(0.9, -1.0), jax.random.key(0), config=cfg)


def _numpy_dynpg(env, hp, key, budget, E):
    """Interaction-budgeted sampled DynPG (episodes of at most 3 steps) as a plain NumPy
    loop fed the random numbers `run_interactions` documents: the objective after every
    interaction, the epochs completed, the frozen policies, the gradient steps."""
    mdp = env.mdp
    gamma = hp.gamma
    k_u, k_z = jax.random.split(key)
    U = np.asarray(jax.random.uniform(k_u, (budget, 3), jnp.float64))
    Z = np.asarray(jax.random.normal(k_z, (budget,), jnp.float64))
    P, R, std, mask, rho = (np.asarray(x) for x in (mdp.P, mdp.R, env.reward_std,
                                                     mdp.allowed, mdp.rho))
    terminal = np.asarray(env.terminal)

    def softmax(theta):
        z = np.exp(np.where(mask, theta, -np.inf) - theta.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    def pick(p, u):
        c = np.cumsum(p)
        return int(np.searchsorted(c, u * c[-1], side="right"))

    def objective(pi):
        v = np.zeros(len(rho))
        for _ in range(4):
            v = (pi * R).sum(1) + gamma * np.einsum("sa,sat,t->s", pi, P, v)
        return rho @ v

    h = k = t = steps = 0
    theta, frozen, objectives = np.zeros(R.shape), [], []
    for i in range(budget):
        policies = [softmax(theta)] + frozen[::-1]  # at t: pi_theta, then newest first
        if t == 0:
            s, ret = pick(rho, U[i, 0]), 0.0
        a = pick(policies[t][s], U[i, 1])
        s_next = pick(P[s, a], U[i, 2])
        if t == 0:
            s0, a0 = s, a
        ret += gamma ** t * (R[s, a] + std[s, a] * Z[i])
        t = 0 if terminal[s_next] or t + 1 == min(h + 1, 3) else t + 1
        if t == 0 and h < E:
            eta, n = (float(x) for x in dynpg.epoch_schedule(h, hp, xp=np))
            theta[s0] += eta * ret * (np.eye(R.shape[1])[a0] - policies[0][s0])
            k, steps = k + 1, steps + 1
        objectives.append(objective(softmax(theta)))
        if t == 0 and h < E and k == n:
            frozen.append(softmax(theta))
            h, k = h + 1, 0
            if h < E:  # after the last epoch its policy stays the output
                theta = np.zeros(R.shape)
        s = s_next
    return np.array(objectives), h, np.array(frozen), steps


def test_run_interactions_equals_a_numpy_loop():
    """Interaction-budgeted sampled DynPG on Sutton-extended (noisy rewards, masked
    actions; epochs of 45, 85, 122, 156 steps at gamma = 0.9, 45, 90, 134, ... at 0.99),
    jitted and vmapped over gamma and key, equals a plain NumPy loop of the algorithm fed
    the same random numbers: the objective after every interaction (also after the last
    epoch, when the run has stopped), the epochs reached, the frozen policies, the steps."""
    env = sutton_extended()
    mdp = env.mdp
    budget, E = 700, 4  # the gamma = 0.9 run ends its 4 epochs and stops learning
    cfg = dynpg.Config(n_steps=E, estimator="reinforce", episode_length=3,
                       evaluation_sweeps=4)
    gammas = [0.9, 0.99]
    keys = jax.random.split(jax.random.key(7), 2)
    states, traces = jax.jit(jax.vmap(lambda g, k: dynpg.run_interactions(
        env, jnp.zeros(mdp.R.shape), dynpg.HParams(g), k, budget=budget, config=cfg)))(
        jnp.array(gammas), keys)
    for i, gamma in enumerate(gammas):
        objectives, h, frozen, steps = _numpy_dynpg(env, dynpg.HParams(gamma), keys[i],
                                                    budget, E)
        assert h == int(states.epoch[i]) == [4, 3][i]
        np.testing.assert_allclose(traces.objective[i], objectives, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(states.policies[i, :h], frozen, rtol=1e-12, atol=1e-14)
        assert int(states.steps[i]) == steps == int(traces.steps[i, -1])
        assert np.all(np.diff(np.asarray(traces.epoch[i])) >= 0)


def test_run_interactions_bad_input():
    env = sutton_extended()
    mdp = env.mdp
    zeros = jnp.zeros(mdp.R.shape)
    cfg = dynpg.Config(n_steps=2, estimator="reinforce", episode_length=3,
                       evaluation_sweeps=4)
    with pytest.raises(ValueError, match="budget"):
        dynpg.run_interactions(mdp, zeros, dynpg.HParams(0.9), jax.random.key(0), budget=0,
                               config=cfg)
    for bad in (dict(optimizer=optax.sgd), dict(batch_size=2), dict(estimator="exact"),
                dict(solver="greedy")):
        with pytest.raises(ValueError, match="run_interactions"):
            dynpg.run_interactions(mdp, zeros, dynpg.HParams(0.9), jax.random.key(0),
                                   budget=5, config=dynpg.Config(**{**vars(cfg), **bad}))
    for hp, match in ((dynpg.HParams(1.0), "gamma"), (dynpg.HParams(0.9, 0.0), "step_size")):
        with pytest.raises(ValueError, match=match):
            dynpg.run_interactions(mdp, zeros, hp, jax.random.key(0), budget=5, config=cfg)


# ----------------------------------------------------------------------------------------
# The algorithm contract (dsorl.algorithms.base): the trace after each epoch, captured and
# passed problems, dtypes, keys, bad params0.


def _objective_of(mdp, theta, gamma):
    """`rho . V^pi` of the softmax of `theta` by a NumPy solve (independent of dsorl)."""
    mask = np.asarray(mdp.allowed)
    z = np.where(mask, np.asarray(theta, float), -np.inf)
    pi = np.exp(z - z.max(1, keepdims=True))
    pi /= pi.sum(1, keepdims=True)
    return float(np.asarray(mdp.rho) @ _value(mdp, pi, gamma))


@pytest.mark.parametrize("kw", [dict(), dict(solver="greedy"), dict(optimizer=optax.adam),
                                dict(estimator="reinforce", max_steps_per_epoch=90)])
def test_trace_records_the_objective_after_each_epoch(kw):
    mdp = _masked_mdp()
    cfg = dynpg.Config(n_steps=3, **kw)
    hp = dynpg.HParams(GAMMA, 0.5 if "optimizer" in kw else 1.0, 30.0)
    state, trace = dynpg.run(mdp, jnp.zeros((4, 3)), hp, jax.random.key(2), config=cfg,
                             keep_params=True)
    assert trace.objective.shape == (3,) and trace.params.shape == (3, 4, 3)
    np.testing.assert_array_equal(trace.params[-1], state.params)
    for h in range(3):
        assert float(trace.objective[h]) == pytest.approx(
            _objective_of(mdp, trace.params[h], GAMMA), rel=1e-10, abs=1e-12)
    # grad_norm: the exact bandit gradient's norm at the epoch's policy (0 when greedy)
    v = np.zeros(4)
    for h in range(3):
        q = np.asarray(mdp.R) + GAMMA * np.asarray(mdp.P) @ v
        g = dynpg.softmax_bandit_gradient(trace.params[h], jnp.asarray(q), mdp.rho,
                                          mdp.action_mask)
        assert float(trace.grad_norm[h]) == pytest.approx(float(jnp.linalg.norm(g)),
                                                          rel=1e-9, abs=1e-12)
        v = np.asarray(trace.tail_value[h])
    if kw.get("solver") == "greedy":
        np.testing.assert_allclose(trace.grad_norm, 0, atol=1e-12)
    np.testing.assert_array_equal(state.params0, 0)  # every epoch restarts there


@pytest.mark.parametrize("kw", [dict(), pytest.param(
    dict(estimator="reinforce", max_steps_per_epoch=40, schedule="constant"),
    marks=pytest.mark.slow)])  # 15 s; the sampled path's captured case: run_interactions below
def test_jit_vmap_with_the_problem_captured_or_passed(kw):
    """`validate` reads only concrete host arrays: an MDP captured in a closure under
    jit(vmap) runs (without an action mask, `mdp.allowed` would be a traced array there:
    TracerArrayConversionError before), and equals the MDP passed."""
    env = EpisodicMDP(_masked_mdp(), jnp.full((4, 3), 0.5))
    cfg = dynpg.Config(n_steps=3, **kw)
    hp = dynpg.HParams(GAMMA, 0.5, 40.0)
    keys = jax.random.split(jax.random.key(3), 3)
    zeros = jnp.zeros((4, 3))
    for problem in (random_mdp(3, 4, 3), env.mdp, env):
        captured = jax.jit(jax.vmap(lambda k: dynpg.run(problem, zeros, hp, k, config=cfg)))(keys)
        passed = jax.jit(jax.vmap(lambda p, k: dynpg.run(p, zeros, hp, k, config=cfg),
                                  in_axes=(None, 0)))(problem, keys)
        for a, b in zip(jax.tree_util.tree_leaves(captured), jax.tree_util.tree_leaves(passed)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_run_interactions_with_the_problem_captured_or_passed():
    from dsorl.envs.chains import committal_chain

    chain = committal_chain(4, 0.9)
    env = chain._replace(reward_std=jnp.full((5, 2), 0.3))
    bcfg = dynpg.Config(n_steps=2, estimator="reinforce", episode_length=4)
    z = jnp.zeros(env.mdp.R.shape)
    keys = jax.random.split(jax.random.key(3), 3)
    captured = jax.jit(jax.vmap(lambda k: dynpg.run_interactions(
        env, z, dynpg.HParams(0.9), k, budget=60, config=bcfg)))(keys)
    passed = jax.jit(jax.vmap(lambda e, k: dynpg.run_interactions(
        e, z, dynpg.HParams(0.9), k, budget=60, config=bcfg), in_axes=(None, 0)))(env, keys)
    for a, b in zip(jax.tree_util.tree_leaves(captured), jax.tree_util.tree_leaves(passed)):
        np.testing.assert_array_equal(a, b)


def test_float32_problem_stays_float32():
    base = _masked_mdp()
    mdp = MDP(np.asarray(base.P, np.float32), np.asarray(base.R, np.float32),
              np.asarray(base.rho, np.float32), action_mask=base.action_mask)
    zeros = jnp.zeros((4, 3), jnp.float32)
    for cfg in (dynpg.Config(n_steps=3),
                dynpg.Config(n_steps=2, estimator="reinforce", max_steps_per_epoch=90)):
        state, trace = jax.jit(lambda k: dynpg.run(mdp, zeros, dynpg.HParams(0.9), k,
                                                   config=cfg))(jax.random.key(0))
        for x in (state.params, state.tail_value, trace.objective, trace.grad_norm,
                  trace.step_size):
            assert x.dtype == jnp.float32
        assert np.all(np.isfinite(np.asarray(trace.objective)))
    cfg = dynpg.Config(n_steps=2, estimator="reinforce", episode_length=4)
    state, trace = dynpg.run_interactions(mdp, zeros, dynpg.HParams(0.9), jax.random.key(0),
                                          budget=30, config=cfg, keep_params=True)
    assert state.params.dtype == trace.objective.dtype == trace.params.dtype == jnp.float32


def test_keys_params0_and_problem_errors():
    mdp = _masked_mdp()
    zeros = jnp.zeros((4, 3))
    exact = dynpg.Config(n_steps=2)
    # exact runs are deterministic: no key needed, any key gives the same numbers
    a = dynpg.run(mdp, zeros, dynpg.HParams(0.9), config=exact)[1].objective
    b = dynpg.run(mdp, zeros, dynpg.HParams(0.9), jax.random.key(5), config=exact)[1].objective
    np.testing.assert_array_equal(a, b)
    sampled = dynpg.Config(n_steps=2, estimator="reinforce", max_steps_per_epoch=90)
    with pytest.raises(ValueError, match="explicit key"):
        dynpg.run(mdp, zeros, dynpg.HParams(0.9), config=sampled)
    with pytest.raises(ValueError, match="explicit key"):
        dynpg.run_interactions(mdp, zeros, dynpg.HParams(0.9), None, budget=5,
                               config=dynpg.Config(n_steps=2, estimator="reinforce"))
    with pytest.raises(ValueError, match=r"params0 must have shape \(4, 3\)"):
        dynpg.run(mdp, jnp.zeros((4, 2)), dynpg.HParams(0.9), config=exact)
    with pytest.raises(ValueError, match=r"params0 must have shape \(4, 3\)"):
        dynpg.run_interactions(mdp, jnp.zeros(3), dynpg.HParams(0.9), jax.random.key(0),
                               budget=5, config=dynpg.Config(n_steps=2, estimator="reinforce"))
    with pytest.raises(ValueError, match="params0.*not finite"):
        dynpg.run(mdp, zeros.at[1, 2].set(jnp.nan), dynpg.HParams(0.9), config=exact)
    with pytest.raises(ValueError, match="reward_std"):
        dynpg.run(EpisodicMDP(mdp, -jnp.ones((4, 3))), zeros, dynpg.HParams(0.9), config=exact)
    with pytest.raises(TypeError, match="dsorl.MDP"):
        dynpg.run({"P": mdp.P}, zeros, dynpg.HParams(0.9), config=exact)


def test_run_interactions_final_params_and_keep_params():
    """`BudgetState.params` is the policy the last trace row evaluated, `keep_params` the
    policy of every row; `epoch_params` rows are the epochs' final logits."""
    env = sutton_extended()
    mdp = env.mdp
    cfg = dynpg.Config(n_steps=3, estimator="reinforce", episode_length=3, evaluation_sweeps=4)
    state, trace = dynpg.run_interactions(env, jnp.zeros(mdp.R.shape), dynpg.HParams(0.9),
                                          jax.random.key(1), budget=150, config=cfg,
                                          keep_params=True)
    assert trace.params.shape == (150,) + mdp.R.shape
    np.testing.assert_array_equal(trace.params[-1], state.params)
    for i in (0, 44, 45, 120, 149):
        assert float(trace.objective[i]) == pytest.approx(
            _objective_of(mdp, trace.params[i], 0.9), rel=1e-10, abs=1e-12)
    h = int(state.epoch)
    assert h >= 1
    np.testing.assert_array_equal(state.epoch_params[h], state.params)
    without = dynpg.run_interactions(env, jnp.zeros(mdp.R.shape), dynpg.HParams(0.9),
                                     jax.random.key(1), budget=150, config=cfg)[1]
    assert without.params is None
    np.testing.assert_array_equal(without.objective, trace.objective)


def test_sweep_over_step_size_validates_the_grid():
    """The module is an algorithm for `dsorl.sweep`: a bad grid value is named."""
    from dsorl import sweep

    mdp = _masked_mdp()
    grid = sweep.Grid(gamma=[0.5, 0.9], step_size=[0.5, 1.0])
    result = sweep.sweep(dynpg, mdp, grid, config=dynpg.Config(n_steps=3),
                         params0=jnp.zeros((4, 3)),
                         metrics=lambda s, t, m: {"objective": t.objective[-1]})
    rows = result.rows()
    for row in rows:
        direct = dynpg.run(mdp, jnp.zeros((4, 3)), dynpg.HParams(row["gamma"], row["step_size"]),
                           config=dynpg.Config(n_steps=3))[1].objective[-1]
        assert row["objective"] == pytest.approx(float(direct), rel=1e-12)
    with pytest.raises(ValueError, match="step_size"):
        sweep.sweep(dynpg, mdp, sweep.Grid(gamma=[0.9], step_size=[-1.0]),
                    config=dynpg.Config(n_steps=3), params0=jnp.zeros((4, 3)),
                    metrics=lambda s, t, m: {"objective": t.objective[-1]})
