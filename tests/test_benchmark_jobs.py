"""The benchmark jobs `core_eval` and `sweep_scaling` end to end on tiny configs: their
table columns, and dsorl's numbers agreeing with the baselines (the jobs check agreement
before timing and raise otherwise); the shared NumPy baselines against dsorl directly."""
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import dsorl
from dsorl import cli
from dsorl import config as config_lib
from dsorl.jobs import _baselines as base
from dsorl.jobs import core_eval, sweep_scaling

ROOT = Path(__file__).resolve().parents[1]
TINY_CORE = ["sizes=[6]", "batches=[1, 3]", "repeats=2", "min_sample_s=0.0", "max_case_s=0.1",
             "value_iteration.sizes=[6]", "value_iteration.gammas=[0.9]",
             "gamma_sweep.sizes=[6]", "gamma_sweep.batch=3", "gamma_sweep.threshold_sizes=[]",
             "quantities=[value]", "modes=[gradient]"]
CORE_COLUMNS = ["quantity", "mode", "batch", "S", "B", "jax_ms", "numpy_loop_ms", "loop_coding",
                "numpy_stacked_ms", "speedup_vs_loop", "speedup_vs_stacked", "jax_map_ms",
                "map_speedup_vs_loop", "map_compile_s", "compile_s",
                "sweep_path", "jax_lu_gflops", "numpy_lu_gflops", "goal", "goal_met", "samples"]
GAMMA_SWEEP_COLUMNS = ["table", "S", "B", "sweep_ms", "lu_per_gamma_ms", "speedup",
                       "sweep_compile_s", "lu_compile_s"]
VI_COLUMNS = ["S", "A", "gamma", "sweeps", "dsorl_ms", "pymdptoolbox_ms", "speedup", "compile_s",
              "rel_error_at_sweeps", "toolbox_own_rule_sweeps", "toolbox_own_rule_rel_error"]


def test_core_eval_job_tiny():
    cfg = config_lib.load_config(ROOT / "configs/core_eval.yaml",
                                 TINY_CORE + ["parts=[main, gamma_sweep]"])
    result = core_eval.run(cfg, log=lambda msg: None)
    rows, sweeps = result["tables"]["core_eval"], result["tables"]["gamma_sweep"]
    assert all(list(r) == CORE_COLUMNS for r in rows)
    cases = {(r["quantity"], r["mode"], r["batch"]) for r in rows}
    assert cases == {("value", "gradient", "single"), ("value", "gradient", "policy"),
                     ("value", "gradient", "gamma")} and len(rows) == 3
    assert all(r["samples"] == 2 and r["jax_ms"] > 0 and r["compile_s"] > 0 for r in rows)
    # the lax.map batching is timed for policy batches only (checked against vmap first)
    assert all((r["jax_map_ms"] > 0) == (r["batch"] == "policy") for r in rows)
    assert [r["table"] for r in sweeps] == ["factor", "value", "value_grad"]
    assert all(list(r) == GAMMA_SWEEP_COLUMNS for r in sweeps)
    assert result["extra"]["skipped"] == [] and result["seeds"] == [0]


def test_core_eval_value_iteration_against_pymdptoolbox():
    import mdptoolbox  # noqa: F401  (in the `test` extra: the reference must run, not skip)

    cfg = config_lib.load_config(ROOT / "configs/core_eval.yaml",
                                 TINY_CORE + ["parts=[value_iteration]"])
    rows = core_eval.run(cfg, log=lambda msg: None)["tables"]["value_iteration"]
    assert [list(r) for r in rows] == [VI_COLUMNS] and rows[0]["rel_error_at_sweeps"] < 1e-6


def test_core_eval_through_the_cli(tmp_path, capsys):
    out = tmp_path / "out"
    sets = ["parts=[main]", "batches=[1]", "quantities=[gain]", "sizes=[6]", "repeats=2"]
    assert cli.main(["run", str(ROOT / "configs/core_eval.yaml"), "--output-dir", str(out),
                     *sum((["--set", s] for s in sets), [])]) == 0
    printed = capsys.readouterr().out
    assert "== core_eval ==" in printed and "numpy_stacked_ms" in printed
    assert (out / "core_eval.csv").exists() and (out / "meta.json").exists()
    # a PNG like every benchmark: dsorl run draws the job's figures
    assert "1 figure(s) in" in printed
    assert (out / "plots" / "speedups.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_core_eval_skips_cases_over_the_memory_cap():
    cfg = config_lib.load_config(ROOT / "configs/core_eval.yaml",
                                 TINY_CORE + ["parts=[main]", "quantities=[gain]",
                                              "modes=[forward]", "max_batch_bytes=800"])
    result = core_eval.run(cfg, log=lambda msg: None)
    assert [r["B"] for r in result["tables"]["core_eval"]] == [1]  # 3 * 6 * 6 * 8 > 800
    assert [r["B"] for r in result["extra"]["skipped"]] == [3]
    with pytest.raises(ValueError, match="unknown parts"):
        core_eval.run({**cfg, "parts": ["mian"]})


@pytest.mark.parametrize("quantity", ["value", "gain", "bias"])
@pytest.mark.parametrize("mode", ["forward", "gradient"])
def test_numpy_baselines_agree_with_dsorl(quantity, mode, rng):
    S, A = 5, 3
    mdp_np = core_eval.random_mdp(rng, S, A)
    theta = rng.normal(size=(2, S, A))
    fn = core_eval.jax_case(quantity, mode, "policy", S, A)
    expected = np.asarray(fn(dsorl.MDP(*mdp_np), jnp.asarray(theta), 0.9))
    for solver in (base.NumpySolve, base.ScipyLU):
        loop = base.numpy_case(quantity, mode, "policy", solver, mdp_np, theta, 0.9, stacked=False)
        assert base.numbers_agree(loop(), expected)
    stacked = base.numpy_case(quantity, mode, "policy", base.NumpySolve, mdp_np, theta, 0.9,
                              stacked=True)
    assert base.numbers_agree(stacked(), expected)


def test_sweep_scaling_job_tiny(tmp_path):
    cfg = config_lib.load_config(ROOT / "configs/sweep_scaling.yaml",
                                 ["sizes=[4]", "devices=[2]", "repeats=1", "n_steps=3",
                                  "disk_chunk=2"])
    result = sweep_scaling.run(cfg, log=lambda msg: None)
    rows = result["tables"]["sweep_scaling"]
    # its figure, as `dsorl run` and benchmarks/sweep_scaling.py draw it
    pytest.importorskip("matplotlib")
    from dsorl.plots import plot_results
    from dsorl.results import write_results

    write_results(tmp_path, cfg, tables=result["tables"])
    (png,) = plot_results(tmp_path)
    assert png.name == "throughput.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(rows) == 1 and set(sweep_scaling.PRINTED) <= set(rows[0])
    row = rows[0]
    assert row["devices"] == 2 and row["B"] == 4 and row["max_abs_diff"] < 1e-12
    assert row["vmap_s"] > 0 and row["sweep_s"] > 0 and row["sweep_disk_s"] > 0
