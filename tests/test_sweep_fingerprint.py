"""A sweep's identity is its content: the resume check and the compiled-program cache of
`dsorl.sweep` see the code and every value the swept function reads (closure cells,
defaults, globals, `functools.partial` arguments, algorithm records), and a sweep that
reads a value with no fingerprint is never resumed from disk.

The swept function is the toy exact softmax PG of `test_sweep_toy` (checked there against
a NumPy reference); each case shifts or scales its objective by the value under test, so
a stale result is visible in the table.
"""
import dataclasses
import functools
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dsorl
from dsorl import sweep as sw
from test_sweep_toy import Config
from test_sweep_toy import softmax_pg as run

MDP = dsorl.envs.garnet(jax.random.key(0), 4, 2, 2)
THETA0 = jnp.zeros((4, 2))
CONFIG = Config(n_steps=3)
GRID = sw.Grid(gamma=[0.5, 0.9], lr=[1.0], seed=[0, 1])


def shifted_by(shift):
    """The toy run with `shift` added to its objective: `shift` is a closure cell."""

    def shifted(mdp, params0, hparams, key, *, config):
        theta, trace = run(mdp, params0, hparams, key, config=config)
        return theta, {**trace, "objective": trace["objective"] + shift}

    return shifted


def _sweep(fn, out=None, **kwargs):
    return sw.sweep(fn, MDP, GRID, config=CONFIG, params0=THETA0, out_dir=out, **kwargs)


@pytest.fixture(scope="module")
def plain():
    return _sweep(run).table["objective"]


def test_a_closure_over_another_constant_is_another_sweep(tmp_path, plain):
    # the issue's case: the same function closing over 0.0, then 5.0, into one directory
    first = _sweep(shifted_by(0.0), tmp_path)
    np.testing.assert_allclose(first.table["objective"], plain, rtol=1e-13)
    with pytest.raises(ValueError, match=r"holds results of a different sweep \(differs in: run;"
                                         r" run: the code or a value it reads \(closure.*"
                                         r"overwrite \(--overwrite, overwrite=True\)"):
        _sweep(shifted_by(5.0), tmp_path)
    second = _sweep(shifted_by(5.0), tmp_path, overwrite=True)
    assert second.meta["members_computed"] == 4
    np.testing.assert_allclose(second.table["objective"], plain + 5.0, rtol=1e-13)
    # a new closure over an equal value is the same sweep: it resumes (nothing computed)
    again = _sweep(shifted_by(5.0), tmp_path)
    assert again.meta["members_computed"] == 0
    np.testing.assert_array_equal(again.table["objective"], second.table["objective"])


def test_a_closure_over_another_array_is_another_sweep(tmp_path, plain):
    _sweep(shifted_by(np.zeros(1)), tmp_path)
    with pytest.raises(ValueError, match=r"differs in: run"):
        _sweep(shifted_by(np.array([1e-300])), tmp_path)  # one bit of difference suffices


def with_default(mdp, params0, hparams, key, *, config, shift=0.0):
    theta, trace = run(mdp, params0, hparams, key, config=config)
    return theta, {**trace, "objective": trace["objective"] + shift}


def test_partial_arguments_and_defaults_are_content(tmp_path, plain):
    _sweep(functools.partial(with_default, shift=0.0), tmp_path)
    with pytest.raises(ValueError, match=r"differs in: run"):
        _sweep(functools.partial(with_default, shift=2.0), tmp_path)
    other = tmp_path / "defaults"
    fn = lambda *a, shift=1.0, **k: with_default(*a, shift=shift, **k)
    _sweep(fn, other)
    changed = lambda *a, shift=3.0, **k: with_default(*a, shift=shift, **k)
    with pytest.raises(ValueError, match=r"differs in: run"):
        _sweep(changed, other)
    np.testing.assert_allclose(_sweep(changed, other, overwrite=True).table["objective"],
                               plain + 3.0, rtol=1e-13)


SCALE = np.array(1.0)


def scaled(mdp, params0, hparams, key, *, config):
    theta, trace = run(mdp, params0, hparams, key, config=config)
    return theta, {**trace, "objective": SCALE * trace["objective"]}


def test_a_changed_global_is_another_sweep_and_another_program(tmp_path, monkeypatch, plain):
    first = _sweep(scaled, tmp_path)
    np.testing.assert_allclose(first.table["objective"], plain, rtol=1e-13)
    monkeypatch.setitem(globals(), "SCALE", np.array(2.0))
    with pytest.raises(ValueError, match=r"differs in: run"):
        _sweep(scaled, tmp_path)
    # without a directory: the program compiled for SCALE = 1 must not be reused
    np.testing.assert_allclose(_sweep(scaled).table["objective"], 2.0 * plain, rtol=1e-13)


def helper(x):
    return x


def calls_a_helper(mdp, params0, hparams, key, *, config):
    theta, trace = run(mdp, params0, hparams, key, config=config)
    return theta, {**trace, "objective": helper(trace["objective"])}


def test_the_code_of_called_functions_is_content(tmp_path, monkeypatch, plain):
    _sweep(calls_a_helper, tmp_path)
    monkeypatch.setitem(globals(), "helper", lambda x: -x)  # the helper's code changed
    with pytest.raises(ValueError, match=r"differs in: run"):
        _sweep(calls_a_helper, tmp_path)
    np.testing.assert_allclose(_sweep(calls_a_helper).table["objective"], -plain, rtol=1e-13)


def test_what_a_function_reads_is_found():
    def reader():
        from dsorl import markov  # a function-level import
        return SCALE, np.linalg.norm, markov.solve, helper

    reads = sw._globals_read(reader)
    assert reads["SCALE"] is SCALE and reads["helper"] is helper
    assert reads["np.linalg.norm"] is np.linalg.norm  # module chains followed
    assert reads["dsorl.markov"] is dsorl.markov
    canon = sw._Canonical()
    # code outside installed libraries is read; library code is named with its version
    assert canon(np.linalg.norm, "f") == {"library": "numpy.linalg.norm", "version": np.__version__}
    assert set(canon(helper, "f")) == {"function", "sha256"}
    assert sw._is_library("jax.numpy") and not sw._is_library("dsorl.markov")
    assert not sw._is_library(__name__)


def test_an_algorithm_record_is_its_content():
    from dsorl.algorithms import pg

    record = pg.EXACT if hasattr(pg, "EXACT") else dsorl.algorithms.base.as_algorithm(pg)
    digest = lambda x: sw._digest(sw._Canonical()(x, "run"))
    assert digest(record) == digest(dataclasses.replace(record))
    other = dataclasses.replace(record, validate=lambda *a: None)
    assert digest(other) != digest(record)
    # a record's functions are followed into the package: the step's code is part of it
    canon = sw._Canonical()
    canon(record, "run")
    assert canon.problems == []


def test_a_sweep_of_an_unfingerprinted_value_is_never_resumed(tmp_path, plain):
    lock = threading.Lock()  # an object with no attributes and no pytree registration

    def locked(mdp, params0, hparams, key, *, config):
        assert lock is not None
        return run(mdp, params0, hparams, key, config=config)

    first = _sweep(locked, tmp_path)  # a fresh directory: written as usual
    np.testing.assert_allclose(first.table["objective"], plain, rtol=1e-13)
    assert first.meta["members_computed"] == 4
    with pytest.raises(ValueError, match=r"cannot be told apart.*closure 'lock'.*"
                                         r"overwrite \(--overwrite, overwrite=True\)"):
        _sweep(locked, tmp_path)
    assert _sweep(locked, tmp_path, overwrite=True).meta["members_computed"] == 4


def test_a_library_closure_is_its_values():
    import optax

    digest = lambda x: sw._digest(sw._Canonical()(x, "run"))
    # optax's update functions are optax's code (named with its version) closing over
    # the learning rate: the rate is content
    assert digest(optax.sgd(0.1).update) == digest(optax.sgd(0.1).update)
    assert digest(optax.sgd(0.1).update) != digest(optax.sgd(0.2).update)


def _sweep_configs():
    """The shipped configs of sweep jobs (sweep_scaling.yaml is a benchmark that runs sweeps)."""
    from dsorl import config as config_lib

    out = []
    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        cfg = config_lib.load_config(path)
        if config_lib.is_sweep_job(config_lib.job_module(cfg["job"])) and "grid" in cfg:
            out.append(path)
    return out


@pytest.mark.parametrize("path", _sweep_configs(), ids=lambda p: p.name)
def test_every_shipped_sweep_is_fingerprinted(path):
    """Every shipped sweep resumes: nothing it reads lacks a fingerprint."""
    from dsorl import config as config_lib

    cfg = config_lib.load_config(path)
    module = config_lib.job_module(cfg["job"])
    spec = module.sweep_spec(cfg)
    run_, hparams = spec["run"], spec.get("hparams")
    algorithm = sw._as_algorithm(run_)
    if algorithm is not None:
        run_, hparams = sw._AlgorithmRun(algorithm), sw._HParamsOf(algorithm, hparams)
    mdp = spec.get("mdp")
    envs = dict(mdp) if isinstance(mdp, dict) else {None: mdp}
    described = sw._describe(run_, envs, spec["grid"], spec.get("config"), hparams,
                             spec.get("params0"), spec.get("metrics", sw.last_values), False, 1,
                             cfg)
    assert described["unfingerprinted"] == []
