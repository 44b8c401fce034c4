"""dynpg_scaling's separation study on the hard MDPs: the growth fits against synthetic data
with known answers, and the small test config's tables (tidy, documented, consistent)."""
import math
from pathlib import Path

import numpy as np
import pytest

from dsorl import config as config_lib
from dsorl.jobs import dynpg_scaling
from dsorl.results import read_results, write_results

ROOT = Path(__file__).resolve().parents[1]


def test_growth_fits_tell_exponential_from_polynomial():
    h = np.array([10.0, 15, 20, 30, 40])
    exp = dynpg_scaling.growth_fits(h, 3.0 * np.exp(0.25 * h))
    assert exp["exp_slope"] == pytest.approx(0.25) and exp["exp_r2"] == pytest.approx(1.0)
    assert exp["poly_r2"] < 0.99
    poly = dynpg_scaling.growth_fits(h, 5.0 * h ** 2.5)
    assert poly["poly_exponent"] == pytest.approx(2.5) and poly["poly_r2"] == pytest.approx(1.0)
    assert poly["exp_r2"] < 0.99
    assert all(math.isnan(v) for v in dynpg_scaling.growth_fits(h[:2], h[:2]).values())


def test_hard_fits_report_the_budget_as_lower_bound():
    rows = [{"env": "e", "method": "pg", "setting": "s", "horizon": float(h), "reached": r,
             "skipped": False, "steps_to_eps": s, "budget_steps": 100}
            for h, r, s in ((10, True, 4.0), (20, True, 16.0), (30, True, 36.0),
                            (40, False, float("nan")))]
    (fit,) = dynpg_scaling.hard_fits(rows)
    assert fit["points"] == 3 and fit["unreached"] == 1 and fit["lower_bound"] == 100
    assert fit["poly_exponent"] == pytest.approx(2.0)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_small_config_tables(tmp_path):
    cfg = config_lib.load_config(ROOT / "configs/dynpg_scaling_test.yaml", [])
    result = dynpg_scaling.run(cfg)
    assert result["tables"]["horizon"] == [] and result["tables"]["chain"] == []
    write_results(tmp_path, cfg, tables=result["tables"])
    tables = read_results(tmp_path)[0]
    hard, fits = tables["hard"], tables["hard_fits"]
    for table in (hard, fits):
        missing = [c for c in table if c not in dynpg_scaling.__doc__]
        assert missing == []
    assert set(hard["env"]) == {"li_chain", "reset_chain"}
    assert hard["reached"].dtype == bool and hard["skipped"].dtype == bool
    assert np.all(hard["reached"] == ~np.isnan(hard["steps_to_eps"]))
    # the k = 1e7 schedule plans more than dynpg_budget steps: skipped, never run
    big = hard["setting"] == "k=1e+07"
    assert np.all(hard["skipped"][big]) and np.all(np.isnan(hard["run_s"][big]))
    # PG with eta = 10 reaches 0.05 within 3000 steps on these small chains; the step size
    # below Li et al.'s bound (1 - gamma)^2 / 5 does not: its gap stays above epsilon
    pg10 = hard["setting"] == "eta=10"
    assert np.all(hard["reached"][pg10])
    li = hard["setting"] == "(1-g)^2/5"
    np.testing.assert_allclose(hard["step_size"][li], (1 - hard["gamma"][li]) ** 2 / 5)
    assert np.all(~hard["reached"][li] & (hard["final_gap"][li] > cfg["epsilon"]))
    # an unreached run's final gap is above epsilon, a reached one's count within budget
    ran = ~hard["skipped"]
    assert np.all(hard["final_gap"][ran & ~hard["reached"]] > cfg["epsilon"])
    assert np.all(hard["steps_to_eps"][hard["reached"]] <= hard["budget_steps"][hard["reached"]])
    by = {(e, s): i for i, (e, s) in enumerate(zip(fits["env"], fits["setting"]))}
    assert fits["points"][by[("li_chain", "eta=10")]] == 3
    assert fits["lower_bound"][by[("li_chain", "(1-g)^2/5")]] == 3000


def test_unknown_hard_env_is_refused_by_name():
    cfg = config_lib.resolve({"job": "dynpg_scaling", "horizons": [], "chain_lengths": [],
                              "hard_horizons": [10], "hard_envs": ["mars"]})
    with pytest.raises(ValueError, match="hard_envs: unknown environment 'mars'"):
        dynpg_scaling.run(cfg)


def test_first_reach_takes_the_first_valid_point_in_order():
    counts = np.array([[[0, 5, 9], [9, 14, 20]], [[0, 3, 7], [7, 8, 12]]])
    gaps = np.array([[[0.5, 0.2, 0.01], [0.3, 0.001, 0.0]], [[0.5, 0.4, 0.3], [0.2, 0.2, 0.1]]])
    valid = np.array([[[True, True, False], [True, True, True]], [[True] * 3, [True] * 3]])
    # seed 0: the point at 9 interactions is below epsilon but not a valid step
    np.testing.assert_array_equal(dynpg_scaling.first_reach(counts, gaps, valid, 0.05),
                                  [14.0, np.inf])
    lo, hi = dynpg_scaling.bootstrap_interval(np.arange(100.0), np.mean, 400)
    assert lo < 49.5 < hi and hi - lo < 20  # standard error 2.9: an interval near +-5.7
    assert all(math.isnan(v) for v in
               dynpg_scaling.bootstrap_interval(np.full(5, np.inf), np.median, 50))


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sensitivity_table_on_a_tiny_config(tmp_path):
    cfg = config_lib.resolve({
        "job": "dynpg_scaling", "horizons": [], "chain_lengths": [],
        "sens_envs": ["sutton_extended", "li_chain"], "sens_sutton_gammas": [0.9],
        "sens_hard_horizon": 10.0, "sens_seeds": 8, "sens_k": 10.0,
        "sens_fixed_steps": [10.0], "sens_blocks": [2], "sens_bootstrap": 100})
    result = dynpg_scaling.run(cfg)
    write_results(tmp_path, cfg, tables=result["tables"])
    t = read_results(tmp_path)[0]["sensitivity"]
    assert [c for c in t if c not in dynpg_scaling.__doc__] == []
    assert list(t["variant"]) == ["authors", "fixed N=10", "block m=2"] * 2
    # Sutton-extended's longest episode has 3 steps, li_chain(4)'s 7: epochs cover it
    np.testing.assert_array_equal(t["epochs"], [3, 3, 2, 7, 7, 4])
    np.testing.assert_array_equal(t["horizon"], [3, 3, 4, 7, 7, 8])
    assert np.all(t["seeds"] == 8)
    # a median exists exactly when at least half the seeds reached epsilon
    assert np.all(np.isnan(t["interactions_median"]) == (t["reached_fraction"] < 0.5))
    assert np.all(t["final_gap_lo"] <= t["final_gap_mean"])
    assert np.all(t["final_gap_mean"] <= t["final_gap_hi"])
    assert np.all(t["final_gap_mean"] > -1e-9)  # no policy beats V*
    # fixed N=10 takes 10 steps per epoch, of at most a horizon's interactions each
    fixed = t["variant"] == "fixed N=10"
    assert np.all(t["total_interactions"][fixed] <= 10 * t["epochs"][fixed] * t["horizon"][fixed])
    figs = dynpg_scaling.figures(read_results(tmp_path)[0], {}, cfg, __import__(
        "matplotlib.pyplot").pyplot)
    assert "sensitivity" in figs


def test_unknown_sensitivity_env_is_refused_by_name():
    cfg = config_lib.resolve({"job": "dynpg_scaling", "horizons": [], "chain_lengths": [],
                              "sens_envs": ["venus"]})
    with pytest.raises(ValueError, match="sens_envs: unknown environment 'venus'"):
        dynpg_scaling.run(cfg)
