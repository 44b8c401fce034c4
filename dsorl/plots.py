"""Figures of sweep results as PNG (matplotlib, the optional extra `dsorl[plots]`).

`plot_results(dir)` reads a directory written by `dsorl sweep` and draws what its grid
allows:
- convergence curves of every kept trace, one line per hyperparameter setting (the median
  over seeds and starts) with a band from the 10% to the 90% quantile of the members;
- γ-sweep curves of every metric when the grid has a `gamma` axis (median and band over
  seeds and starts, every member as a dot);
- 2-D landscapes (or error maps, for an error metric) of every metric over two grid
  coordinates, e.g. the nBw paper's (w_x, w_y) grid of initial parameters, averaged over
  seeds, one panel per environment and setting.
"""
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

__all__ = ["plot_results"]

MAX_CURVES = 12
MAX_PANELS = 6


def plot_results(results_dir, out_dir=None, metrics: Optional[Sequence[str]] = None) -> list:
    """Draw the figures of a sweep's results into `out_dir` (default `results_dir/plots`);
    returns the paths of the PNG files written."""
    from dsorl.results import read_results

    tables, traces, meta = read_results(results_dir)
    info = meta.get("sweep")
    if "table" not in tables or not info:
        raise ValueError(f"{results_dir} holds no sweep results (table.csv and meta.json's"
                         " 'sweep' record); `dsorl plot` draws the output of `dsorl sweep`.")
    table = tables["table"]
    chosen = list(info["metrics"]) if metrics is None else list(metrics)
    unknown = [m for m in chosen if m not in table]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; the table has: {', '.join(info['metrics'])}.")
    plt = _pyplot()
    out = Path(out_dir) if out_dir is not None else Path(results_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    axes = _Axes(table, info)
    paths = []
    for name in sorted(traces):
        paths.append(_convergence(plt, out, name, traces[name], info.get("trace_every", 1), axes))
    if "gamma" in axes.settings:
        paths += [_gamma_curve(plt, out, m, table, axes) for m in chosen]
    plane = axes.plane()
    if plane:
        paths += [_landscape(plt, out, m, table, plane, axes) for m in chosen]
    return paths


class _Axes:
    """Which table columns are settings (lines), which are samples (bands) and which
    coordinates span a plane."""

    def __init__(self, table, info):
        self.table = table
        self.env = ["env"] if "env" in table else []
        # a scalar axis has one column named like the axis; seeds and pytree axes (starts)
        # are samples of one setting
        self.settings = [a["name"] for a in info["grid"]
                         if a["columns"] == [a["name"]] and a["name"] != "seed"]
        self.info = info

    def groups(self, by):
        """`{key tuple: member indices}` grouping the rows by the columns `by`."""
        if not by:
            return {(): np.arange(len(self.table["member"]))}
        keys = list(zip(*(self.table[c].tolist() for c in by)))
        out = {}
        for i, k in enumerate(keys):
            out.setdefault(k, []).append(i)
        return {k: np.array(v) for k, v in out.items()}

    def plane(self):
        """Two numeric coordinates spanning a full grid: the two labels of a pytree axis,
        else the two largest scalar axes (γ excluded), else None."""
        for a in self.info["grid"]:
            cols = a["columns"]
            if a["name"] != "seed" and len(cols) == 2 and all(
                    np.issubdtype(self.table[c].dtype, np.number) for c in cols):
                x, y = (np.unique(self.table[c]) for c in cols)
                if len(x) * len(y) == a["size"] and len(x) > 1 and len(y) > 1:
                    return cols
        scalar = sorted((a for a in self.info["grid"] if a["name"] in self.settings
                         and a["name"] != "gamma" and a["size"] > 1), key=lambda a: -a["size"])
        return [a["name"] for a in scalar[:2]] if len(scalar) >= 2 else None


def _label(by, key) -> str:
    return ", ".join(f"{c}={_short(v)}" for c, v in zip(by, key)) or "all members"


def _short(v) -> str:
    return format(v, ".4g") if isinstance(v, float) else str(v)


def _band(plt_ax, x, values, label):
    """Median line and 10–90% quantile band of `values[members, len(x)]`."""
    with warnings.catch_warnings():  # steps where every member diverged: a gap in the curve
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, mid, hi = np.nanquantile(values, [0.1, 0.5, 0.9], axis=0)
    (line,) = plt_ax.plot(x, mid, label=label)
    if len(values) > 1:
        plt_ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.25, linewidth=0)
    return line


def _convergence(plt, out, name, trace, every, axes):
    by = axes.env + axes.settings
    fig, ax = plt.subplots(figsize=(7, 4.5))
    steps = np.arange(trace.shape[1]) * every
    groups = list(axes.groups(by).items())
    for key, idx in groups[:MAX_CURVES]:
        _band(ax, steps, trace[idx], f"{_label(by, key)} ({len(idx)} members)")
    _finish(ax, "step", name, f"{name}: median and 10–90% band over seeds and starts"
            + _dropped(len(groups)))
    return _save(plt, fig, out / f"convergence_{_safe(name)}.png")


def _gamma_curve(plt, out, metric, table, axes):
    by = axes.env + [s for s in axes.settings if s != "gamma"]
    gammas = np.unique(table["gamma"])
    horizon = 1 / (1 - gammas) if gammas.max() < 1 else None
    log_x = horizon is not None and horizon.max() / horizon.min() >= 10
    xs = lambda g: 1 / (1 - g) if log_x else g
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = list(axes.groups(by).items())
    for key, idx in groups[:MAX_CURVES]:
        values = [table[metric][idx][table["gamma"][idx] == g] for g in gammas]
        width = max(len(v) for v in values)
        padded = np.array([np.pad(v.astype(float), (0, width - len(v)), constant_values=np.nan)
                           for v in values]).T
        line = _band(ax, xs(gammas), padded, f"{_label(by, key)}")
        ax.scatter(xs(table["gamma"][idx]), table[metric][idx], s=4, alpha=0.3,
                   color=line.get_color())
    if log_x:
        ax.set_xscale("log")
    _finish(ax, "effective horizon 1/(1-γ)" if log_x else "γ", metric,
            f"{metric} against γ: median, 10–90% band, every member" + _dropped(len(groups)))
    return _save(plt, fig, out / f"gamma_{_safe(metric)}.png")


def _landscape(plt, out, metric, table, plane, axes):
    cx, cy = plane
    by = axes.env + [s for s in axes.settings if s not in plane]
    groups = list(axes.groups(by).items())[:MAX_PANELS]
    fig, axs = plt.subplots(1, len(groups), figsize=(4.2 * len(groups) + 1, 4), squeeze=False)
    xs, ys = np.unique(table[cx]), np.unique(table[cy])
    for ax, (key, idx) in zip(axs[0], groups):
        grid = np.full((len(ys), len(xs)), np.nan)
        total = np.zeros_like(grid)
        count = np.zeros_like(grid)
        ix = np.searchsorted(xs, table[cx][idx])
        iy = np.searchsorted(ys, table[cy][idx])
        np.add.at(total, (iy, ix), table[metric][idx].astype(float))
        np.add.at(count, (iy, ix), 1)
        np.divide(total, count, out=grid, where=count > 0)
        mesh = ax.pcolormesh(xs, ys, grid, shading="nearest", cmap="viridis")
        fig.colorbar(mesh, ax=ax)
        ax.set_xlabel(cx)
        ax.set_ylabel(cy)
        ax.set_title(_label(by, key), fontsize=9)
    fig.suptitle(f"{metric} (mean over seeds)")
    fig.tight_layout()
    return _save(plt, fig, out / f"landscape_{_safe(metric)}.png")


def _dropped(n_groups) -> str:
    return f" (first {MAX_CURVES} of {n_groups} settings)" if n_groups > MAX_CURVES else ""


def _finish(ax, xlabel, ylabel, title):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _save(plt, fig, path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise ValueError("dsorl plot needs matplotlib: pip install 'dsorl[plots]'.") from err
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt
