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
