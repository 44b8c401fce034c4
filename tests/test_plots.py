"""dsorl.plots: every setting drawn (faceted, none dropped), a colour per line, legends
outside the data, constant metrics skipped, colour scales on the data's range and rounding
noise said as such, tick labels on every axis, titles and axis labels from the config; the
job figures (`figures` of a job module) and `dsorl run` / `dsorl plot` on run directories."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from dsorl import plots  # noqa: E402
from dsorl.results import write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def drawn(monkeypatch):
    """`{file name: Figure}` of every figure saved while the test runs (drawn for layout)."""
    figures = {}
    save = plots._save

    def keep(plt, fig, path):
        fig.canvas.draw()
        figures[Path(path).name] = fig
        fig.savefig(path, dpi=40)
        return Path(path)

    monkeypatch.setattr(plots, "_save", keep)
    yield figures
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)
    del save


def _sweep_dir(tmp_path, *, algorithm="pg", metric=None, gammas=8, steps=4):
    """A `dsorl sweep`-like directory: gamma x step_size x seed (2), one trace, metrics."""
    g, s, seed = np.meshgrid(np.linspace(0.5, 0.99, gammas), np.logspace(-1, 1, steps), [0, 1],
                             indexing="ij")
    g, s, seed = g.ravel(), s.ravel(), seed.ravel()
    n = len(g)
    table = {"member": np.arange(n), "gamma": g, "step_size": s, "seed": seed,
             "objective": g * s + 0.01 * seed, "constant": np.full(n, 3.0),
             "optimal": 20 * g}  # sweep_pg's reference: drawn in the objective's figure
    if metric is not None:
        table["extra"] = metric(n)
    T = 6
    trace = (g * s)[:, None] * (1 - np.exp(-np.arange(T)))[None, :]
    info = {"grid": [{"name": "gamma", "size": gammas, "columns": ["gamma"]},
                     {"name": "step_size", "size": steps, "columns": ["step_size"]},
                     {"name": "seed", "size": 2, "columns": ["seed"]}],
            "metrics": [m for m in table if m not in ("member", "gamma", "step_size", "seed")],
            "traces": ["objective"], "trace_every": 5}
    config = {"job": "sweep_pg", "algorithm": algorithm,
              "env": {"name": "garnet", "n_states": 7, "n_actions": 2}, "n_steps": 30,
              "max_epochs": 9}
    write_results(tmp_path, config, tables={"table": table},
                  arrays={"objective": trace}, extra={"sweep": info})
    return tmp_path


def _legend_colours(fig):
    out = []
    for legend in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]:
        out.append([tuple(h.get_color()) if hasattr(h, "get_color") else None
                    for h in legend.legend_handles])
    return out


def _ticks_labelled(fig):
    for ax in fig.axes:
        if not ax.get_visible() or ax.get_label() == "<colorbar>":
            continue
        xs = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        ys = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
        assert xs and ys, f"panel {ax.get_title()!r} has no tick labels"


def test_every_setting_is_drawn_in_facets_with_distinct_colours(tmp_path, drawn):
    paths = plots.plot_results(_sweep_dir(tmp_path, gammas=8, steps=4))
    assert all(p.read_bytes()[:8] == PNG for p in paths)
    fig = drawn["convergence_objective.png"]
    # hue: gamma (8 values, the larger axis); panels: the 4 step sizes; 32 settings drawn
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert sorted(ax.get_title() for ax in panels) == sorted(
        f"step_size={v:.4g}" for v in np.logspace(-1, 1, 4))
    assert sum(len(ax.get_lines()) for ax in panels) == 32
    assert "first" not in fig._suptitle.get_text()
    (colours,) = _legend_colours(fig)
    assert len(colours) == 8 == len(set(colours))  # a colour per γ, none repeated
    _ticks_labelled(fig)


def test_more_settings_than_tab10_still_get_distinct_colours(tmp_path, drawn):
    plots.plot_results(_sweep_dir(tmp_path, gammas=12, steps=2))
    (colours,) = _legend_colours(drawn["convergence_objective.png"])
    assert len(colours) == 12 == len(set(colours))
    assert len(set(plots.palette(40))) == 40


def test_legends_sit_outside_the_panels(tmp_path, drawn):
    plots.plot_results(_sweep_dir(tmp_path))
    for name in ("convergence_objective.png", "gamma_objective.png"):
        fig = drawn[name]
        renderer = fig.canvas.get_renderer()
        right = max(ax.get_window_extent(renderer).x1 for ax in fig.axes if ax.get_visible())
        (legend,) = fig.legends
        assert legend.get_window_extent(renderer).x0 >= right, name


def test_more_panels_than_fit_spill_into_more_files(tmp_path, drawn, monkeypatch):
    monkeypatch.setattr(plots, "MAX_PANELS", 3)
    paths = plots.plot_results(_sweep_dir(tmp_path, gammas=5, steps=4))  # 4 panels
    names = [p.name for p in paths]
    assert "convergence_objective.png" in names and "convergence_objective_2.png" in names
    lines = sum(len(ax.get_lines()) for f in ("convergence_objective.png",
                                              "convergence_objective_2.png")
                for ax in drawn[f].axes if ax.get_visible())
    assert lines == 20  # 5 γ x 4 step sizes: nothing dropped


def test_constant_metrics_are_skipped(tmp_path, drawn):
    names = [p.name for p in plots.plot_results(_sweep_dir(tmp_path))]
    assert "gamma_objective.png" in names and "gamma_constant.png" not in names
    assert not plots.is_constant([1.0, 2.0]) and plots.is_constant([np.nan, 2.0, 2.0])


def test_dynpg_curves_count_epochs_and_titles_come_from_the_config(tmp_path, drawn):
    plots.plot_results(_sweep_dir(tmp_path, algorithm="dynpg"))
    fig = drawn["convergence_objective.png"]
    assert {ax.get_xlabel() for ax in fig.axes if ax.get_visible()} == {"epoch"}
    title = fig._suptitle.get_text()
    assert "sweep_pg (dynpg) on name=garnet, n_states=7, n_actions=2 max_epochs=9" in title
    assert "objective per epoch" in title
    plots.plot_results(_sweep_dir(tmp_path / "pg"))
    assert "n_steps=30" in drawn["convergence_objective.png"]._suptitle.get_text()


def _landscape_dir(tmp_path, values):
    wx, wy = (a.ravel() for a in np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-2, 2, 4),
                                             indexing="ij"))
    table = {"member": np.arange(40), "env": np.repeat(["A1", "B2"], 20),
             "w_x": np.tile(wx, 2), "w_y": np.tile(wy, 2), "value": values(wx, wy)}
    meta = {"grid": [{"name": "params0", "size": 20, "columns": ["w_x", "w_y"]}],
            "metrics": ["value"], "traces": [], "trace_every": 1}
    write_results(tmp_path, {"job": "sweep_nbw", "envs": ["A1", "B2"]}, tables={"table": table},
                  extra={"sweep": meta})
    return tmp_path


def test_landscape_colour_scale_spans_the_data_and_noise_says_so(tmp_path, drawn):
    rng = np.random.default_rng(0)
    # A1: 12 with 1e-14 rounding noise; B2: a real landscape from -3 to 5
    values = lambda wx, wy: np.concatenate([12 + 1e-14 * rng.standard_normal(20), wx + 2 * wy])
    plots.plot_results(_landscape_dir(tmp_path, values))
    fig = drawn["landscape_value.png"]
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    a1, b2 = sorted(panels, key=lambda ax: ax.get_title())
    assert "constant 12" in a1.get_title() and "rounding" in a1.get_title()
    (mesh,) = b2.collections
    assert mesh.norm.vmin == pytest.approx(-5.0) and mesh.norm.vmax == pytest.approx(5.0)
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colorbars) == 1  # the noise panel has no colour scale to stretch
    _ticks_labelled(fig)


def test_a_gap_of_rounding_noise_is_noise_beside_real_gaps():
    assert plots.is_noise([1e-15, 1.2e-14, 0.0], scale=16.0)
    assert not plots.is_noise([1e-15, 1.2e-14, 0.0])  # alone, tiny numbers may be real
    assert plots.is_noise(12 + np.array([0.0, 1e-14]))
    assert not plots.is_noise([0.0, 1e-3], scale=16.0)


def test_fig6_has_tick_labels_and_error_maps(tmp_path, drawn):
    from dsorl.jobs import nbw_reproduce

    grid = np.stack([a.ravel() for a in np.meshgrid(np.linspace(-10, 10, 3),
                                                    np.linspace(-10, 10, 3), indexing="ij")], -1)
    arrays = {"grid": grid, "A1/gain_landscape": np.linspace(-1, 0, 9),
              "A1/bias_landscape": np.linspace(10, 12, 9),
              "A1/nbw_exact/bias": np.full((1, 9), 12.0) - np.linspace(0, 1, 9),
              "A1/discounted_0.9/bias": np.full((1, 9), 11.0)}
    tables = {"summary": {"method": np.array(["nbw_exact", "discounted_0.9"])}}
    config = {**nbw_reproduce.DEFAULTS, "job": "nbw_reproduce", "envs": ["A1"]}
    paths = plots.job_figures(tables, arrays, config, tmp_path)
    assert [p.name for p in paths] == ["fig6_errors.png"]
    fig = drawn["fig6_errors.png"]
    _ticks_labelled(fig)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert any(t.startswith("A1, nbw exact\nerror 0.500 ± 0.323") for t in titles)
    assert any("discounted γ = 0.9" in t and "constant 1" in t for t in titles)  # error 1 everywhere


def test_dso_garnet_title_comes_from_the_config(tmp_path, drawn):
    from dsorl.jobs import dso_benchmark

    config = {**dso_benchmark.DEFAULTS, "job": "dso_benchmark", "parts": ["garnet"],
              "garnet": {**dso_benchmark.DEFAULTS["garnet"], "n_states": 6, "seeds": 3,
                         "gamma": 0.9}}
    arrays = {"garnet/optimum": np.ones(3), "garnet/pco": np.linspace(1, 1e-3, 12).reshape(3, 4),
              "garnet/chain_iteration": np.linspace(1, 1e-6, 12).reshape(3, 4)}
    plots.job_figures({}, arrays, config, tmp_path)
    title = drawn["garnet_convergence.png"].axes[0].get_title()
    assert "S=6" in title and "γ=0.9" in title and "3 garnets" in title and "S=100" not in title


def test_a_job_without_figures_gets_generic_ones(tmp_path, drawn):
    tables = {"gradient_check": {"baseline": np.array(["zero", "fitted", "exact"]),
                                 "variance": np.array([3.0, 1.0, 0.5]),
                                 "episodes": np.array([200, 200, 200])}}
    paths = plots.job_figures(tables, {"objective": np.array(0.5)},
                              {"job": "dso_gradient_check"}, tmp_path)
    assert [p.name for p in paths] == ["table_gradient_check.png"]
    fig = drawn["table_gradient_check.png"]
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["variance"]  # constant
    _ticks_labelled(fig)                                                          # left out


def _dsorl():
    exe = shutil.which("dsorl")
    return [exe] if exe else [sys.executable, "-m", "dsorl.cli"]


def test_dsorl_run_writes_figures_and_dsorl_plot_takes_its_directory(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "DSORL_PROGRESS"}
    done = subprocess.run(_dsorl() + ["run", str(ROOT / "configs" / "default.yaml"), "--set",
                                      "grid.step=5.0", "--set", "envs=[A1, B3]",
                                      "--output-dir", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "1 figure(s) in" in done.stdout
    assert "dsorl:" not in done.stderr  # stderr is a pipe, nobody asked: no progress lines
    assert (out / "plots" / "landscapes.png").read_bytes()[:8] == PNG
    again = subprocess.run(_dsorl() + ["plot", str(out), "--out", str(tmp_path / "png")],
                           capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == str(tmp_path / "png" / "landscapes.png")
    assert "Traceback" not in again.stderr


def test_a_reference_metric_is_a_line_in_its_metric_figure_not_a_figure(tmp_path, drawn):
    names = [p.name for p in plots.plot_results(_sweep_dir(tmp_path))]
    assert "gamma_optimal.png" not in names
    fig = drawn["gamma_objective.png"]
    (panel,) = [ax for ax in fig.axes if ax.get_visible()]
    (ref,) = [line for line in panel.get_lines() if line.get_label() == "optimal"]
    assert ref.get_linestyle() == "--"
    np.testing.assert_allclose(ref.get_ydata(), 20 * np.linspace(0.5, 0.99, 8))
    assert "optimal" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_partial_or_unknown_job_results_still_plot(tmp_path, drawn):
    """An interrupted nbw_reproduce (no summary table yet) and a job module that is gone."""
    arrays = {"A1/gain_landscape": np.linspace(0, 1, 9)}
    paths = plots.job_figures({}, arrays, {"job": "nbw_reproduce", "envs": ["A1"]}, tmp_path)
    assert [p.name for p in paths] == ["arrays.png"]
    paths = plots.job_figures({}, arrays, {"job": "no_such_job_module"}, tmp_path / "gone")
    assert [p.name for p in paths] == ["arrays.png"]
