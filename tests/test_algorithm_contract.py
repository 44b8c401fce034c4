"""Every public algorithm entry point against bad input (issue 11, item 7), through one contract.

Each case is an algorithm with a small valid problem; the tests perturb one argument at a
time (NaN or inf parameters, wrong shapes and dtypes, discount factors outside [0, 1),
zero or negative step sizes, unknown hyperparameters, a missing key, a multichain problem
where a unichain one is needed) and require a `ValueError`/`TypeError` that names the
argument, raised at the boundary before anything is compiled, and a grid sweep that
refuses the same values. Inside `jit`, where values are traced and unchecked, a NaN start
shows as NaN in the trace (documented in `dsorl.algorithms.base.run`), never as a hang.
"""
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import dsorl
from dsorl import chain_models as cm, sweep
from dsorl.algorithms import base, dso, dynpg, lmdp, meanfield, nbw, pg
from dsorl.envs import lmdp as lmdp_envs
from dsorl.features import TanhFeature, init_particles
from dsorl.policies import sigmoid, tabular_softmax

S, A = 4, 2


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    algorithm: Any
    problem: Callable     # () -> problem
    params0: Callable     # problem -> a valid params0
    hparams: dict         # valid HParams fields
    config: Any
    sampled: bool


def _mdp():
    return dsorl.envs.garnet(jax.random.key(3), n_states=S, n_actions=A, branching=2)


def _model():
    return cm.marginal(_mdp(), tabular_softmax(S, A))


def _lmdp():
    return lmdp_envs.random_lmdp(jax.random.key(0), 5, 3, n_terminal=1)


def _meanfield_problem():
    mdp = _mdp()
    encodings = jnp.asarray(np.eye(S * A).reshape(S, A, S * A))
    return meanfield.MeanFieldProblem(mdp, TanhFeature(width=2), encodings)


def _nbw_mdp():
    return dsorl.envs.nbw_env("A1")


CASES = [
    Case("pg exact", pg, _mdp, lambda p: jnp.zeros((S, A)), dict(gamma=0.9, step_size=1.0),
         pg.Config(n_steps=2), False),
    Case("pg reinforce", pg, _mdp, lambda p: jnp.zeros((S, A)),
         dict(gamma=0.9, step_size=1.0),
         pg.Config(n_steps=2, estimator="reinforce", episode_length=5), True),
    Case("dynpg exact", dynpg, _mdp, lambda p: jnp.zeros((S, A)),
         dict(gamma=0.9, step_size=1.0), dynpg.Config(n_steps=2), False),
    Case("dso gradient ascent", dso.GRADIENT_ASCENT, _model, lambda p: jnp.zeros((S, A)),
         dict(gamma=0.9, step_size=1.0), dso.GRADIENT_ASCENT.Config(n_steps=2), False),
    Case("dso natural gradient", dso.GRADIENT_ASCENT, _model, lambda p: jnp.zeros((S, A)),
         dict(gamma=0.9, step_size=1.0, damping=1e-3),
         dso.GRADIENT_ASCENT.Config(n_steps=2, natural=True), False),
    Case("dso chain iteration", dso.CHAIN_ITERATION, _model, lambda p: jnp.zeros((S, A)),
         dict(gamma=0.9, step_size=0.5), dso.CHAIN_ITERATION.Config(n_steps=2, inner_steps=3),
         False),
    Case("dso pco", dso.PCO, _model, lambda p: jnp.zeros((S, A)),
         dict(gamma=0.9, step_size=0.1), dso.PCO.Config(n_steps=2, n_episodes=4, horizon=5),
         True),
    Case("lmdp z-learning", lmdp.Z_LEARNING, _lmdp, lambda p: jnp.ones(p.passive.shape[0]),
         dict(step_size=1.0), lmdp.Z_LEARNING.Config(n_steps=2), True),
    Case("nbw exact", nbw.EXACT, _nbw_mdp, lambda p: jnp.zeros(2), dict(),
         nbw.Config(n_steps=2, policy=sigmoid(2)), False),
    Case("nbw discounted", nbw.DISCOUNTED, _nbw_mdp, lambda p: jnp.zeros(2),
         dict(gamma=0.9), nbw.Config(n_steps=2, policy=sigmoid(2)), False),
    Case("meanfield", meanfield, _meanfield_problem,
         lambda p: init_particles(p.feature, jax.random.key(0), 3, p.encodings),
         dict(gamma=0.9, tau=0.1, sigma=0.1, step_size=0.1),
         meanfield.Config(n_steps=2, n_particles=3), True),
]
IDS = [c.name for c in CASES]


def _setup(case):
    problem = case.problem()
    return problem, case.params0(problem), case.algorithm.HParams(**case.hparams)


def _run(case, problem, params0, hparams, key=jax.random.key(0)):
    return base.run(case.algorithm, problem, params0, hparams, key, config=case.config)


def _leaves(tree):
    return jax.tree_util.tree_leaves(tree)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_valid_input_runs_and_is_finite(case):
    problem, params0, hparams = _setup(case)
    state, trace = _run(case, problem, params0, hparams)
    assert all(np.all(np.isfinite(x)) for x in _leaves(state.params))


@pytest.mark.parametrize("case", CASES, ids=IDS)
@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_non_finite_params0_is_refused_naming_it(case, data):
    problem, params0, hparams = _setup(case)
    leaves, treedef = jax.tree_util.tree_flatten(params0)
    i = data.draw(st.integers(0, len(leaves) - 1))
    flat = np.array(leaves[i], dtype=np.float64).ravel()
    j = data.draw(st.integers(0, flat.size - 1))
    flat[j] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    leaves[i] = flat.reshape(np.shape(leaves[i]))
    with pytest.raises(ValueError, match="params0"):
        _run(case, problem, jax.tree_util.tree_unflatten(treedef, leaves), hparams)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_params0_of_the_wrong_shape_is_refused_naming_it(case):
    problem, params0, hparams = _setup(case)
    wrong = jax.tree_util.tree_map(lambda x: jnp.zeros(np.shape(x)[:-1] + (np.shape(x)[-1] + 1,)),
                                   params0)
    with pytest.raises(ValueError, match="params0"):
        _run(case, problem, wrong, hparams)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_params0_of_a_non_numeric_dtype_is_refused(case):
    problem, params0, hparams = _setup(case)
    text = jax.tree_util.tree_map(lambda x: np.full(np.shape(x), "a"), params0)
    with pytest.raises(TypeError, match="params0.* must be numeric"):
        _run(case, problem, text, hparams)


GAMMA_CASES = [c for c in CASES if "gamma" in c.hparams]


@pytest.mark.parametrize("case", GAMMA_CASES, ids=[c.name for c in GAMMA_CASES])
@settings(max_examples=8, deadline=None)
@given(gamma=st.one_of(st.floats(max_value=-1e-12, allow_nan=False, allow_infinity=False),
                       st.floats(min_value=1.0, allow_nan=False),
                       st.just(float("nan"))))
def test_gamma_outside_the_unit_interval_is_refused(case, gamma):
    problem, params0, hparams = _setup(case)
    with pytest.raises(ValueError, match="gamma"):
        _run(case, problem, params0, hparams._replace(gamma=gamma))


STEP_CASES = [c for c in CASES if "step_size" in c.hparams]


@pytest.mark.parametrize("case", STEP_CASES, ids=[c.name for c in STEP_CASES])
@settings(max_examples=6, deadline=None)
@given(step=st.one_of(st.floats(max_value=0.0, allow_nan=False), st.just(float("nan"))))
def test_non_positive_step_size_is_refused(case, step):
    problem, params0, hparams = _setup(case)
    with pytest.raises(ValueError, match="step_size"):
        _run(case, problem, params0, hparams._replace(step_size=step))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_unknown_or_missing_hyperparameters_are_named(case):
    problem, params0, _ = _setup(case)
    with pytest.raises(ValueError, match="unknown not_a_field"):
        _run(case, problem, params0, {**case.hparams, "not_a_field": 1.0})
    required = [f for f in case.algorithm.HParams._fields
                if f not in case.algorithm.HParams._field_defaults]
    if required:
        values = {k: v for k, v in case.hparams.items() if k != required[0]}
        with pytest.raises(ValueError, match=f"missing {required[0]}"):
            _run(case, problem, params0, values)


@pytest.mark.parametrize("case", [c for c in CASES if c.sampled], ids=[c.name for c in CASES if c.sampled])
def test_sampled_algorithms_need_an_explicit_key(case):
    problem, params0, hparams = _setup(case)
    with pytest.raises(ValueError, match="key"):
        _run(case, problem, params0, hparams, key=None)
    with pytest.raises(TypeError, match="key"):
        _run(case, problem, params0, hparams, key=3)


@pytest.mark.parametrize("case", GAMMA_CASES, ids=[c.name for c in GAMMA_CASES])
def test_a_sweep_refuses_a_bad_grid_value_before_compiling(case):
    problem, params0, hparams = _setup(case)
    grid = sweep.Grid(gamma=[0.5, 1.0])
    with pytest.raises(ValueError, match=r"grid point gamma=1\.0"):
        sweep.check_grid(case.algorithm, problem, grid, config=case.config,
                         hparams={k: v for k, v in case.hparams.items() if k != "gamma"},
                         params0=params0)


def test_nbw_refuses_a_multichain_mdp():
    # two absorbing states: a policy using every action has two closed classes
    P = np.zeros((3, 2, 3))
    P[0, 0, 1] = P[0, 1, 2] = 1.0
    P[1, :, 1] = P[2, :, 2] = 1.0
    mdp = dsorl.MDP(P, np.ones((3, 2)), np.array([1.0, 0, 0]))
    with pytest.raises(ValueError, match="multichain|closed recurrent classes"):
        nbw.run(mdp, jnp.zeros(2), nbw.HParams(), config=nbw.Config(n_steps=1, policy=sigmoid(3)))


def test_traced_nan_params0_gives_a_nan_trace_not_an_error():
    """Inside jit nothing is checked (values are traced): the documented outcome is NaN."""
    case = CASES[0]
    problem, params0, hparams = _setup(case)
    run = jax.jit(lambda p0: _run(case, problem, p0, hparams)[1].objective)
    assert np.all(np.isfinite(run(params0)))
    assert np.all(np.isnan(run(params0.at[0, 0].set(jnp.nan))))


def test_step_size_is_one_name_and_traces_say_grad_norm():
    """One name per idea across the algorithms (issue 11, item 1)."""
    algorithms = [pg, dynpg, dso.GRADIENT_ASCENT, dso.CHAIN_ITERATION, dso.PCO, lmdp.Z_LEARNING,
                  meanfield]
    for alg in map(base.as_algorithm, algorithms):
        assert "step_size" in alg.HParams._fields, alg
        assert {"learning_rate", "eta", "step_scale"}.isdisjoint(alg.HParams._fields), alg
        assert "gradient_norm" not in alg.Trace._fields, alg
        assert alg.Trace._fields[-1] == "params", alg
        if dataclasses.is_dataclass(alg.Config):
            names = {f.name for f in dataclasses.fields(alg.Config)}
        else:
            names = set(alg.Config._fields)
        assert "n_steps" in names and {"iterations", "max_epochs"}.isdisjoint(names), alg


def test_integer_hyperparameters_and_starts_run_in_the_problem_dtype():
    """`step_size=1` (e.g. from a YAML grid `[1, 2]`) is a number, not an integer step."""
    case = CASES[0]
    problem, params0, _ = _setup(case)
    state, trace = _run(case, problem, np.zeros((S, A), int), {"gamma": 0.9, "step_size": 1})
    _, reference = _run(case, problem, params0, case.algorithm.HParams(0.9, 1.0))
    assert state.params.dtype == jnp.float64
    np.testing.assert_array_equal(trace.objective, reference.objective)


def test_a_params0_axis_is_checked_at_once_naming_the_point():
    case = CASES[0]
    problem, params0, _ = _setup(case)
    starts = np.zeros((5, S, A))
    starts[3, 1, 0] = np.nan
    grid = sweep.Grid(gamma=[0.9], params0=sweep.axis(starts))
    with pytest.raises(ValueError, match=r"params0 axis\[3, 1, 0\]"):
        sweep.check_grid(case.algorithm, problem, grid, config=case.config,
                         hparams={"step_size": 1.0})
    with pytest.raises(ValueError, match=r"shape \(4, 2\) per point"):
        sweep.check_grid(case.algorithm, problem, sweep.Grid(gamma=[0.9], params0=sweep.axis(
            np.zeros((5, S, A + 1)))), config=case.config, hparams={"step_size": 1.0})
