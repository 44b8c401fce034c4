"""The control benchmark job (dsorl.jobs.control): its statistics against hand computations,
its config checks, and (slow) a tiny run of every method with typed tables and a figure."""
import numpy as np
import pytest

from dsorl import config as config_lib
from dsorl.jobs import control


def test_iqm_is_the_mean_of_the_middle_half():
    x = np.array([0.0, 1, 2, 3, 4, 5, 6, 100])
    assert control.iqm(x) == pytest.approx(np.mean([2, 3, 4, 5]))


def test_bootstrap_interval_brackets_the_statistic_and_shrinks_with_agreement():
    rng = np.random.default_rng(0)
    x = rng.normal(10, 1, 16)
    lo, hi = control.bootstrap_interval(x, np.mean, 2000)
    assert lo < x.mean() < hi
    # about 2 standard errors each side
    assert (hi - lo) / 2 == pytest.approx(1.96 * x.std(ddof=1) / 4, rel=0.3)
    assert control.bootstrap_interval(np.full(16, 3.0), control.iqm, 100) == (3.0, 3.0)


@pytest.mark.parametrize("overrides, match", [
    ({"methods": ["ppo", "trpo"]}, "unknown trpo"),
    ({"total_steps": 7000}, "multiple of eval_every"),
    ({"eval_every": 1500, "total_steps": 3000}, "dsorl n_envs \\* n_rollout = 1000"),
    ({"seeds": 1}, "seeds = 1"),
    ({"timing_repeats": 0}, "timing_repeats = 0"),
])
def test_bad_configs_are_named(overrides, match):
    cfg = config_lib.resolve({"job": "control", **overrides})
    with pytest.raises(ValueError, match=match):
        control._check(cfg)


@pytest.mark.slow
def test_tiny_run_has_every_method_and_a_figure(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dsorl.results import write_results

    cfg = config_lib.resolve({
        "job": "control", "total_steps": 400, "eval_every": 200, "seeds": 2,
        "eval_episodes": 2, "bootstrap": 50,
        "dsorl": {"hidden": [8], "n_envs": 2, "n_rollout": 50, "value_epochs": 1,
                  "max_grad_norm": 0.5},
        "ppo": {**control.DEFAULTS["ppo"], "num_envs": 2, "num_steps": 50,
                "num_minibatches": 2}})
    result = control.run(cfg)
    out = write_results(tmp_path, cfg, tables=result["tables"], seeds=result["seeds"])
    assert (out / "final.csv").exists() and (out / "hyperparameters.csv").exists()
    final = result["tables"]["final"]
    assert [r["method"] for r in final] == ["ppo", "pco", "dso", "reinforce"]
    for r in final:
        assert r["mean_lo"] <= r["mean"] <= r["mean_hi"] and r["seeds"] == 2
        assert r["train_s"] > 0 and np.isfinite(r["vs_ppo"])
    curves = result["tables"]["curves"]
    assert sorted({r["steps"] for r in curves}) == [0, 200, 400]
    figs = control.figures({"curves": {k: np.array([r[k] for r in curves]) for k in curves[0]}},
                           {}, cfg, plt)
    assert set(figs) == {"learning_curves"}
