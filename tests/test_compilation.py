"""The persistent compilation cache of `dsorl run`/`sweep` (`dsorl.compilation`): a rerun
loads what the first run compiled, gives bit-identical results, and meta.json says so.

This module is also a small job (`job: test_compilation`, with the tests directory on the
path): the discounted values of a random MDP under a softmax policy, for a few discounts,
and their gradient, each a compiled program.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from dsorl import cli, compilation

TESTS = Path(__file__).resolve().parent

DEFAULTS = {"states": 6, "actions": 3, "gammas": [0.5, 0.9, 0.99],
            "output_dir": "results/test_compilation"}


def run(config):
    """Values `v_gamma(theta)` at the softmax policy of logits `theta` and `d/dtheta sum v`."""
    import jax.numpy as jnp

    import dsorl

    rng = np.random.default_rng(0)  # NumPy: no eager JAX ops, only the two programs below
    S, A = config["states"], config["actions"]
    P = rng.random((S, A, S)) + 0.05
    mdp = dsorl.MDP(P / P.sum(-1, keepdims=True), rng.normal(size=(S, A)), np.full(S, 1 / S))
    theta = rng.normal(size=(S, A))

    def values(theta, gamma):
        chain = dsorl.induced_chain(mdp, jax.nn.softmax(theta, -1))
        return dsorl.discounted_value(chain, gamma)

    gammas = jnp.asarray(config["gammas"])
    v = jax.jit(jax.vmap(values, (None, 0)))(theta, gammas)
    grad = jax.jit(jax.grad(lambda t: values(t, gammas[-1]).sum()))(theta)
    return {"tables": {"values": {"gamma": gammas, "v0": v[:, 0]}},
            "arrays": {"values": v, "gradient": grad}}


def _dsorl(*args, env):
    script = Path(sys.executable).with_name("dsorl")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "dsorl.cli"]
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("DSORL_CACHE", "DSORL_CACHE_DIR", "TF_CPP_MIN_LOG_LEVEL")}
    environment.update(env, PYTHONPATH=os.pathsep.join([str(TESTS),
                                                        os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(command + [str(a) for a in args], capture_output=True, text=True,
                          env=environment, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def _meta(out):
    return json.loads((Path(out) / "meta.json").read_text())


def test_a_rerun_loads_every_program_and_gives_identical_results(tmp_path):
    cache = tmp_path / "cache"
    config = tmp_path / "job.yaml"
    config.write_text("job: test_compilation\n")
    first = _dsorl("run", config, "--output-dir", tmp_path / "first",
                   env={"DSORL_CACHE_DIR": str(cache)})
    second = _dsorl("run", config, "--output-dir", tmp_path / "second", "--cache-dir", cache,
                    env={"DSORL_CACHE_DIR": str(tmp_path / "unused")})  # the flag comes first
    cold, warm = _meta(tmp_path / "first")["compilation"], _meta(tmp_path / "second")["compilation"]
    assert cold["cache"] == warm["cache"] == "on"
    assert cold["cache_dir"] == warm["cache_dir"] == str(cache)
    assert not (tmp_path / "unused").exists()
    # the first run compiled its programs and wrote each; the second loaded every one
    assert cold["programs"] >= 2
    assert cold["cache_writes"] == cold["cache_misses"] == cold["programs"]
    assert warm["programs"] == cold["programs"]
    assert warm["cache_hits"] == warm["programs"] and warm["cache_misses"] == 0
    assert warm["cache_writes"] == 0
    assert len(list(cache.iterdir())) == cold["programs"]
    assert warm["compile_seconds"] < cold["compile_seconds"]
    # loaded executables compute the same bits (the CPU loader's false SIGILL warning,
    # dsorl.compilation's docstring, is silenced and wrong)
    for name in ("values.csv",):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes()
    with np.load(tmp_path / "first" / "arrays.npz") as a, \
            np.load(tmp_path / "second" / "arrays.npz") as b:
        assert a.files == b.files
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])
    assert "cpu_aot_loader" not in first.stderr + second.stderr
    assert "prefer-no-gather" not in second.stderr


def test_no_cache_compiles_everything_and_writes_nothing(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    config = tmp_path / "job.yaml"
    config.write_text("job: test_compilation\n")
    monkeypatch.setenv("DSORL_CACHE_DIR", str(cache))
    monkeypatch.syspath_prepend(str(TESTS))
    assert cli.main(["run", str(config), "--output-dir", str(tmp_path / "out"), "--no-cache"]) == 0
    record = _meta(tmp_path / "out")["compilation"]
    assert record["cache"] == "off" and record["cache_dir"] is None
    assert record["cache_hits"] == record["cache_writes"] == 0
    assert record["cache_misses"] == record["programs"] >= 2
    assert not cache.exists()
    # DSORL_CACHE=off: the same, set through the environment
    monkeypatch.setenv("DSORL_CACHE", "off")
    with compilation.session():
        assert jax.config.jax_compilation_cache_dir is None
        assert not jax.config.jax_enable_compilation_cache
        assert compilation.report()["cache"] == "off"
    assert not cache.exists()


def test_bad_settings_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("DSORL_CACHE", "maybe")
    with pytest.raises(ValueError, match="DSORL_CACHE must be .* got 'maybe'"):
        compilation.configure()
    monkeypatch.setenv("DSORL_CACHE", "1")
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(ValueError, match=f"cache directory '{a_file}': it exists and is not"):
        compilation.configure(a_file)
    monkeypatch.setenv("DSORL_CACHE_DIR", str(a_file))  # asked for through the environment
    with pytest.raises(ValueError, match="is not a directory"):
        compilation.configure()
    assert compilation.report() is None  # nothing was configured


def test_the_default_directory_and_an_unusable_default(tmp_path, monkeypatch):
    monkeypatch.delenv("DSORL_CACHE", raising=False)  # conftest turns it off for the tests
    monkeypatch.delenv("DSORL_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation.default_cache_dir() == tmp_path / "xdg" / "dsorl" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compilation.default_cache_dir() == tmp_path / "home" / ".cache" / "dsorl" / "jax"
    monkeypatch.setenv("DSORL_CACHE_DIR", "~/elsewhere")
    assert compilation.default_cache_dir() == tmp_path / "home" / "elsewhere"
    # a default that cannot be a directory turns the cache off instead of failing the command
    monkeypatch.delenv("DSORL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg_file"))
    (tmp_path / "xdg_file").write_text("")
    with compilation.session():
        record = compilation.report()
    assert record["cache"] == "off" and record["cache_dir"] is None
    assert record["cache_off_reason"].startswith(str(tmp_path / "xdg_file" / "dsorl" / "jax"))
    assert "not a directory" in record["cache_off_reason"].lower()


def test_a_session_counts_compiles_and_restores_the_process(tmp_path):
    before = {n: getattr(jax.config, n) for n in ("jax_compilation_cache_dir",
                                                  "jax_enable_compilation_cache",
                                                  "jax_persistent_cache_min_compile_time_secs")}
    with compilation.session(tmp_path / "cache", enabled=True):
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
        # a program no other test compiles (the constant is unlikely elsewhere)
        jax.jit(lambda x: x * 7.123456789 + 1)(np.arange(3.0)).block_until_ready()
        record = compilation.report()
    assert record["programs"] >= 1 and record["cache_writes"] >= 1
    assert record["compile_seconds"] > 0
    assert compilation.report() is None
    assert {n: getattr(jax.config, n) for n in before} == before
