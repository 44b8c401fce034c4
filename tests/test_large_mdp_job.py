"""The large-MDP benchmark job on tiny sizes: every method agrees with the sparse path,
the solver reports are filled in, and the fitted exponent and crossover are computed."""
import math

import numpy as np
import pytest

from dsorl.jobs import large_mdp


def _config(**over):
    # compiling dominates: one kind, dense at the small size only (gridworld agreement
    # with the dense path is tested in test_envs_large and test_sparse)
    cfg = dict(large_mdp.DEFAULTS, sizes=[40, 90], kinds=["garnet"], dense_max_states=40,
               quantities=["value_grad", "gain_bias"], methods=["sparse", "dense", "scipy_gmres",
                                                               "scipy_spsolve"],
               repeats=1, fit_min_states=40, memory_probe=False)
    cfg.update(over)
    return cfg


def test_methods_agree_and_reports_are_filled_in():
    tables = large_mdp.run(_config())["tables"]
    rows = tables["timings"]
    assert {(r["kind"], r["quantity"], r["method"]) for r in rows} >= {
        ("garnet", "value_grad", "scipy_gmres"), ("garnet", "gain_bias", "scipy_spsolve"),
        ("garnet", "gain_bias", "dense")}
    for r in rows:
        assert r["converged"] and r["median_s"] > 0
        if r["method"] == "sparse":
            assert r["iterations"] >= 1 and r["residual"] <= 1e-12 and r["compile_s"] > 0
        else:  # an independent solve of the same quantity (LU, SuperLU or GMRES)
            assert r["rel_diff"] <= 1e-8, r
    fits = {(f["kind"], f["quantity"], f["method"]): f for f in tables["fits"]}
    assert math.isfinite(fits[("garnet", "value_grad", "sparse")]["exponent"])
    times = {r["method"]: r["median_s"] for r in rows
             if (r["quantity"], r["n_states"]) == ("value_grad", 40)}
    crossover = fits[("garnet", "value_grad", "sparse")]["crossover_states"]
    if times["sparse"] < times["dense"]:
        assert crossover == 40
    else:
        assert math.isnan(crossover)
    assert {g["goal"].split(",")[0] for g in tables["goals"]} == {"time exponent in S"}


def test_bad_settings_are_refused():
    for over, message in ((dict(kinds=["torus"]), "kinds"), (dict(quantities=["hessian"]),
                                                              "quantities"),
                          (dict(gamma=1.0), "gamma"), (dict(sizes=[2]), "sizes")):
        with pytest.raises(ValueError, match=message):
            large_mdp.run(_config(**over))


def test_goal_table_reads_the_measured_rows():
    rows = [dict(kind="garnet", n_states=S, quantity=q, method=m, median_s=t, peak_rss_mb=3000.0)
            for S, q, m, t in ((100000, "value_grad", "sparse", 0.5),
                               (100000, "gain_bias", "sparse", 1.0),
                               (100000, "bias_grad", "sparse", 2.5),
                               (100000, "value_grad", "scipy_gmres", 0.9),
                               (1000000, "value_grad", "sparse", 6.0))]
    memory = [dict(kind="garnet", n_states=1000000, quantity="value_grad", peak_rss_mb=900.0)]
    goals = {g["goal"]: g for g in large_mdp._goals(rows, [], memory)}
    assert goals["value+gradient at S=1e5 (s)"]["met"]
    assert not goals["gain+bias+bias gradient at S=1e5 (s)"]["met"]  # 3.5 s > 3 s
    assert np.isclose(goals["speed-up over SciPy, value+gradient, S=100000"]["value"], 1.8)
    assert not goals["speed-up over SciPy, value+gradient, S=100000"]["met"]
    assert goals["peak memory at S=1e6, value+gradient, fresh process (MB)"]["met"]


def test_memory_probe_runs_in_a_fresh_process():
    row = large_mdp._memory_probe("garnet", 50, _config())
    assert row["n_states"] == 50 and 50 < row["peak_rss_mb"] < 4000  # MB: Python + JAX + MDP
