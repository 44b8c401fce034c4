"""Tidy result tables: every number column reads back from CSV as numbers, "not reached" is
NaN beside a boolean column (never text such as "> 3390" or "0/4", never -1), and each
job's docstring names its columns. Tiny configs of the jobs that had text or sentinels."""
import math
from pathlib import Path

import numpy as np
import pytest

from dsorl import config as config_lib
from dsorl.results import read_results, write_results

ROOT = Path(__file__).resolve().parents[1]


def _round_trip(tmp_path, tables):
    write_results(tmp_path, {}, tables=tables)
    return read_results(tmp_path)[0]


def _assert_tidy(table, text_columns):
    """Columns other than `text_columns` are numbers or booleans; no -1 counts."""
    for name, column in table.items():
        if name in text_columns:
            assert column.dtype.kind in "OU", name
            continue
        assert column.dtype.kind in "fiub", f"{name} is {column.dtype}: {column[:3]}"
        if column.dtype.kind in "fi" and name.endswith(("_to_target", "_to_eps", "iterations")):
            assert not np.any(column == -1), f"{name} uses -1 for 'not reached'"


def _documented(module, table):
    doc = module.__doc__
    missing = [c for c in table if c not in doc]
    assert missing == [], f"{module.__name__} docstring lacks {missing}"


def test_dynpg_scaling_counts_are_numbers_with_a_reached_flag(tmp_path):
    from dsorl.jobs import dynpg_scaling

    # a tiny PG budget that no step size meets, and a DynPG run over its budget (skipped)
    cfg = config_lib.resolve({"job": "dynpg_scaling", "horizons": [10], "chain_lengths": [],
                              "dynpg_steps_coefficients": [1.0, 1.0e6], "dynpg_budget": 5000,
                              "pg_step_sizes": [1.0], "pg_budget": 3, "repeats": 1})
    result = dynpg_scaling.run(cfg)
    rows = result["tables"]["horizon"]
    table = _round_trip(tmp_path, result["tables"])["horizon"]
    _assert_tidy(table, {"method", "setting"})
    _documented(dynpg_scaling, table)
    by = {r["setting"]: r for r in rows}
    assert set(by) == {"k=1", "k=1e+06", "eta=1", "1/L"}
    assert by["k=1e+06"]["skipped"] and not by["k=1e+06"]["reached"]
    assert math.isnan(by["k=1e+06"]["steps_to_eps"]) and by["k=1e+06"]["budget_steps"] > 5000
    for s in ("eta=1", "1/L"):  # 3 PG steps cannot reach epsilon = 0.01
        assert not by[s]["reached"] and math.isnan(by[s]["steps_to_eps"])
        assert by[s]["budget_steps"] == 3
    dyn = by["k=1"]
    assert dyn["reached"] == (not math.isnan(dyn["steps_to_eps"]))
    assert by["1/L"]["step_size"] == pytest.approx((1 - 0.9) ** 3 / 8)
    assert math.isnan(dyn["step_size"]) and dyn["k"] == 1.0
    exp = _round_trip(tmp_path / "e", {"exponents": result["tables"]["exponents"]})["exponents"]
    _assert_tidy(exp, {"study", "method", "setting"})


def test_dso_lmdp_not_reached_is_nan_not_minus_one(tmp_path):
    from dsorl.jobs import dso_lmdp

    cfg = config_lib.resolve({"job": "dso_lmdp", "n_states": 11, "repeats": 1,
                              "gradient_ascent": {"n_steps": 3}, "natural_gradient": {"n_steps": 3},
                              "chain_iteration": {"n_steps": 2, "inner_steps": 5},
                              "z_learning": {"n_steps": 5}})
    result = dso_lmdp.run(cfg)
    rows = result["tables"]["lmdp"]
    table = _round_trip(tmp_path, result["tables"])["lmdp"]
    _assert_tidy(table, {"method"})
    _documented(dso_lmdp, table)
    assert table["reached"].dtype == bool
    for r in rows:
        assert r["reached"] == (not math.isnan(r["iterations_to_target"]))
        if not r["method"].startswith("z_learning"):  # no samples drawn: NaN, not -1
            assert math.isnan(r["samples_to_target"])
    assert not all(r["reached"] for r in rows)  # 3 iterations: someone misses 1e-6


def test_dso_benchmark_seed_counts_are_numbers(tmp_path):
    from dsorl.jobs import dso_benchmark

    d = dso_benchmark.DEFAULTS
    cfg = {**d, "parts": ["garnet"], "repeats": 1,
           "garnet": {**d["garnet"], "n_states": 6, "seeds": 2},
           "chain_iteration": {**d["chain_iteration"], "n_steps": 2, "inner_steps": 5},
           "gradient_ascent": {**d["gradient_ascent"], "n_steps": 3},
           "natural_gradient": {**d["natural_gradient"], "n_steps": 2, "batch_size": 2},
           "pco": {**d["pco"], "n_steps": 2, "horizon": 5, "n_episodes": 2, "epochs": 1}}
    result = dso_benchmark.run(cfg, log=lambda msg: None)
    rows = result["tables"]["garnet"]
    table = _round_trip(tmp_path, result["tables"])["garnet"]
    _assert_tidy(table, {"method"})
    _documented(dso_benchmark, table)
    for r in rows:
        assert 0 <= r["seeds_reached"] <= r["seeds"] == 2
        assert r["all_reached"] == (r["seeds_reached"] == r["seeds"])
        assert r["all_reached"] or math.isnan(r["max_iterations_to_target"])
    truth = rows[-1]
    assert truth["method"].startswith("policy_iteration") and math.isnan(truth["iterations"])


def test_dynpg_sutton_median_not_reached_is_nan(tmp_path):
    from dsorl.jobs import dynpg_sutton

    cfg = config_lib.resolve({"job": "dynpg_sutton", "gammas": [0.9], "interactions": 4,
                              "runs": 2, "chunk": 2, "baseline_runs": 1,
                              "curve_table_every": 2})
    result = dynpg_sutton.run(cfg)
    table = _round_trip(tmp_path, result["tables"])
    _assert_tidy(table["summary"], {"algorithm"})
    _documented(dynpg_sutton, table["summary"])
    for r in result["tables"]["summary"]:  # 4 interactions: no run succeeds
        assert not r["median_reached"] and math.isnan(r["median_first_success"])


@pytest.mark.parametrize("job, overrides", [
    ("nbw_analysis", {"envs": ["A1", "B1"], "grid": {"step": 10.0}}),
    pytest.param("dso_gradient_check", {"episodes": [20], "repeats": 2},
                 marks=pytest.mark.slow),  # 6 s of compiles for a docstring check
    ("meanfield_control", {"grid": {"n_states": 7, "n_actions": 5}, "particles": 4, "steps": 3,
                           "seeds": 2}),
])
def test_tables_are_typed_and_documented(tmp_path, job, overrides):
    module = config_lib.job_module(job)
    result = module.run(config_lib.resolve({"job": job, **overrides}))
    tables = _round_trip(tmp_path, result["tables"])
    for name, table in tables.items():
        text = {c for c, v in table.items() if v.dtype.kind in "OU"}
        assert text <= {"env", "baseline", "policy"}, (name, text)  # labels only
        _assert_tidy(table, text)
        _documented(module, table)
