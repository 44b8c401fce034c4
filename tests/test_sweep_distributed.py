"""Sweeps across devices and processes, and a sweep killed mid-way and resumed, each in
fresh Python processes (XLA's forced host devices must be set before jax is imported).

One config (the toy job of `test_sweep_toy`, 24 members in chunks of 4) runs:
- uninterrupted, in one process with 4 forced devices;
- killed with SIGKILL after two chunks are on disk, then rerun with the same command;
- in 2 processes on localhost (`jax.distributed`, 2 forced devices each).
Every table equals the uninterrupted one exactly (same per-device batch, so the same
floating-point operations), which matches the 1-device in-process sweep to 1e-12.
"""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from dsorl import config as config_lib
from dsorl import sweep as sw

TESTS = Path(__file__).resolve().parent
CONFIG = """\
job: test_sweep_toy
grid: {gamma: [0.5, 0.9, 0.99], lr: [0.5, 2.0], seed: [0, 1, 2, 3]}
n_steps: 3000
sweep: {chunk_size: 4}
"""


def _env(devices, cache):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache)  # reruns skip XLA compilation
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def _command(config, out, *extra):
    return [sys.executable, "-m", "dsorl.cli", "sweep", str(config), "--output-dir", str(out),
            "--no-progress", *extra]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    config = root / "toy.yaml"
    config.write_text(CONFIG)
    cache = root / "xla_cache"
    out = root / "uninterrupted"
    done = subprocess.run(_command(config, out), env=_env(4, cache), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return root, config, cache, sw.load(out)


def _assert_same_table(a, b):
    assert list(a.table) == list(b.table)
    for k in a.table:
        np.testing.assert_array_equal(a.table[k], b.table[k], err_msg=k)


def test_four_devices_one_process_match_one_device(setup):
    _, config, _, four = setup
    assert len(four.meta["devices"]) == 4 and four.meta["chunk_size"] == {"all": 4}
    assert four.meta["chunks"] == 6 and four.meta["members_computed"] == 24
    cfg = config_lib.load_config(config)
    import test_sweep_toy

    one = sw.sweep(**test_sweep_toy.sweep_spec(cfg), devices=jax.devices()[:1])
    for k in ("member", "gamma", "lr", "seed"):
        np.testing.assert_array_equal(four.table[k], one.table[k])
    # other batch shapes: same maths, other roundings, accumulated over 3000 steps; the
    # gradient norm (~1e-3) is a difference of O(1) terms, so its error is absolute
    np.testing.assert_allclose(four.table["objective"], one.table["objective"], rtol=1e-12)
    np.testing.assert_allclose(four.table["grad_norm"], one.table["grad_norm"], rtol=0, atol=1e-11)


def test_killed_sweep_resumes_without_losing_or_duplicating_rows(setup):
    root, config, cache, reference = setup
    out = root / "killed"
    chunks = out / "chunks"
    log = open(root / "killed.log", "w")  # a file, not a pipe nobody reads while it runs
    proc = subprocess.Popen(_command(config, out), env=_env(4, cache),
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if chunks.exists() and len(list(chunks.glob("*.npz"))) >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    on_disk = len(list(chunks.glob("*.npz")))
    assert proc.returncode == -signal.SIGKILL, (root / "killed.log").read_text()
    assert 2 <= on_disk < 6, f"{on_disk} chunks on disk when killed: the kill missed the middle"
    assert not (out / "table.csv").exists()
    again = subprocess.run(_command(config, out), env=_env(4, cache), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    resumed = sw.load(out)
    assert resumed.meta["members_computed"] == 24 - 4 * on_disk
    _assert_same_table(resumed, reference)
    # the same output directory with a changed config is refused, naming the change
    changed = subprocess.run(_command(config, out, "--set", "grid.lr=[0.5, 3.0]"),
                             env=_env(1, cache), capture_output=True, text=True, timeout=300)
    assert changed.returncode == 2
    assert "different sweep (differs in: grid.lr" in changed.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_run_one_sweep(setup):
    root, config, cache, reference = setup
    out = root / "two_processes"
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen(
        _command(config, out, "--coordinator", coordinator, "--num-processes", "2",
                 "--process-id", str(i)),
        env=_env(2, cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    joint = sw.load(out)
    assert joint.meta["processes"] == 2 and len(joint.meta["devices"]) == 4
    assert "results written" in outputs[0][0] and "results written" not in outputs[1][0]
    _assert_same_table(joint, reference)
