"""Neural policies on sampled episodes of JAX control environments: the rollout pieces
(dsorl.rollouts), the flax networks (dsorl.networks), the environments
(dsorl.envs.gymnax_control) and REINFORCE / DSO Algorithm 1 / PCO
(dsorl.algorithms.control).

Unbiasedness is checked against exact gradients of a small tabular MDP written as a
gymnax-style environment: the mean of M independent batch estimates must lie within
5 standard errors (computed from the M estimates) of `jax.grad` of the exact
finite-horizon return, in every coordinate."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy.stats import norm

from dsorl import networks, rollouts
from dsorl.algorithms import base
from dsorl.algorithms import control as C
from dsorl.envs import garnet
from dsorl.envs import gymnax_control as gc

GAMMA, HORIZON = 0.9, 5


@pytest.fixture(scope="module")
def tabular():
    mdp = garnet(jax.random.key(3), n_states=4, n_actions=2, branching=2)
    problem = gc.tabular(mdp, HORIZON)
    policy = networks.CategoricalPolicy(2, (8,), (4,))
    value = networks.ValueMLP((8,), (4,))
    params = policy.init(jax.random.key(1))
    # bigger logits than the default init, so the gradient is not near the uniform policy's
    params = jax.tree_util.tree_map(lambda x: 3 * x, params)
    return mdp, problem, policy, value, params


def _pi(policy, params, n_states):
    return jnp.exp(policy.logits(params, jnp.eye(n_states)))


def _batches(problem, policy, value, params, discount, n_batches, n_envs, key):
    """`n_batches` independent estimates (each from `n_envs` whole episodes) of
    `policy_gradient`, flattened: `[M, P]`; the baseline is a random value net."""
    v_params = value.init(jax.random.key(7))

    def one(k):
        k_start, k_roll = jax.random.split(k)
        state = rollouts.start(problem, k_start, n_envs)
        _, tr = rollouts.collect(problem, lambda o, kk: policy.sample(params, o, kk), state,
                                 k_roll, HORIZON)
        batch = C.prepare(tr, value(v_params, tr.obs), value(v_params, tr.last_obs), GAMMA,
                          discount)
        return ravel_pytree(C.policy_gradient(policy, params, batch))[0], tr.done

    return jax.jit(jax.vmap(one))(jax.random.split(key, n_batches))


def _exact_reference(mdp, policy, params, discount):
    """`sum_t c_t sum_s d_t(s) sum_a grad pi(a|s) Q_t(s, a)` with `d_t = rho P_pi^t`,
    `Q_t = R + gamma P V_{t+1}` (`V_T = 0`) and `c_t = gamma^t` (the policy gradient
    theorem for `J_T`) or 1 (REINFORCE's undiscounted weights)."""
    S = mdp.n_states
    pi = jax.lax.stop_gradient(_pi(policy, params, S))
    P_pi = jnp.einsum("sa,sat->st", pi, mdp.P)
    r_pi = jnp.sum(pi * mdp.R, axis=-1)
    V = [jnp.zeros(S)]
    for _ in range(HORIZON):
        V.insert(0, r_pi + GAMMA * P_pi @ V[0])
    d = [mdp.rho]
    for _ in range(HORIZON - 1):
        d.append(d[-1] @ P_pi)

    def surrogate(th):
        pi_th = _pi(policy, th, S)
        total = 0.0
        for t in range(HORIZON):
            Q = mdp.R + GAMMA * mdp.P @ V[t + 1]
            total += (GAMMA ** t if discount else 1.0) * d[t] @ jnp.sum(pi_th * Q, axis=-1)
        return total

    return ravel_pytree(jax.grad(surrogate)(params))[0]


def _within(estimates, reference, sigmas=5.0):
    mean = estimates.mean(0)
    se = estimates.std(0, ddof=1) / math.sqrt(estimates.shape[0])
    z = np.abs(np.asarray(mean - reference)) / np.maximum(np.asarray(se), 1e-12)
    return z, se


def test_algorithm1_is_unbiased_for_the_exact_gradient(tabular):
    mdp, problem, policy, value, params = tabular
    exact = ravel_pytree(jax.grad(lambda th: gc.finite_horizon_return(
        mdp, _pi(policy, th, mdp.n_states), GAMMA, HORIZON))(params))[0]
    # the reference construction is the policy gradient theorem: it equals jax.grad of J_T
    np.testing.assert_allclose(_exact_reference(mdp, policy, params, True), exact, atol=1e-12)
    estimates, done = _batches(problem, policy, value, params, True, 100, 200,
                               jax.random.key(11))
    # every env ran exactly one whole episode of T steps: done at the last step only
    assert bool(jnp.all(done[:, -1])) and not bool(jnp.any(done[:, :-1]))
    z, se = _within(estimates, exact)
    assert np.all(z < 5), (z.max(), se.max())
    assert float(jnp.linalg.norm(exact)) > 20 * float(jnp.max(se))  # a test that can fail


@pytest.mark.slow
def test_reinforce_weights_estimate_their_own_expectation_not_the_gradient(tabular):
    mdp, problem, policy, value, params = tabular
    estimates, _ = _batches(problem, policy, value, params, False, 100, 200,
                            jax.random.key(12))
    reference = _exact_reference(mdp, policy, params, False)
    z, se = _within(estimates, reference)
    assert np.all(z < 5), z.max()
    exact = _exact_reference(mdp, policy, params, True)
    # dropping gamma^t estimates another vector, farther from the gradient than the noise
    assert float(jnp.linalg.norm(reference - exact)) > 5 * float(se.max())


def _cut_batch(problem, policy, value, params, n_envs):
    """`(transitions, value params)`: `n_envs` copies for 12 steps from fixed keys, episodes
    cut mid-way (bootstrapped), and a freshly initialised value."""
    state = rollouts.start(problem, jax.random.key(0), n_envs)
    _, tr = rollouts.collect(problem, lambda o, k: policy.sample(params, o, k), state,
                             jax.random.key(1), 12)
    return tr, value.init(jax.random.key(2))


def test_pco_surrogate_gradient_at_the_anchor_is_algorithm1(tabular):
    mdp, problem, policy, value, params = tabular
    tr, v_params = _cut_batch(problem, policy, value, params, 16)
    batch = C.prepare(tr, value(v_params, tr.obs), value(v_params, tr.last_obs), GAMMA, True)
    g1 = ravel_pytree(C.policy_gradient(policy, params, batch))[0]
    coef = batch.weight * batch.advantage
    g2 = ravel_pytree(jax.grad(C.clipped_surrogate, argnums=1)(
        policy, params, tr.obs, tr.action, tr.log_prob, coef, 0.2, 1 / 16))[0]
    np.testing.assert_allclose(g2, g1, rtol=1e-10, atol=1e-12)


def test_discounted_returns_match_a_loop():
    rng = np.random.default_rng(0)
    reward = rng.normal(size=(7, 3))
    done = rng.random((7, 3)) < 0.3
    boot = rng.normal(size=3)
    G = np.zeros((7, 3))
    for n in range(3):
        g = boot[n]
        for t in reversed(range(7)):
            g = reward[t, n] + 0.95 * (0.0 if done[t, n] else g)
            G[t, n] = g
    np.testing.assert_allclose(rollouts.discounted_returns(jnp.asarray(reward),
                                                           jnp.asarray(done), boot, 0.95), G)


def test_rollout_time_and_returns_follow_episodes(tabular):
    mdp, problem, policy, _, params = tabular
    state = rollouts.start(problem, jax.random.key(0), 3)
    state, tr = rollouts.collect(problem, lambda o, k: policy.sample(params, o, k), state,
                                 jax.random.key(1), 2 * HORIZON + 2)
    np.testing.assert_array_equal(tr.time[:, 0], [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1])
    ep = np.asarray(tr.reward[:HORIZON]).sum(0)
    np.testing.assert_allclose(tr.finished_return[HORIZON - 1], ep)
    # the reward of a step is R[s, a] of its one-hot observation and action
    s = np.argmax(np.asarray(tr.obs), axis=-1)
    np.testing.assert_allclose(tr.reward, np.asarray(mdp.R)[s, np.asarray(tr.action)])


def test_gaussian_log_prob_is_the_normal_density():
    policy = networks.GaussianPolicy(2, (4,), (3,), init_log_std=-0.5)
    params = policy.init(jax.random.key(0))
    obs = jax.random.normal(jax.random.key(1), (5, 3))
    action, logp = policy.sample(params, obs, jax.random.key(2))
    mu = policy._net.apply(params["mean"], obs)
    expected = norm.logpdf(np.asarray(action), np.asarray(mu), np.exp(-0.5)).sum(-1)
    np.testing.assert_allclose(logp, expected, rtol=1e-10)


def test_make_reads_gymnax_spaces_and_overrides():
    cart = gc.make("CartPole-v1", max_steps_in_episode=200)
    assert cart.action_space == rollouts.Discrete(2) and cart.observation_shape == (4,)
    assert cart.env_params.max_steps_in_episode == 200
    pend = gc.make("Pendulum-v1")
    assert pend.action_space == rollouts.Box((-2.0,), (2.0,), (1,))
    assert isinstance(networks.policy_for(pend), networks.GaussianPolicy)
    assert gc.make("Acrobot-v1").action_space == rollouts.Discrete(3)
    assert "CartPole-v1" in gc.names()


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "CartPool-v1"}, "unknown gymnax environment 'CartPool-v1'"),
    ({"name": "CartPole-v1", "gravityy": 1.0}, "no parameter gravityy"),
])
def test_make_bad_names(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gc.make(**kwargs)


def _cartpole_setup():
    problem = gc.make("CartPole-v1")
    policy = networks.policy_for(problem)
    value = networks.ValueMLP(observation_shape=problem.observation_shape)
    return problem, policy, value, policy.init(jax.random.key(0))


def test_bad_inputs_are_named():
    problem, policy, value, params = _cartpole_setup()
    pend = gc.make("Pendulum-v1")
    cfg = C.Config(n_steps=1, policy=policy, value=value)
    hp = C.HParams(0.99, 1e-3)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="CategoricalPolicy needs a discrete action space"):
        C.dso(pend, params, hp, key, config=cfg)
    with pytest.raises(ValueError, match="GaussianPolicy needs a real"):
        wrong = networks.GaussianPolicy(1, (8,), (4,))
        C.dso(problem, wrong.init(key), hp, key, config=C.Config(n_steps=1, policy=wrong))
    with pytest.raises(ValueError, match="CategoricalPolicy has n_actions = 3"):
        three = networks.CategoricalPolicy(3, (64, 64), (4,))
        C.dso(problem, three.init(key), hp, key, config=C.Config(n_steps=1, policy=three))
    with pytest.raises(ValueError, match=r"config.value reads observations of shape \(3,\)"):
        C.dso(problem, params, hp, key, config=C.Config(
            n_steps=1, policy=policy, value=networks.ValueMLP(observation_shape=(3,))))
    with pytest.raises(ValueError, match="gamma"):
        C.dso(problem, params, C.HParams(1.0, 1e-3), key, config=cfg)
    with pytest.raises(ValueError, match="step_size"):
        C.dso(problem, params, C.HParams(0.99, -1.0), key, config=cfg)
    with pytest.raises(ValueError, match="n_minibatches = 3 must divide"):
        C.pco(problem, params, C.PCOHParams(0.99, 1e-3), key, config=C.PCOConfig(
            n_steps=1, policy=policy, n_envs=4, n_rollout=8, n_minibatches=3))
    with pytest.raises(ValueError, match="clip"):
        C.pco(problem, params, C.PCOHParams(0.99, 1e-3, clip=0.0), key,
              config=C.PCOConfig(n_steps=1, policy=policy))
    nat = C.NaturalConfig(n_steps=1, policy=policy)
    with pytest.raises(ValueError, match="damping = 0.0 must be > 0"):
        C.natural_dso(problem, params, C.NaturalHParams(0.99, 0.1, damping=0.0), key,
                      config=nat)
    with pytest.raises(ValueError, match="config.cg_iters = 0"):
        C.natural_dso(problem, params, C.NaturalHParams(0.99, 0.1), key,
                      config=C.NaturalConfig(n_steps=1, policy=policy, cg_iters=0))
    with pytest.raises(ValueError, match="config.n_envs = 0"):
        C.dso(problem, params, hp, key, config=C.Config(n_steps=1, policy=policy, n_envs=0))
    with pytest.raises(ValueError, match="ControlProblem"):
        C.dso("CartPole-v1", params, hp, key, config=cfg)
    with pytest.raises(ValueError, match="params0 must have the structure"):
        C.dso(problem, networks.CategoricalPolicy(2, (8,), (4,)).init(key), hp, key,
              config=cfg)
    with pytest.raises(ValueError, match="hidden layer sizes"):
        networks.CategoricalPolicy(2, (0,), (4,))
    with pytest.raises(ValueError, match="action masks"):
        from dsorl.mdp import MDP
        mdp = MDP(jnp.full((2, 2, 2), 0.5), jnp.zeros((2, 2)), jnp.full(2, 0.5),
                  action_mask=jnp.array([[True, False], [True, True]]))
        gc.tabular(mdp, 3)


@pytest.mark.slow
def test_vmap_over_step_sizes_equals_separate_runs(tabular):
    mdp, problem, policy, value, params = tabular
    cfg = C.PCOConfig(n_steps=2, policy=policy, value=value, n_envs=4, n_rollout=5,
                      epochs=2, n_minibatches=2, value_epochs=2)
    key = jax.random.key(5)
    run = jax.jit(lambda eta: C.pco(problem, params, C.PCOHParams(GAMMA, eta), key,
                                    config=cfg)[1])
    both = jax.vmap(run)(jnp.array([1e-3, 1e-1]))
    for i, eta in enumerate([1e-3, 1e-1]):
        one = run(jnp.asarray(eta))
        np.testing.assert_allclose(both.episode_return[i], one.episode_return, rtol=1e-9)
        np.testing.assert_allclose(both.grad_norm[i], one.grad_norm, rtol=1e-7)
    assert both.interactions[0, -1] == 2 * 4 * 5


def _learns(algorithm, hparams, config, threshold):
    problem, policy, value, params = _cartpole_setup()
    config = config.__class__(**{**config.__dict__, "policy": policy, "value": value})
    params = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), params)
    trace = jax.jit(jax.vmap(lambda k: algorithm.run(problem, params, hparams, k,
                                                     config=config)[1]))(
        jax.random.split(jax.random.key(0), 2))
    late = np.nanmean(np.asarray(trace.episode_return)[:, -5:])
    early = np.nanmean(np.asarray(trace.episode_return)[:, :2])
    assert early < 40  # a random CartPole policy balances ~22 steps
    assert late > threshold, (early, late)


@pytest.mark.slow
def test_dso_learns_cartpole():
    _learns(C.DSO, C.HParams(0.99, 3e-3, 1e-3),
            C.Config(n_steps=30, policy=None, n_envs=8, n_rollout=128), 120)


@pytest.mark.slow
def test_pco_learns_cartpole():
    _learns(C.PCO, C.PCOHParams(0.99, 1e-3, 1e-3, 0.2),
            C.PCOConfig(n_steps=30, policy=None, n_envs=8, n_rollout=128), 120)


@pytest.mark.slow
def test_natural_dso_learns_cartpole():
    _learns(C.NATURAL_DSO, C.NaturalHParams(0.99, 0.01, 1e-3, 0.1),
            C.NaturalConfig(n_steps=30, policy=None, n_envs=8, n_rollout=128), 120)


@pytest.mark.slow
def test_reinforce_learns_cartpole():
    _learns(C.REINFORCE, C.HParams(0.99, 3e-3, 1e-3),
            C.ReinforceConfig(n_steps=30, policy=None, n_envs=8, n_rollout=128), 120)


@pytest.mark.slow
def test_pendulum_gaussian_runs_finite():
    problem = gc.make("Pendulum-v1")
    policy = networks.policy_for(problem, (16,))
    cfg = C.PCOConfig(n_steps=2, policy=policy, value=networks.ValueMLP((16,), (3,)),
                      n_envs=2, n_rollout=16, epochs=1, n_minibatches=2)
    state, trace = C.pco(problem, policy.init(jax.random.key(0)), C.PCOHParams(0.99, 1e-3),
                         jax.random.key(1), config=cfg)
    assert np.all(np.isfinite(trace.grad_norm)) and np.all(np.isfinite(trace.value_loss))
    assert base.tree_norm(state.params) > 0


def _exact_fisher(mdp, policy, params):
    """`F = sum_t c_t sum_s d_t(s) sum_a pi(a|s) psi psi^T`, `d_t = rho P_pi^t`, `c_0 = 1`,
    `c_t = gamma^{t-1}` (the chain Fisher of the marginal mapping over the episode's T
    steps), from the score table of the one-hot states (jacrev of log pi)."""
    S = mdp.n_states
    flat, unravel = ravel_pytree(params)
    psi = jax.jacrev(lambda th: policy.logits(unravel(th), jnp.eye(S)))(flat)  # [S, A, d]
    pi = _pi(policy, params, S)
    P_pi = jnp.einsum("sa,sat->st", pi, mdp.P)
    d, occupancy = mdp.rho, jnp.zeros(S)
    for t in range(HORIZON):
        occupancy = occupancy + (1.0 if t == 0 else GAMMA ** (t - 1)) * d
        d = d @ P_pi
    return jnp.einsum("s,sa,sai,saj->ij", occupancy, pi, psi, psi)


def _episode_batches(problem, policy, value, params, n, key):
    """`n` one-episode batches (`[T, 1]` each, whole episodes), stacked on a leading axis."""
    v_params = value.init(jax.random.key(7))

    def one(k):
        k_start, k_roll = jax.random.split(k)
        state = rollouts.start(problem, k_start, 1)
        _, tr = rollouts.collect(problem, lambda o, kk: policy.sample(params, o, kk), state,
                                 k_roll, HORIZON)
        return C.prepare(tr, value(v_params, tr.obs), value(v_params, tr.last_obs), GAMMA, True)

    return jax.jit(jax.vmap(one))(jax.random.split(key, n))


@pytest.fixture(scope="module")
def episodes(tabular):
    """8000 one-episode batches of the tabular fixture's policy (shared by the tests)."""
    mdp, problem, policy, value, params = tabular
    return _episode_batches(problem, policy, value, params, 8000, jax.random.key(17))


def test_fisher_weights_follow_the_chain_occupancy():
    t = jnp.arange(5)
    np.testing.assert_allclose(C.fisher_weights(t, 0.5), [1, 1, 0.5, 0.25, 0.125])


def test_sampled_fisher_vector_product_is_unbiased(tabular, episodes):
    mdp, problem, policy, value, params = tabular
    flat, unravel = ravel_pytree(params)
    v = jax.random.normal(jax.random.key(4), flat.shape)
    exact = _exact_fisher(mdp, policy, params) @ v
    fv = jax.vmap(lambda b: ravel_pytree(C.fisher_vector_product(
        policy, params, b.transitions, C.fisher_weights(b.transitions.time, GAMMA),
        unravel(v)))[0])(jax.tree_util.tree_map(lambda x: x[:2000], episodes))
    z, se = _within(fv, exact)
    assert np.all(z < 5), (z.max(), se.max())
    assert float(jnp.linalg.norm(exact)) > 20 * float(jnp.max(se))


@pytest.mark.slow
def test_natural_gradient_converges_to_the_exact_natural_gradient(tabular, episodes):
    """With N whole episodes the sampled system `(F_hat + l I) x = g_hat` holds at the
    exact natural gradient `x* = (F + l I)^{-1} g` up to a mean of N i.i.d. zero-mean
    per-episode terms `z_n = F_n x* + l x* - g_n` (so within 5 standard errors), and CG
    solves the sampled system; hence `|x_hat - x*| <= |r| / l` with `r` the mean of `z_n`,
    and to first order `x_hat - x* = -(F + l I)^{-1} r`, whose standard errors come from
    the sample: every coordinate within 5 of them, which are far below `|x*|`."""
    mdp, problem, policy, value, params = tabular
    damping = 0.1
    flat, unravel = ravel_pytree(params)
    g = ravel_pytree(jax.grad(lambda th: gc.finite_horizon_return(
        mdp, _pi(policy, th, mdp.n_states), GAMMA, HORIZON))(params))[0]
    F = _exact_fisher(mdp, policy, params)
    x_star = jnp.linalg.solve(F + damping * jnp.eye(flat.size), g)
    per, n = episodes, episodes.returns.shape[0]
    fw = lambda b: C.fisher_weights(b.transitions.time, GAMMA)
    z = jax.vmap(lambda b: ravel_pytree(C.fisher_vector_product(
        policy, params, b.transitions, fw(b), unravel(x_star)))[0] + damping * x_star
        - ravel_pytree(C.policy_gradient(policy, params, b))[0])(per)
    zs, se = _within(z, jnp.zeros(flat.size))
    assert np.all(zs < 5), zs.max()
    # the N one-episode batches side by side form one batch of N episodes
    per = per._replace(transitions=per.transitions._replace(last_obs=None))
    batch = jax.tree_util.tree_map(lambda x: jnp.swapaxes(x[:, :, 0], 0, 1), per)  # [T, n]
    x_hat = ravel_pytree(jax.jit(lambda b: C.natural_gradient(
        policy, params, b, fw(b), damping, flat.size))(batch))[0]
    r = jnp.mean(z, axis=0)
    assert float(jnp.linalg.norm(x_hat - x_star)) <= float(jnp.linalg.norm(r)) / damping * (1 + 1e-6)
    # to first order x_hat - x* = -(F + l I)^{-1} r: standard errors of x_hat from the sample
    A = jnp.linalg.inv(F + damping * jnp.eye(flat.size))
    se_x = jnp.sqrt(jnp.diag(A @ jnp.cov(z.T) @ A.T) / n)
    assert np.all(np.abs(np.asarray(x_hat - x_star)) < 5 * np.asarray(se_x))
    assert float(jnp.linalg.norm(x_star)) > 20 * float(jnp.max(se_x))  # a test that can fail


# ----------------------------------------------------------------------------------------
# Off-chain PCO (GePPO's surrogate on a replay of behaviour batches)


def _offchain_expectation(mdp, policy, alpha, beta, v_table, trace_clip):
    """The expectation at `theta = alpha` of the off-chain surrogate's gradient from
    whole episodes of the behaviour `beta`: `sum_t gamma^t sum_s d^beta_t(s) sum_a grad
    pi_alpha(a|s) A_bar_t(s, a)`, `d^beta_t = rho P_beta^t`, by backward recursion of the
    V-trace expectations: `A_bar_t = R + gamma P u_{t+1} - v` (`R - v` at the last step),
    `u_t = v + sum_a beta c A_bar_t`, `c = min(trace_clip, pi_alpha / beta)`."""
    S = mdp.n_states
    pa = jax.lax.stop_gradient(_pi(policy, alpha, S))
    pb = _pi(policy, beta, S)
    c = jnp.minimum(trace_clip, pa / pb)
    A_bar, u = [None] * HORIZON, None
    for t in reversed(range(HORIZON)):
        Q = mdp.R if t == HORIZON - 1 else mdp.R + GAMMA * mdp.P @ u
        A_bar[t] = Q - v_table[:, None]
        u = v_table + jnp.sum(pb * c * A_bar[t], axis=-1)
    P_beta = jnp.einsum("sa,sat->st", pb, mdp.P)
    d = [mdp.rho]
    for _ in range(HORIZON - 1):
        d.append(d[-1] @ P_beta)

    def surrogate(th):
        pi_th = _pi(policy, th, S)
        return sum(GAMMA ** t * d[t] @ jnp.sum(pi_th * A_bar[t], axis=-1)
                   for t in range(HORIZON))

    return ravel_pytree(jax.grad(surrogate)(alpha))[0]


def test_offchain_pieces_reduce_to_on_chain_when_the_behaviour_is_the_anchor(tabular):
    mdp, problem, policy, value, params = tabular
    tr, v_params = _cut_batch(problem, policy, value, params, 6)
    v, v_last = value(v_params, tr.obs), value(v_params, tr.last_obs)
    on = C.prepare(tr, v, v_last, GAMMA, True)
    off = C.prepare_offchain(tr, v, v_last, policy.log_prob(params, tr.obs, tr.action), GAMMA,
                             1.0, True)
    np.testing.assert_allclose(off.advantage, on.advantage, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(off.returns, on.returns, rtol=1e-10, atol=1e-12)
    # a moved theta, so that some ratios are clipped: the two surrogates still agree
    theta = jax.tree_util.tree_map(lambda x: 1.3 * x, params)
    coef = on.weight * on.advantage
    a = C.clipped_surrogate(policy, theta, tr.obs, tr.action, tr.log_prob, coef, 0.2, 1 / 6)
    b = C.offchain_surrogate(policy, theta, tr.obs, tr.action, tr.log_prob, tr.log_prob,
                             coef, 0.2, 1 / 6)
    np.testing.assert_allclose(b, a, rtol=1e-12)


def test_offchain_surrogate_gradient_at_the_anchor_has_its_stated_expectation(tabular):
    """Batches of whole episodes from a behaviour beta != alpha: the mean of the
    surrogate's gradient at alpha lies within 5 standard errors of the exact expectation
    (`_offchain_expectation`), for V-trace truncated at 1 and untruncated; the two
    expectations differ, and both differ from grad J(alpha) (the behaviour's state
    occupancy), by more than the noise, so the test tells them apart."""
    mdp, problem, policy, value, alpha = tabular
    # the uniform behaviour: importance ratios pi_alpha / beta <= 2, far occupancies
    beta = jax.tree_util.tree_map(jnp.zeros_like, alpha)
    v_params = value.init(jax.random.key(7))
    v_table = value(v_params, jnp.eye(mdp.n_states))
    n_envs, clips = 200, (1.0, math.inf)

    def one(k):
        k_start, k_roll = jax.random.split(k)
        state = rollouts.start(problem, k_start, n_envs)
        _, tr = rollouts.collect(problem, lambda o, kk: policy.sample(beta, o, kk), state,
                                 k_roll, HORIZON)
        log_alpha = policy.log_prob(alpha, tr.obs, tr.action)
        v, v_last = value(v_params, tr.obs), value(v_params, tr.last_obs)

        def grad(trace_clip):
            b = C.prepare_offchain(tr, v, v_last, log_alpha, GAMMA, trace_clip, True)
            return ravel_pytree(jax.grad(C.offchain_surrogate, argnums=1)(
                policy, alpha, tr.obs, tr.action, tr.log_prob, log_alpha,
                b.weight * b.advantage, 0.2, 1 / n_envs))[0]

        return jnp.stack([grad(c) for c in clips]), tr.done

    estimates, done = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(13), 100))
    assert bool(jnp.all(done[:, -1])) and not bool(jnp.any(done[:, :-1]))
    refs = [_offchain_expectation(mdp, policy, alpha, beta, v_table, c) for c in clips]
    grad_J = ravel_pytree(jax.grad(lambda th: gc.finite_horizon_return(
        mdp, _pi(policy, th, mdp.n_states), GAMMA, HORIZON))(alpha))[0]
    for i, ref in enumerate(refs):
        z, se = _within(estimates[:, i], ref)
        assert np.all(z < 5), (clips[i], z.max(), se.max())
        assert float(jnp.linalg.norm(ref)) > 20 * float(jnp.max(se))  # a test that can fail
        # ... and one that rejects grad J(alpha): the states come from beta's occupancy
        assert _within(estimates[:, i], grad_J)[0].max() > 5
    # truncation changes the expectation: the paired difference (same batches)
    z, se = _within(estimates[:, 0] - estimates[:, 1], refs[0] - refs[1])
    assert np.all(z < 5), z.max()
    assert float(jnp.linalg.norm(refs[0] - refs[1])) > 5 * float(jnp.max(se))


@pytest.mark.slow
def test_on_chain_pco_is_a_direct_loop_over_batches_and_minibatches(tabular):
    """`n_behaviour = 1` (the default) is PCO as before off-chain PCO existed: a plain
    loop (no baseline, Adam on the negated gradient) with PCO's key schedule (step `i`:
    `split(fold_in(key, i))` into collection and permutation keys; the copies started
    from `fold_in(key, 1)`) gives the same iterates."""
    import optax

    mdp, problem, policy, _, params0 = tabular
    n_envs, n_rollout, epochs, m, eta, eps = 4, 6, 2, 2, 0.05, 0.2
    cfg = C.PCOConfig(n_steps=2, policy=policy, n_envs=n_envs, n_rollout=n_rollout,
                      epochs=epochs, n_minibatches=m)
    assert cfg.n_behaviour == 1
    key = jax.random.key(21)
    state, trace = C.pco(problem, params0, C.PCOHParams(GAMMA, eta, clip=eps), key,
                         config=cfg, keep_params=True)
    assert state.replay is None

    adam = optax.adam(eta)
    grad = jax.jit(jax.grad(C.clipped_surrogate, argnums=1), static_argnums=0)
    theta, opt = params0, adam.init(params0)
    envs = rollouts.start(problem, jax.random.fold_in(key, 1), n_envs)
    size = n_envs * n_rollout
    for i in range(2):
        k_collect, k_perm = jax.random.split(jax.random.fold_in(key, jnp.uint32(i)))
        envs, tr = rollouts.collect(problem, lambda o, k: policy.sample(theta, o, k), envs,
                                    k_collect, n_rollout)
        G = rollouts.discounted_returns(tr.reward, tr.done, jnp.zeros(n_envs), GAMMA)
        coef = (GAMMA ** tr.time * G).reshape(size)
        obs, action, logp = (tr.obs.reshape(size, -1), tr.action.reshape(size),
                             tr.log_prob.reshape(size))
        for k in jax.random.split(k_perm, epochs):
            for idx in jax.random.permutation(k, size).reshape(m, size // m):
                g = grad(policy, theta, obs[idx], action[idx], logp[idx], coef[idx], eps,
                         m / n_envs)
                updates, opt = adam.update(jax.tree_util.tree_map(jnp.negative, g), opt)
                theta = optax.apply_updates(theta, updates)
        np.testing.assert_allclose(ravel_pytree(jax.tree_util.tree_map(
            lambda x: x[i], trace.params))[0], ravel_pytree(theta)[0], rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_offchain_replay_holds_the_last_batches_with_their_behaviours(tabular):
    """`n_behaviour = 2`, three steps, two seeds as one jitted vmap: the replay holds the
    batches of steps 2 and 1, each with the log-probabilities of the policy that sampled
    it (the parameters after steps 1 and 0)."""
    mdp, problem, policy, value, params0 = tabular
    cfg = C.PCOConfig(n_steps=3, policy=policy, value=value, n_envs=4, n_rollout=5,
                      epochs=2, n_minibatches=4, value_epochs=2, n_behaviour=2)
    hp = C.PCOHParams(GAMMA, 0.05)
    run = lambda k: C.pco(problem, params0, hp, k, config=cfg, keep_params=True)
    keys = jax.random.split(jax.random.key(3), 2)
    states, traces = jax.jit(jax.vmap(run))(keys)
    assert states.replay.transitions.obs.shape == (2, 2, 5, 4, mdp.n_states)
    assert bool(jnp.all(states.replay.filled))
    np.testing.assert_array_equal(traces.interactions[0], [20, 40, 60])
    for seed in range(2):
        tr = jax.tree_util.tree_map(lambda x: x[seed], states.replay.transitions)
        for slot, after in ((0, 1), (1, 0)):
            theta = jax.tree_util.tree_map(lambda x: x[seed, after], traces.params)
            np.testing.assert_allclose(tr.log_prob[slot],
                                       policy.log_prob(theta, tr.obs[slot], tr.action[slot]),
                                       rtol=1e-10, atol=1e-12)
    assert np.all(np.isfinite(traces.grad_norm)) and np.all(np.isfinite(traces.value_loss))
    assert np.all((traces.clip_fraction >= 0) & (traces.clip_fraction <= 1))
    # the seeds differ (each its own episodes), so the slots are not one shared buffer
    assert not np.allclose(states.replay.transitions.log_prob[0],
                           states.replay.transitions.log_prob[1])


@pytest.mark.parametrize("config, hparams, match", [
    ({"n_behaviour": 0}, {}, r"config.n_behaviour = 0 must be an int >= 1"),
    ({"n_behaviour": 2.0}, {}, r"config.n_behaviour = 2.0 must be an int >= 1"),
    ({"n_behaviour": 3, "n_minibatches": 8}, {},
     r"n_minibatches = 8 must divide the replay n_behaviour \* n_envs \* n_rollout = 60"),
    ({"n_behaviour": 2}, {"trace_clip": 0.0}, r"trace_clip = 0.0 must be > 0"),
    ({"n_behaviour": 2}, {"trace_clip": -1.0}, r"trace_clip = -1.0 must be > 0"),
])
def test_bad_offchain_options_are_named(tabular, config, hparams, match):
    _, problem, policy, value, params = tabular
    cfg = C.PCOConfig(**{"n_steps": 1, "policy": policy, "value": value, "n_envs": 4,
                         "n_rollout": 5, "n_minibatches": 4, **config})
    with pytest.raises(ValueError, match=match):
        C.pco(problem, params, C.PCOHParams(GAMMA, 1e-3, **hparams), jax.random.key(0),
              config=cfg)


@pytest.mark.slow
def test_offchain_pco_learns_cartpole():
    _learns(C.PCO, C.PCOHParams(0.99, 1e-3, 1e-3, 0.2),
            C.PCOConfig(n_steps=30, policy=None, n_envs=8, n_rollout=128, n_behaviour=2), 120)


def test_control_job_runs_offchain_pco_from_its_config_section():
    from dsorl import config as config_lib
    from dsorl.jobs import control as job

    cfg = config_lib.resolve({"job": "control", "pco_offchain": {"n_behaviour": 3}})
    alg, static, _ = job.static_config("pco_offchain", cfg["dsorl"], cfg["pco_offchain"],
                                       cfg["total_steps"], gc.make("CartPole-v1"))
    assert alg is C.PCO and isinstance(static, C.PCOConfig) and static.n_behaviour == 3
    assert "trace_clip" in cfg["pco_offchain"] and "trace_clip" in C.PCOHParams._fields
