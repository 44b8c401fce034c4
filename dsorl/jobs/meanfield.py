"""Mean-field Langevin PG on a small garnet MDP: the gap to the soft optimum against N and sigma.

For every number of particles N and noise level sigma, `seeds` independent runs (initial
particles i.i.d. N(0, I), one jitted program per N, vmapped over sigma and seeds) of
`burn_in + snapshots * snapshot_every` Langevin steps. Reported per (N, sigma), as the mean
over seeds with its standard error:

- `policy_gap`: `max_s sum_a |pi_nu(a|s) - pi*_tau(a|s)|` (twice the worst total variation),
  averaged over `snapshots` ensembles `snapshot_every` steps apart after the burn-in;
- `value_gap`: `V*_tau(rho) - V_tau^{pi_nu}(rho)` averaged over the same window;
- `dispersion`: the particles' mean per-coordinate variance at the end.

`pi*_tau` and `V*_tau` come from soft value iteration on the same MDP. A run with a
non-finite particle or statistic is reported (first bad step and hyperparameters): the job
raises (`on_divergence: raise`) or drops it from the means and counts it (`report`).
Arrays: the mean value-gap curve over steps for each (N, sigma). Also checked once per N:
the Lions derivative by autodiff against the covariance formula at the initial ensemble.

Table `gap`, one row per (N, sigma): particles, sigma, runs (that stayed finite), diverged;
policy_gap, policy_gap_se, value_gap, value_gap_se, dispersion (means over the finite runs,
NaN when none; the standard errors NaN with fewer than two); seconds_all_sigmas (one
program per N, compile included). Table `lions_check`: particles, max_abs_lions,
autodiff_vs_covariance_rel. Arrays: `value_gap_n<N>_sigma<sigma>` [steps], sigmas, v_star.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from dsorl import envs, features, progress, timing
from dsorl.algorithms import meanfield as mf
from dsorl.planning import soft_policy_iteration

__all__ = ["DEFAULTS", "build_problem", "particles_from_key", "run_from_key", "snapshot_runs",
           "run", "figures"]

DEFAULTS = {
    "env": {"n_states": 6, "n_actions": 3, "branching": 3, "seed": 0},
    "gamma": 0.9,
    "tau": 0.2,
    "step_size": 0.5,
    "feature": {"width": 4, "bound": 2.0},
    "particles": [4, 16, 64, 256, 1024],
    "sigmas": [0.0, 0.025, 0.05, 0.1, 0.2],
    "seeds": 8,
    "burn_in": 500,
    "snapshots": 6,
    "snapshot_every": 50,
    "gradient": "autodiff",
    "on_divergence": "raise",
    "seed": 0,
    "output_dir": "results/meanfield",
}


def build_problem(config: dict) -> mf.MeanFieldProblem:
    """The garnet MDP of `config["env"]` with one-hot encodings and a `TanhFeature`."""
    e = config["env"]
    mdp = envs.garnet(jax.random.key(e["seed"]), e["n_states"], e["n_actions"], e["branching"],
                      dtype=jnp.float64)
    feature = features.TanhFeature(**config["feature"])
    return mf.MeanFieldProblem(mdp, feature, features.one_hot_encoding(e["n_states"], e["n_actions"]))


def particles_from_key(problem: mf.MeanFieldProblem, key, n_particles: int, centre=None):
    """`(particles0, k_run)` from one key: `key` splits into `(k_init, k_run)`, and
    `particles0 = centre + xi`, `xi_i ~ N(0, I)` i.i.d. from `k_init`
    (`dsorl.features.init_particles`; the prior e^{-U} of Kerimkulov et al. when `centre`
    is None); `k_run` is the Langevin noise's key. `centre`: one particle's parameter tree
    (no particle axis)."""
    k_init, k_run = jax.random.split(key)
    particles = features.init_particles(problem.feature, k_init, n_particles, problem.encodings)
    if centre is not None:
        particles = jax.tree_util.tree_map(lambda c, x: c + x, centre, particles)
    return particles, k_run


def run_from_key(problem: mf.MeanFieldProblem, centre, hparams: mf.HParams, key, *,
                 config: mf.Config, keep_params: bool = False):
    """`meanfield.run` from `config.n_particles` particles `theta_i = centre + xi_i` drawn
    by `particles_from_key(problem, key, N, centre)` (the run's noise from its `k_run`):
    `(meanfield.State, meanfield.Trace)`; the run signature of `dsorl.sweep`."""
    if config.n_particles is None:
        raise ValueError("run_from_key draws the particles: give config.n_particles.")
    particles0, k_run = particles_from_key(problem, key, config.n_particles, centre)
    return mf.run(problem, particles0, hparams, k_run, config=config, keep_params=keep_params)


def snapshot_runs(problem, n_particles, hparams, keys, *, burn_in, snapshots, every, gradient):
    """Runs from i.i.d. N(0, I) particles, one per key, each a scan of `run` chunks.

    Returns `(policies[.., snapshots, S, A], trace [.., steps], first_bad_step[..])` with the
    leading axes of `hparams` and `keys` (vmapped); the policies are the ensembles' after
    `burn_in + j * every` steps, j = 1..snapshots; trace row k describes the ensemble after
    step k. The particles and the chunks' keys come from `particles_from_key`.
    """
    n_chunks = snapshots + burn_in // every
    if burn_in % every:
        raise ValueError(f"burn_in = {burn_in} must be a multiple of snapshot_every = {every}.")

    config = mf.Config(every, gradient)

    def one(hp, key):
        ps, k_run = particles_from_key(problem, key, n_particles)

        def chunk(ps, k):
            state, trace = mf.run(problem, ps, hp, k, config=config)
            return state.params, (mf.mean_field_policy(problem, state.params), trace,
                                  state.first_bad_step)

        _, (pis, trace, bad) = jax.lax.scan(chunk, ps, jax.random.split(k_run, n_chunks))
        trace = jax.tree_util.tree_map(lambda x: x.reshape(-1), trace)
        steps = jnp.arange(n_chunks) * every + bad
        first_bad = jnp.min(jnp.where(bad >= 0, steps, n_chunks * every))
        return pis[-snapshots:], trace, jnp.where(first_bad < n_chunks * every, first_bad, -1)

    compiled, _ = timing.compile(jax.vmap(one), hparams, keys,
                                 what=f"meanfield runs (N={n_particles}, {n_chunks * every} steps,"
                                      f" {len(keys)} runs)")
    return compiled(hparams, keys)


def run(config: dict) -> dict:
    if config["on_divergence"] not in ("raise", "report"):
        raise ValueError(f"on_divergence = {config['on_divergence']!r} must be 'raise' or 'report'.")
    problem = build_problem(config)
    gamma, tau, step_size = config["gamma"], config["tau"], config["step_size"]
    soft = soft_policy_iteration(problem.mdp, gamma, tau, problem.mu)
    v_star = float(problem.mdp.rho @ soft.value)
    sigmas = np.asarray(config["sigmas"], float)
    n_seeds = config["seeds"]
    grid_sigma = np.repeat(sigmas, n_seeds)
    hparams = mf.HParams(*(np.full(grid_sigma.shape, v) for v in (gamma, tau)),
                         grid_sigma, np.full(grid_sigma.shape, step_size))
    mf.validate(problem, hparams, mf.Config(config["snapshot_every"], config["gradient"]))
    rows, checks, arrays = [], [], {"sigmas": sigmas, "v_star": v_star}
    key = jax.random.key(config["seed"])
    for n in progress.track(config["particles"], "meanfield", unit="particle counts"):
        key, k_check, k_runs = jax.random.split(key, 3)
        checks.append(_lions_check(problem, n, gamma, tau, k_check))
        start = time.perf_counter()
        pis, trace, first_bad = jax.block_until_ready(snapshot_runs(
            problem, n, hparams, jax.random.split(k_runs, grid_sigma.size),
            burn_in=config["burn_in"], snapshots=config["snapshots"],
            every=config["snapshot_every"], gradient=config["gradient"]))
        seconds = time.perf_counter() - start
        if config["on_divergence"] == "raise":
            mf.check_divergence(first_bad, hparams)
        ok = np.asarray(first_bad) < 0
        policy_gap = np.abs(np.asarray(pis) - np.asarray(soft.policy)).sum(-1).max(-1).mean(-1)
        value_gap = v_star - np.asarray(trace.value_tau)
        window = value_gap[:, config["burn_in"]:].mean(-1)
        for i, sigma in enumerate(sigmas):
            sel = (grid_sigma == sigma) & ok
            rows.append({"particles": n, "sigma": float(sigma), "runs": int(sel.sum()),
                         "diverged": int(((grid_sigma == sigma) & ~ok).sum()),
                         "policy_gap": _mean(policy_gap[sel]), "policy_gap_se": _se(policy_gap[sel]),
                         "value_gap": _mean(window[sel]), "value_gap_se": _se(window[sel]),
                         "dispersion": _mean(np.asarray(trace.dispersion)[sel, -1]),
                         "seconds_all_sigmas": seconds})
            arrays[f"value_gap_n{n}_sigma{sigma:g}"] = value_gap[sel].mean(0) if sel.any() else value_gap[0] * np.nan
    return {"tables": {"gap": rows, "lions_check": checks}, "arrays": arrays,
            "seeds": {"seed": config["seed"], "env_seed": config["env"]["seed"]}}


def _lions_check(problem, n, gamma, tau, key) -> dict:
    ps = features.init_particles(problem.feature, key, n, problem.encodings)
    both = jax.jit(lambda ps: [mf.lions_derivative(problem, ps, gamma, tau, method=m)
                               for m in ("autodiff", "covariance")])
    auto, cov = (jax.tree_util.tree_leaves(x) for x in both(ps))
    scale = max(float(jnp.max(jnp.abs(a))) for a in auto)
    diff = max(float(jnp.max(jnp.abs(a - c))) for a, c in zip(auto, cov))
    return {"particles": n, "max_abs_lions": scale, "autodiff_vs_covariance_rel": diff / scale}


def _mean(x):
    return float(np.mean(x)) if x.size else float("nan")


def _se(x):
    return float(np.std(x, ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")


def figures(tables, arrays, config, plt) -> dict:
    """`value_gap`: the value gap `V*_tau(rho) - V_tau(rho)` of the ensemble against
    Langevin steps (mean over the seeds that did not diverge, log y), one panel per
    particle count, one line per noise sigma."""
    from dsorl import plots

    counts, sigmas = config["particles"], [float(s) for s in config["sigmas"]]
    fig, axs = plots.facets(plt, len(counts), sharey=True)
    colours = plots.palette(len(sigmas))
    for ax, n in zip(axs, counts):
        for sigma, colour in zip(sigmas, colours):
            curve = np.asarray(arrays[f"value_gap_n{n}_sigma{sigma:g}"], float)
            ax.plot(np.arange(1, len(curve) + 1), np.maximum(curve, 1e-16), color=colour,
                    label=f"{sigma:g}")
        ax.axvline(config["burn_in"], color="k", ls=":", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("Langevin step")
        ax.set_ylabel("V*_tau(rho) - V_tau(rho)")
        ax.set_title(f"N = {n}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axs[0].get_legend_handles_labels()
    plots.legend_outside(fig, handles, labels, title="σ")
    fig.suptitle(f"meanfield: garnet S={config['env']['n_states']}, A={config['env']['n_actions']},"
                 f" γ={config['gamma']:g}, τ={config['tau']:g}, η={config['step_size']:g};"
                 f" mean over {config['seeds']} seeds (dotted: burn-in)", fontsize=10)
    fig.tight_layout()
    return {"value_gap": fig}
