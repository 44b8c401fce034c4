"""Mean-field Langevin PG on sampled episodes (dsorl.algorithms.meanfield_control) with the
mean-field tanh-feature policy (dsorl.networks.MeanFieldPolicy).

References are independent of the code under test: the deterministic step (sigma = 0) is
rebuilt from the batch with a hand-written feature, log-policy and backward loop; the
sampled Lions field is checked unbiased against N x `jax.grad` of the exact finite-horizon
return of a small tabular MDP written as a gymnax-style environment (5 standard errors of
the M estimates, every coordinate); the Langevin noise against its kernel's mean and
variance with tolerances from the sample size."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy.stats import norm

from dsorl import MDP, networks, rollouts
from dsorl.algorithms import meanfield_control as M
from dsorl.envs import garnet
from dsorl.envs import gymnax_control as gc

GAMMA, HORIZON = 0.9, 5
CARTPOLE_SCALE = (2.4, 3.0, 0.21, 3.5)


@pytest.fixture(scope="module")
def tabular():
    mdp = garnet(jax.random.key(3), n_states=4, n_actions=2, branching=2)
    return mdp, gc.tabular(mdp, HORIZON)


def _hand_feature(policy, particles, obs, M):
    """`(1/N) sum_i sum_k psi(c_ik) tanh(<w_ik, (x/scale, e_j)> + b_ik)` for j < M."""
    p = particles["params"]
    c, w, b = p["c"], p["w"], p["b"]
    x = obs / np.asarray(policy.observation_scale or 1.0)
    d_x = x.shape[-1]
    # <w, (x, e_j)> = <w_x, x> + w_j: the one-hot output picks a column of w
    pre = (jnp.einsum("nkd,...d->...nk", w[..., :d_x], x)[..., None, :, :]
           + jnp.moveaxis(w[..., d_x:], -1, 0) + b)            # [..., M, N, K]
    psi = policy.bound * jnp.tanh(c / policy.bound)
    f = jnp.mean(jnp.sum(psi * jnp.tanh(pre), axis=-1), axis=-1)  # [..., M]
    assert f.shape[-1] == M
    return f


def _hand_log_pi(policy, particles, obs):
    """`log softmax_a f_nu(x, a)`."""
    return jax.nn.log_softmax(_hand_feature(policy, particles, obs, policy.n_actions))


@pytest.mark.slow  # the default run checks the policy through the noiseless step's gradient
def test_policy_matches_the_hand_written_mean_field_softmax():
    policy = networks.MeanFieldPolicy(3, 7, 5, bound=2.0, observation_shape=(4,),
                                      observation_scale=CARTPOLE_SCALE)
    particles = policy.init(jax.random.key(0))
    obs = jax.random.normal(jax.random.key(1), (6, 2, 4))

    @jax.jit
    def both(particles, obs):
        action, logp = policy.sample(particles, obs, jax.random.key(2))
        return (policy.logits(particles, obs), _hand_log_pi(policy, particles, obs), logp,
                policy.log_prob(particles, obs, action))

    logits, hand, logp, again = both(particles, obs)
    np.testing.assert_allclose(logits, hand, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(logp, again, rtol=1e-12)
    # N(0, 1) particles: the law e^{-U} (one draw over all N * K * (d + 2) coordinates)
    flat = ravel_pytree(policy.init(jax.random.key(3)))[0]
    assert flat.size == 7 * 5 * (4 + 3 + 2)
    assert abs(float(flat.mean())) < 5 / math.sqrt(flat.size)

    gauss = networks.MeanFieldGaussianPolicy(2, 7, 5, bound=2.0, observation_shape=(4,),
                                             observation_scale=CARTPOLE_SCALE,
                                             action_scale=1.5, log_std=-0.3)
    particles = gauss.init(jax.random.key(4))
    action, logp = jax.jit(gauss.sample)(particles, obs, jax.random.key(5))
    mu = 1.5 * _hand_feature(gauss, particles, obs, 2)
    np.testing.assert_allclose(logp, norm.logpdf(np.asarray(action), np.asarray(mu),
                                                 np.exp(-0.3)).sum(-1), rtol=1e-10)
    assert action.shape == (6, 2, 2)


def test_noiseless_step_is_ascent_along_n_times_algorithm1(tabular):
    _, problem = tabular
    N, eta = 5, 0.3
    policy = networks.MeanFieldPolicy(2, N, 3, observation_shape=(4,),
                                      observation_scale=(1.0, 2.0, 0.5, 4.0))
    value = networks.ValueMLP((8,), (4,))
    # 12 steps of 5-step episodes: two ends, and a cut mid-episode (the bootstrap)
    config = M.Config(1, policy, value, n_envs=6, n_rollout=12, value_epochs=1)
    hp = M.HParams(GAMMA, eta, 0.0, 1e-3)
    key = jax.random.key(5)
    particles = policy.init(jax.random.key(6))

    @jax.jit
    def one_step(particles):
        state0 = M.init(problem, particles, hp, key, config=config)
        state1, row = M.step(problem, state0, hp, key, config=config)
        # the batch the step saw: the documented first half of split(key)
        _, tr = rollouts.collect(problem, lambda o, k: policy.sample(particles, o, k),
                                 state0.rollout, jax.random.split(key)[0], config.n_rollout)
        return state0.value_params, state1.params, row, tr

    value_params, new_params, row, tr = one_step(particles)
    reward, done = np.asarray(tr.reward), np.asarray(tr.done)
    T, B = reward.shape
    assert done.any()  # episodes end inside the batch: the (1 - done) cut is exercised
    v = np.asarray(value(value_params, tr.obs))
    G = np.zeros((T, B))
    g_next = np.asarray(value(value_params, tr.last_obs))
    for t in reversed(range(T)):
        g_next = reward[t] + GAMMA * np.where(done[t], 0.0, g_next)
        G[t] = g_next
    coef = GAMMA ** np.asarray(tr.time) * (G - v)

    def surrogate(th):
        logp = jnp.take_along_axis(_hand_log_pi(policy, th, tr.obs),
                                   tr.action[..., None], axis=-1)[..., 0]
        return jnp.sum(coef * logp) / B

    g = ravel_pytree(jax.jit(jax.grad(surrogate))(particles))[0]
    expected = ravel_pytree(particles)[0] + eta * N * g
    np.testing.assert_allclose(ravel_pytree(new_params)[0], expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(row.grad_norm, N * jnp.linalg.norm(g), rtol=1e-10)
    assert int(row.interactions) == T * B
    # max_grad_norm clips g (not N g) to that global norm
    batch = M.C.prepare(tr, v, value(value_params, tr.last_obs), GAMMA, True)
    clip = 0.5 * float(jnp.linalg.norm(g))
    clipped = jax.jit(lambda th: M.lions_field(policy, th, batch, clip))(particles)
    np.testing.assert_allclose(ravel_pytree(clipped)[0], N * g / 2, rtol=1e-10, atol=1e-12)


@pytest.mark.slow  # test_control checks Algorithm 1's unbiasedness in the default run
def test_sampled_lions_field_is_unbiased_for_n_times_the_exact_gradient(tabular):
    mdp, problem = tabular
    S, N = mdp.n_states, 4
    policy = networks.MeanFieldPolicy(2, N, 4, bound=2.0, observation_shape=(S,))
    particles = policy.init(jax.random.key(1))
    value = networks.ValueMLP((8,), (S,))
    v_params = value.init(jax.random.key(7))
    pi = lambda th: jnp.exp(policy.logits(th, jnp.eye(S)))
    exact = N * ravel_pytree(jax.jit(jax.grad(
        lambda th: gc.finite_horizon_return(mdp, pi(th), GAMMA, HORIZON)))(particles))[0]

    def one(k):
        k_start, k_roll = jax.random.split(k)
        state = rollouts.start(problem, k_start, 200)
        _, tr = rollouts.collect(problem, lambda o, kk: policy.sample(particles, o, kk),
                                 state, k_roll, HORIZON)  # one whole episode per copy
        batch = M.C.prepare(tr, value(v_params, tr.obs), value(v_params, tr.last_obs),
                            GAMMA, True)
        return ravel_pytree(M.lions_field(policy, particles, batch))[0]

    estimates = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(11), 100))
    se = estimates.std(0, ddof=1) / math.sqrt(estimates.shape[0])
    z = np.abs(np.asarray(estimates.mean(0) - exact)) / np.maximum(np.asarray(se), 1e-12)
    assert np.all(z < 5), (z.max(), float(se.max()))
    assert float(jnp.linalg.norm(exact)) > 20 * float(se.max())  # a test that can fail


@pytest.mark.slow
def test_without_reward_the_update_is_the_langevin_kernel(tabular):
    """Zero reward and no baseline: `g = 0` exactly, so `theta' = (1 - eta sigma^2/2) theta
    + sigma sqrt(eta) xi`: the drift read off by least squares and the residual's mean and
    variance, each within 5 standard errors of the sample's size."""
    mdp, _ = tabular
    problem = gc.tabular(MDP(mdp.P, jnp.zeros_like(mdp.R), mdp.rho), HORIZON)
    N, eta, sigma = 2000, 0.1, 0.7
    policy = networks.MeanFieldPolicy(2, N, 4, observation_shape=(mdp.n_states,))
    config = M.Config(1, policy, None, n_envs=2, n_rollout=HORIZON)
    hp = M.HParams(GAMMA, eta, sigma)
    theta = ravel_pytree(policy.init(jax.random.key(2)))[0]
    state, trace = jax.jit(lambda p: M.meanfield_pg(problem, p, hp, jax.random.key(3),
                                                    config=config))(policy.init(jax.random.key(2)))
    u = np.asarray(ravel_pytree(state.params)[0] - theta)
    theta = np.asarray(theta)
    n, var = u.size, sigma ** 2 * eta
    assert float(trace.grad_norm[0]) == 0.0
    drift = np.sum(u * theta) / np.sum(theta ** 2)  # least-squares slope of u on theta
    assert abs(drift + eta * sigma ** 2 / 2) < 5 * math.sqrt(var / np.sum(theta ** 2))
    xi = u + eta * sigma ** 2 / 2 * theta
    assert abs(xi.mean()) < 5 * math.sqrt(var / n)
    assert abs(xi.var(ddof=1) / var - 1) < 5 * math.sqrt(2 / (n - 1))
    # the contraction is visible against the noise: sigma^2 eta / 2 = 2.45% per step
    assert eta * sigma ** 2 / 2 > 10 * math.sqrt(var / np.sum(theta ** 2))


def _cartpole_config(n_steps, N=32):
    problem = gc.make("CartPole-v1")
    policy = networks.MeanFieldPolicy(2, N, 8, observation_shape=(4,),
                                      observation_scale=CARTPOLE_SCALE)
    value = networks.ValueMLP((64, 64), (4,))
    return problem, policy, M.Config(n_steps, policy, value, n_envs=10, n_rollout=100)


@pytest.mark.slow
def test_gaussian_mean_field_runs_on_pendulum():
    problem = gc.make("Pendulum-v1")
    policy = networks.MeanFieldGaussianPolicy(1, 8, 4, observation_shape=(3,),
                                              observation_scale=(1.0, 1.0, 8.0),
                                              action_scale=2.0)
    config = M.Config(3, policy, networks.ValueMLP((16,), (3,)), n_envs=2, n_rollout=50)
    state, trace = jax.jit(lambda k: M.meanfield_pg(
        problem, policy.init(jax.random.fold_in(k, 7)), M.HParams(0.99, 0.01, 0.1), k,
        config=config))(jax.random.key(0))
    np.testing.assert_array_equal(trace.interactions, [100, 200, 300])
    assert np.all(np.isfinite(np.asarray(trace.grad_norm))) and np.all(trace.grad_norm > 0)
    assert np.all(np.isfinite(ravel_pytree(state.params)[0]))


@pytest.mark.slow
def test_cartpole_learns_vmapped_over_seeds():
    problem, policy, config = _cartpole_config(60)
    hp = M.HParams(jnp.float32(0.99), jnp.float32(0.01), jnp.float32(0.01))

    def train(k):
        p0 = policy.init(jax.random.fold_in(k, 7), jnp.float32)
        return M.meanfield_pg(problem, p0, hp, k, config=config)[1]

    trace = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), 3))
    assert trace.episode_return.dtype == jnp.float32
    first = np.nanmean(np.asarray(trace.episode_return[:, :5]), axis=1)
    last = np.nanmean(np.asarray(trace.episode_return[:, -5:]), axis=1)
    assert np.all(first < 40), first  # a random policy balances ~20 steps
    assert np.all(last > 100), last
    np.testing.assert_array_equal(trace.interactions[0], 1000 * np.arange(1, 61))


def test_bad_input_is_refused():
    problem, policy, config = _cartpole_config(2, N=3)
    hp = M.HParams(0.99, 0.01, 0.1)
    params = policy.init(jax.random.key(0))
    key = jax.random.key(1)
    with pytest.raises(ValueError, match="MeanFieldPolicy needs a discrete action space"):
        M.meanfield_pg(gc.make("Pendulum-v1"), params, hp, key, config=config)
    with pytest.raises(ValueError,
                       match="MeanFieldPolicy has n_actions = 2, the action space has 3"):
        M.validate(gc.make("Acrobot-v1"), hp, config)
    with pytest.raises(ValueError, match=r"sigma = -0.1 must be finite and >= 0"):
        M.meanfield_pg(problem, params, hp._replace(sigma=-0.1), key, config=config)
    with pytest.raises(ValueError, match="step_size = 0.0 must be finite and > 0"):
        M.validate(problem, hp._replace(step_size=0.0), config)
    with pytest.raises(ValueError, match=r"gamma"):
        M.validate(problem, hp._replace(gamma=1.0), config)
    with pytest.raises(ValueError, match="config.n_envs = 0 must be an int >= 1"):
        M.validate(problem, hp, M.Config(2, policy, n_envs=0))
    with pytest.raises(ValueError, match="MeanFieldGaussianPolicy needs a real \\(Box\\) action"):
        M.validate(problem, hp, M.Config(2, networks.MeanFieldGaussianPolicy(
            1, 3, observation_shape=(4,))))
    with pytest.raises(ValueError, match="config.policy must be a dsorl.networks.MeanFieldPolicy"):
        M.validate(problem, hp, M.Config(2, networks.CategoricalPolicy(2, (8,), (4,))))
    with pytest.raises(ValueError, match="config must be a meanfield_control.Config"):
        M.validate(problem, hp, M.C.Config(2, policy))
    with pytest.raises(ValueError, match=r"params0 leaf 0 must have shape \(3, 8\), got \(4, 8\)"):
        M.meanfield_pg(problem, networks.MeanFieldPolicy(2, 4, 8, observation_shape=(4,)).init(key),
                       hp, key, config=config)
    with pytest.raises(ValueError, match="n_particles = 0 must be an int >= 1"):
        networks.MeanFieldPolicy(2, 0)
    with pytest.raises(ValueError, match="TanhFeature width K = 0"):
        networks.MeanFieldPolicy(2, 3, 0)
    with pytest.raises(ValueError, match=r"observation_scale must have one entry per observation"
                                         r" coordinate \(4\)"):
        networks.MeanFieldPolicy(2, 3, observation_shape=(4,), observation_scale=(1.0, 2.0))
    with pytest.raises(ValueError, match=r"observation_scale\[1\] = -2.0 must be finite and > 0"):
        networks.MeanFieldPolicy(2, 3, observation_shape=(2,), observation_scale=(1.0, -2.0))
    with pytest.raises(ValueError, match="action_dim = 0 must be an int >= 1"):
        networks.MeanFieldGaussianPolicy(0)
    with pytest.raises(ValueError, match="action_scale = 0.0 must be finite and > 0"):
        networks.MeanFieldGaussianPolicy(1, action_scale=0.0)
    with pytest.raises(ValueError, match="log_std = nan must be finite"):
        networks.MeanFieldGaussianPolicy(1, log_std=float("nan"))


def test_control_job_builds_meanfield_from_its_config():
    from dsorl.jobs import control as job

    cartpole = gc.make("CartPole-v1")
    own = job.DEFAULTS["meanfield"]
    algorithm, config, policy = job.static_config("meanfield", job.DEFAULTS["dsorl"], own,
                                                  200_000, cartpole)
    assert algorithm is M.MEANFIELD_PG and config.policy is policy
    assert (config.n_steps, policy.n_particles, policy.width) == (200, own["particles"],
                                                                  own["width"])
    assert policy.observation_scale == tuple(own["observation_scale"])
    algorithm.validate(cartpole, algorithm.HParams(**{k: v for k, v in own.items()
                                                      if k in algorithm.HParams._fields}),
                       config)
    with pytest.raises(ValueError, match="meanfield needs a discrete action space"):
        job.static_config("meanfield", job.DEFAULTS["dsorl"], own, 200_000,
                          gc.make("Pendulum-v1"))
