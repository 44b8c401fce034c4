"""Configs: defaults merged, overrides, unknown keys listing the valid ones, wrong types
naming the key, free-form mappings, external job modules, sweep settings."""
import pytest

from dsorl import config as config_lib


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_merge_and_overrides(tmp_path):
    cfg = config_lib.load_config(_write(tmp_path, "job: nbw_analysis\ngrid: {step: 2}\n"),
                                 ["envs=[A1]", "grid.low=-4"])
    assert cfg["job"] == "nbw_analysis" and cfg["envs"] == ["A1"]
    assert cfg["grid"] == {"low": -4.0, "high": 10.0, "step": 2.0}
    assert isinstance(cfg["grid"]["step"], float)  # an int where a float is expected


@pytest.mark.parametrize("text, overrides, message", [
    ("job: nbw_analysis\nenvz: [A1]\n", [], r"unknown config key 'envz'; valid keys: envs, gain_tolerance, grid, output_dir"),
    ("job: nbw_analysis\n", ["grid.lo=1"], r"unknown config key 'grid.lo'; valid keys under grid: high, low, step"),
    ("job: nbw_analysis\ngrid: {step: fine}\n", [], r"config key 'grid.step' must be of type float"),
    ("job: nbw_analysis\ngrid: 3\n", [], r"config key 'grid' must be a mapping"),
    ("job: nbw_analysis\ngain_tolerance: true\n", [], r"'gain_tolerance' must be of type float"),
    ("job: nbw_analysis\nenvs: A1\n", [], r"'envs' must be of type list"),
    ("envs: [A1]\n", [], r"a mapping with a 'job' key"),
    ("job: nope_not_a_job\n", [], r"unknown job 'nope_not_a_job'; available jobs: .*nbw_analysis"),
    ("job: [1]\n", [], r"job must be a name"),
    ("job: nbw_analysis\n", ["grid"], r"--set takes key=value"),
    ("job: sweep_pg\ngrid: [0.9]\n", [], r"config key 'grid' must be a mapping"),
    ("job: sweep_pg\nsweep: {chunk_size: 2.5}\n", [], r"'sweep.chunk_size' must be a positive integer or null"),
    ("job: sweep_pg\nsweep: {progress: 1}\n", [], r"'sweep.progress' must be true, false or null"),
    ("job: sweep_pg\nsweep: {traces: [1]}\n", [], r"'sweep.traces' must be a list of trace names"),
    ("job: sweep_pg\nsweep: {trace_every: 0}\n", [], r"'sweep.trace_every' and 'sweep.memory_budget_mb' must be"),
    ("job: sweep_pg\nsweep: {chunks: 4}\n", [], r"unknown config key 'sweep.chunks'; valid keys under sweep: chunk_size, memory_budget_mb, progress, trace_every, traces"),
])
def test_bad_configs_are_named(tmp_path, text, overrides, message):
    with pytest.raises(ValueError, match=message):
        config_lib.load_config(_write(tmp_path, text), overrides)


def test_free_mappings_are_replaced_wholesale(tmp_path):
    cfg = config_lib.load_config(_write(tmp_path, "job: sweep_pg\nalgorithm: dynpg\n"
                                        "grid: {gamma: [0.9], step_size: [1, 2]}\n"))
    assert cfg["grid"] == {"gamma": [0.9], "step_size": [1, 2]}
    default = config_lib.load_config(_write(tmp_path, "job: sweep_pg\n"))
    assert default["grid"]["step_size"] == [1.0] and default["sweep"] == config_lib.SWEEP_DEFAULTS
    # the job's DEFAULTS object is not shared with (and so not mutated through) a config
    default["grid"]["gamma"].append(0.1)
    assert 0.1 not in config_lib.load_config(_write(tmp_path, "job: sweep_pg\n"))["grid"]["gamma"]


def test_external_job_modules_and_job_kinds(tmp_path, monkeypatch):
    (tmp_path / "my_job.py").write_text(
        '"""A user job."""\nDEFAULTS = {"n": 1}\ndef run(config):\n    return {"tables": {}}\n')
    (tmp_path / "not_a_job.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = config_lib.load_config(_write(tmp_path, "job: my_job\nn: 3\n"))
    assert cfg == {"job": "my_job", "n": 3}
    with pytest.raises(ValueError, match="unknown job 'not_a_job'"):
        config_lib.job_module("not_a_job")
    kinds = {name: k for name, k, _ in config_lib.job_summaries()}
    assert kinds["nbw_analysis"] == "run" and kinds["sweep_pg"] == "sweep"
