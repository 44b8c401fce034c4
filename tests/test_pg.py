"""Vanilla softmax PG: exact steps against the closed-form softmax gradient, REINFORCE
steps against their exact expectation, variants, bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dsorl
from dsorl.algorithms import pg
from dsorl.envs.chains import committal_chain
from dsorl.envs.dynpg import sutton_extended
from dsorl.episodic import EpisodicMDP
from dsorl.objectives import policy_objective
from dsorl.policies import linear_softmax, tabular_softmax
from helpers import check_compiled_variants, random_mdp
from test_estimators_reinforce import _finite_horizon_expected_gradient


def _softmax_pg_numpy(mdp, theta, gamma):
    """`m(s) pi(a|s) A(s, a)` (Agarwal et al. 2021, Lemma C.1), dense NumPy."""
    P, R, rho = (np.asarray(x) for x in (mdp.P, mdp.R, mdp.rho))
    z = np.exp(theta - theta.max(1, keepdims=True))
    pi = z / z.sum(1, keepdims=True)
    Ppi = np.einsum("sa,sat->st", pi, P)
    v = np.linalg.solve(np.eye(len(rho)) - gamma * Ppi, (pi * R).sum(1))
    m = np.linalg.solve((np.eye(len(rho)) - gamma * Ppi).T, rho)
    q = R + gamma * P @ v
    return m[:, None] * pi * (q - v[:, None]), rho @ v


def test_exact_steps_follow_the_softmax_gradient_formula():
    mdp = random_mdp(2, 4, 3)
    gamma, eta = 0.9, 0.7
    theta0 = np.random.default_rng(0).normal(size=(4, 3))
    state, trace = pg.run(mdp, jnp.asarray(theta0), pg.HParams(gamma, eta), jax.random.key(0),
                          config=pg.Config(n_steps=3))
    theta = theta0.copy()
    for k in range(3):
        grad, _ = _softmax_pg_numpy(mdp, theta, gamma)
        assert float(trace.grad_norm[k]) == pytest.approx(np.linalg.norm(grad), rel=1e-10)
        theta = theta + eta * grad
        # the trace records the objective after the step
        assert float(trace.objective[k]) == pytest.approx(_softmax_pg_numpy(mdp, theta, gamma)[1],
                                                          rel=1e-12)
    np.testing.assert_allclose(state.params, theta, rtol=1e-10, atol=1e-12)
    assert int(state.interactions) == 0 and np.all(np.asarray(trace.interactions) == 0)


def test_exact_pg_converges_and_any_policy_works():
    mdp = random_mdp(4, 5, 2)
    gamma = 0.8
    j_star = float(mdp.rho @ dsorl.policy_iteration(mdp, gamma).value)
    _, trace = pg.run(mdp, jnp.zeros((5, 2)), pg.HParams(gamma, 5.0), jax.random.key(0),
                      config=pg.Config(n_steps=2000))
    assert j_star - float(trace.objective[-1]) < 1e-3
    assert np.all(np.diff(np.asarray(trace.objective)) > -1e-12)  # ascent is monotone here
    # a linear-softmax policy through jax.grad, with Adam
    features = jnp.asarray(np.random.default_rng(1).normal(size=(5, 2, 3)))
    cfg = pg.Config(n_steps=50, policy=linear_softmax(features), optimizer=optax.adam)
    _, trace = pg.run(mdp, jnp.zeros(3), pg.HParams(gamma, 0.05), jax.random.key(0), config=cfg)
    assert float(trace.objective[-1]) > float(trace.objective[0])


def test_run_variants_over_gamma_and_step_size():
    mdp = random_mdp(6, 3, 2)

    def objective(gamma, eta):
        return pg.run(mdp, jnp.zeros((3, 2)), pg.HParams(gamma, eta), jax.random.key(0),
                      config=pg.Config(n_steps=5))[1].objective

    check_compiled_variants(objective, (jnp.array([0.5, 0.9]), jnp.array([1.0, 3.0])),
                            rtol=1e-10)


def test_episode_cap_and_reference_step_size():
    assert [int(pg.episode_cap(g)) for g in (0.99, 0.9, 0.5, 0.0)] == [100, 10, 2, 1]
    assert float(pg.dynpg_horizon_step_size(0.99)) == pytest.approx(0.02 / (1 - 0.99 ** 6))


def test_reinforce_step_mean_matches_its_expectation():
    """The first REINFORCE update (authors' weighting w_t = 1), averaged over keys, equals
    eta times the exact finite-horizon expectation (episodes cut at ceil(1/(1-gamma)) = 2
    steps on a 4-state committal chain, so the cap matters): 5 standard errors."""
    n, gamma, eta = 4, 0.5, 0.3
    mdp = committal_chain(n, gamma).mdp
    theta0 = jnp.asarray(np.random.default_rng(3).normal(size=(n + 1, 2)))
    cfg = pg.Config(n_steps=1, estimator="reinforce", episode_length=n, evaluate=False)
    m = 20000
    states, trace = jax.jit(jax.vmap(lambda k: pg.run(mdp, theta0, pg.HParams(gamma, eta), k,
                                                      config=cfg)))(
        jax.random.split(jax.random.key(2), m))
    steps = (np.asarray(states.params) - np.asarray(theta0)).reshape(m, -1)
    pi = np.asarray(tabular_softmax(n + 1, 2, mdp.action_mask).probs(theta0))
    exact = eta * _finite_horizon_expected_gradient(mdp, pi, gamma, 2, False).ravel()
    se = steps.std(0, ddof=1) / np.sqrt(m)
    assert np.all(np.abs(steps.mean(0) - exact) <= 5 * se + 1e-12)
    uncapped = eta * _finite_horizon_expected_gradient(mdp, pi, gamma, n, False).ravel()
    assert np.any(np.abs(steps.mean(0) - uncapped) > 5 * se)  # the cap is visible
    used = np.asarray(states.interactions)
    assert used.min() >= 1 and used.max() <= 2


def test_reinforce_on_sutton_extended_counts_interactions():
    env = sutton_extended()
    mdp = env.mdp
    cfg = pg.Config(n_steps=30, estimator="reinforce", episode_length=3, evaluation_sweeps=4)
    hp = pg.HParams(0.99, pg.dynpg_horizon_step_size(0.99))
    zeros = jnp.zeros(mdp.R.shape)
    state, trace = jax.jit(lambda k: pg.run(env, zeros, hp, k, config=cfg))(jax.random.key(0))
    inter = np.asarray(trace.interactions)  # after each step: 1 to 3 per episode
    assert 1 <= inter[0] <= 3 and np.all(np.diff(inter) >= 1) and np.all(np.diff(inter) <= 3)
    assert int(state.interactions) == inter[-1]
    pi = tabular_softmax(*mdp.R.shape, mdp.action_mask).probs
    assert float(policy_objective(mdp, pi(zeros), 0.99, 4)) == pytest.approx(
        0.89021875, abs=1e-12)  # the uniform policy's value, for reference
    assert float(trace.objective[-1]) == pytest.approx(
        float(policy_objective(mdp, pi(state.params), 0.99, 4)), abs=1e-12)


def test_bad_input():
    mdp = random_mdp(1, 3, 2)
    zeros = jnp.zeros((3, 2))
    for gamma in (1.0, -0.5):
        with pytest.raises(ValueError, match="gamma"):
            pg.run(mdp, zeros, pg.HParams(gamma, 1.0), jax.random.key(0),
                   config=pg.Config(n_steps=1))
    with pytest.raises(ValueError, match="step_size"):
        pg.run(mdp, zeros, pg.HParams(0.9, 0.0), jax.random.key(0), config=pg.Config(n_steps=1))
    with pytest.raises(ValueError, match="estimator"):
        pg.run(mdp, zeros, pg.HParams(0.9, 1.0), jax.random.key(0),
               config=pg.Config(n_steps=1, estimator="td"))
    with pytest.raises(ValueError, match="episode_length"):
        pg.run(mdp, zeros, pg.HParams(0.9, 1.0), jax.random.key(0),
               config=pg.Config(n_steps=1, estimator="reinforce"))
    from dsorl._struct import unchecked
    broken = unchecked(dsorl.MDP, P=mdp.P, R=mdp.R, rho=mdp.rho,
                       action_mask=jnp.array([[True, True], [False, False], [True, False]]))
    with pytest.raises(ValueError, match="leaves state 1 without actions"):
        pg.run(broken, zeros, pg.HParams(0.9, 1.0), jax.random.key(0),
               config=pg.Config(n_steps=1))


def _numpy_uniforms(key, budget):
    """The random numbers `run_interactions` documents: uniforms [budget, 3], normals."""
    k_u, k_z = jax.random.split(key)
    return (np.asarray(jax.random.uniform(k_u, (budget, 3), jnp.float64)),
            np.asarray(jax.random.normal(k_z, (budget,), jnp.float64)))


def _inverse_cdf(p, u):
    c = np.cumsum(p)
    return int(np.searchsorted(c, u * c[-1], side="right"))


def _numpy_softmax(theta, mask):
    z = np.where(mask, theta, -np.inf)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def _numpy_reinforce(env, theta0, gamma, eta, key, budget, discount_steps):
    """The objective after every interaction and the final logits of interaction-budgeted
    REINFORCE (episodes of at most 3 steps), as a plain NumPy loop fed the random numbers
    `run_interactions` documents."""
    mdp = env.mdp
    U, Z = _numpy_uniforms(key, budget)
    P, R, std, mask, rho = (np.asarray(x) for x in (mdp.P, mdp.R, env.reward_std,
                                                     mdp.allowed, mdp.rho))
    terminal = np.asarray(env.terminal)
    theta, episode, objectives = np.array(theta0, float), [], []
    pi = _numpy_softmax(theta, mask)
    for i in range(budget):
        if not episode:
            s = _inverse_cdf(rho, U[i, 0])
        a = _inverse_cdf(pi[s], U[i, 1])
        s_next = _inverse_cdf(P[s, a], U[i, 2])
        episode.append((s, a, R[s, a] + std[s, a] * Z[i]))
        if terminal[s_next] or len(episode) == 3:  # ceil(1/(1-gamma)) >= 10 > 3
            G = 0.0
            for t in reversed(range(len(episode))):
                s_t, a_t, r_t = episode[t]
                G = r_t + gamma * G
                w = G * gamma ** t if discount_steps else G
                theta[s_t] += eta * w * (np.eye(R.shape[1])[a_t] - pi[s_t])
            pi, episode = _numpy_softmax(theta, mask), []
        s = s_next
        v = np.zeros(len(rho))
        for _ in range(4):
            v = (pi * R).sum(1) + gamma * np.einsum("sa,sat,t->s", pi, P, v)
        objectives.append(rho @ v)
    return np.array(objectives), theta


def test_run_interactions_equals_a_numpy_loop():
    """Interaction-budgeted REINFORCE on Sutton-extended (noisy rewards, masked actions,
    episodes of 1-3 steps), jitted and vmapped over gamma, step size and key, equals a
    plain NumPy loop of the algorithm fed the same random numbers; also with w_t = gamma^t."""
    env = sutton_extended()
    mdp = env.mdp
    budget = 150
    theta0 = np.random.default_rng(1).normal(size=mdp.R.shape)
    cfg = pg.Config(n_steps=0, estimator="reinforce", episode_length=3, evaluation_sweeps=4)

    def run(gamma, eta, key, config=cfg):
        return pg.run_interactions(env, jnp.asarray(theta0), pg.HParams(gamma, eta), key,
                                   budget=budget, config=config)

    gammas, etas = [0.9, 0.95], [0.3, 1.0]
    keys = jax.random.split(jax.random.key(5), 2)
    states, traces = jax.jit(jax.vmap(run))(jnp.array(gammas), jnp.array(etas), keys)
    for i in range(2):
        objectives, theta = _numpy_reinforce(env, theta0, gammas[i], etas[i], keys[i],
                                             budget, False)
        np.testing.assert_allclose(traces.objective[i], objectives, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(states.params[i], theta, rtol=1e-11, atol=1e-12)
        assert int(states.steps[i]) == int(traces.steps[i, -1]) > 40
    discounted = pg.Config(**{**vars(cfg), "discount_steps": True})
    state, trace = jax.jit(lambda k: run(0.9, 0.3, k, discounted))(keys[0])
    objectives, theta = _numpy_reinforce(env, theta0, 0.9, 0.3, keys[0], budget, True)
    np.testing.assert_allclose(trace.objective, objectives, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(state.params, theta, rtol=1e-11, atol=1e-12)


def test_run_interactions_bad_input():
    env = sutton_extended()
    mdp = env.mdp
    cfg = pg.Config(n_steps=0, estimator="reinforce", episode_length=3, evaluation_sweeps=4)
    zeros = jnp.zeros(mdp.R.shape)
    with pytest.raises(ValueError, match="budget"):
        pg.run_interactions(mdp, zeros, pg.HParams(0.9, 1.0), jax.random.key(0), budget=0,
                            config=cfg)
    for bad in (dict(optimizer=optax.adam), dict(batch_size=2), dict(estimator="exact")):
        with pytest.raises(ValueError, match="run_interactions"):
            pg.run_interactions(mdp, zeros, pg.HParams(0.9, 1.0), jax.random.key(0),
                                budget=5, config=pg.Config(**{**vars(cfg), **bad}))
    with pytest.raises(ValueError, match="gamma"):
        pg.run_interactions(mdp, zeros, pg.HParams(1.0, 1.0), jax.random.key(0), budget=5,
                            config=cfg)


# ----------------------------------------------------------------------------------------
# The algorithm contract (dsorl.algorithms.base): keys, dtypes, shapes, traces, batching


def test_contract_keys_and_trace_after_each_step():
    mdp = random_mdp(7, 4, 3)
    theta0 = jnp.asarray(np.random.default_rng(2).normal(size=(4, 3)))
    cfg = pg.Config(n_steps=4)
    # exact gradients need no key, and the key does not matter
    state, trace = pg.run(mdp, theta0, pg.HParams(0.9, 0.5), config=cfg, keep_params=True)
    _, again = pg.run(mdp, theta0, pg.HParams(0.9, 0.5), jax.random.key(3), config=cfg)
    np.testing.assert_array_equal(trace.objective, again.objective)
    pi = tabular_softmax(4, 3).probs
    for k in range(4):
        assert float(trace.objective[k]) == pytest.approx(
            float(dsorl.discounted_return(mdp, pi(trace.params[k]), 0.9)), rel=1e-13)
    np.testing.assert_array_equal(trace.params[-1], state.params)
    assert not pg.uses_key(cfg) and pg.uses_key(pg.Config(n_steps=1, estimator="reinforce"))
    with pytest.raises(ValueError, match="key"):
        pg.run(mdp, theta0, pg.HParams(0.9, 0.5),
               config=pg.Config(n_steps=1, estimator="reinforce", episode_length=3))
    # a mapping of the fields works as hparams
    _, mapped = pg.run(mdp, theta0, {"gamma": 0.9, "step_size": 0.5}, config=cfg)
    np.testing.assert_array_equal(mapped.objective, trace.objective)


def test_reinforce_steps_use_the_folded_keys_and_reward_noise():
    """Step i samples with fold_in(key, i): the first step's update is REINFORCE on the
    episode `sample_episode(split(fold_in(key, 0), 1)[0])`, noise from the problem's
    `reward_std`."""
    env = sutton_extended()
    mdp = env.mdp
    cfg = pg.Config(n_steps=1, estimator="reinforce", episode_length=3, evaluate=False)
    hp = pg.HParams(0.9, 0.7)
    key = jax.random.key(11)
    state, trace = pg.run(env, jnp.zeros(mdp.R.shape), hp, key, config=cfg)
    policy = tabular_softmax(*mdp.R.shape, mdp.action_mask)
    pi = policy.probs(jnp.zeros(mdp.R.shape))
    from dsorl.estimators.reinforce import reinforce_gradient
    from dsorl.sampling import sample_episode
    ep = sample_episode(jax.random.split(jax.random.fold_in(key, 0), 1)[0], mdp,
                        lambda t, s: pi[s], 3, reward_std=env.reward_std)
    g = reinforce_gradient(policy.log_probs, jnp.zeros(mdp.R.shape), ep, 0.9, length=3)
    np.testing.assert_allclose(state.params, 0.7 * g, rtol=1e-12, atol=1e-14)
    assert np.isnan(float(trace.objective[0]))
    assert float(trace.grad_norm[0]) == pytest.approx(float(jnp.linalg.norm(g)), rel=1e-12)


def test_float32_problem_stays_float32():
    mdp = random_mdp(8, 4, 2)
    mdp32 = jax.tree_util.tree_map(
        lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, mdp)
    p0 = jnp.zeros((4, 2), jnp.float32)
    state, trace = pg.run(mdp32, p0, pg.HParams(0.9, 1.0), config=pg.Config(n_steps=5))
    assert state.params.dtype == jnp.float32 and trace.objective.dtype == jnp.float32
    assert trace.grad_norm.dtype == jnp.float32
    _, ref = pg.run(mdp, p0.astype(jnp.float64), pg.HParams(0.9, 1.0),
                    config=pg.Config(n_steps=5))
    np.testing.assert_allclose(trace.objective, ref.objective, rtol=1e-5)
    cfg = pg.Config(n_steps=3, estimator="reinforce", episode_length=3, batch_size=2,
                    optimizer=optax.adam)
    noisy = EpisodicMDP(mdp32, jnp.full((4, 2), 0.5, jnp.float32))
    state, trace = pg.run(noisy, p0, pg.HParams(0.9, 0.1), jax.random.key(0), config=cfg)
    assert state.params.dtype == jnp.float32 and trace.objective.dtype == jnp.float32
    env = sutton_extended()
    env32 = env._replace(mdp=jax.tree_util.tree_map(
        lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, env.mdp),
        reward_std=env.reward_std.astype(np.float32))
    bst, btr = pg.run_interactions(
        env32, jnp.zeros(env.mdp.R.shape, jnp.float32), pg.HParams(0.9, 0.3),
        jax.random.key(0), budget=20,
        config=pg.Config(n_steps=0, estimator="reinforce", episode_length=3,
                         evaluation_sweeps=4))
    assert bst.params.dtype == jnp.float32 and btr.objective.dtype == jnp.float32


@pytest.mark.parametrize("estimator", ["exact", "reinforce"])
def test_jit_vmap_with_the_problem_captured_or_passed(estimator):
    mdp = random_mdp(9, 3, 2)
    p0 = jnp.zeros((3, 2))
    mdp = EpisodicMDP(mdp, jnp.full((3, 2), 0.1))  # with reward noise
    hp = pg.HParams(0.9, 0.5)
    cfg = pg.Config(n_steps=4, estimator=estimator, episode_length=4)
    keys = jax.random.split(jax.random.key(1), 3)
    captured = jax.jit(jax.vmap(lambda k: pg.run(mdp, p0, hp, k, config=cfg)[1].objective))(keys)
    passed = jax.jit(jax.vmap(lambda m, k: pg.run(m, p0, hp, k, config=cfg)[1].objective,
                              in_axes=(None, 0)))(mdp, keys)
    one = jax.jit(lambda k: pg.run(mdp, p0, hp, k, config=cfg)[1].objective)
    eager = np.stack([one(k) for k in keys])  # one member at a time
    np.testing.assert_allclose(captured, eager, rtol=1e-12)
    np.testing.assert_allclose(passed, eager, rtol=1e-12)


def test_params0_shape_and_finiteness():
    mdp = random_mdp(10, 3, 2)
    cfg = pg.Config(n_steps=1)
    with pytest.raises(ValueError, match=r"params0 must have shape \(3, 2\)"):
        pg.run(mdp, jnp.zeros((2, 3)), pg.HParams(0.9, 1.0), config=cfg)
    with pytest.raises(ValueError, match="params0"):
        pg.run(mdp, jnp.full((3, 2), jnp.nan), pg.HParams(0.9, 1.0), config=cfg)
    features = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2, 4)))
    linear = pg.Config(n_steps=1, policy=linear_softmax(features))
    assert pg.expected_params(mdp, linear) == (4,)
    with pytest.raises(ValueError, match=r"params0 must have shape \(4,\)"):
        pg.run(mdp, jnp.zeros((3, 2)), pg.HParams(0.9, 1.0), config=linear)
    budget_cfg = pg.Config(n_steps=0, estimator="reinforce", episode_length=3)
    with pytest.raises(ValueError, match="params0"):
        pg.run_interactions(mdp, jnp.zeros(4), pg.HParams(0.9, 1.0), jax.random.key(0),
                            budget=3, config=budget_cfg)


def test_problem_and_reward_noise_validation():
    mdp = random_mdp(11, 3, 2)
    cfg = pg.Config(n_steps=1, estimator="reinforce", episode_length=2)
    for bad in (jnp.full((3, 2), -1.0), jnp.ones(4), jnp.full((3, 2), jnp.inf)):
        with pytest.raises(ValueError, match="reward_std"):
            pg.run(EpisodicMDP(mdp, bad), jnp.zeros((3, 2)), pg.HParams(0.9, 1.0),
                   jax.random.key(0), config=cfg)
    with pytest.raises(TypeError, match="problem"):
        pg.run((mdp.P, mdp.R), jnp.zeros((3, 2)), pg.HParams(0.9, 1.0), jax.random.key(0),
               config=cfg)
