"""The control sweep job (dsorl.jobs.sweep_control): bad configs named before compiling, the
members' hyperparameters and starts, and (slow) a tiny sweep whose rows equal separate runs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsorl import config as config_lib
from dsorl import sweep as sw
from dsorl.algorithms import control as C
from dsorl.jobs import sweep_control

TINY = {"job": "sweep_control", "total_steps": 200, "eval_episodes": 2,
        "dsorl": {"hidden": [8], "n_envs": 2, "n_rollout": 50, "value_epochs": 1,
                  "max_grad_norm": 0.5},
        "pco": {"epochs": 1, "n_minibatches": 2},
        "grid": {"step_size": [1e-3, 1e-2], "seed": [0, 1]}}


@pytest.mark.parametrize("overrides, match", [
    ({"method": "ppo"}, "'method' must be one of pco, dso, reinforce, natural_dso, got 'ppo'"),
    ({"grid": {"step_size": [1e-3]}}, "seed \\(required"),
    ({"method": "dso", "grid": {"step_size": [1e-3], "clip": [0.2], "seed": [0]}},
     "'grid' for dso takes gamma, step_size, value_step_size and seed"),
    ({"method": "dso", "hparams": {"gamma": 0.99, "clip": 0.2}}, "'hparams' for dso: unknown clip"),
    ({"grid": {"step_size": [1e-3, -1.0], "seed": [0]}}, "step_size=-1.0"),
    ({"hparams": {"gamma": 1.0}}, "gamma"),
    ({"total_steps": 50}, "'total_steps' = 50 must be at least one batch"),
    ({"pco": {"epochs": 1, "n_minibatches": 3}}, "n_minibatches = 3 must divide"),
    ({"method": "natural_dso", "hparams": {"gamma": 0.99, "damping": 0.0}}, "damping = 0.0"),
    ({"method": "natural_dso", "natural_dso": {"cg_iters": 0}}, "cg_iters = 0"),
])
def test_bad_configs_are_named_before_compiling(overrides, match):
    cfg = config_lib.resolve({**TINY, **overrides})
    with pytest.raises(ValueError, match=match):
        sweep_control.sweep_spec(cfg)


def test_members_get_their_hparams_and_a_start_from_their_key():
    spec = sweep_control.sweep_spec(config_lib.resolve(TINY))
    hp = spec["hparams"]({"step_size": 0.01})
    assert hp == C.PCOHParams(0.99, 0.01, 1e-3, 0.2)  # fixed fields from the defaults
    assert spec["grid"].size == 4 and spec["config"].n_steps == 2
    # the start the run draws is the policy's init from fold_in(key, 7), in params0's dtype
    calls = []
    run = sweep_control.FromKey(type("Rec", (), {"run": staticmethod(
        lambda problem, start, hparams, key, config: calls.append(start))}))
    key = jax.random.key(3)
    run(spec["mdp"], spec["params0"], hp, key, config=spec["config"])
    expected = spec["config"].policy.init(jax.random.fold_in(key, 7), jnp.float32)
    jax.tree_util.tree_map(np.testing.assert_array_equal, calls[0], expected)
    assert jax.tree_util.tree_leaves(calls[0])[0].dtype == jnp.float32


@pytest.mark.slow
def test_tiny_sweep_rows_equal_separate_runs():
    from dsorl.jobs.control import evaluation_return

    spec = sweep_control.sweep_spec(config_lib.resolve(TINY))
    result = sw.sweep(**spec, traces=["episode_return"])
    rows = result.rows()
    assert [(r["step_size"], r["seed"]) for r in rows] == [(1e-3, 0), (1e-3, 1), (1e-2, 0),
                                                            (1e-2, 1)]
    # the sweep hands the environment's parameters over as arrays (python floats in the
    # problem are weakly typed: other roundings, other trajectories)
    problem = jax.tree_util.tree_map(np.asarray, spec["mdp"])
    for r in rows[1:3]:
        key = jax.random.key(r["seed"])
        hp = C.PCOHParams(0.99, r["step_size"], 1e-3, 0.2)
        state, trace = jax.jit(lambda k: spec["run"](problem, spec["params0"], hp, k,
                                                     config=spec["config"]))(key)
        score = jax.jit(lambda p: evaluation_return(problem, spec["config"].policy, p,
                                                    jax.random.fold_in(key, 99), 2))(state.params)
        assert r["eval_return"] == pytest.approx(float(score), rel=1e-5)
        assert r["mean_train_return"] == pytest.approx(float(np.nanmean(trace.episode_return)),
                                                       rel=1e-5)
