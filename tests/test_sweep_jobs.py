"""The sweep jobs of mean-field Langevin PG (`sweep_meanfield`) and DSO's PCO
(`sweep_dso`, algorithm `pco`), end to end through `dsorl sweep`.

Each tiny sweep's rows are checked against a direct call of the algorithm's `run` with the
member's hyperparameters and key (the wiring of hparams and keys), and its metrics
against dense NumPy references computed from that direct run's final parameters (values by
linear solves, optima by value iteration). Shapes are fixed: one compiled sweep and one
compiled direct run per job.
"""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsorl import chain_models, cli, features, policies
from dsorl import config as config_lib
from dsorl import sweep as sw
from dsorl.algorithms import dso
from dsorl.algorithms import meanfield as mf
from dsorl.jobs.meanfield import build_problem
from dsorl.jobs.sweep_pg import make_env

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def dense_value(P, r, rho, gamma):
    """`rho . (I - gamma P)^{-1} r` by a dense NumPy solve."""
    return rho @ np.linalg.solve(np.eye(len(r)) - gamma * P, r)


def value_iteration(P, R, gamma, tau=None, mu=None, sweeps=2000):
    """Optimal (tau None) or soft-optimal values by plain NumPy value iteration."""
    v = np.zeros(P.shape[0])
    for _ in range(sweeps):
        q = R + gamma * P @ v
        if tau is None:
            v = q.max(axis=1)
        else:
            m = q.max(axis=1, keepdims=True)
            v = m[:, 0] + tau * np.log(np.sum(mu * np.exp((q - m) / tau), axis=1))
    return v


def run_cli_sweep(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    out = tmp_path / "out"
    assert cli.main(["sweep", str(path), "--output-dir", str(out)]) == 0
    return config_lib.load_config(path), sw.load(out), out


# ----------------------------------------------------------------------------------------
# Mean-field Langevin PG

MF_STEPS, MF_EVERY = 25, 5
MF_CONFIG = f"""job: sweep_meanfield
env: {{n_states: 4, n_actions: 3, branching: 2, seed: 1}}
feature: {{width: 3, bound: 2.0}}
particles: 4
grid: {{gamma: [0.8, 0.9], tau: [0.2], sigma: [0.1, 30.0], step_size: [0.5, 1.0e+6], seed: [0, 3]}}
n_steps: {MF_STEPS}
sweep: {{traces: [objective], trace_every: {MF_EVERY}}}
"""


@pytest.fixture(scope="module")
def meanfield_sweep(tmp_path_factory):
    return run_cli_sweep(tmp_path_factory.mktemp("meanfield"), MF_CONFIG)


def test_meanfield_rows_equal_direct_runs_and_dense_references(meanfield_sweep):
    cfg, result, _ = meanfield_sweep
    t = result.table
    assert set(t) == {"member", "gamma", "tau", "sigma", "step_size", "seed", "value_tau", "value",
                      "soft_optimal", "gap", "dispersion", "diverged", "first_bad_step"}
    expected = [(g, 0.2, s, e, k) for g in (0.8, 0.9) for s in (0.1, 30.0)
                for e in (0.5, 1e6) for k in (0, 3)]
    assert list(zip(*(t[c].tolist() for c in ("gamma", "tau", "sigma", "step_size", "seed")))) == expected
    problem = build_problem(cfg)
    P, R = np.asarray(problem.mdp.P), np.asarray(problem.mdp.R)
    rho, mu = np.asarray(problem.mdp.rho), np.asarray(problem.mu)
    soft_values = {g: value_iteration(P, R, g, 0.2, mu) for g in (0.8, 0.9)}
    direct = jax.jit(lambda ps, hp, key: mf.run(problem, ps, hp, key,
                                                config=mf.Config(MF_STEPS)))
    for i, (g, tau, sigma, eta, seed) in enumerate(expected):
        k_init, k_run = jax.random.split(jax.random.key(seed))
        ps = features.init_particles(problem.feature, k_init, 4, problem.encodings)
        hp = mf.HParams(*(jnp.float64(x) for x in (g, tau, sigma, eta)))
        state, trace = direct(ps, hp, k_run)
        assert t["diverged"][i] == (state.first_bad_step >= 0)
        if state.first_bad_step >= 0:
            assert t["first_bad_step"][i] == int(state.first_bad_step)
        else:  # one missing-value convention: NaN, beside the boolean `diverged`
            assert np.isnan(t["first_bad_step"][i])
        np.testing.assert_allclose(result.traces["objective"][i], trace.objective[::MF_EVERY],
                                   rtol=1e-9)
        soft = rho @ soft_values[g]
        np.testing.assert_allclose(t["soft_optimal"][i], soft, rtol=1e-10)
        if state.first_bad_step >= 0:  # listed with its divergence step, not dropped
            assert sigma == 30.0 and eta == 1e6 and not np.isfinite(t["dispersion"][i])
            continue
        pi = np.asarray(mf.mean_field_policy(problem, state.params))
        P_pi, r_pi = np.einsum("sa,sat->st", pi, P), np.sum(pi * R, axis=1)
        entropy_term = tau * np.sum(pi * np.log(pi / mu), axis=1)
        value_tau = dense_value(P_pi, r_pi - entropy_term, rho, g)
        np.testing.assert_allclose(t["value_tau"][i], value_tau, rtol=1e-9)
        np.testing.assert_allclose(t["value"][i], dense_value(P_pi, r_pi, rho, g), rtol=1e-9)
        np.testing.assert_allclose(t["gap"][i], soft - value_tau, rtol=1e-7, atol=1e-12)
        flat = np.concatenate([np.asarray(x).reshape(4, -1)
                               for x in jax.tree_util.tree_leaves(state.params)], axis=1)
        np.testing.assert_allclose(t["dispersion"][i], flat.var(axis=0).mean(), rtol=1e-9)
    # sigma = 30, step_size eta = 1e6 diverges (weight decay factor 1 - eta sigma^2 / 2 per
    # step); every other member stays finite
    diverged = (t["sigma"] == 30.0) & (t["step_size"] == 1e6)
    assert np.array_equal(t["diverged"], diverged) and t["diverged"].dtype == bool
    assert np.all(t["first_bad_step"][diverged] >= 0) and np.all(np.isnan(t["first_bad_step"][~diverged]))
    assert np.all(np.isfinite(t["value_tau"][~diverged]))
    assert np.all(t["gap"][~diverged] > 0)  # nothing beats the soft optimum


def test_meanfield_sweep_plots(meanfield_sweep, tmp_path):
    _, _, out = meanfield_sweep
    assert cli.main(["plot", str(out), "--out", str(tmp_path), "--metric", "gap"]) == 0
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert "convergence_objective.png" in names and "gamma_gap.png" in names
    assert all((tmp_path / n).read_bytes()[:8] == PNG for n in names)


# ----------------------------------------------------------------------------------------
# DSO: Proximal Chain Optimisation

PCO = dict(n_steps=4, n_episodes=8, horizon=10, epochs=2)
PCO_CONFIG = f"""job: sweep_dso
algorithm: pco
env: {{name: garnet, n_states: 5, n_actions: 3, branching: 2, seed: 2}}
grid: {{gamma: [0.8, 0.9], step_size: [0.1], clip: [0.2, .inf], seed: [0, 5]}}
n_steps: {PCO['n_steps']}
n_episodes: {PCO['n_episodes']}
horizon: {PCO['horizon']}
epochs: {PCO['epochs']}
sweep: {{traces: [objective, estimate]}}
"""


def test_pco_rows_equal_direct_runs_and_dense_references(tmp_path):
    cfg, result, _ = run_cli_sweep(tmp_path, PCO_CONFIG)
    t = result.table
    assert list(t) == ["member", "gamma", "step_size", "clip", "seed", "gap", "objective",
                       "optimal"]
    expected = [(g, 0.1, c, k) for g in (0.8, 0.9) for c in (0.2, np.inf) for k in (0, 5)]
    assert list(zip(*(t[c].tolist() for c in ("gamma", "step_size", "clip", "seed")))) == expected
    mdp = make_env(cfg["env"])
    model = chain_models.marginal(mdp, policies.tabular_softmax(5, 3).probs)
    P, R, rho = (np.asarray(x) for x in (mdp.P, mdp.R, mdp.rho))
    theta0 = jnp.zeros((5, 3))
    direct = jax.jit(lambda hp, key: dso.pco(model, theta0, hp, key, config=dso.PCOConfig(**PCO)))
    optimal_values = {g: value_iteration(P, R, g) for g in (0.8, 0.9)}
    estimates = []
    for i, (g, lr, clip, seed) in enumerate(expected):
        hp = dso.PCOHParams(*(jnp.float64(x) for x in (g, lr, clip)))
        state, trace = direct(hp, jax.random.key(seed))
        for name in ("objective", "estimate"):
            np.testing.assert_allclose(result.traces[name][i], getattr(trace, name), rtol=1e-9)
        theta = np.asarray(state.params)
        pi = np.exp(theta - theta.max(1, keepdims=True))
        pi /= pi.sum(1, keepdims=True)
        J = dense_value(np.einsum("sa,sat->st", pi, P), np.sum(pi * R, axis=1), rho, g)
        optimal = rho @ optimal_values[g]
        np.testing.assert_allclose(t["objective"][i], J, rtol=1e-9)
        np.testing.assert_allclose(t["optimal"][i], optimal, rtol=1e-10)
        np.testing.assert_allclose(t["gap"][i], optimal - J, rtol=1e-7, atol=1e-12)
        estimates.append(result.traces["estimate"][i])
    # seeds draw different episodes (the key reaches the sampler)
    assert not np.allclose(estimates[0], estimates[1])


# ----------------------------------------------------------------------------------------
# Configs, listing and errors


@pytest.mark.parametrize("name, job, algorithm, axes", [
    ("sweep_meanfield.yaml", "sweep_meanfield", None, {"gamma": 2, "tau": 2, "sigma": 4,
                                                       "step_size": 2, "seed": 4}),
    ("sweep_dso_pco.yaml", "sweep_dso", "pco", {"gamma": 4, "step_size": 2, "clip": 3,
                                                "seed": 4}),
])
def test_shipped_configs_resolve(name, job, algorithm, axes):
    """(`tests/test_cli.py` builds every shipped config's sweep: not repeated here.)"""
    cfg = config_lib.load_config(ROOT / "configs" / name)
    assert cfg["job"] == job and cfg.get("algorithm") == algorithm
    assert {k: len(v) for k, v in cfg["grid"].items()} == axes
    assert cfg["sweep"]["traces"] == ["objective"]


def test_list_shows_the_meanfield_sweep(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "sweep_meanfield" in out and "Sweep mean-field Langevin PG" in out
    assert "ascent, natural, chain_iteration or pco" not in out  # a summary line, not DEFAULTS


def _spec(job, **changes):
    raw = {"job": job, **changes}
    cfg = config_lib.resolve(raw)
    return config_lib.job_module(job).sweep_spec(cfg)


MF_GRID = dict(gamma=[0.9], tau=[0.2], sigma=[0.1], step_size=[0.5])


@pytest.mark.parametrize("changes, message", [
    (dict(grid={**MF_GRID, "sigma": [0.1, -0.1]}), "sigma = [ 0.1 -0.1] must be finite and >= 0"),
    (dict(grid={**MF_GRID, "tau": [0.0]}), "tau = [0.] must be finite and > 0"),
    (dict(grid={**MF_GRID, "step_size": [0.5, np.inf]}), "step_size = [0.5 inf] must be finite and > 0"),
    (dict(grid={**MF_GRID, "gamma": [1.0]}), "gamma = [1.] must lie in [0, 1)"),
    (dict(grid={**MF_GRID, "beta": [1.0]}), "config key 'grid' takes gamma, tau, sigma, step_size"
                                            " (all required) and seed; got gamma, tau, sigma,"
                                            " step_size, beta"),
    (dict(grid={"gamma": [0.9], "tau": [0.2], "sigma": [0.1]}), "(all required)"),
    (dict(grid={**MF_GRID, "seed": [0.5]}), "grid axis 'seed' must hold integers"),
    (dict(grid={**MF_GRID, "step_size": [[0.5]]}), "grid axis 'step_size' must be a non-empty 1-D list"),
    (dict(gradient="finite"), "config key 'gradient' must be one of autodiff, covariance"),
    (dict(particles=0), "config keys 'particles' and 'n_steps' must be >= 1"),
])
def test_bad_meanfield_sweeps_raise_clear_errors(changes, message):
    with pytest.raises(ValueError) as err:
        _spec("sweep_meanfield", **changes)
    assert message in str(err.value)


PCO_GRID = dict(gamma=[0.9], step_size=[0.1], clip=[0.2])


@pytest.mark.parametrize("changes, message", [
    (dict(grid={**PCO_GRID, "clip": [0.2, 0.0]}), "clip = [0.2 0. ] must be > 0 (inf: no clipping)"),
    (dict(grid={**PCO_GRID, "step_size": [-0.1]}), "step_size = [-0.1] must be finite and > 0"),
    (dict(grid={**PCO_GRID, "gamma": [1.5]}), "gamma = [1.5] must lie in [0, 1)"),
    (dict(grid={**PCO_GRID, "proximal": [0.1]}),
     "config key 'grid' for pco takes clip, gamma, seed, step_size"),
    (dict(grid={"gamma": [0.9]}), "(gamma and step_size required)"),
])
def test_bad_pco_sweeps_raise_clear_errors(changes, message):
    with pytest.raises(ValueError) as err:
        _spec("sweep_dso", algorithm="pco", **changes)
    assert message in str(err.value)


def test_other_dso_algorithms_check_their_axes_too():
    with pytest.raises(ValueError, match=r"proximal = \[-1.\] must be finite and >= 0"):
        _spec("sweep_dso", grid={"gamma": [0.9], "step_size": [0.1], "proximal": [-1.0]})
    with pytest.raises(ValueError, match=r"damping = \[-1.\] must be finite and >= 0"):
        _spec("sweep_dso", algorithm="natural",
              grid={"gamma": [0.9], "step_size": [0.1], "damping": [-1.0]})


def test_a_bad_grid_on_the_command_line_exits_2(capsys):
    argv = ["sweep", str(ROOT / "configs" / "sweep_meanfield.yaml"), "--set", "grid.sigma=[-1]"]
    assert cli.main(argv) == 2
    assert "sigma = [-1] must be finite and >= 0" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------
# sweep_algorithm: any contract module or record by import path, no adapter


@pytest.mark.parametrize("algorithm, model, cfg, grid", [
    ("dsorl.algorithms.pg", "none", {"n_steps": 5}, {"gamma": [0.5, 0.9], "step_size": [1.0]}),
    ("dsorl.algorithms.dso:CHAIN_ITERATION", "marginal", {"n_steps": 2, "inner_steps": 20},
     {"gamma": [0.9], "step_size": [0.5]}),
])
def test_sweep_algorithm_rows_equal_direct_runs(algorithm, model, cfg, grid):
    from dsorl.algorithms import base
    from dsorl.jobs import sweep_algorithm

    config = config_lib.resolve({"job": "sweep_algorithm", "algorithm": algorithm,
                                 "model": model, "config": cfg, "grid": grid})
    spec = sweep_algorithm.sweep_spec(config)
    result = sw.sweep(**spec)
    alg = sweep_algorithm.load_algorithm(algorithm)
    for row in result.rows():
        hp = alg.HParams(gamma=row["gamma"], step_size=row["step_size"])
        _, trace = base.run(alg, spec["mdp"], spec["params0"], hp, config=spec["config"])
        np.testing.assert_allclose(row["objective"], trace.objective[-1], rtol=1e-12)


def test_sweep_algorithm_names_a_bad_path_or_grid_value():
    from dsorl.jobs import sweep_algorithm

    with pytest.raises(ValueError, match="cannot import"):
        sweep_algorithm.load_algorithm("no_such_module_here")
    with pytest.raises(ValueError, match="not an algorithm"):
        sweep_algorithm.load_algorithm("dsorl.policies")
    config = config_lib.resolve({"job": "sweep_algorithm", "config": {"n_steps": 2},
                                 "grid": {"gamma": [0.9, 1.0], "step_size": [1.0]}})
    with pytest.raises(ValueError, match=r"grid point gamma=1\.0"):
        sw.sweep(**sweep_algorithm.sweep_spec(config))
