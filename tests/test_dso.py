"""DSO optimisers: Chain Iteration behaves as policy iteration on tabular chains, the
exact ascent steps follow their formulas, PCO learns on- and off-chain, runs jit and
vmap over parameters, hyperparameters and keys, and bad input raises."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dsorl
from dsorl import chain_models as cm
from dsorl import policies
from dsorl.algorithms import dso as alg
from dsorl.estimators import dso as est
from helpers import check_compiled_variants, random_mdp

S, A = 4, 3  # the shapes of the other DSO test modules: shared eager kernels
TABULAR = policies.tabular_softmax(S, A)
GAMMA = 0.9


def stacked_mdps(seeds):
    """A batch of MDPs as one pytree (leading axis = seed)."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[random_mdp(s, S, A) for s in seeds])


def np_policy_iteration(mdp, gamma):
    """Howard's policy iteration in NumPy from the uniform policy: the greedy policies'
    values `J_k` and the number of improvements until no action changes."""
    P, R, rho = (np.asarray(x) for x in (mdp.P, mdp.R, mdp.rho))
    pi = np.full((S, A), 1.0 / A)
    values, actions = [], None
    for _ in range(50):
        v = np.linalg.solve(np.eye(S) - gamma * np.einsum("sa,sat->st", pi, P), (pi * R).sum(1))
        values.append(rho @ v)
        new = np.argmax(R + gamma * P @ v, axis=1)
        if actions is not None and np.array_equal(new, actions):
            return np.array(values), actions
        actions, pi = new, np.eye(A)[new]
    raise AssertionError("policy iteration did not stop")


@jax.jit
def chain_iteration_batch(mdps, proximal):
    config = alg.ChainIterationConfig(iterations=8, inner_steps=300)
    hparams = alg.ChainIterationHParams(GAMMA, 0.1, proximal)

    def one(mdp):
        model = cm.marginal(mdp, TABULAR)
        state, trace = alg.chain_iteration(model, jnp.zeros((S, A)), hparams, config=config)
        return (trace, TABULAR(state.params), cm.objective(model, state.params, GAMMA),
                dsorl.policy_iteration(mdp, GAMMA).value @ mdp.rho)

    return jax.vmap(one)(mdps)


def test_chain_iteration_is_policy_iteration_on_tabular_chains():
    seeds = list(range(6))
    mdps = stacked_mdps(seeds)
    trace, pi, final, optimum = chain_iteration_batch(mdps, 0.0)
    for i, seed in enumerate(seeds):
        pi_values, pi_actions = np_policy_iteration(random_mdp(seed, S, A), GAMMA)
        J = np.append(trace.objective[i], final[i])
        scale = abs(optimum[i])
        assert np.all(np.diff(J) >= -1e-12 * scale), "monotone"
        np.testing.assert_allclose(J[0], pi_values[0], rtol=1e-12)  # both start uniform
        np.testing.assert_allclose(pi_values[-1], optimum[i], rtol=1e-12)
        np.testing.assert_array_equal(np.argmax(pi[i], axis=1), pi_actions)  # greedy = optimal
        # optimal after finitely many steps: within 1e-8 once PI's improvements are done
        steps = len(pi_values)
        assert np.all(optimum[i] - J[steps + 1:] <= 1e-8 * scale)
        # the surrogate gain is a lower bound model: S(theta_{k+1}, theta_k) >= J(theta_k)
        assert np.all(trace.surrogate_gain[i] >= -1e-12 * scale)


def test_proximal_term_slows_but_keeps_chain_iteration_monotone():
    mdps = stacked_mdps([0, 1])
    free, _, _, optimum = chain_iteration_batch(mdps, 0.0)
    prox, _, final, _ = chain_iteration_batch(mdps, 3.0)
    J = np.concatenate([prox.objective, final[:, None]], axis=1)
    assert np.all(np.diff(J, axis=1) >= -1e-12 * np.abs(optimum)[:, None])
    assert np.all(prox.objective[:, 1] < free.objective[:, 1])  # smaller first step
    assert np.all(prox.divergence[:, 0] < free.divergence[:, 0])


def test_gradient_ascent_and_natural_gradient_follow_their_formulas():
    mdp = random_mdp(3, S, A)
    model = cm.marginal(mdp, TABULAR)
    theta0 = jnp.asarray(np.random.default_rng(3).normal(size=(S, A)))
    lr = 0.5

    @jax.jit
    def runs(theta0):
        plain = alg.gradient_ascent(model, theta0, alg.AscentHParams(GAMMA, lr),
                                    config=alg.AscentConfig(iterations=3))
        natural = alg.gradient_ascent(model, theta0, alg.AscentHParams(GAMMA, lr, 1e-3),
                                      config=alg.AscentConfig(iterations=1, natural=True,
                                                              pseudo_inverse=False))
        return plain, natural, cm.fisher(model, theta0, GAMMA)

    (plain, plain_trace), (natural, _), F = runs(theta0)
    theta = np.asarray(theta0)
    for k in range(3):  # reference: the core's policy-gradient theorem, plain SGD ascent
        g = np.asarray(dsorl.discounted_policy_gradient(mdp, TABULAR, jnp.asarray(theta), GAMMA))
        np.testing.assert_allclose(plain_trace.gradient_norm[k], np.linalg.norm(g), rtol=1e-10)
        np.testing.assert_allclose(plain_trace.objective[k],
                                   dsorl.discounted_return(mdp, TABULAR(theta), GAMMA), rtol=1e-12)
        theta = theta + lr * g
    np.testing.assert_allclose(plain.params, theta, rtol=1e-10)
    g0 = np.asarray(dsorl.discounted_policy_gradient(mdp, TABULAR, theta0, GAMMA)).ravel()
    step = np.linalg.solve(np.asarray(F) + 1e-3 * np.eye(S * A), g0)
    np.testing.assert_allclose(natural.params, np.asarray(theta0) + lr * step.reshape(S, A),
                               rtol=1e-8)


@jax.jit
def ascent_runs(mdps):
    def one(mdp):
        model = cm.marginal(mdp, TABULAR)
        theta0 = jnp.zeros((S, A))
        _, plain = alg.gradient_ascent(model, theta0, alg.AscentHParams(GAMMA, 1.0),
                                       config=alg.AscentConfig(iterations=300))
        # chain-Fisher steps much above 0.05 can overshoot onto a saturated suboptimal
        # policy, and without damping the near-null directions blow up
        _, natural = alg.gradient_ascent(model, theta0, alg.AscentHParams(GAMMA, 0.05, 1e-8),
                                         config=alg.AscentConfig(iterations=300, natural=True))
        return plain.objective, natural.objective, dsorl.policy_iteration(mdp, GAMMA).value @ mdp.rho
    return jax.vmap(one)(mdps)


def test_exact_ascent_converges_and_natural_gradient_is_faster():
    plain, natural, optimum = ascent_runs(stacked_mdps([0, 1, 2]))
    scale = np.abs(optimum)[:, None]
    assert np.all(np.diff(plain, axis=1) >= -1e-12 * scale)  # small steps: monotone
    assert np.all((optimum[:, None] - natural)[:, -1:] <= 1e-8 * scale)
    assert np.all(optimum - plain[:, -1] < 1e-2 * np.abs(optimum))
    assert np.all(optimum - natural[:, 20] < optimum - plain[:, 20])


PCO_CONFIG = alg.PCOConfig(iterations=40, n_episodes=64, horizon=60, epochs=4)


@jax.jit
def pco_runs(mdp, key):
    model = cm.marginal(mdp, TABULAR)
    theta0 = jnp.zeros((S, A))
    hparams = alg.PCOHParams(0.8, 0.1, 0.2)
    P0 = cm.evaluate(model, theta0)[0]
    behaviour = 0.5 * P0 + 0.5 / S
    on = alg.pco(model, theta0, hparams, key, config=PCO_CONFIG)
    off = alg.pco(model, theta0, hparams, key, config=PCO_CONFIG, behaviour=behaviour)
    return on, off, dsorl.policy_iteration(mdp, 0.8).value @ mdp.rho


def test_pco_learns_on_chain_and_off_chain():
    mdp = random_mdp(0, S, A)
    (on_state, on), (off_state, off), optimum = pco_runs(mdp, jax.random.key(0))
    model = cm.marginal(mdp, TABULAR)
    start = on.objective[0]
    for state, trace in ((on_state, on), (off_state, off)):
        final = cm.objective(model, state.params, 0.8)
        assert optimum - final < 0.05 * (optimum - start)  # closes 95% of the gap
        np.testing.assert_allclose(state.v_hat, cm.value(model, state.params, 0.8),
                                   rtol=0.2, atol=0.2 * np.abs(optimum))
    # the on-chain estimate of J(theta_k) (mean return) tracks the exact value
    assert np.mean(np.abs(on.estimate - on.objective)) < 0.05 * np.abs(optimum)


UNCLIPPED = alg.PCOConfig(iterations=1, n_episodes=16, horizon=30, epochs=1, optimizer=optax.sgd)


def unclipped_pco(model, theta0, lr, key):
    """One batch of PCO with one plain SGD epoch and no clipping, and Algorithm 1 on the
    same episodes (the batch key is the first of `split(key, iterations)`)."""
    state, _ = alg.pco(model, theta0, alg.PCOHParams(0.7, lr, jnp.inf), key, config=UNCLIPPED)
    states = est.sample_episodes(jax.random.split(key, 1)[0], model, theta0, 30, 16)
    return state.params, est.backward_accumulation(model, theta0, 0.7, states, jnp.zeros(S))


def test_pco_single_unclipped_sgd_epoch_is_an_algorithm_1_step():
    """Vmapped over parameters, step sizes and keys: each member's PCO step is the
    Algorithm-1 SGD step computed on the same episodes."""
    mdp = random_mdp(2, S, A)
    model = cm.marginal(mdp, TABULAR)
    thetas = jnp.asarray(np.random.default_rng(2).normal(size=(3, S, A)))
    rates = jnp.array([0.3, 0.1, 1.0])
    params, g = jax.jit(jax.vmap(lambda th, lr, key: unclipped_pco(model, th, lr, key)))(
        thetas, rates, jax.random.split(jax.random.key(5), 3))
    np.testing.assert_allclose(params, thetas + rates[:, None, None] * g, rtol=1e-10, atol=1e-13)
    assert not np.allclose(g[0], g[1])  # different keys, different episodes


@pytest.mark.slow
def test_pco_variants():
    """Un-jitted, jitted and vmapped PCO agree (slow: three compilations of a sampler)."""
    mdp = random_mdp(2, S, A)
    model = cm.marginal(mdp, TABULAR)
    thetas = jnp.asarray(np.random.default_rng(2).normal(size=(3, S, A)))
    check_compiled_variants(lambda th, lr, key: unclipped_pco(model, th, lr, key),
                            (thetas, jnp.array([0.3, 0.1, 1.0]),
                             jax.random.split(jax.random.key(5), 3)))


def exact_runs(model, theta, gamma, lr):
    ci = alg.ChainIterationConfig(iterations=2, inner_steps=5)
    ascent = alg.AscentConfig(iterations=2, natural=True)
    return (alg.chain_iteration(model, theta, alg.ChainIterationHParams(gamma, lr), None,
                                config=ci),
            alg.gradient_ascent(model, theta, alg.AscentHParams(gamma, lr, 1e-3), None,
                                config=ascent))


@pytest.mark.parametrize("eager", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_exact_runs_vmap_over_params_and_hparams(eager):
    """jit(vmap) == jitted single runs (and, in the slow run, == the un-jitted run)."""
    mdp = random_mdp(4, S, A)
    model = cm.marginal(mdp, TABULAR)
    thetas = jnp.asarray(np.random.default_rng(4).normal(size=(3, S, A)))
    gammas, rates = jnp.array([0.5, 0.8, 0.9]), jnp.array([0.05, 0.1, 0.2])
    check_compiled_variants(lambda *args: exact_runs(model, *args), (thetas, gammas, rates),
                            eager=eager, rtol=1e-9)


def test_bad_input_raises():
    mdp = random_mdp(6, S, A)
    model = cm.marginal(mdp, TABULAR)
    theta = jnp.zeros((S, A))
    with pytest.raises(ValueError, match="iterations = 0"):
        alg.gradient_ascent(model, theta, alg.AscentHParams(0.9, 0.1),
                            config=alg.AscentConfig(iterations=0))
    with pytest.raises(ValueError, match="learning_rate"):
        alg.chain_iteration(model, theta, alg.ChainIterationHParams(0.9, -0.1),
                            config=alg.ChainIterationConfig(iterations=1, inner_steps=1))
    with pytest.raises(ValueError, match="proximal"):
        alg.chain_iteration(model, theta, alg.ChainIterationHParams(0.9, 0.1, -1.0),
                            config=alg.ChainIterationConfig(iterations=1, inner_steps=1))
    with pytest.raises(ValueError, match="gamma"):
        alg.gradient_ascent(model, theta, alg.AscentHParams(1.0, 0.1),
                            config=alg.AscentConfig(iterations=1))
    config = alg.PCOConfig(iterations=1, n_episodes=2, horizon=3)
    with pytest.raises(ValueError, match="clip"):
        alg.pco(model, theta, alg.PCOHParams(0.9, 0.1, 0.0), jax.random.key(0), config=config)
    uncovering = jnp.eye(S)  # never samples the chain's off-diagonal transitions
    with pytest.raises(ValueError, match="behaviour chain does not cover"):
        alg.pco(model, theta, alg.PCOHParams(0.9, 0.1), jax.random.key(0), config=config,
                behaviour=uncovering)
    with pytest.raises(ValueError, match="n_episodes = 0"):
        alg.pco(model, theta, alg.PCOHParams(0.9, 0.1), jax.random.key(0),
                config=alg.PCOConfig(iterations=1, n_episodes=0, horizon=3))


def test_dso_configs_resolve():
    from pathlib import Path

    from dsorl import config as config_lib

    root = Path(__file__).resolve().parents[1]
    for name in ("dso_gradient_check", "dso_lmdp", "dso_benchmark"):
        cfg = config_lib.load_config(root / "configs" / f"{name}.yaml")
        assert cfg["job"] == name
    with pytest.raises(ValueError, match="unknown config key"):
        config_lib.resolve({"job": "dso_lmdp", "iterations": 3})


@pytest.mark.slow
def test_dso_jobs_run_end_to_end(tmp_path):
    from dsorl.jobs import dso_benchmark, dso_gradient_check

    check = dso_gradient_check.run({**dso_gradient_check.DEFAULTS, "episodes": [200],
                                    "repeats": 4})
    assert len(check["tables"]["gradient_check"]) == 3
    small = {**dso_benchmark.DEFAULTS, "parts": ["garnet", "variance", "lmdp"], "repeats": 1,
             "garnet": {**dso_benchmark.DEFAULTS["garnet"], "n_states": 10, "seeds": 2},
             "chain_iteration": {**dso_benchmark.DEFAULTS["chain_iteration"], "iterations": 3,
                                 "inner_steps": 10},
             "gradient_ascent": {**dso_benchmark.DEFAULTS["gradient_ascent"], "iterations": 5},
             "natural_gradient": {**dso_benchmark.DEFAULTS["natural_gradient"], "iterations": 3,
                                  "batch_size": 2},
             "pco": {**dso_benchmark.DEFAULTS["pco"], "iterations": 2, "horizon": 10},
             "variance": {**dso_benchmark.DEFAULTS["variance"], "episodes": 20, "repeats": 2,
                          "augmented_states": 5, "timing_episodes": 20},
             "lmdp": {**dso_benchmark.DEFAULTS["lmdp"], "n_states": 11, "repeats": 1,
                      "gradient_ascent": {"iterations": 5, "learning_rate": 0.3},
                      "natural_gradient": {"iterations": 5, "learning_rate": 0.3,
                                           "damping": 1e-8},
                      "chain_iteration": {"iterations": 2, "inner_steps": 5,
                                          "learning_rate": 0.1, "proximal": 1.0},
                      "z_learning": {"iterations": 20, "step_scale": 10.0,
                                     "behaviour_mix": 0.5}}}
    result = dso_benchmark.run(small, log=lambda msg: None)
    assert {"garnet", "variance", "estimator_speed", "lmdp"} <= set(result["tables"])
