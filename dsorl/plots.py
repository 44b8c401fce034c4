"""Figures of results as PNG (matplotlib, the optional extra `dsorl[plots]`).

`plot_results(dir)` draws any result directory:

- written by `dsorl sweep`: what its grid allows, every setting drawn (none dropped):
  - convergence curves of every kept trace: the median over seeds and starts with a band
    from the 10% to the 90% quantile, one line per value of the setting with the most
    values (the *hue*), one panel per environment and value of the other settings;
  - γ curves of every metric when the grid has a `gamma` axis (median, band and every
    member as a dot), faceted the same way;
  - 2-D landscapes of every metric over two grid coordinates (e.g. the nBw paper's
    (w_x, w_y) starts), averaged over seeds, one panel per environment and setting.
- written by `dsorl run`: the job's own figures (`figures(tables, arrays, config, plt)`
  of its module, a `{name: Figure}`), else curves of its 1-D arrays and bars of its tables.

Rules every figure follows: a colour per line, never repeated within a legend
(`palette`); the legend outside the axes; tick labels on every axis; titles and labels
from the config; a metric with one value everywhere (or only NaN) is skipped, not drawn;
colour scales span the finite data; a landscape whose spread is rounding noise (below
`NOISE_RELATIVE` of its magnitude) is drawn in one colour and says so. Figures with more
panels than `MAX_PANELS` are split over several files (`name.png`, `name_2.png`, ...).
"""
import math
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

__all__ = ["plot_results", "job_figures", "palette", "is_constant", "is_noise", "facets",
           "legend_outside", "log_ticks", "plain_log_labels", "heatmap", "describe", "pyplot",
           "NOISE_RELATIVE", "MAX_PANELS"]

MAX_PANELS = 24        # panels per file; more spill into name_2.png, ...
NOISE_RELATIVE = 1e-9  # a spread below this fraction of the values' magnitude is rounding


def plot_results(results_dir, out_dir=None, metrics: Optional[Sequence[str]] = None) -> list:
    """Draw the figures of a result directory (`dsorl sweep` or `dsorl run`) into `out_dir`
    (default `results_dir/plots`); returns the paths of the PNG files written."""
    from dsorl.results import read_results

    tables, arrays, meta = read_results(results_dir)
    out = Path(out_dir) if out_dir is not None else Path(results_dir) / "plots"
    info = meta.get("sweep")
    if info and "table" in tables:
        table = tables["table"]
        chosen = list(info["metrics"]) if metrics is None else list(metrics)
        unknown = [m for m in chosen if m not in table]
        if unknown:
            raise ValueError(f"unknown metric {unknown[0]!r}; the table has:"
                             f" {', '.join(info['metrics'])}.")
        plt = pyplot()
        out.mkdir(parents=True, exist_ok=True)
        return _sweep_figures(plt, out, table, arrays, info, meta.get("config") or {}, chosen)
    config = meta.get("config") or {}
    if metrics is not None:
        raise ValueError("--metric chooses among a sweep's metrics; this directory holds the"
                         f" results of the job {config.get('job')!r}.")
    return job_figures(tables, arrays, config, out)


def job_figures(tables, arrays, config, out) -> list:
    """The figures of a `dsorl run` job's results: its module's `figures`, else (no such
    function, a job module that cannot be imported, or a partial result it cannot draw)
    generic ones: curves of its 1-D arrays, bars of its tables. Returns the PNG paths."""
    draw = _job_attr(config, "figures", None)
    plt = pyplot()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = None
    if draw is not None:
        try:
            figures = draw(tables, arrays, config, plt)
        except KeyError:  # a partial result (an interrupted run) lacks what the figure needs
            plt.close("all")
    if figures is None:
        figures = _generic(plt, tables, arrays, config)
    return [_save(plt, fig, out / f"{_safe(name)}.png") for name, fig in figures.items()]


# ---------------------------------------------------------------------------------------
# Shared rules


def palette(n: int) -> list:
    """`n` distinct colours: the 10 of `tab10` while they suffice, else `n` samples of the
    perceptually uniform `viridis` map (so no colour repeats within a legend)."""
    import matplotlib

    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    return [matplotlib.colormaps["viridis"](x) for x in np.linspace(0, 0.95, n)]


def is_constant(values) -> bool:
    """No information to draw: fewer than two distinct finite values."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return v.size == 0 or bool(np.all(v == v[0]))


def is_noise(values, scale: float = 0.0) -> bool:
    """The finite values' spread is rounding noise: at most `NOISE_RELATIVE` times their
    magnitude or `scale` (the magnitude of the quantity elsewhere, e.g. of a gap metric in
    the other environments), e.g. a landscape 12 ± 1e-14, or a gap of 1e-14 where other
    panels show gaps of 10."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return True
    scale = max(float(np.max(np.abs(v))), float(scale), np.finfo(float).tiny)
    return float(np.ptp(v)) <= NOISE_RELATIVE * scale


def facets(plt, n: int, *, ncols: Optional[int] = None, width: float = 4.2, height: float = 3.2,
           sharex=False, sharey=False):
    """`(fig, axes[n])`: a grid of `n` panels (`ncols` per row, default up to 4); the unused
    cells of the last row are hidden."""
    ncols = ncols or min(n, 4)
    nrows = math.ceil(n / ncols)
    fig, axs = plt.subplots(nrows, ncols, figsize=(width * ncols + 2.5, height * nrows + 0.8),
                            squeeze=False, sharex=sharex, sharey=sharey)
    flat = list(axs.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    for ax in flat[:n]:
        ax.tick_params(labelbottom=True, labelleft=True)  # tick labels on every panel
    return fig, flat[:n]


def legend_outside(fig, handles, labels, title=None):
    """One legend for the figure, to the right of the panels."""
    if not handles:
        return
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               title=title, title_fontsize=8, frameon=False)


def log_ticks(ax, values, axis="x"):
    """A log axis labelled at the data's own values (`10`, `20`, `50`, not `2 x 10^1`)."""
    import matplotlib.ticker

    values = sorted({float(v) for v in np.ravel(values) if np.isfinite(v) and v > 0})
    if not values:
        return
    getattr(ax, f"set_{axis}scale")("log")
    labels = [f"{v:.0f}" if v == round(v) and v < 1e7 else f"{v:.3g}" for v in values]
    getattr(ax, f"set_{axis}ticks")(values, labels)
    getattr(ax, f"{axis}axis").set_minor_locator(matplotlib.ticker.NullLocator())


def plain_log_labels(ax, axis="y"):
    """Label a log axis with plain numbers (`0.6`, `2`, `10`), not `6 x 10^-1`."""
    import matplotlib.ticker

    # plain numbers on decades, and on the minor ticks when the axis spans few decades
    getattr(ax, f"{axis}axis").set_major_formatter(matplotlib.ticker.LogFormatter())
    getattr(ax, f"{axis}axis").set_minor_formatter(
        matplotlib.ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def describe(config) -> str:
    """A title line from a config: the job, the algorithm and the environment settings."""
    if not config:
        return ""
    parts = [str(config.get("job", ""))]
    if "algorithm" in config:
        parts.append(f"({config['algorithm']})")
    env = config.get("env")
    if isinstance(env, dict):
        parts.append("on " + ", ".join(f"{k}={_short(v)}" for k, v in env.items()))
    elif "envs" in config:
        parts.append("on " + ", ".join(map(str, config["envs"])))
    # the step budget (DynPG's is its epochs)
    keys = ("max_epochs",) if config.get("algorithm") == "dynpg" else ("n_steps", "steps")
    for key in keys:
        if isinstance(config.get(key), (int, float)):
            parts.append(f"{key}={config[key]}")
    return " ".join(p for p in parts if p)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (ValueError if not installed)."""
    try:
        import matplotlib
    except ImportError as err:
        raise ValueError("figures need matplotlib: pip install 'dsorl[plots]'.") from err
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------------------------------
# Sweeps


class _Axes:
    """Which table columns are settings (lines or panels), which are samples (bands) and
    which coordinates span a plane."""

    def __init__(self, table, info):
        self.table = table
        self.env = ["env"] if "env" in table else []
        # a scalar axis has one column named like the axis; seeds and pytree axes (starts)
        # are samples of one setting
        self.settings = [a["name"] for a in info["grid"]
                         if a["columns"] == [a["name"]] and a["name"] != "seed"
                         and len(np.unique(table[a["name"]])) > 1]
        self.info = info

    def groups(self, by):
        """`{key tuple: member indices}` grouping the rows by the columns `by`, in the
        sorted order of the keys."""
        if not by:
            return {(): np.arange(len(self.table["member"]))}
        keys = list(zip(*(self.table[c].tolist() for c in by)))
        out = {}
        for i, k in enumerate(keys):
            out.setdefault(k, []).append(i)
        return {k: np.array(out[k]) for k in sorted(out)}

    def hue_and_panels(self, exclude=()):
        """The setting drawn as lines (the one with the most values) and the columns
        whose values make the panels."""
        cands = [s for s in self.settings if s not in exclude]
        hue = max(cands, key=lambda s: len(np.unique(self.table[s])), default=None)
        return hue, self.env + [s for s in cands if s != hue]

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


def _sweep_figures(plt, out, table, traces, info, config, metrics) -> list:
    axes = _Axes(table, info)
    title = describe(config)
    trace_axis = _job_attr(config, "trace_axis", None)
    step_label = trace_axis(config) if callable(trace_axis) else "step"
    # a reference value (e.g. the optimum of each γ) is drawn in its metric's figure
    references = {r: m for r, m in _job_attr(config, "REFERENCES", {}).items()
                  if r in table and m in metrics}
    paths = []
    for name in sorted(traces):
        if is_constant(traces[name]):
            continue
        paths += _curves(plt, out, f"convergence_{_safe(name)}", axes, info.get("trace_every", 1),
                         traces[name], name, step_label, title)
    drawn = [m for m in metrics if not is_constant(table[m]) and m not in references]
    if "gamma" in axes.settings:
        paths += [p for m in drawn for p in _gamma_curves(
            plt, out, m, table, axes, title, [r for r, t in references.items() if t == m])]
    plane = axes.plane()
    if plane:
        paths += [p for m in drawn for p in _landscapes(plt, out, m, table, plane, axes, title)]
    return paths


def _job_attr(config, name, default):
    """An attribute of the config's job module that shapes its figures: `trace_axis(config)`
    (what one trace row counts, e.g. "epoch") or `REFERENCES` (`{reference metric: the
    metric it is drawn with}`)."""
    job = config.get("job")
    if not job:
        return default
    from dsorl import config as config_lib

    try:
        module = config_lib.job_module(job)
    except ValueError:  # a job module that no longer exists: its results still plot
        return default
    return getattr(module, name, default)


def _label(by, key) -> str:
    return ", ".join(f"{c}={_short(v)}" for c, v in zip(by, key)) or "all members"


def _short(v) -> str:
    return format(v, ".4g") if isinstance(v, float) else str(v)


def _band(ax, x, values, color, label):
    """Median line and 10–90% quantile band of `values[members, len(x)]`."""
    with warnings.catch_warnings():  # steps where every member diverged: a gap in the curve
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, mid, hi = np.nanquantile(np.asarray(values, float), [0.1, 0.5, 0.9], axis=0)
    (line,) = ax.plot(x, mid, color=color, label=label)
    if len(values) > 1:
        ax.fill_between(x, lo, hi, color=color, alpha=0.2, linewidth=0)
    return line


def _paged(plt, out, stem, panels, draw, hue, hue_values, suptitle) -> list:
    """Draw `panels` (a list of `(title, indices)`) over as many files as `MAX_PANELS`
    needs; `draw(ax, indices, colours)` draws one panel; one legend per file."""
    colours = palette(len(hue_values))
    paths = []
    for page in range(0, len(panels), MAX_PANELS):
        chunk = panels[page:page + MAX_PANELS]
        fig, axs = facets(plt, len(chunk))
        handles = {}
        for ax, (panel_title, idx) in zip(axs, chunk):
            for line in draw(ax, idx, colours):
                handles.setdefault(line.get_label(), line)
            ax.set_title(panel_title, fontsize=9)
            ax.grid(alpha=0.3)
        legend_outside(fig, list(handles.values()), list(handles), title=hue)
        fig.suptitle(suptitle, fontsize=10)
        fig.tight_layout()
        suffix = "" if page == 0 else f"_{page // MAX_PANELS + 1}"
        paths.append(_save(plt, fig, out / f"{stem}{suffix}.png"))
    return paths


def _curves(plt, out, stem, axes, every, trace, name, step_label, title) -> list:
    hue, by = axes.hue_and_panels()
    hue_values = np.unique(axes.table[hue]).tolist() if hue else [None]
    steps = np.arange(trace.shape[1]) * every

    def draw(ax, idx, colours):
        lines = []
        for value, colour in zip(hue_values, colours):
            sel = idx if hue is None else idx[axes.table[hue][idx] == value]
            if len(sel):
                label = "all members" if hue is None else _short(value)
                lines.append(_band(ax, steps, trace[sel], colour, label))
        ax.set_xlabel(step_label)
        ax.set_ylabel(name)
        return lines

    panels = [(_label(by, k), idx) for k, idx in axes.groups(by).items()]
    return _paged(plt, out, stem, panels, draw, hue, hue_values,
                  f"{title}\n{name} per {step_label}: median and 10–90% band over seeds"
                  " and starts")


def _gamma_curves(plt, out, metric, table, axes, title, references=()) -> list:
    hue, by = axes.hue_and_panels(exclude=("gamma",))
    hue_values = np.unique(table[hue]).tolist() if hue else [None]
    gammas = np.unique(table["gamma"])
    log_x = gammas.max() < 1 and (1 - gammas.min()) / (1 - gammas.max()) >= 10
    xs = (lambda g: 1 / (1 - g)) if log_x else (lambda g: g)
    values = table[metric].astype(float)

    def draw(ax, idx, colours):
        lines = []
        for value, colour in zip(hue_values, colours):
            sel = idx if hue is None else idx[table[hue][idx] == value]
            if not len(sel):
                continue
            per_gamma = [values[sel][table["gamma"][sel] == g] for g in gammas]
            width = max(len(v) for v in per_gamma)
            padded = np.array([np.pad(v, (0, width - len(v)), constant_values=np.nan)
                               for v in per_gamma]).T
            label = "all members" if hue is None else _short(value)
            lines.append(_band(ax, xs(gammas), padded, colour, label))
            ax.scatter(xs(table["gamma"][sel]), values[sel], s=4, alpha=0.3, color=colour)
        for ref in references:  # the same for every setting of the panel: one dashed line
            level = [np.nanmedian(table[ref][idx][table["gamma"][idx] == g].astype(float))
                     if np.any(table["gamma"][idx] == g) else np.nan for g in gammas]
            (line,) = ax.plot(xs(gammas), level, "k--", lw=1, label=ref)
            lines.append(line)
        if log_x:  # a labelled tick at every horizon of the grid
            log_ticks(ax, xs(gammas))
            ax.tick_params(axis="x", labelsize=7)
        ax.set_xlabel("effective horizon 1/(1-γ)" if log_x else "γ")
        ax.set_ylabel(metric)
        return lines

    panels = [(_label(by, k), idx) for k, idx in axes.groups(by).items()]
    return _paged(plt, out, f"gamma_{_safe(metric)}", panels, draw, hue, hue_values,
                  f"{title}\n{metric} against γ: median, 10–90% band, every member")


def _landscapes(plt, out, metric, table, plane, axes, title) -> list:
    cx, cy = plane
    by = axes.env + [s for s in axes.settings if s not in plane]
    groups = list(axes.groups(by).items())
    xs, ys = np.unique(table[cx]), np.unique(table[cy])
    values = table[metric].astype(float)
    scale = float(np.max(np.abs(values[np.isfinite(values)]), initial=0.0))
    paths = []
    for page in range(0, len(groups), MAX_PANELS):
        chunk = groups[page:page + MAX_PANELS]
        fig, axs = facets(plt, len(chunk), ncols=min(len(chunk), 3), width=4.4, height=3.8)
        for ax, (key, idx) in zip(axs, chunk):
            grid = np.full((len(ys), len(xs)), np.nan)
            total, count = np.zeros_like(grid), np.zeros_like(grid)
            ix, iy = np.searchsorted(xs, table[cx][idx]), np.searchsorted(ys, table[cy][idx])
            np.add.at(total, (iy, ix), table[metric][idx].astype(float))
            np.add.at(count, (iy, ix), 1)
            np.divide(total, count, out=grid, where=count > 0)
            heatmap(fig, ax, xs, ys, grid, cx, cy, _label(by, key), scale=scale)
        fig.suptitle(f"{title}\n{metric} (mean over seeds)", fontsize=10)
        fig.tight_layout()
        suffix = "" if page == 0 else f"_{page // MAX_PANELS + 1}"
        paths.append(_save(plt, fig, out / f"landscape_{_safe(metric)}{suffix}.png"))
    return paths


def heatmap(fig, ax, xs, ys, grid, xlabel, ylabel, title, cmap="viridis", scale=0.0):
    """`grid[len(ys), len(xs)]` as a colour map whose scale spans the finite values; a grid
    of one value (or of rounding noise around it, see `is_noise(.., scale)`) is drawn in one
    colour with its value in the title."""
    finite = grid[np.isfinite(grid)]
    if is_noise(finite, scale):
        level = float(np.mean(finite)) if finite.size else float("nan")
        spread = float(np.ptp(finite)) if finite.size else 0.0
        ax.pcolormesh(xs, ys, np.where(np.isfinite(grid), 0.2, np.nan), shading="nearest",
                      cmap="Greys", vmin=0, vmax=1)  # light grey: no data colour to misread
        title += (f"\nconstant {level:.6g}" + (f" (spread {spread:.1e}: rounding)" if spread
                                                else ""))
    else:
        mesh = ax.pcolormesh(xs, ys, grid, shading="nearest", cmap=cmap,
                             vmin=float(finite.min()), vmax=float(finite.max()))
        fig.colorbar(mesh, ax=ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)


# ---------------------------------------------------------------------------------------
# Jobs without figures of their own


def _generic(plt, tables, arrays, config) -> dict:
    """Curves of the 1-D arrays (grouped by length, one panel each) and, per table, bars
    of each non-constant number column against the table's first text column."""
    figures, head = {}, describe(config)
    curves = {k: np.asarray(v, float) for k, v in arrays.items()
              if np.ndim(v) == 1 and np.size(v) > 2
              and np.issubdtype(np.asarray(v).dtype, np.number) and not is_constant(v)}
    by_length = {}
    for name, v in curves.items():
        by_length.setdefault(len(v), []).append(name)
    if by_length:
        fig, axs = facets(plt, len(by_length), ncols=min(len(by_length), 2), width=5.5)
        for ax, (length, names) in zip(axs, sorted(by_length.items())):
            positive = all(np.nanmin(curves[n]) > 0 for n in names)
            for name, colour in zip(names, palette(len(names))):
                ax.plot(np.arange(length), curves[name], color=colour, label=name)
            if positive:
                ax.set_yscale("log")
            ax.set_xlabel("index")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        fig.suptitle(f"{head}: arrays", fontsize=10)
        fig.tight_layout()
        figures["arrays"] = fig
    for tname, table in tables.items():
        text = [c for c, v in table.items() if v.dtype.kind in "OU"]
        numbers = [c for c, v in table.items() if v.dtype.kind in "fiu" and not is_constant(v)]
        if not numbers or len(next(iter(table.values()))) < 1:
            continue
        rows = len(next(iter(table.values())))
        labels = ([" | ".join(str(table[c][i]) for c in text[:2]) for i in range(rows)]
                  if text else [str(i) for i in range(rows)])
        fig, axs = facets(plt, len(numbers), ncols=min(len(numbers), 3), width=4.6,
                          height=max(2.5, 0.25 * rows + 1))
        for ax, col in zip(axs, numbers):
            ax.barh(np.arange(rows), table[col].astype(float), color=palette(1)[0])
            ax.set_yticks(np.arange(rows), labels, fontsize=7)
            ax.invert_yaxis()
            ax.set_title(col, fontsize=9)
            ax.grid(alpha=0.3, axis="x")
        fig.suptitle(f"{head}: table {tname}", fontsize=10)
        fig.tight_layout()
        figures[f"table_{tname}"] = fig
    return figures


def _save(plt, fig, path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")  # "tight" keeps outside legends
    plt.close(fig)
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
