"""DSO optimisers: Chain Iteration behaves as policy iteration on tabular chains, the
exact ascent steps follow their formulas, PCO learns on- and off-chain, runs jit and
vmap over parameters, hyperparameters, keys and the problem (captured or passed), each
trace row records the objective after its step, float32 stays float32, and bad input
raises."""
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
    config = alg.ChainIterationConfig(n_steps=8, inner_steps=300)
    hparams = alg.ChainIterationHParams(GAMMA, 0.1, proximal)

    def one(mdp):
        model = cm.marginal(mdp, TABULAR)
        theta0 = jnp.zeros((S, A))
        state, trace = alg.chain_iteration(model, theta0, hparams, config=config)
        return (trace, TABULAR(state.params), cm.objective(model, state.params, GAMMA),
                dsorl.policy_iteration(mdp, GAMMA).value @ mdp.rho,
                cm.objective(model, theta0, GAMMA))

    return jax.vmap(one)(mdps)


def test_chain_iteration_is_policy_iteration_on_tabular_chains():
    seeds = list(range(6))
    mdps = stacked_mdps(seeds)
    trace, pi, final, optimum, start = chain_iteration_batch(mdps, 0.0)
    for i, seed in enumerate(seeds):
        pi_values, pi_actions = np_policy_iteration(random_mdp(seed, S, A), GAMMA)
        J = np.append(start[i], trace.objective[i])  # J(theta_0), then after each step
        scale = abs(optimum[i])
        np.testing.assert_allclose(J[-1], final[i], rtol=1e-13)  # the last row: final params
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
    free, _, _, optimum, start = chain_iteration_batch(mdps, 0.0)
    prox, _, _, _, _ = chain_iteration_batch(mdps, 3.0)
    J = np.concatenate([start[:, None], prox.objective], axis=1)
    assert np.all(np.diff(J, axis=1) >= -1e-12 * np.abs(optimum)[:, None])
    assert np.all(prox.objective[:, 0] < free.objective[:, 0])  # smaller first step
    assert np.all(prox.divergence[:, 0] < free.divergence[:, 0])


def test_gradient_ascent_and_natural_gradient_follow_their_formulas():
    mdp = random_mdp(3, S, A)
    model = cm.marginal(mdp, TABULAR)
    theta0 = jnp.asarray(np.random.default_rng(3).normal(size=(S, A)))
    lr = 0.5

    @jax.jit
    def runs(theta0):
        plain = alg.gradient_ascent(model, theta0, alg.AscentHParams(GAMMA, lr),
                                    config=alg.AscentConfig(n_steps=3))
        natural = alg.gradient_ascent(model, theta0, alg.AscentHParams(GAMMA, lr, 1e-3),
                                      config=alg.AscentConfig(n_steps=1, natural=True,
                                                              pseudo_inverse=False))
        return plain, natural, cm.fisher(model, theta0, GAMMA)

    (plain, plain_trace), (natural, _), F = runs(theta0)
    theta = np.asarray(theta0)
    for k in range(3):  # reference: the core's policy-gradient theorem, plain SGD ascent
        g = np.asarray(dsorl.discounted_policy_gradient(mdp, TABULAR, jnp.asarray(theta), GAMMA))
        np.testing.assert_allclose(plain_trace.grad_norm[k], np.linalg.norm(g), rtol=1e-10)
        theta = theta + lr * g
        # the row records the objective after the step
        np.testing.assert_allclose(plain_trace.objective[k],
                                   dsorl.discounted_return(mdp, TABULAR(theta), GAMMA), rtol=1e-12)
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
                                       config=alg.AscentConfig(n_steps=300))
        # chain-Fisher steps much above 0.05 can overshoot onto a saturated suboptimal
        # policy, and without damping the near-null directions blow up
        _, natural = alg.gradient_ascent(model, theta0, alg.AscentHParams(GAMMA, 0.05, 1e-8),
                                         config=alg.AscentConfig(n_steps=300, natural=True))
        return plain.objective, natural.objective, dsorl.policy_iteration(mdp, GAMMA).value @ mdp.rho
    return jax.vmap(one)(mdps)


def test_exact_ascent_converges_and_natural_gradient_is_faster():
    plain, natural, optimum = ascent_runs(stacked_mdps([0, 1, 2]))
    scale = np.abs(optimum)[:, None]
    assert np.all(np.diff(plain, axis=1) >= -1e-12 * scale)  # small steps: monotone
    assert np.all((optimum[:, None] - natural)[:, -1:] <= 1e-8 * scale)
    assert np.all(optimum - plain[:, -1] < 1e-2 * np.abs(optimum))
    assert np.all(optimum - natural[:, 19] < optimum - plain[:, 19])  # after 20 steps


PCO_CONFIG = alg.PCOConfig(n_steps=40, n_episodes=64, horizon=60, epochs=4)


@jax.jit
def pco_runs(mdp, key):
    model = cm.marginal(mdp, TABULAR)
    theta0 = jnp.zeros((S, A))
    hparams = alg.PCOHParams(0.8, 0.1, 0.2)
    P0 = cm.evaluate(model, theta0)[0]
    behaviour = 0.5 * P0 + 0.5 / S
    on = alg.pco(model, theta0, hparams, key, config=PCO_CONFIG)
    off = alg.pco(model, theta0, hparams._replace(behaviour=behaviour), key, config=PCO_CONFIG)
    return (on, off, dsorl.policy_iteration(mdp, 0.8).value @ mdp.rho,
            cm.objective(model, theta0, 0.8))


def test_pco_learns_on_chain_and_off_chain():
    mdp = random_mdp(0, S, A)
    (on_state, on), (off_state, off), optimum, start = pco_runs(mdp, jax.random.key(0))
    model = cm.marginal(mdp, TABULAR)
    for state, trace in ((on_state, on), (off_state, off)):
        final = cm.objective(model, state.params, 0.8)
        np.testing.assert_allclose(trace.objective[-1], final, rtol=1e-12)
        assert optimum - final < 0.05 * (optimum - start)  # closes 95% of the gap
        np.testing.assert_allclose(state.v_hat, cm.value(model, state.params, 0.8),
                                   rtol=0.2, atol=0.2 * np.abs(optimum))
    # the on-chain estimate of J(theta_k) (mean return) tracks the exact value (the
    # objective of row k is J(theta_{k+1}))
    J = np.append(start, on.objective[:-1])
    assert np.mean(np.abs(on.estimate - J)) < 0.05 * np.abs(optimum)


UNCLIPPED = alg.PCOConfig(n_steps=1, n_episodes=16, horizon=30, epochs=1, optimizer=optax.sgd)


def unclipped_pco(model, theta0, lr, key):
    """One batch of PCO with one plain SGD epoch and no clipping, and Algorithm 1 on the
    same episodes (batch `k` draws from `fold_in(key, k)`)."""
    state, _ = alg.pco(model, theta0, alg.PCOHParams(0.7, lr, jnp.inf), key, config=UNCLIPPED)
    states = est.sample_episodes(jax.random.fold_in(key, 0), model, theta0, 30, 16)
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
    ci = alg.ChainIterationConfig(n_steps=2, inner_steps=5)
    ascent = alg.AscentConfig(n_steps=2, natural=True)
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
    with pytest.raises(ValueError, match="n_steps = -1"):
        alg.gradient_ascent(model, theta, alg.AscentHParams(0.9, 0.1),
                            config=alg.AscentConfig(n_steps=-1))
    with pytest.raises(ValueError, match="step_size"):
        alg.chain_iteration(model, theta, alg.ChainIterationHParams(0.9, -0.1),
                            config=alg.ChainIterationConfig(n_steps=1, inner_steps=1))
    with pytest.raises(ValueError, match="proximal"):
        alg.chain_iteration(model, theta, alg.ChainIterationHParams(0.9, 0.1, -1.0),
                            config=alg.ChainIterationConfig(n_steps=1, inner_steps=1))
    with pytest.raises(ValueError, match="inner_steps = 0"):
        alg.chain_iteration(model, theta, alg.ChainIterationHParams(0.9, 0.1),
                            config=alg.ChainIterationConfig(n_steps=1, inner_steps=0))
    with pytest.raises(ValueError, match="gamma"):
        alg.gradient_ascent(model, theta, alg.AscentHParams(1.0, 0.1),
                            config=alg.AscentConfig(n_steps=1))
    with pytest.raises(ValueError, match="damping"):
        alg.gradient_ascent(model, theta, alg.AscentHParams(0.9, 0.1, -1.0),
                            config=alg.AscentConfig(n_steps=1, natural=True))
    config = alg.PCOConfig(n_steps=1, n_episodes=2, horizon=3)
    with pytest.raises(ValueError, match="clip"):
        alg.pco(model, theta, alg.PCOHParams(0.9, 0.1, 0.0), jax.random.key(0), config=config)
    uncovering = jnp.eye(S)  # never samples the chain's off-diagonal transitions
    with pytest.raises(ValueError, match="behaviour chain does not cover"):
        alg.pco(model, theta, alg.PCOHParams(0.9, 0.1, behaviour=uncovering), jax.random.key(0),
                config=config)
    with pytest.raises(ValueError, match="n_episodes = 0"):
        alg.pco(model, theta, alg.PCOHParams(0.9, 0.1), jax.random.key(0),
                config=alg.PCOConfig(n_steps=1, n_episodes=0, horizon=3))
    with pytest.raises(ValueError, match="pass an explicit key"):
        alg.pco(model, theta, alg.PCOHParams(0.9, 0.1), config=config)
    # params0: shape (known to the tabular model), finiteness
    for run, hp, cfg in ((alg.gradient_ascent, alg.AscentHParams(0.9, 0.1), alg.AscentConfig(1)),
                         (alg.chain_iteration, alg.ChainIterationHParams(0.9, 0.1),
                          alg.ChainIterationConfig(1, 1)),
                         (alg.pco, alg.PCOHParams(0.9, 0.1), config)):
        with pytest.raises(ValueError, match=r"params0 must have shape \(4, 3\), got \(3, 4\)"):
            run(model, jnp.zeros((A, S)), hp, jax.random.key(0), config=cfg)
        with pytest.raises(ValueError, match="params0.* is not finite"):
            run(model, theta.at[1, 2].set(jnp.nan), hp, jax.random.key(0), config=cfg)


# --- the contract: float32, jit/vmap with the problem captured or passed, the trace ------


def _runs(model, theta0, key):
    """One short run of each algorithm (shared by the contract tests)."""
    return (alg.gradient_ascent(model, theta0, alg.AscentHParams(GAMMA, 0.5),
                                config=alg.AscentConfig(n_steps=3), keep_params=True),
            alg.gradient_ascent(model, theta0, alg.AscentHParams(GAMMA, 0.1, 1e-3),
                                config=alg.AscentConfig(n_steps=2, natural=True),
                                keep_params=True),
            alg.chain_iteration(model, theta0, alg.ChainIterationHParams(GAMMA, 0.1),
                                config=alg.ChainIterationConfig(n_steps=2, inner_steps=20),
                                keep_params=True),
            alg.pco(model, theta0, alg.PCOHParams(GAMMA, 0.1), key,
                    config=alg.PCOConfig(n_steps=2, n_episodes=8, horizon=12, epochs=2),
                    keep_params=True))


def test_float32_model_and_params_run_in_float32():
    """A float32 MDP with float32 parameters under x64 runs and stays float32 (Chain
    Iteration and the natural gradient used to fail); a float64 MDP with float32
    parameters runs in float64 (params0 is cast to the model's dtype)."""
    mdp = random_mdp(7, S, A)
    mdp32 = dsorl.MDP(*(jnp.asarray(x, jnp.float32) for x in (mdp.P, mdp.R, mdp.rho)))
    theta32 = jnp.zeros((S, A), jnp.float32)
    model64 = cm.marginal(mdp, TABULAR)
    runs = _runs(cm.marginal(mdp32, TABULAR), theta32, jax.random.key(0))  # un-jitted
    reference = jax.jit(lambda: _runs(model64, jnp.zeros((S, A)), jax.random.key(0))[:3])()
    for (state, trace), ref in zip(runs, reference + (None,)):
        assert state.params.dtype == jnp.float32 and trace.objective.dtype == jnp.float32
        assert np.all(np.isfinite(trace.objective))
        if ref is not None:  # the exact methods: float64's numbers to float32's accuracy
            np.testing.assert_allclose(trace.objective, ref[1].objective, rtol=1e-4)
    state, trace = alg.chain_iteration(model64, theta32, alg.ChainIterationHParams(GAMMA, 0.1),
                                       config=alg.ChainIterationConfig(n_steps=2, inner_steps=20))
    assert state.params.dtype == jnp.float64
    np.testing.assert_allclose(trace.objective, reference[2][1].objective, rtol=1e-13)


def test_trace_records_the_objective_after_each_step():
    mdp = random_mdp(8, S, A)
    model = cm.marginal(mdp, TABULAR)
    runs = jax.jit(lambda key: _runs(model, jnp.zeros((S, A)), key))(jax.random.key(1))
    for state, trace in runs:
        np.testing.assert_allclose(trace.params[-1], state.params, rtol=0, atol=0)
        independent = [cm.objective(model, p, GAMMA) for p in trace.params]
        np.testing.assert_allclose(trace.objective, independent, rtol=1e-12)
        np.testing.assert_allclose(trace.objective[-1], cm.objective(model, state.params, GAMMA),
                                   rtol=1e-12)


def test_jit_vmap_with_the_problem_captured_and_passed():
    """`jit(vmap)` over keys with the model captured, and over MDPs passed as arguments
    (the model built inside), equal the single runs."""
    mdp = random_mdp(9, S, A)
    keys = jax.random.split(jax.random.key(2), 2)
    model = cm.marginal(mdp, TABULAR)
    captured = jax.jit(jax.vmap(lambda k: _runs(model, jnp.zeros((S, A)), k)))(keys)
    mdps = stacked_mdps([9, 9])
    passed = jax.jit(jax.vmap(lambda m, k: _runs(cm.marginal(m, TABULAR), jnp.zeros((S, A)), k)))(
        mdps, keys)
    one = jax.jit(lambda k: _runs(model, jnp.zeros((S, A)), k))
    for i in range(2):
        single = one(keys[i])
        for batched in (captured, passed):
            jax.tree_util.tree_map(
                lambda b, s: np.testing.assert_allclose(b[i], s, rtol=1e-9, atol=1e-12),
                batched, single)


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
             "chain_iteration": {**dso_benchmark.DEFAULTS["chain_iteration"], "n_steps": 3,
                                 "inner_steps": 10},
             "gradient_ascent": {**dso_benchmark.DEFAULTS["gradient_ascent"], "n_steps": 5},
             "natural_gradient": {**dso_benchmark.DEFAULTS["natural_gradient"], "n_steps": 3,
                                  "batch_size": 2},
             "pco": {**dso_benchmark.DEFAULTS["pco"], "n_steps": 2, "horizon": 10},
             "variance": {**dso_benchmark.DEFAULTS["variance"], "episodes": 20, "repeats": 2,
                          "augmented_states": 5, "timing_episodes": 20},
             "lmdp": {**dso_benchmark.DEFAULTS["lmdp"], "n_states": 11, "repeats": 1,
                      "gradient_ascent": {"n_steps": 5, "step_size": 0.3},
                      "natural_gradient": {"n_steps": 5, "step_size": 0.3,
                                           "damping": 1e-8},
                      "chain_iteration": {"n_steps": 2, "inner_steps": 5,
                                          "step_size": 0.1, "proximal": 1.0},
                      "z_learning": {"n_steps": 20, "step_size": 10.0,
                                     "behaviour_mix": 0.5}}}
    result = dso_benchmark.run(small, log=lambda msg: None)
    assert {"garnet", "variance", "estimator_speed", "lmdp"} <= set(result["tables"])
