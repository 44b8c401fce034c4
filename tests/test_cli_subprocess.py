"""The real `dsorl` command in a subprocess: what a user sees for each finding of issue 17.

Every user error exits with code 2 and one `dsorl: error: ...` message naming the bad
value, never a traceback, and writes nothing.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TESTS = Path(__file__).resolve().parent


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
    assert not out.exists()  # refused before anything was written
