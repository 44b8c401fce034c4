"""Result files: tables as CSV, arrays as `.npz`, and a JSON record of how they were made.

Every result directory holds `meta.json` with the config, the package versions, the
seeds, the devices, where the package is installed, the commit and dirty-tree flag of the
package's own git checkout (if it is one), the time and the status (`complete`, or
`interrupted` for a job stopped by Ctrl-C), so a number can be traced back to what
produced it; inside `dsorl run`/`sweep` or a benchmark script also `compilation`, what
compiling cost and the persistent cache's hits and misses (`dsorl.compilation.report`).
Files are created with the user's umask. A table is always written as `<name>.csv` (floats written exactly,
loadable with `pandas.read_csv`) and also as `<name>.parquet` when pyarrow is installed;
`read_results` reads a directory back.
"""
import contextlib
import csv
import datetime
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np

from dsorl import compilation

__all__ = ["Table", "Interrupted", "keep_on_interrupt", "environment_record", "check_output_dir", "write_results",
           "read_results", "format_table"]

Table = Union[Sequence[Mapping], Mapping[str, Sequence]]  # rows, or columns of equal length


class Interrupted(KeyboardInterrupt):
    """Raised by a job stopped by Ctrl-C after finishing part of its work: `partial` is
    what it finished, shaped like its `run` result (`tables`, `arrays`, `seeds`,
    `extra`); `dsorl run` writes it with the status "interrupted"."""

    def __init__(self, partial: Mapping):
        super().__init__("interrupted")
        self.partial = dict(partial)


@contextlib.contextmanager
def keep_on_interrupt(partial: Callable[[], Mapping]):
    """Turn a Ctrl-C inside the block into `Interrupted(partial())`: a job wraps its outer
    loop with a function returning what it has finished (a `run` result), and `dsorl run`
    writes that with the status "interrupted" instead of losing it."""
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(partial()) from None


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
    record.update(_package_record())
    return record


def check_output_dir(out_dir, config: Optional[Mapping] = None, *, force: bool = False) -> Path:
    """Check, before a job runs, that its results can go to `out_dir`: a directory (made
    here if missing) where files can be created, holding no other job's results
    (`meta.json` of another `config`) unless `force`. `ValueError` naming the problem."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output directory {str(out)!r} exists and is not a directory.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise ValueError(f"cannot write to output directory {str(out)!r}:"
                         f" {err.strerror or err}.") from None
    meta = out / "meta.json"
    if config is not None and meta.exists() and not force:
        try:
            old = json.loads(meta.read_text())
        except (OSError, ValueError):
            old = {}
        new = json.loads(json.dumps(dict(config), default=_jsonable))
        if old.get("config") != new:
            previous = old.get("config", {})
            differ = sorted(k for k in set(previous) | set(new) if previous.get(k) != new.get(k))
            raise ValueError(
                f"output directory {str(out)!r} holds the results of another job"
                f" ({previous.get('job', 'unknown job')}, created {old.get('created', '?')};"
                f" its config differs in: {', '.join(differ) or 'its format'}); use another"
                " --output-dir, or --force to replace them.")
    return out


def write_results(out_dir, config: Mapping, *, tables: Optional[Mapping[str, Table]] = None,
                  arrays: Optional[Mapping[str, np.ndarray]] = None, seeds=None,
                  extra: Optional[Mapping] = None, status: str = "complete") -> Path:
    """Write `meta.json`, one `<name>.csv` per table and `arrays.npz` into `out_dir`.

    A table is a list of rows (dicts with the same keys) or a mapping of columns. Each
    file is written to a temporary name and renamed, so a killed run never leaves a
    half-written file behind; the tables and arrays of the results that were there
    before (named in their `meta.json`) are removed, so no file of an earlier job stays
    beside the new ones. `status` ("complete" or "interrupted") goes to `meta.json`.
    Returns the directory.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_previous(out)
    for name, table in (tables or {}).items():
        columns = _columns(table)
        _atomic_write(out / f"{name}.csv", _csv_text(columns))
        _write_parquet(out / f"{name}.parquet", columns)
    if arrays:
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        _atomic_write(out / "arrays.npz", buf.getvalue())
    meta = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "status": status,
        "config": dict(config),
        "seeds": seeds,
        "environment": environment_record(),
        "tables": sorted(tables or {}),
        "arrays": sorted(arrays or {}),
        **dict(extra or {}),
    }
    compiled = compilation.report()  # within dsorl run/sweep or a benchmark script
    if compiled is not None:
        meta["compilation"] = compiled
    _atomic_write(out / "meta.json", json.dumps(meta, indent=1, default=_jsonable))
    return out


def read_results(out_dir) -> tuple:
    """`(tables, arrays, meta)` of a result directory: tables as `{name: {column: array}}`
    (read from CSV; integer, float and bool columns typed, others str), arrays from
    `arrays.npz`, `meta` from `meta.json`."""
    out = Path(out_dir)
    if not (out / "meta.json").exists():
        raise ValueError(f"{out} is not a result directory (no meta.json).")
    meta = json.loads((out / "meta.json").read_text())
    tables = {name: _read_csv(out / f"{name}.csv") for name in meta.get("tables", [])}
    arrays = {}
    if (out / "arrays.npz").exists():
        with np.load(out / "arrays.npz") as z:
            arrays = {k: z[k] for k in z.files}
    return tables, arrays, meta


def format_table(rows: Table, floatfmt: str = ".6g", max_rows: Optional[int] = None) -> str:
    """A plain-text table of `rows` (dicts with the same keys, or columns); with `max_rows`,
    the first and last rows around an ellipsis."""
    if isinstance(rows, Mapping):
        cols = {k: np.asarray(v).tolist() for k, v in rows.items()}
        rows = [dict(zip(cols, vals)) for vals in zip(*cols.values())]
    if not rows:
        return "(empty)"
    skipped = 0
    if max_rows is not None and len(rows) > max_rows:
        head = max_rows - max_rows // 2
        skipped = len(rows) - max_rows
        rows = list(rows[:head]) + [None] + list(rows[len(rows) - max_rows // 2:])
    if skipped:
        dots = dict.fromkeys(next(r for r in rows if r is not None), "...")
        rows = [dots if r is None else r for r in rows]
    keys = list(rows[0])
    cells = [[_fmt(r[k], floatfmt) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = lambda xs: "  ".join(x.rjust(w) for x, w in zip(xs, widths))
    text = "\n".join([line(keys), line(["-" * w for w in widths])] + [line(c) for c in cells])
    return text + (f"\n({skipped} more rows)" if skipped else "")


def _fmt(x, floatfmt):
    if isinstance(x, (float, np.floating)):
        return format(float(x), floatfmt)
    return str(x)


def _columns(table: Table) -> dict:
    """`{column: list}` from rows or columns (NumPy scalars become Python numbers)."""
    if isinstance(table, Mapping):
        cols = {str(k): np.asarray(v).tolist() for k, v in table.items()}
        lengths = {len(v) for v in cols.values()}
        if len(lengths) > 1:
            raise ValueError(f"table columns differ in length: {sorted(lengths)}.")
        return cols
    rows = list(table)
    keys = list(rows[0]) if rows else []
    return {k: [_jsonable(r[k]) if isinstance(r[k], np.generic) else r[k] for r in rows]
            for k in keys}


def _csv_text(columns: Mapping[str, list]) -> str:
    import io

    buf = io.StringIO()
    if columns:
        writer = csv.writer(buf)
        writer.writerow(list(columns))
        writer.writerows(zip(*columns.values()))  # str(float) round-trips exactly
    return buf.getvalue()


def _read_csv(path: Path) -> dict:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        values = list(zip(*reader)) or [()] * len(header)
    return {k: _typed(list(v)) for k, v in zip(header, values)}


def _typed(cells: list) -> np.ndarray:
    if cells and all(c in ("True", "False") for c in cells):
        return np.array([c == "True" for c in cells])
    for dtype in (np.int64, np.float64):
        try:
            return np.array(cells, dtype=dtype)
        except ValueError:
            pass
    return np.array(cells, dtype=str)


def _remove_previous(out: Path) -> None:
    """Remove the tables and arrays that `out/meta.json` names (earlier results)."""
    try:
        old = json.loads((out / "meta.json").read_text())
    except (OSError, ValueError):
        return
    names = [f"{t}{ext}" for t in old.get("tables", []) for ext in (".csv", ".parquet")]
    names += ["arrays.npz"] if old.get("arrays") else []
    for name in names:
        if "/" not in name and (out / name).is_file():
            (out / name).unlink()


def _write_parquet(path: Path, columns: Mapping[str, list]) -> None:
    """`<name>.parquet` beside the CSV when pyarrow is installed (optional)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return
    import io

    buf = io.BytesIO()
    pq.write_table(pa.table(dict(columns)), buf)
    _atomic_write(path, buf.getvalue())


def _atomic_write(path: Path, data: Union[str, bytes]) -> None:
    """Write to a temporary file beside `path` and rename it over `path`; the file gets
    the permissions of a plain `open` (0666 less the umask), not mkstemp's 0600."""
    with tempfile.NamedTemporaryFile("w" if isinstance(data, str) else "wb", dir=path.parent,
                                     delete=False, suffix=".tmp") as f:
        f.write(data)
    os.chmod(f.name, 0o666 & ~_umask())
    os.replace(f.name, path)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: set it straight back
    os.umask(mask)
    return mask


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def _package_record() -> dict:
    """Where dsorl is installed and, when those files are tracked by a git checkout (an
    editable install of the repository, not an install inside some other repository's
    tree), its commit and whether tracked files differ from it (`git_dirty`)."""
    package = Path(__file__).resolve().parent
    record = {"package_location": str(package), "git_commit": None, "git_dirty": None}

    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              cwd=package)

    try:
        if git("ls-files", "--error-unmatch", "__init__.py").returncode != 0:
            return record  # not a checkout of dsorl's own repository
        record["git_commit"] = git("rev-parse", "HEAD").stdout.strip() or None
        status = git("status", "--porcelain", "--untracked-files=no")
        record["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return record
