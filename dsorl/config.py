"""Job configs: YAML files with a `job` key, merged over the job's defaults and checked.

A job is a module `dsorl.jobs.<name>` (or any importable module, named by its dotted
path) with `DEFAULTS` (a dict of every key it accepts, with its default) and
`run(config) -> dict` (`dsorl run`), or `sweep_spec(config) -> dict` of keyword arguments
of `dsorl.sweep.sweep` (`dsorl sweep`), or both. A sweep job's config also has a `sweep`
mapping (`SWEEP_DEFAULTS`: chunking, traces, progress). Unknown keys list the valid ones;
a value of the wrong type names its key.
"""
import copy
import importlib
import pkgutil
import re
from pathlib import Path
from typing import Iterable, Mapping

import yaml

import dsorl.jobs

__all__ = ["SWEEP_DEFAULTS", "Free", "available_jobs", "job_module", "is_sweep_job",
           "job_summaries", "load_config", "parse_yaml", "resolve", "summary"]


# Settings of every sweep job (the `sweep` mapping of its config); a job's DEFAULTS may
# give other defaults under its own "sweep" key.
SWEEP_DEFAULTS = {
    "chunk_size": None,       # members per compiled call; None: fit memory_budget_mb
    "memory_budget_mb": 1024.0,  # device memory for two chunks in flight
    "traces": [],             # trace names to keep per step; [all] keeps every trace
    "trace_every": 1,         # keep every n-th step of the traces
    "progress": None,         # progress bar on stderr; None: when stderr is a terminal
}


class Free(dict):
    """A mapping default that a config replaces wholesale (its keys are free and the job
    checks them), e.g. a sweep's `grid` of axis name -> values."""


def available_jobs() -> list:
    """Names of the jobs `dsorl run` knows."""
    return sorted(m.name for m in pkgutil.iter_modules(dsorl.jobs.__path__)
                  if not m.name.startswith("_"))


def job_module(name: str):
    """The module of job `name`: `dsorl.jobs.<name>`, else the importable module `name`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"job must be a name, got {name!r}; available jobs:"
                         f" {', '.join(available_jobs())}.")
    if name in available_jobs():
        return importlib.import_module(f"dsorl.jobs.{name}")
    try:
        module = importlib.import_module(name)
    except ImportError:
        module = None
    if module is None or not hasattr(module, "DEFAULTS") or not (
            hasattr(module, "run") or hasattr(module, "sweep_spec")):
        raise ValueError(f"unknown job {name!r}; available jobs: {', '.join(available_jobs())}"
                         " (or an importable module with DEFAULTS and run/sweep_spec).")
    return module


def is_sweep_job(module) -> bool:
    """Whether `dsorl sweep` can run the job (it defines `sweep_spec`)."""
    return callable(getattr(module, "sweep_spec", None))


def summary(doc) -> str:
    """The first paragraph of a docstring on one line: a whole sentence or more, never a
    first line cut mid-sentence (`dsorl list`, `--show-config`)."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def job_summaries() -> list:
    """`(name, kinds, summary of the docstring)` of every built-in job, for `dsorl list`."""
    out = []
    for name in available_jobs():
        try:
            module = job_module(name)
        except Exception as err:  # a job under construction must not break `dsorl list`
            out.append((name, "broken", f"cannot import: {type(err).__name__}: {err}"))
            continue
        kinds = "/".join(k for k, ok in (("run", callable(getattr(module, "run", None))),
                                         ("sweep", is_sweep_job(module))) if ok)
        out.append((name, kinds, summary(module.__doc__)))
    return out


class _Loader(yaml.SafeLoader):
    """YAML with numbers as people write them: PyYAML follows YAML 1.1, whose floats need a
    dot and a signed exponent, so `1e-5` and `1E5` would be strings; here they are floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml(text: str, what: str):
    """`text` read as YAML (`_Loader`); a syntax error is a `ValueError` naming `what`
    and the line and column."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{what} is not valid YAML{where}: {problem}.") from None


def load_config(path, overrides: Iterable[str] = ()) -> dict:
    """Read a YAML config, apply `key=value` overrides, merge defaults and validate.

    `path` may also name a built-in job (`nbw_analysis`): its defaults. A missing,
    unreadable or malformed file is a `ValueError` naming it.
    """
    path = Path(path)
    if not path.exists() and str(path) in available_jobs():
        raw = {"job": str(path)}
    else:
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ValueError(f"config file {str(path)!r} not found (a YAML file such as"
                             " configs/default.yaml, or a job name: "
                             f"{', '.join(available_jobs())}).") from None
        except (OSError, UnicodeDecodeError) as err:
            reason = getattr(err, "strerror", None) or str(err)
            raise ValueError(f"cannot read config file {str(path)!r}: {reason}.") from None
        raw = parse_yaml(text, f"config file {str(path)!r}") or {}
    if not isinstance(raw, dict) or "job" not in raw:
        raise ValueError(f"{path}: a config is a mapping with a 'job' key"
                         f" (one of {', '.join(available_jobs())}).")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes key=value, got {item!r}.")
        _set_nested(raw, key.split("."), parse_yaml(value, f"--set {item}"))
    return resolve(raw)


def resolve(raw: Mapping) -> dict:
    """Merge `raw` over its job's `DEFAULTS` and check keys and types."""
    module = job_module(raw["job"])
    defaults = dict(module.DEFAULTS)
    if is_sweep_job(module):
        defaults["sweep"] = {**SWEEP_DEFAULTS, **defaults.get("sweep", {})}
    config = _merge(defaults, {k: v for k, v in raw.items() if k != "job"}, prefix="")
    if "sweep" in config and is_sweep_job(module):
        _check_sweep_settings(config["sweep"])
    return {"job": raw["job"], **config}


def _check_sweep_settings(settings: Mapping) -> None:
    """Keys whose default is None accept null or one type: check that type here."""
    chunk, progress = settings["chunk_size"], settings["progress"]
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"config key 'sweep.chunk_size' must be a positive integer or null,"
                         f" got {chunk!r}.")
    if progress is not None and not isinstance(progress, bool):
        raise ValueError(f"config key 'sweep.progress' must be true, false or null, got {progress!r}.")
    if not all(isinstance(t, str) for t in settings["traces"]):
        raise ValueError(f"config key 'sweep.traces' must be a list of trace names (or [all]),"
                         f" got {settings['traces']!r}.")
    if settings["trace_every"] < 1 or settings["memory_budget_mb"] <= 0:
        raise ValueError("config keys 'sweep.trace_every' and 'sweep.memory_budget_mb' must be"
                         f" positive, got {settings['trace_every']!r} and {settings['memory_budget_mb']!r}.")


def _merge(defaults: Mapping, given: Mapping, prefix: str) -> dict:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown config key {prefix + unknown[0]!r}; valid keys"
                         f"{' under ' + prefix[:-1] if prefix else ''}: {', '.join(sorted(defaults))}.")
    out = {}
    for key, default in defaults.items():
        if key not in given:
            out[key] = copy.deepcopy(dict(default) if isinstance(default, Free) else default)
            continue
        value = given[key]
        if isinstance(default, Free):
            if not isinstance(value, Mapping):
                raise ValueError(f"config key {prefix + key!r} must be a mapping, got {value!r}.")
            out[key] = dict(value)
        elif isinstance(default, Mapping):
            if not isinstance(value, Mapping):
                raise ValueError(f"config key {prefix + key!r} must be a mapping, got {value!r}.")
            out[key] = _merge(default, value, prefix=f"{prefix}{key}.")
        else:
            out[key] = _coerce(prefix + key, default, value)
    return out


def _coerce(key: str, default, value):
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, int):
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and float(value).is_integer():
            return int(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return list(value)
    else:
        return value
    raise ValueError(f"config key {key!r} must be of type {type(default).__name__}"
                     f" (like its default {default!r}), got {value!r}.")


def _set_nested(d: dict, keys, value) -> None:
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ValueError(f"--set {'.'.join(keys)}: {k!r} is not a mapping.")
    d[keys[-1]] = value
