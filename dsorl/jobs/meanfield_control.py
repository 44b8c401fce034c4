"""Continuous example: the noisy 1-D LQR on a grid, solved by mean-field Langevin PG.

The environment is `dsorl.envs.control.linear_quadratic_regulator` (states and actions on
grids); the particles' tanh features see the coordinates `(x / state_bound, u /
action_bound)`, so the same code as for finite MDPs handles the continuous problem. The
particle method (N particles, `seeds` runs vmapped) is compared with soft value iteration
on the same grid (the exact soft optimum `pi*_tau` there), and both with the closed-form
Gaussian policy `N(gain x, action_std^2)` of the continuous problem (`soft_lqr`):

- `policy_gap`: `max_s sum_a |pi(a|s) - pi*_tau(a|s)|`; `value_gap`: `V*_tau(rho) - V_tau(rho)`;
- `mean_action_slope`: least-squares slope of the policy's mean action against x over the
  interior states (|x| <= interior), to compare with the Riccati `gain`;
- `action_std`: the policy's action standard deviation averaged over the interior states.

Table `policies`, one row per policy (soft value iteration, each seed's particles, the
continuous LQR): policy, policy_gap, value_gap, mean_action_slope, action_std (NaN where a
quantity does not apply to the continuous policy). Table `summary`: particles, sigma,
step_size, steps, seeds, seconds (the runs, compile apart), v_star, mean_policy_gap,
mean_value_gap. Arrays: states, actions, soft_policy, particle_policies,
value_gap_curves [seeds, steps], soft_mean_action, particle_mean_action, riccati_gain.
"""
import time

import jax
import numpy as np

from dsorl import features, progress, timing
from dsorl.algorithms import meanfield as mf
from dsorl.envs import control
from dsorl.jobs.meanfield import run_from_key
from dsorl.objectives import entropy_regularised_return
from dsorl.planning import soft_policy_iteration

__all__ = ["DEFAULTS", "build_problem", "run", "figures"]

DEFAULTS = {
    "grid": {"n_states": 31, "n_actions": 21, "state_bound": 3.0, "action_bound": 3.0},
    "dynamics": {"a": 1.0, "b": 1.0, "noise_std": 0.3, "state_cost": 1.0, "action_cost": 1.0},
    "gamma": 0.9,
    "tau": 2.0,
    "feature": {"width": 8, "bound": 2.0},
    "particles": 1000,
    "sigma": 0.05,
    "step_size": 0.5,
    "steps": 3000,
    "seeds": 4,
    "interior": 1.0,
    "gradient": "autodiff",
    "seed": 0,
    "output_dir": "results/meanfield_control",
}


def build_problem(config: dict):
    """`(GridControl, MeanFieldProblem)` with coordinate encodings scaled to [-1, 1]."""
    g, d = config["grid"], config["dynamics"]
    env = control.linear_quadratic_regulator(g["n_states"], g["n_actions"], state_bound=g["state_bound"],
                                             action_bound=g["action_bound"], **d)
    x = features.coordinate_encoding(env.states / g["state_bound"], env.actions / g["action_bound"])
    return env, mf.MeanFieldProblem(env.mdp, features.TanhFeature(**config["feature"]), x)


def run(config: dict) -> dict:
    env, problem = build_problem(config)
    gamma, tau = config["gamma"], config["tau"]
    soft = soft_policy_iteration(env.mdp, gamma, tau)
    reference = control.soft_lqr(gamma, tau, **{k: config["dynamics"][k] for k in
                                                ("a", "b", "state_cost", "action_cost")})
    v_star = float(env.mdp.rho @ soft.value)
    seeds = config["seeds"]
    hparams = mf.HParams(*(np.full(seeds, config[k], float)
                           for k in ("gamma", "tau", "sigma", "step_size")))
    n = config["particles"]
    run_config = mf.Config(config["steps"], config["gradient"], n)
    mf.validate(problem, hparams, run_config)

    def one(hp, key):
        state, trace = run_from_key(problem, None, hp, key, config=run_config)
        return mf.mean_field_policy(problem, state.params), trace, state.first_bad_step

    # one compiled run per seed, so progress (and its ETA) is reported between seeds
    keys = jax.random.split(jax.random.key(config["seed"]), seeds)
    first = jax.tree_util.tree_map(lambda x: x[0], hparams)
    compiled, _ = timing.compile(one, first, keys[0],
                                 what=f"meanfield_control run (N={n}, {config['steps']} steps)")
    start = time.perf_counter()
    outs = [jax.block_until_ready(compiled(jax.tree_util.tree_map(lambda x: x[i], hparams), k))
            for i, k in progress.track(list(enumerate(keys)), "meanfield_control", unit="seeds")]
    seconds = time.perf_counter() - start
    pis, trace, first_bad = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *outs)
    mf.check_divergence(first_bad, hparams)

    x, u = np.asarray(env.states), np.asarray(env.actions)
    inner = np.abs(x) <= config["interior"] + 1e-12
    pi_star = np.asarray(soft.policy)
    rows = [_policy_row("soft value iteration (grid)", pi_star, pi_star, 0.0, x, u, inner)]
    for i in range(seeds):
        value = float(entropy_regularised_return(env.mdp, pis[i], gamma, tau))
        rows.append(_policy_row(f"particles N={n}, seed {i}", np.asarray(pis[i]), pi_star,
                                v_star - value, x, u, inner))
    rows.append({"policy": "continuous LQR (Riccati)", "policy_gap": float("nan"),
                 "value_gap": float("nan"), "mean_action_slope": float(reference.gain),
                 "action_std": float(reference.action_std)})
    particle_rows = rows[1:-1]
    summary = [{"particles": n, "sigma": config["sigma"], "step_size": config["step_size"],
                "steps": config["steps"], "seeds": seeds, "seconds": seconds, "v_star": v_star,
                "mean_policy_gap": float(np.mean([r["policy_gap"] for r in particle_rows])),
                "mean_value_gap": float(np.mean([r["value_gap"] for r in particle_rows]))}]
    arrays = {"states": x, "actions": u, "soft_policy": pi_star, "particle_policies": np.asarray(pis),
              "value_gap_curves": v_star - np.asarray(trace.value_tau),
              "soft_mean_action": pi_star @ u, "particle_mean_action": np.asarray(pis) @ u,
              "riccati_gain": float(reference.gain)}
    return {"tables": {"policies": rows, "summary": summary}, "arrays": arrays,
            "seeds": {"seed": config["seed"]}}


def _policy_row(name, pi, pi_star, value_gap, x, u, inner) -> dict:
    mean = pi @ u
    std = np.sqrt(np.maximum(pi @ u ** 2 - mean ** 2, 0))
    slope = np.polyfit(x[inner], mean[inner], 1)[0]
    return {"policy": name, "policy_gap": float(np.abs(pi - pi_star).sum(1).max()),
            "value_gap": value_gap, "mean_action_slope": float(slope),
            "action_std": float(std[inner].mean())}


def figures(tables, arrays, config, plt) -> dict:
    """`policy`: the mean action against the state for the particle policies (one per
    seed), soft value iteration on the grid and the Riccati gain line of the continuous
    problem; `value_gap`: each seed's value gap against Langevin steps (log y)."""
    from dsorl import plots

    x = np.asarray(arrays["states"])
    runs = np.asarray(arrays["particle_mean_action"])
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colours = plots.palette(len(runs) + 2)
    ax.plot(x, arrays["soft_mean_action"], color=colours[0], lw=2.5,
            label="soft value iteration (grid)")
    ax.plot(x, float(arrays["riccati_gain"]) * x, color=colours[1], ls="--",
            label="continuous LQR (Riccati)")
    for i, (mean, colour) in enumerate(zip(runs, colours[2:])):
        ax.plot(x, mean, color=colour, lw=1, label=f"particles, seed {i}")
    ax.axvspan(-config["interior"], config["interior"], color="0.9", zorder=0)
    ax.set_xlabel("state x")
    ax.set_ylabel("mean action")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    plots.legend_outside(fig, handles, labels)
    ax.set_title(f"meanfield_control: N={config['particles']} particles, {config['steps']} steps,"
                 f" γ={config['gamma']:g}, τ={config['tau']:g} (shaded: interior)", fontsize=9)
    fig.tight_layout()
    out = {"policy": fig}
    curves = np.asarray(arrays["value_gap_curves"], float)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (curve, colour) in enumerate(zip(curves, plots.palette(len(curves)))):
        ax.plot(np.arange(1, len(curve) + 1), np.maximum(curve, 1e-16), color=colour,
                label=f"seed {i}")
    ax.set_yscale("log")
    ax.set_xlabel("Langevin step")
    ax.set_ylabel("V*_tau(rho) - V_tau(rho)")
    ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    plots.legend_outside(fig, handles, labels)
    ax.set_title("meanfield_control: value gap of the particle policy", fontsize=9)
    fig.tight_layout()
    out["value_gap"] = fig
    return out
