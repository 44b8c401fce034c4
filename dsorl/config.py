"""Job configs: YAML files with a `job` key, merged over the job's defaults and checked.

A job is a module `dsorl.jobs.<name>` with `DEFAULTS` (a dict of every key it accepts,
with its default) and `run(config) -> dict` . Unknown keys list the valid ones; a value of
the wrong type names its key.
"""
import importlib
import pkgutil
from pathlib import Path
from typing import Iterable, Mapping

import yaml

import dsorl.jobs


def available_jobs() -> list:
    """Names of the jobs `dsorl run` knows."""
    return sorted(m.name for m in pkgutil.iter_modules(dsorl.jobs.__path__)
                  if not m.name.startswith("_"))


def job_module(name: str):
    if name not in available_jobs():
        raise ValueError(f"unknown job {name!r}; available jobs: {', '.join(available_jobs())}.")
    return importlib.import_module(f"dsorl.jobs.{name}")


def load_config(path, overrides: Iterable[str] = ()) -> dict:
    """Read a YAML config, apply `key=value` overrides, merge defaults and validate."""
    text = Path(path).read_text()
    raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict) or "job" not in raw:
        raise ValueError(f"{path}: a config is a mapping with a 'job' key"
                         f" (one of {', '.join(available_jobs())}).")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes key=value, got {item!r}.")
        _set_nested(raw, key.split("."), yaml.safe_load(value))
    return resolve(raw)


def resolve(raw: Mapping) -> dict:
    """Merge `raw` over its job's `DEFAULTS` and check keys and types."""
    module = job_module(raw["job"])
    config = _merge(module.DEFAULTS, {k: v for k, v in raw.items() if k != "job"}, prefix="")
    return {"job": raw["job"], **config}


def _merge(defaults: Mapping, given: Mapping, prefix: str) -> dict:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown config key {prefix + unknown[0]!r}; valid keys"
                         f"{' under ' + prefix[:-1] if prefix else ''}: {', '.join(sorted(defaults))}.")
    out = {}
    for key, default in defaults.items():
        if key not in given:
            out[key] = default
            continue
        value = given[key]
        if isinstance(default, Mapping):
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
