"""Compile once: JAX's persistent compilation cache for dsorl's commands, and a record of
what compiling cost.

`dsorl run`, `dsorl sweep` and the scripts in `benchmarks/` keep every program XLA compiles
in a cache directory on disk, so a rerun loads the executable instead of compiling it
again (tracing and lowering to XLA still happen: the cache is keyed on the lowered program,
the JAX/jaxlib versions, the devices and the compile options, so a changed program or
package is compiled afresh):

    cache directory   $DSORL_CACHE_DIR, else $XDG_CACHE_HOME/dsorl/jax, else ~/.cache/dsorl/jax
                      (the CLI's --cache-dir DIR comes first)
    off               DSORL_CACHE=0 (0/false/no/off; 1/true/yes/on: on), or --no-cache

    compilation.configure()                  # a script: the cache and the record, whole process
    with compilation.session(cache_dir, enabled=...):   # the CLI: one command, then as before
        ...
    compilation.report()                     # what `write_results` puts in meta.json

Every program is cached, however short its compile (`jax_persistent_cache_min_compile_time_secs`
0, no minimum entry size): a job compiles dozens of sub-second programs, and together they
are what a rerun would pay. The directory may be deleted at any time; it grows by the
executables of each new program (typically 2-100 kB each).

On the CPU, jaxlib 0.9-0.10 logs two long `cpu_aot_loader` error lines for every executable
it loads from the cache: it compares LLVM *tuning* flags (`+prefer-no-gather`,
`+prefer-no-scatter`) with the host's instruction-set features, finds them missing and warns
of SIGILL, though the executable was built on this very machine (jax-ml/jax#38445,
openxla/xla#44565; the loaded executables run and give bit-identical results, which
`tests/test_compilation.py` checks). While the cache is on, XLA's C++ log is therefore
limited to fatal messages, unless the user set `TF_CPP_MIN_LOG_LEVEL` to another level than
JAX's default 1 (e.g. 0 to see everything); `session` puts `TF_CPP_MIN_LOG_LEVEL` back on exit.

The record counts JAX's monitoring events (`jax.monitoring`) from `configure` on: programs
handed to XLA, how many were loaded from the cache (hits) and how many compiled (misses,
written to the cache when it is on), and the seconds spent tracing, lowering and compiling
(a hit's compile seconds are the seconds it took to load).
"""
import contextlib
import os
from pathlib import Path
from typing import Optional

import jax
from jax import monitoring

__all__ = ["default_cache_dir", "cache_enabled_from_env", "configure", "restore", "session",
           "report"]

# JAX's monitoring events (jax/_src/dispatch.py, compiler.py, compilation_cache.py, 0.9.x)
_DURATIONS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_seconds",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_seconds",
    "/jax/core/compile/backend_compile_duration": "compile_seconds",
}
# (not '/jax/compilation_cache/compile_time_saved_sec': JAX stores a program's compile time
# in whole seconds, so the saving it reports for a sub-second program is minus its load time)
_PROGRAMS = "/jax/core/compile/backend_compile_duration"  # one per program handed to XLA
_HITS = "/jax/compilation_cache/cache_hits"
_WRITES = "/jax/compilation_cache/cache_misses"  # JAX fires it when it writes an entry

_JAX_LOG_LEVEL = "1"  # `import jax` sets TF_CPP_MIN_LOG_LEVEL to it when the user did not
_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")

_state = {"listening": False, "record": None}


def default_cache_dir() -> Path:
    """`$DSORL_CACHE_DIR`, else `$XDG_CACHE_HOME/dsorl/jax`, else `~/.cache/dsorl/jax`."""
    explicit = os.environ.get("DSORL_CACHE_DIR", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "dsorl" / "jax"


def cache_enabled_from_env() -> bool:
    """`DSORL_CACHE`: on unless it is 0/false/no/off; `ValueError` for any other value."""
    value = os.environ.get("DSORL_CACHE", "").strip().lower()
    if value in _OFF:
        return False
    if value in _ON or not value:
        return True
    raise ValueError(f"DSORL_CACHE must be 1/true/yes/on or 0/false/no/off, got {value!r}.")


def configure(cache_dir=None, *, enabled: Optional[bool] = None) -> dict:
    """Turn JAX's persistent compilation cache on (or off) for this process and start a
    fresh compile record; returns the settings it replaced (for `restore`).

    `enabled=None` follows `DSORL_CACHE`; `cache_dir=None` is `default_cache_dir()`. A
    directory that was asked for (argument or `DSORL_CACHE_DIR`) and cannot be written is a
    `ValueError` naming it; the default directory that cannot be written turns the cache
    off (the record says why) rather than stopping the command.
    """
    enabled = cache_enabled_from_env() if enabled is None else bool(enabled)
    asked = cache_dir is not None or bool(os.environ.get("DSORL_CACHE_DIR", "").strip())
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    previous = {name: getattr(jax.config, name) for name in _CONFIG_NAMES}
    reason = None
    if enabled:
        reason = _writable(path)
        if reason and asked:
            raise ValueError(f"cannot use compilation cache directory {str(path)!r}: {reason}.")
    on = enabled and reason is None
    _listen()
    _state["record"] = {"cache": "on" if on else "off",
                        "cache_dir": str(path) if on else None,
                        **({"cache_off_reason": f"{path}: {reason}"} if enabled and reason
                           else {}),
                        "programs": 0, "cache_hits": 0, "cache_writes": 0,
                        **{name: 0.0 for name in _DURATIONS.values()}}
    _apply({"jax_compilation_cache_dir": str(path) if on else None,
            "jax_enable_compilation_cache": on,
            "jax_persistent_cache_min_compile_time_secs": 0.0,
            "jax_persistent_cache_min_entry_size_bytes": -1} if on else
           {"jax_compilation_cache_dir": None, "jax_enable_compilation_cache": False})
    if on and os.environ.get("TF_CPP_MIN_LOG_LEVEL", _JAX_LOG_LEVEL) == _JAX_LOG_LEVEL:
        _cpp_log_level(3)  # the cpu_aot_loader lines of every cache hit (module docstring)
    return previous


def restore(previous: dict) -> None:
    """Put back the cache settings `configure` returned, end the record, and reset XLA's C++
    log level to `TF_CPP_MIN_LOG_LEVEL`."""
    _apply(previous)
    _state["record"] = None
    _cpp_log_level(int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", _JAX_LOG_LEVEL)))


@contextlib.contextmanager
def session(cache_dir=None, *, enabled: Optional[bool] = None):
    """`configure(cache_dir, enabled=enabled)` for the `with` block, `restore` after it
    (one CLI command inside a longer process, e.g. a test, leaves the process as it was)."""
    previous = configure(cache_dir, enabled=enabled)
    try:
        yield
    finally:
        restore(previous)


def report() -> Optional[dict]:
    """What compiling cost since `configure` (None outside one), for `meta.json`:

    `cache` ("on"/"off"), `cache_dir`, `programs` (handed to XLA), `cache_hits` (loaded
    from the cache), `cache_misses` (compiled: `programs - cache_hits`), `cache_writes`,
    `trace_seconds`, `lower_seconds` and `compile_seconds` (XLA compiles and cache loads).
    """
    record = _state["record"]
    if record is None:
        return None
    out = dict(record)
    out["cache_misses"] = out["programs"] - out["cache_hits"]
    return out


_CONFIG_NAMES = ("jax_compilation_cache_dir", "jax_enable_compilation_cache",
                 "jax_persistent_cache_min_compile_time_secs",
                 "jax_persistent_cache_min_entry_size_bytes")


def _apply(settings: dict) -> None:
    from jax.experimental.compilation_cache import compilation_cache

    for name, value in settings.items():
        jax.config.update(name, value)
    # JAX opens the cache (and decides whether it is used) once per process: start over so
    # the new directory, or none, takes effect
    compilation_cache.reset_cache()


def _writable(path: Path) -> Optional[str]:
    """None if `path` is (or can be made) a directory we can write into, else why not."""
    if path.exists() and not path.is_dir():
        return "it exists and is not a directory"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return err.strerror or str(err)
    if not os.access(path, os.W_OK | os.X_OK):
        return "not writable"
    return None


def _listen() -> None:
    """Register the monitoring listeners once per process; they count into the current
    record (nothing outside a `configure`)."""
    if _state["listening"]:
        return

    def on_event(event, **_):
        record = _state["record"]
        if record is not None and event in (_HITS, _WRITES):
            record["cache_hits" if event == _HITS else "cache_writes"] += 1

    def on_duration(event, seconds, **_):
        record = _state["record"]
        if record is not None and event in _DURATIONS:
            record[_DURATIONS[event]] += seconds
            record["programs"] += event == _PROGRAMS

    monitoring.register_event_listener(on_event)
    monitoring.register_event_duration_secs_listener(on_duration)
    _state["listening"] = True


def _cpp_log_level(level: int) -> None:
    """XLA's C++ minimum log level (0 info ... 3 fatal); jaxlib has no public setter (its
    `jax_logging_level` option also changes the Python loggers and cannot lower it back)."""
    from jax._src.lib import utils

    setter = getattr(utils, "absl_set_min_log_level", None)
    if setter is not None:
        setter(level)
