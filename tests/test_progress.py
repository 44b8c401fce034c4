"""dsorl.progress: when the display draws, compile lines with their seconds, tasks with an ETA
(rate-limited records, a live bar on a terminal), records for users who configure logging;
timing and every job use it; `dsorl run` says what it does on stderr only when asked."""
import ast
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

from dsorl import progress, timing

ROOT = Path(__file__).resolve().parents[1]


class FakeStderr:
    def __init__(self, tty):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass


@pytest.fixture
def quiet_env(monkeypatch):
    monkeypatch.delenv("DSORL_PROGRESS", raising=False)
    progress.configure(None)
    yield monkeypatch
    progress.configure(None)


def test_who_decides_whether_the_display_draws(quiet_env):
    monkeypatch = quiet_env
    monkeypatch.setattr(sys, "stderr", FakeStderr(tty=False))
    assert not progress.display_enabled()          # not a terminal: quiet
    monkeypatch.setattr(sys, "stderr", FakeStderr(tty=True))
    assert progress.display_enabled()              # a terminal: drawn
    monkeypatch.setenv("DSORL_PROGRESS", "0")
    assert not progress.display_enabled()          # the variable beats the terminal
    monkeypatch.setattr(sys, "stderr", FakeStderr(tty=False))
    monkeypatch.setenv("DSORL_PROGRESS", "yes")
    assert progress.display_enabled()
    progress.configure(False)                      # --no-progress beats the variable
    assert not progress.display_enabled()
    assert progress.display_enabled(True)          # a task's own argument beats everything
    monkeypatch.setenv("DSORL_PROGRESS", "maybe")
    progress.configure(None)
    with pytest.raises(ValueError, match="DSORL_PROGRESS must be .* got 'maybe'"):
        progress.display_enabled()
    with pytest.raises(ValueError, match="progress must be True, False or None, got 'on'"):
        progress.configure("on")


def test_compile_lines_are_records_with_the_seconds(quiet_env, caplog):
    caplog.set_level(logging.INFO, logger="dsorl")
    with progress.compiling("a program") as took:
        pass
    assert [r.getMessage() for r in caplog.records][0] == "compiling a program ..."
    last = caplog.records[-1].getMessage()
    assert last == f"compiled a program in {took.seconds:.2f} s" and took.seconds >= 0
    assert all(r.name == "dsorl" and r.levelno == logging.INFO for r in caplog.records)


def test_timing_compile_announces_what_it_compiles(quiet_env, caplog):
    caplog.set_level(logging.INFO, logger="dsorl")
    _, seconds = timing.compile(lambda x: x * 2, jnp.ones(3), what="doubling")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "compiling doubling ..." and messages[-1].startswith("compiled doubling in")
    caplog.clear()

    def squared(x):
        return x ** 2

    timing.timed(squared, jnp.ones(3), repeats=1)  # default label: the function's name
    assert caplog.records[0].getMessage() == "compiling squared ..."


def test_task_eta_and_rate_limited_step_records(quiet_env, caplog):
    caplog.set_level(logging.INFO, logger="dsorl")
    now = [100.0]
    task = progress.Task("work", 4, unit="seeds", progress=False, clock=lambda: now[0])
    assert task.eta_seconds() != task.eta_seconds()  # NaN before the first step
    for seconds in (3.0, 3.0, 8.0, 3.0):
        now[0] += seconds
        task.advance()
        if task.done == 1:
            assert task.eta_seconds() == pytest.approx(9.0)  # 3 s per seed, 3 left
    task.close()
    messages = [r.getMessage() for r in caplog.records]
    # steps 1 (t=3) and 3 (t=14, 11 s after the last record) and the last one; step 2
    # (3 s after the last record) is too soon
    assert messages == ["work: 4 seeds to do",
                        "work: 1/4 seeds, 00:03 elapsed, ETA 00:09",
                        "work: 3/4 seeds, 00:14 elapsed, ETA 00:05",
                        "work: 4/4 seeds, 00:17 elapsed, ETA 00:00",
                        "work: 4/4 done in 00:17"]
    with pytest.raises(ValueError, match="total must be a non-negative integer, got -1"):
        progress.Task("bad", -1)


def test_display_on_a_pipe_prints_lines_only_when_asked(quiet_env, capsys):
    quiet_env.setattr(progress, "STEP_LOG_SECONDS", 0.0)
    assert list(progress.track(range(2), "loop", unit="items")) == [0, 1]
    with progress.compiling("x"):
        pass
    assert capsys.readouterr().err == ""  # stderr is no terminal here and nobody asked
    quiet_env.setenv("DSORL_PROGRESS", "1")
    assert list(progress.track(range(2), "loop", unit="items")) == [0, 1]
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "dsorl: loop: 2 items to do"
    assert lines[1].startswith("dsorl: loop: 1/2 items, 00:00 elapsed, ETA")
    assert lines[-1].startswith("dsorl: loop: 2/2 done in")


def test_configured_logging_takes_the_records_instead_of_the_display(quiet_env, capsys, caplog):
    quiet_env.setenv("DSORL_PROGRESS", "1")
    caplog.set_level(logging.INFO, logger="dsorl")  # a handler that shows INFO records
    progress.note("hello")
    assert capsys.readouterr().err == "" and caplog.records[-1].getMessage() == "hello"


def test_a_terminal_gets_a_live_bar_with_an_eta():
    """In a pseudo-terminal: a rich bar (done/total, ETA) and compile lines above it."""
    pty = pytest.importorskip("pty")
    script = ("import time\nfrom dsorl import progress\n"
              "with progress.compiling('toy'):\n    pass\n"
              "for _ in progress.track(range(3), 'envs', unit='environments'):\n"
              "    time.sleep(0.05)\n")
    main, child = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "DSORL_PROGRESS"}
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=child, stdout=child, env=env)
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 0
    os.close(main)
    shown = b"".join(chunks).decode(errors="replace")
    assert "compiling toy ..." in shown and "compiled toy in" in shown
    assert "envs" in shown and "3/3" in shown and "ETA" in shown
    assert "dsorl: envs: 1/3" not in shown  # the bar, not the pipe's step lines


def test_every_job_reports_progress():
    """Each job that runs for long (a `run` function) uses the layer: a task over its
    outer loop or a compile line from `dsorl.timing` / `dsorl.progress`."""
    silent = []
    for path in sorted((ROOT / "dsorl" / "jobs").glob("*.py")):
        tree = ast.parse(path.read_text())
        if not any(isinstance(n, ast.FunctionDef) and n.name == "run" for n in tree.body):
            continue
        used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                and isinstance(n.value, ast.Name) and n.value.id == "progress"}
        if not used & {"track", "task"}:
            silent.append(path.name)
    assert silent == []


def _dsorl():
    exe = shutil.which("dsorl")
    return [exe] if exe else [sys.executable, "-m", "dsorl.cli"]


# without a flag on a pipe `dsorl run` is quiet: test_plots' run of the same job checks it
@pytest.mark.parametrize("flag", ["--progress", "--no-progress"])
def test_dsorl_run_shows_progress_only_when_asked(tmp_path, flag):
    env = {k: v for k, v in os.environ.items() if k != "DSORL_PROGRESS"}
    if flag == "--no-progress":
        env["DSORL_PROGRESS"] = "1"  # the flag beats the variable
    out = subprocess.run(
        _dsorl() + ["run", str(ROOT / "configs" / "default.yaml"), "--set", "grid.step=5.0",
                    "--set", "envs=[A1, B2]", "--output-dir", str(tmp_path / "out")]
        + ([flag] if flag else []), capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    if flag == "--progress":
        assert "dsorl: nbw_analysis: 2 environments to do" in out.stderr
        assert "dsorl: compiling A1 landscape (25 starts) ..." in out.stderr
        assert "dsorl: compiled B2 landscape (25 starts) in" in out.stderr
        assert "dsorl: nbw_analysis: 2/2 done in" in out.stderr
    else:
        assert "dsorl:" not in out.stderr


def test_a_sweep_announces_its_compile_and_its_chunks(quiet_env, capsys):
    import jax.numpy as jnp

    from dsorl import sweep as sw

    offset = 0.123456  # a value no other test's program closes over: a fresh compile

    def run(mdp, params0, hparams, key, *, config):
        del mdp, key, config
        return params0, {"objective": (jnp.sum(params0) + offset) * hparams["gamma"] * jnp.ones(3)}

    sw.sweep(run, {"P": jnp.eye(2)}, sw.Grid(gamma=[0.5, 0.9]), params0=jnp.zeros(2),
             progress=True)
    err = capsys.readouterr().err.splitlines()
    assert "dsorl: compiling sweep program (2 members per call) ..." in err
    assert any(line.startswith("dsorl: compiled sweep program (2 members per call) in")
               for line in err)
    assert any(line.startswith("dsorl: sweep: 2/2 members") for line in err)
