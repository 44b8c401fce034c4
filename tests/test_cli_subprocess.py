"""The real `dsorl` command in a subprocess: what a user sees for each finding of issue 17.

Every user error exits with code 2 and one `dsorl: error: ...` message naming the bad
value, never a traceback, and writes nothing. This module is also a small job
(`job: test_cli_subprocess`, with the tests directory on the path): `run` finishes
`parts` parts, and waits at part `wait_at` (after writing `flag`) until interrupted.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dsorl.results import Interrupted

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TESTS = Path(__file__).resolve().parent


DEFAULTS = {"parts": 3, "x": 1.0, "table": "parts", "wait_at": -1, "flag": "",
            "partial": True, "output_dir": "results/test_cli_subprocess"}


def run(config):
    """Rows `(part, x * part)`; waits at part `wait_at` until interrupted (Ctrl-C)."""
    rows = []
    try:
        for part in range(config["parts"]):
            if part == config["wait_at"]:
                Path(config["flag"]).write_text("waiting")
                time.sleep(120)
            rows.append({"part": part, "value": config["x"] * part})
    except KeyboardInterrupt:
        if config["partial"]:
            raise Interrupted({"tables": {config["table"]: rows}}) from None
        raise
    return {"tables": {config["table"]: rows}}


def dsorl(*args, cwd=None, env=None, timeout=300, **kwargs):
    """Run the installed `dsorl` console script (or `python -m dsorl.cli` without one)."""
    script = Path(sys.executable).with_name("dsorl")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "dsorl.cli"]
    environment = dict(os.environ if env is None else env)
    environment["PYTHONPATH"] = os.pathsep.join([str(TESTS), environment.get("PYTHONPATH", "")])
    return subprocess.run(command + [str(a) for a in args], capture_output=True, text=True,
                          cwd=cwd, env=environment, timeout=timeout, **kwargs)


def assert_user_error(done, message):
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("dsorl: error: "), done.stderr
    assert message in done.stderr, done.stderr


# ---------------------------------------------------------------------------------------
# Unchecked grid values: each refused on the host, naming the point, before compiling


@pytest.mark.parametrize("config, setting, message", [
    ("sweep_pg.yaml", "grid.gamma=[1.0]", "grid point gamma=1.0, step_size=0.1"),
    ("sweep_pg.yaml", "grid.gamma=[1.5]", "gamma = 1.5 must lie in [0, 1)"),
    ("sweep_pg.yaml", "grid.step_size=[0]", "step_size=0"),
    ("sweep_pg.yaml", "grid.gamma=[.nan]", "grid axis 'gamma' holds NaN"),
    ("sweep_dynpg.yaml", "grid.gamma=[-0.5]", "gamma = -0.5 must lie in [0, 1)"),
    ("sweep_nbw.yaml", "grid.step=0.0", "step"),
])
def test_a_bad_grid_value_exits_2_naming_it(tmp_path, config, setting, message):
    out = tmp_path / "out"
    done = dsorl("sweep", CONFIGS / config, "--set", setting, "--output-dir", out)
    assert_user_error(done, message)
    assert not any(out.iterdir())  # refused before anything was written (checked: empty)


# ---------------------------------------------------------------------------------------
# Configs, numbers, output directories, files, Ctrl-C


def _config(tmp_path, text="job: test_cli_subprocess\n", name="job.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_missing_unreadable_or_malformed_config_is_named(tmp_path):
    assert_user_error(dsorl("run", tmp_path / "nope.yaml"), "config file")
    assert_user_error(dsorl("run", tmp_path / "nope.yaml"), "nope.yaml' not found")
    assert_user_error(dsorl("run", tmp_path), "cannot read config file")  # a directory
    broken = _config(tmp_path, "job: test_cli_subprocess\nx: [1, 2\n")
    assert_user_error(dsorl("sweep", broken), "is not valid YAML (line 3, column 1)")
    assert_user_error(dsorl("run", CONFIGS / "default.yaml", "--set", "grid=[1"),
                      "--set grid=[1 is not valid YAML")


def test_yaml_floats_as_written_and_show_config(tmp_path):
    # `1e-5` is a float in a config and in --set (YAML 1.1 reads it as a string)
    done = dsorl("run", CONFIGS / "default.yaml", "--set", "gain_tolerance=1e-5", "--show-config")
    assert done.returncode == 0, done.stderr
    assert "gain_tolerance: 1.0e-05" in done.stdout and done.stdout.startswith("# nbw_analysis:")
    # a job's name instead of a file: its keys with their defaults
    shown = dsorl("sweep", "sweep_pg", "--show-config")
    assert shown.returncode == 0, shown.stderr
    from dsorl.jobs import sweep_pg

    keys = {line.split(":")[0] for line in shown.stdout.splitlines() if line[:1].isalpha()}
    assert keys == {"job", "sweep", *sweep_pg.DEFAULTS}
    out = tmp_path / "out"
    done = dsorl("run", _config(tmp_path, "job: test_cli_subprocess\nx: 1e-5\n"), "--output-dir", out)
    assert done.returncode == 0, done.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["x"] == 1e-5 and meta["status"] == "complete"


def test_the_output_directory_is_checked_before_the_run(tmp_path):
    config = _config(tmp_path, f"job: test_cli_subprocess\nflag: {tmp_path / 'ran'}\nwait_at: 0\n")
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert_user_error(dsorl("run", config, "--output-dir", a_file), "exists and is not a directory")
    assert_user_error(dsorl("run", config, "--output-dir", a_file / "sub"),
                      "cannot write to output directory")
    assert_user_error(dsorl("sweep", CONFIGS / "sweep_pg.yaml", "--output-dir", a_file),
                      "exists and is not a directory")
    assert not (tmp_path / "ran").exists()  # refused before the job started


def test_another_jobs_results_are_refused_unless_forced(tmp_path):
    out = tmp_path / "out"
    first = _config(tmp_path, "job: test_cli_subprocess\ntable: first\n", "first.yaml")
    second = _config(tmp_path, "job: test_cli_subprocess\ntable: second\nx: 2.0\n", "second.yaml")
    assert dsorl("run", first, "--output-dir", out).returncode == 0
    assert dsorl("run", first, "--output-dir", out).returncode == 0  # the same job: rerun
    assert_user_error(dsorl("run", second, "--output-dir", out),
                      "holds the results of another job (test_cli_subprocess, created")
    assert_user_error(dsorl("sweep", CONFIGS / "sweep_pg.yaml", "--output-dir", out),
                      "holds the results of another job (not a sweep)")
    done = dsorl("run", second, "--output-dir", out, "--force")
    assert done.returncode == 0, done.stderr
    # the first job's table is gone: no file of another job beside the new ones
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".csv") == ["second.csv"]


def test_files_are_written_before_printing_with_the_users_umask(tmp_path):
    out = tmp_path / "out"
    config = _config(tmp_path, "job: test_cli_subprocess\nparts: 50\n")
    script = Path(sys.executable).with_name("dsorl")
    command = f"umask 027; '{script}' run '{config}' --output-dir '{out}' | true"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(TESTS)})
    assert "Traceback" not in done.stderr, done.stderr
    table = (out / "parts.csv").read_text().splitlines()
    assert len(table) == 51 and table[-1] == "49,49.0"
    for name in ("parts.csv", "meta.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o640, name


def test_meta_records_the_package_checkout_not_the_working_directory(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)  # cwd: another repository
    done = dsorl("run", _config(tmp_path), "--output-dir", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    env = json.loads((tmp_path / "out" / "meta.json").read_text())["environment"]
    # the package the command imported (site-packages after `pip install .`, the checkout
    # after an editable install), asked of the same interpreter in the same directory
    where = subprocess.run([sys.executable, "-c", "import dsorl, pathlib;"
                            " print(pathlib.Path(dsorl.__file__).resolve().parent)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPATH": str(TESTS)})
    location = Path(where.stdout.strip())
    assert env["package_location"] == str(location)
    git = lambda *a: subprocess.run(["git", *a], cwd=location, capture_output=True, text=True)
    if git("ls-files", "--error-unmatch", "__init__.py").returncode == 0:
        assert env["git_commit"] == git("rev-parse", "HEAD").stdout.strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
        assert env["git_dirty"] is dirty
    else:
        assert env["git_commit"] is None and env["git_dirty"] is None


def _interrupt(args, flag, timeout=120):
    script = Path(sys.executable).with_name("dsorl")
    proc = subprocess.Popen([str(script), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(TESTS)})
    deadline = time.time() + timeout
    while not flag() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.mark.parametrize("partial", [True, False])
def test_ctrl_c_in_a_run_job_leaves_what_it_finished(tmp_path, partial):
    flag, out = tmp_path / "waiting", tmp_path / "out"
    config = _config(tmp_path, f"job: test_cli_subprocess\nparts: 5\nwait_at: 2\nflag: {flag}\n"
                               f"partial: {str(partial).lower()}\n")
    code, _, err = _interrupt(["run", config, "--output-dir", out], flag.exists)
    assert code == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "interrupted" and meta["config"]["wait_at"] == 2
    if partial:
        assert "dsorl: interrupted; what it finished written to" in err
        assert (out / "parts.csv").read_text().splitlines() == ["part,value", "0,0.0", "1,1.0"]
    else:
        assert "its config (no finished part)" in err and meta["tables"] == []


@pytest.mark.slow  # ~20 s: a sweep compiled twice in fresh processes
def test_ctrl_c_in_a_sweep_keeps_its_chunks_and_the_same_command_resumes(tmp_path):
    config = _config(tmp_path, "job: test_sweep_toy\ngrid: {gamma: [0.5, 0.9], lr: [0.5],"
                               " seed: [0, 1, 2, 3, 4, 5]}\nn_steps: 200000\nsweep: {chunk_size: 1}\n")
    out = tmp_path / "out"
    chunks = lambda: list((out / "chunks").glob("*.npz")) if (out / "chunks").exists() else []
    code, _, err = _interrupt(["sweep", config, "--output-dir", out, "--no-progress"], chunks)
    assert code == 130 and "Traceback" not in err, err
    assert "dsorl: interrupted; the finished chunks are in" in err and "the same command resumes" in err
    kept = len(chunks())
    assert 1 <= kept < 12
    done = dsorl("sweep", config, "--output-dir", out, "--no-progress")
    assert done.returncode == 0, done.stderr
    assert f"({kept} were on disk)" in done.stdout
    table = np.genfromtxt(out / "table.csv", delimiter=",", names=True)
    assert table["member"].tolist() == list(range(12))


# ---------------------------------------------------------------------------------------
# The environment registry and `dsorl list`


def test_list_prints_every_registered_environment_in_full():
    import dsorl.envs as envs

    done = dsorl("list")
    assert done.returncode == 0, done.stderr
    section = done.stdout.split("environments (dsorl.envs.make(name, **kwargs)):\n")[1]
    listed = {line.split()[0]: line.split(None, 1)[1] for line in section.splitlines()}
    assert listed == envs.registry()  # every name, each description whole
    assert {"garnet", "gridworld", "sutton_extended", *envs.NBW_NAMES} <= set(listed)
