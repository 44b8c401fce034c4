"""Result files: tables as CSV, arrays as `.npz`, and a JSON record of how they were made.

Every result directory holds `meta.json` with the config, the package versions, the
seeds, the devices, the git commit (if any) and the time, so a number can be traced back
to what produced it.
"""
import csv
import datetime
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np


def environment_record() -> dict:
    """Versions of Python and the numerical stack, the JAX devices and the git commit."""
    import jax
    import jaxlib

    record = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "x64": bool(jax.config.jax_enable_x64),
        "devices": [str(d) for d in jax.devices()],
    }
    for name in ("optax", "chex", "flax", "scipy"):
        try:
            record[name] = __import__(name).__version__
        except ImportError:
            pass
    from dsorl import __version__

    record["dsorl"] = __version__
    record["git_commit"] = _git_commit()
    return record


def write_results(out_dir, config: Mapping, *, tables: Optional[Mapping[str, Sequence[Mapping]]] = None,
                  arrays: Optional[Mapping[str, np.ndarray]] = None, seeds=None,
                  extra: Optional[Mapping] = None) -> Path:
    """Write `meta.json`, one `<name>.csv` per table and `arrays.npz` into `out_dir`.

    Each file is written to a temporary name and renamed, so a killed run never leaves a
    half-written file behind. Returns the directory.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (tables or {}).items():
        _atomic_write(out / f"{name}.csv", _csv_text(rows))
    if arrays:
        with tempfile.NamedTemporaryFile(dir=out, suffix=".npz", delete=False) as f:
            np.savez_compressed(f, **{k: np.asarray(v) for k, v in arrays.items()})
        os.replace(f.name, out / "arrays.npz")
    meta = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": dict(config),
        "seeds": seeds,
        "environment": environment_record(),
        "tables": sorted(tables or {}),
        "arrays": sorted(arrays or {}),
        **dict(extra or {}),
    }
    _atomic_write(out / "meta.json", json.dumps(meta, indent=1, default=_jsonable))
    return out


def format_table(rows: Sequence[Mapping], floatfmt: str = ".6g") -> str:
    """A plain-text table of `rows` (dicts with the same keys)."""
    if not rows:
        return "(empty)"
    keys = list(rows[0])
    cells = [[_fmt(r[k], floatfmt) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = lambda xs: "  ".join(x.rjust(w) for x, w in zip(xs, widths))
    return "\n".join([line(keys), line(["-" * w for w in widths])] + [line(c) for c in cells])


def _fmt(x, floatfmt):
    if isinstance(x, (float, np.floating)):
        return format(float(x), floatfmt)
    return str(x)


def _csv_text(rows: Sequence[Mapping]) -> str:
    import io

    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _jsonable(v) if isinstance(v, np.generic) else v
                             for k, v in row.items()})
    return buf.getvalue()


def _atomic_write(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, path)


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
