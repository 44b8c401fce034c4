"""The `dsorl` command in-process: list, a sweep job run end to end with its plots, every
shipped config valid, and the errors of bad invocations (exit code 2, a clear message)."""
from pathlib import Path

import numpy as np
import pytest
import yaml

from dsorl import cli
from dsorl import config as config_lib
from dsorl import sweep as sw
from dsorl.results import write_results

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def test_list_names_jobs_algorithms_and_environments(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "nbw_analysis" in out and "sweep_pg" in out and "[sweep]" in out
    assert "algorithms" in out and "environments (dsorl.envs.make(name, **kwargs)):\n  garnet " in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    # modules whose runs are not called `run` list them; step/init functions are not runs
    assert "[chain_iteration, gradient_ascent, newton_chain_iteration, pco]" in rows["dso"]
    assert "[z_learning]" in rows["lmdp"]
    assert "[" not in rows["meanfield"]


def _first_paragraph(doc: str) -> str:
    return " ".join(doc.strip().split("\n\n")[0].split())


def test_list_and_show_config_print_whole_descriptions():
    """`dsorl list` printed the first docstring line of each job and algorithm, cut
    mid-sentence ("... their gradients against"); it prints the whole first paragraph, and
    `--show-config` heads the keys with it. Through the real command."""
    import importlib
    import subprocess
    import sys

    script = Path(sys.executable).with_name("dsorl")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "dsorl.cli"]
    done = subprocess.run(command + ["list"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    jobs, algorithms = done.stdout.split("\nalgorithms (")
    algorithms = algorithms.split("\nenvironments (")[0]
    job_rows = {line.split()[0]: line.split("] ", 1)[1] for line in jobs.splitlines()
                if line.startswith("  ")}
    assert set(job_rows) == set(config_lib.available_jobs())
    for name, text in job_rows.items():
        doc = importlib.import_module(f"dsorl.jobs.{name}").__doc__
        assert text == _first_paragraph(doc), name
        assert text.endswith("."), (name, text)  # a whole sentence, not a first line
    algorithm_rows = {line.split()[0]: line.split(None, 1)[1] for line in algorithms.splitlines()
                      if line.startswith("  ")}
    assert {"dso", "dynpg", "lmdp", "meanfield", "nbw", "pg"} <= set(algorithm_rows)
    for name, text in algorithm_rows.items():
        doc = importlib.import_module(f"dsorl.algorithms.{name}").__doc__
        assert text.split(" [")[0] == _first_paragraph(doc), name
        assert text.split(" [")[0].endswith("."), (name, text)
    # the first docstring lines that used to be cut, whole
    assert job_rows["core_eval"].endswith("the γ-sweep path. Run with the BLAS record:"
                                          " `nice python benchmarks/core_eval.py`.")
    assert algorithm_rows["dso"].startswith("DSO optimisers of a parameterised chain: gradient"
                                            " ascent, natural gradient, Chain Iteration (first-"
                                            " and second-order) and Proximal Chain Optimisation (PCO).")

    shown = subprocess.run(command + ["run", "dso_benchmark", "--show-config"],
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    head = shown.stdout.splitlines()[0]
    assert head == "# dso_benchmark: " + _first_paragraph(
        importlib.import_module("dsorl.jobs.dso_benchmark").__doc__)
    assert head.endswith("Run with plots: `nice python benchmarks/dso.py`."), head


JOB_CONFIGS = [p for p in sorted((ROOT / "configs").glob("*.yaml"))
               if "job" in (yaml.safe_load(p.read_text()) or {})]  # not benchmark configs


def test_job_configs_are_found():
    names = [p.name for p in JOB_CONFIGS]
    assert {"default.yaml", "sweep_pg.yaml", "sweep_dynpg.yaml", "sweep_nbw.yaml",
            "sweep_dso.yaml", "core_eval.yaml", "sweep_scaling.yaml"} <= set(names)


@pytest.mark.parametrize("path", JOB_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    cfg = config_lib.load_config(path)
    module = config_lib.job_module(cfg["job"])
    if config_lib.is_sweep_job(module) and path.name.startswith("sweep_"):
        spec = module.sweep_spec(cfg)
        assert isinstance(spec["grid"], sw.Grid) and spec["grid"].size >= 1


def test_a_sweep_job_runs_and_plots(tmp_path, capsys):
    config = tmp_path / "toy.yaml"
    config.write_text("job: test_sweep_toy\ngrid: {gamma: [0.5, 0.9], lr: [0.5, 2.0], seed: [0, 1]}\n"
                      "n_steps: 12\nsweep: {traces: [all], trace_every: 2}\n")
    out = tmp_path / "out"
    # `dsorl run` on a job that only sweeps runs the sweep
    assert cli.main(["run", str(config), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "8 members computed" in printed and "results written" in printed
    result = sw.load(out)
    assert len(result) == 8 and result.traces["objective"].shape == (8, 6)
    assert result.meta["fingerprint"] and (out / "table.csv").exists()
    assert cli.main(["plot", str(out), "--out", str(tmp_path / "png")]) == 0
    names = sorted(p.name for p in (tmp_path / "png").glob("*.png"))
    assert names == ["convergence_grad_norm.png", "convergence_objective.png",
                     "gamma_grad_norm.png", "gamma_objective.png"]
    assert all((tmp_path / "png" / n).read_bytes()[:8] == PNG for n in names)
    assert cli.main(["plot", str(out), "--metric", "nope"]) == 2
    assert "unknown metric 'nope'; the table has: grad_norm, objective" in capsys.readouterr().err


def test_landscape_of_a_two_coordinate_axis(tmp_path):
    wx, wy = (a.ravel() for a in np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-2, 2, 4),
                                             indexing="ij"))
    table = {"member": np.arange(40), "env": np.repeat(["A1", "B2"], 20),
             "w_x": np.tile(wx, 2), "w_y": np.tile(wy, 2), "gap": np.tile(wx ** 2 + wy, 2)}
    meta = {"grid": [{"name": "params0", "size": 20, "columns": ["w_x", "w_y"]}],
            "metrics": ["gap"], "traces": [], "trace_every": 1}
    write_results(tmp_path, {}, tables={"table": table}, extra={"sweep": meta})
    from dsorl.plots import plot_results

    paths = plot_results(tmp_path)
    assert [p.name for p in paths] == ["landscape_gap.png"] and paths[0].read_bytes()[:8] == PNG


@pytest.mark.parametrize("argv, message", [
    (["sweep", str(ROOT / "configs" / "default.yaml")], "job 'nbw_analysis' is not a sweep"),
    (["sweep", str(ROOT / "configs" / "sweep_pg.yaml"), "--coordinator", "127.0.0.1:1"],
     "need --coordinator, --num-processes and --process-id"),
    (["sweep", str(ROOT / "configs" / "sweep_pg.yaml"), "--set", "grid.beta=[1]"],
     "config key 'grid' for pg takes gamma, seed, step_size"),
    (["sweep", str(ROOT / "configs" / "sweep_pg.yaml"), "--set", "algorithm=ppo"],
     "'algorithm' must be pg or dynpg"),
    (["sweep", str(ROOT / "configs" / "sweep_pg.yaml"), "--set", "env.name=mars"],
     "'env.name' must be garnet, sutton_extended or one of"),
    (["plot", str(ROOT / "configs")], "not a result directory"),
    (["sweep", str(ROOT / "configs" / "sweep_dso.yaml"), "--set", "algorithm=newton"],
     "'algorithm' must be one of ascent, natural, chain_iteration"),
    (["sweep", str(ROOT / "configs" / "sweep_dso.yaml"), "--set", "algorithm=ascent"],
     "config key 'grid' for ascent takes damping, gamma, seed, step_size"),
    (["sweep", str(ROOT / "configs" / "sweep_nbw.yaml"), "--set", "envs=[C1]"],
     "config key 'envs' takes a non-empty list of A1"),
])
def test_bad_invocations_exit_2_with_a_message(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
