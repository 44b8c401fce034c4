"""LMDPs: desirability (linear solve, eigenvector) against NumPy and the Bellman
optimality principle, the optimal chain as the DSO optimum, DSO gradient ascent and
Chain Iteration reaching it, Z-learning (on-chain, off-chain, greedy) converging to it
with tolerances from the run length, and bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dsorl
from dsorl import chain_models as cm
from dsorl.algorithms import dso as alg
from dsorl.algorithms import lmdp as lm
from dsorl.envs import lmdp as envs
from dsorl.lmdp import LMDP
from helpers import check_compiled_variants

X = 6


def first_exit(seed, n_terminal=2):
    return envs.random_lmdp(jax.random.key(seed), X, 3, n_terminal=n_terminal)


def kl(u, p):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(u > 0, u * np.log(u / p), 0).sum(-1)


# --- desirability ---------------------------------------------------------------------------


def test_first_exit_two_state_closed_form():
    # z0 = e^{-q0} (p00 z0 + p01 z1), z1 = e^{-q1}  =>  z0 = e^{-q0} p01 z1 / (1 - e^{-q0} p00)
    lmdp = LMDP(np.array([[0.7, 0.3], [0.0, 1.0]]), np.array([0.5, 2.0]), np.array([1.0, 0.0]),
                     np.array([False, True]))
    z1 = np.exp(-2.0)
    z0 = np.exp(-0.5) * 0.3 * z1 / (1 - np.exp(-0.5) * 0.7)
    np.testing.assert_allclose(lm.first_exit_desirability(lmdp), [z0, z1], rtol=1e-14)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_first_exit_desirability_satisfies_bellman_optimality(seed):
    """`v = -log z` solves `v(x) = q(x) + min_u [KL(u || p) + u . v]` off the terminal set:
    attained by `u*`, and every other `u << p` does no better."""
    lmdp = first_exit(seed)
    p, q, T = (np.asarray(x) for x in (lmdp.passive, lmdp.cost, lmdp.terminal))
    z = np.asarray(lm.first_exit_desirability(lmdp))
    v = -np.log(z)
    u_star = np.asarray(lm.optimal_chain(lmdp, jnp.asarray(z)))
    np.testing.assert_allclose(v[T], q[T], rtol=1e-13)
    np.testing.assert_allclose((q + kl(u_star, p) + u_star @ v)[~T], v[~T], rtol=1e-12)
    rng = np.random.default_rng(seed)
    for _ in range(50):
        u = np.where(p > 0, p * rng.lognormal(size=p.shape), 0)
        u /= u.sum(1, keepdims=True)
        assert np.all((q + kl(u, p) + u @ v)[~T] >= v[~T] - 1e-12)


def test_average_cost_desirability_is_the_perron_vector():
    lmdp = envs.random_lmdp(jax.random.key(3), X, 3, n_terminal=0)
    solution = lm.average_cost_desirability(lmdp)
    G = np.diag(np.exp(-np.asarray(lmdp.cost))) @ np.asarray(lmdp.passive)
    w, V = np.linalg.eig(G)
    k = np.argmax(w.real)
    perron = np.abs(V[:, k].real)
    z = np.asarray(solution.desirability)
    np.testing.assert_allclose(solution.gain, np.log(w[k].real), rtol=1e-12)
    np.testing.assert_allclose(z / z.sum(), perron / perron.sum(), rtol=1e-10)
    # DSO view: at theta = log z the chain is optimal, its gain is log(lambda) and its bias
    # (reward r = -q - KL) is log z with the normalisation p* . log z = 0
    model = cm.lmdp_chain(lmdp)
    theta = jnp.log(solution.desirability)
    np.testing.assert_allclose(cm.gain(model, theta), solution.gain, rtol=1e-12)
    np.testing.assert_allclose(np.abs(cm.gain_gradient(model, theta)).max(), 0, atol=1e-12)
    np.testing.assert_allclose(dsorl.bias(cm.chain_at(model, theta)), theta, atol=1e-10)


# --- the optimal chain is the DSO optimum ------------------------------------------------------


@jax.jit
def dso_view(lmdp, perturbation):
    model = cm.lmdp_chain(lmdp)
    z = lm.first_exit_desirability(lmdp)
    theta = jnp.log(z)
    return (cm.objective(model, theta, 1.0), lmdp.initial @ jnp.log(z),
            cm.gradient(model, theta, 1.0), cm.evaluate(model, theta)[0],
            lm.optimal_chain(lmdp, z), jax.vmap(lambda d: cm.objective(model, theta + d, 1.0))(perturbation))


def test_optimal_chain_is_the_dso_optimum():
    lmdp = first_exit(4)
    perturbation = jnp.asarray(0.3 * np.random.default_rng(4).normal(size=(20, X)))
    J, J_star, grad, chain, u_star, perturbed = dso_view(lmdp, perturbation)
    np.testing.assert_allclose(J, J_star, rtol=1e-12)  # J = P0 . log z = -P0 . v
    np.testing.assert_allclose(np.abs(grad).max(), 0, atol=1e-13)
    np.testing.assert_allclose(chain, u_star, atol=1e-14)
    assert np.all(perturbed < J)


@jax.jit
def optimisers(lmdp):
    z = lm.first_exit_desirability(lmdp)
    J_star = lmdp.initial @ jnp.log(z)
    by_desirability, tabular = cm.lmdp_chain(lmdp), cm.lmdp_chain(lmdp, "tabular")
    _, ascent = alg.gradient_ascent(by_desirability, jnp.zeros(X), alg.AscentHParams(1.0, 0.1),
                                    config=alg.AscentConfig(n_steps=400, optimizer=optax.adam))
    state, ci = alg.chain_iteration(tabular, jnp.zeros((X, X)), alg.ChainIterationHParams(1.0, 0.1),
                                    config=alg.ChainIterationConfig(n_steps=10, inner_steps=300))
    return J_star, ascent, ci, cm.evaluate(tabular, state.params)[0], lm.optimal_chain(lmdp, z)


def test_dso_gradient_ascent_and_chain_iteration_reach_the_optimal_chain():
    J_star, ascent, ci, ci_chain, u_star = optimisers(first_exit(5))
    scale = abs(float(J_star))
    assert J_star - ascent.objective[-1] < 1e-6 * scale
    J = np.asarray(ci.objective)
    assert np.all(np.diff(J) >= -1e-12 * scale)  # tabular controls: policy iteration
    assert J_star - J[-1] < 1e-8 * scale
    np.testing.assert_allclose(ci_chain, u_star, atol=1e-5)


# --- Z-learning ---------------------------------------------------------------------------------


def np_mean_recursion(lmdp, z0, c, K):
    """The exact mean of every Z-learning variant: `z <- (1 - eta_k) z + eta_k (G~ z + b)`."""
    p, q, T = (np.asarray(x) for x in (lmdp.passive, lmdp.cost, lmdp.terminal))
    z = np.where(T, np.exp(-q), z0)
    for k in range(K):
        eta = c / (c + k)
        target = np.exp(-q) * (p @ z)
        z = np.where(T, z, (1 - eta) * z + eta * target)
    return z


Z_CONFIG = lm.ZLearningConfig(n_steps=400)


@jax.jit
def z_learning_seeds(lmdp, behaviour, keys):
    hparams = lm.ZLearningHParams(5.0)
    off_chain = hparams._replace(behaviour=behaviour)
    z0 = jnp.ones(X)
    on = jax.vmap(lambda k: lm.z_learning(lmdp, z0, hparams, k, config=Z_CONFIG)[0].params)(keys)
    off = jax.vmap(lambda k: lm.z_learning(lmdp, z0, off_chain, k,
                                           config=Z_CONFIG)[0].params)(keys)
    state, trace = lm.z_learning(lmdp, z0, hparams, keys[0],
                                 config=lm.ZLearningConfig(n_steps=400, greedy=True))
    return on, off, (state.params, trace)


def test_z_learning_on_and_off_chain_converge_to_the_same_desirability():
    """Every variant's mean follows the same deterministic recursion (its bias after K
    steps, computed in NumPy); the seeds' mean matches it within 5 standard errors, and
    the spread shrinks like 1/sqrt(K). Greedy Z-learning has no noise at all."""
    lmdp = first_exit(6)
    p = np.asarray(lmdp.passive)
    behaviour = jnp.asarray(0.5 * p + 0.5 / X)
    z = np.asarray(lm.first_exit_desirability(lmdp))
    on, off, (greedy, greedy_trace) = z_learning_seeds(lmdp, behaviour,
                                                       jax.random.split(jax.random.key(0), 256))
    expected = np_mean_recursion(lmdp, np.ones(X), 5.0, Z_CONFIG.n_steps)
    free = ~np.asarray(lmdp.terminal)
    for name, runs in (("on-chain", on), ("off-chain", off)):
        runs = np.asarray(runs)
        np.testing.assert_allclose(runs[:, ~free], np.broadcast_to(z[~free], runs[:, ~free].shape),
                                   rtol=1e-13)  # terminal entries are known and kept
        se = runs[:, free].std(0, ddof=1) / np.sqrt(len(runs))
        assert np.all(np.abs(runs[:, free].mean(0) - expected[free]) < 5 * se), name
        # the estimates converge: the rms error is a few times 1/sqrt(K) of z's scale
        rms = np.sqrt(np.mean((runs - z) ** 2))
        assert rms < 3 * z.max() / np.sqrt(Z_CONFIG.n_steps), name
    np.testing.assert_allclose(greedy, expected, rtol=1e-12)
    assert np.all(np.diff(np.asarray(greedy_trace.error)) <= 1e-15)
    np.testing.assert_allclose(expected, z, rtol=2e-2)  # bias after 400 steps


def test_variants_jit_and_vmap():
    lmdps = [first_exit(s) for s in (7, 8, 9)]
    batch = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *lmdps)
    config = lm.ZLearningConfig(n_steps=20)

    def run(lmdp, step_size, key):
        return (lm.first_exit_desirability(lmdp), lm.optimal_chain(lmdp, jnp.ones(X)),
                lm.z_learning(lmdp, jnp.ones(X), lm.ZLearningHParams(step_size), key,
                              config=config))

    check_compiled_variants(run, (batch, jnp.array([1.0, 2.0, 5.0]),
                                  jax.random.split(jax.random.key(1), 3)), rtol=1e-12)
    average = envs.random_lmdp(jax.random.key(3), X, 3, n_terminal=0)
    eager = lm.average_cost_desirability(average)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12),
                           eager, jax.jit(lm.average_cost_desirability)(average))


def test_z_learning_contract_float32_trace_and_captured_problem():
    """A float32 LMDP and z0 stay float32; each trace row is the error after its step
    (`keep_params`: the estimates); jit(vmap) over keys with the LMDP captured equals
    the single runs; a run draws from `fold_in(key, k)` only (a longer run extends it)."""
    lmdp = first_exit(10)
    config = lm.ZLearningConfig(n_steps=30)
    hparams = lm.ZLearningHParams(2.0)
    state, trace = lm.z_learning(lmdp, jnp.ones(X), hparams, jax.random.key(3), config=config,
                                 keep_params=True)
    z = np.asarray(lm.first_exit_desirability(lmdp))
    errors = np.abs(np.asarray(trace.params) - z).max(1) / z.max()
    np.testing.assert_allclose(trace.error, errors, rtol=1e-12)
    np.testing.assert_array_equal(trace.params[-1], state.params)
    longer = lm.z_learning(lmdp, jnp.ones(X), hparams, jax.random.key(3),
                           config=lm.ZLearningConfig(n_steps=40))[1]
    np.testing.assert_allclose(longer.error[:30], trace.error, rtol=1e-13)

    lmdp32 = jax.tree_util.tree_map(
        lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, lmdp)
    state32, trace32 = lm.z_learning(lmdp32, jnp.ones(X, jnp.float32), hparams,
                                     jax.random.key(3), config=config)
    assert state32.params.dtype == jnp.float32 and trace32.error.dtype == jnp.float32
    assert np.all(np.isfinite(trace32.error)) and trace32.error[-1] < trace32.error[0]

    keys = jax.random.split(jax.random.key(4), 3)
    run = lambda k: lm.z_learning(lmdp, jnp.ones(X), hparams, k, config=config)
    batched = jax.jit(jax.vmap(run))(keys)
    for i in range(3):
        jax.tree_util.tree_map(lambda b, s: np.testing.assert_allclose(b[i], s, rtol=1e-12),
                               batched, jax.jit(run)(keys[i]))


# --- bad input ------------------------------------------------------------------------------------


def test_bad_input_raises():
    p = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])
    q, init = np.array([1.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="sums to"):
        LMDP(p * 0.9, q, init, np.array([False, False, True]))
    with pytest.raises(ValueError, match="never reached from state 0 under the passive"):
        stuck = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])
        LMDP(stuck, q, init, np.array([False, False, True]))
    with pytest.raises(ValueError, match="terminal set is empty"):
        LMDP(p, q, init, np.zeros(3, bool))
    lmdp = LMDP(p, q, init, np.array([False, False, True]))
    with pytest.raises(ValueError, match="first exit"):
        lm.average_cost_desirability(lmdp)
    average = LMDP(p, q, init)
    with pytest.raises(ValueError, match="no terminal set"):
        lm.first_exit_desirability(average)
    with pytest.raises(ValueError, match="2 closed recurrent classes"):
        lm.average_cost_desirability(LMDP(np.eye(2), np.zeros(2), np.array([1.0, 0.0])))
    config = lm.ZLearningConfig(n_steps=5)
    uncovering = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match=r"behaviour chain does not cover the passive.*b\(1\|0\)"):
        lm.z_learning(lmdp, jnp.ones(3), lm.ZLearningHParams(behaviour=uncovering),
                      jax.random.key(0), config=config)
    with pytest.raises(ValueError, match=r"params0 \(z0\) must be > 0"):
        lm.z_learning(lmdp, jnp.zeros(3), lm.ZLearningHParams(), jax.random.key(0), config=config)
    with pytest.raises(ValueError, match="step_size"):
        lm.z_learning(lmdp, jnp.ones(3), lm.ZLearningHParams(0.0), jax.random.key(0), config=config)
    with pytest.raises(ValueError, match=r"params0 must have shape \(3,\), got \(4,\)"):
        lm.z_learning(lmdp, jnp.ones(4), lm.ZLearningHParams(), jax.random.key(0), config=config)
    with pytest.raises(ValueError, match="params0.* is not finite"):
        lm.z_learning(lmdp, jnp.array([1.0, jnp.nan, 1.0]), lm.ZLearningHParams(),
                      jax.random.key(0), config=config)
    with pytest.raises(ValueError, match="pass an explicit key"):
        lm.z_learning(lmdp, jnp.ones(3), lm.ZLearningHParams(), config=config)
    with pytest.raises(ValueError, match="no terminal set"):
        lm.z_learning(average, jnp.ones(3), lm.ZLearningHParams(), jax.random.key(0),
                      config=config)
    with pytest.raises(ValueError, match="odd"):
        envs.random_walk_lmdp(10)
