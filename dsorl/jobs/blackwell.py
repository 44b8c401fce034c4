"""Average-reward frontier study (issue 14): Blackwell thresholds, Laurent-series truncation, the n-level policy gradient, mixing-time regularisation and second-order Chain Iteration. Run with plots: `nice python benchmarks/blackwell.py`.

The config's `sections` list chooses what runs, in order; each section is a function
`section(config) -> {"tables": {...}, "arrays": {...}}` in `SECTIONS` (a study written
elsewhere joins by adding its function there and its name to `sections`).

`thresholds` (table `thresholds`, one row per environment of `envs`): states,
`gamma_star` (`planning.blackwell_threshold`: every gamma-discount-optimal policy is
Blackwell optimal exactly for gamma in (gamma*, 1)), the Blackwell-optimal actions
(`planning.blackwell_optimal`), how many deterministic policies are nBw-optimal and how many
Blackwell optimal, and for each discount factor of the nBw paper's experiments whether it
lies above gamma*.

`laurent_error` (tables `laurent_error`, `laurent_slopes`; figure `laurent_error`): for the
Blackwell-optimal policy of each environment, the truncation error
`max_s |v_gamma(s) - (1 + rho) sum_{k=-1}^{n} rho^k y_k(s)|`, `rho = (1 - gamma) / gamma`,
for each order n of `laurent_orders` on a log grid of `rho` (`laurent_rho`), and the
least-squares slope of log error against log rho over the `laurent_fit_points` smallest rho
(n + 1 expected, `markov.laurent_coefficients`; NaN when the error is at rounding level,
below `1e-12 max |v|`, at every fitted point).

`policy_gradient` (table `policy_gradient`; arrays `<env>_<method>_values`): on each
environment of `pg_envs` (`dsorl.envs.make(name)`, a tabular softmax policy), nBw-PG
(`dsorl.algorithms.nbw`, exact) against the n-level method (`dsorl.algorithms.blackwell`,
`order` n of `pg_orders`, exact and, with `pg_sampled`, sampled gradients), from `theta = 0`
and from `pg_starts` random starts (`N(0, pg_start_scale^2)` logits from `seed`), all with
the same barrier settings `pg_hparams`. Row per (env, method): the final `y_{-1}(s0)`,
`y_0(s0)`, `y_1(s0)` from `theta = 0`, its chosen policy (the action of probability at least
`pg_decided` in each state, `?` where none is: duplicated actions stay at 1/A, and so do the
parameters of states that the bias Fisher of eq. 19 does not weigh, e.g. A2's s3, visited at
t = 2 only, under the pseudo-inverse; `pg_damping` > 0 moves them), whether that policy is
Blackwell optimal at s0 (for every choice of actions at its `?` states, its `y_{-1..S-2}(s0)`
equal the Blackwell-optimal policy's within `1e-9 max(1, |y|)`), the share of all starts
whose chosen policy is, the Blackwell optimum's
`y*(s0)`, and seconds (compile included). Episodes of the sampled form: `pg_episode_length`
steps, or the nBw paper's episode length for its environments (`nbw_reference`), so the
last state stands for a draw from `p*`.

`mixing` (tables `mixing_correlation`, `mixing_runs`, `mixing_tradeoff`; figure
`mixing_tradeoff`): `dsorl.jobs.mixing_study` with the config `mixing` (keys of its
`DEFAULTS`): which smooth mixing measure tracks `mixing_time`, and the regularisation
trade-off of the sampled nBw method.

`newton` (tables `newton_convergence`, `newton_curves`, `newton_hessian_gap`; figures
`newton_hessian_gap`, `newton_convergence`): `dsorl.jobs.chain_newton` with the
config `newton`: the surrogate-Hessian gap along optimisation paths, and iterations and time
to `target` of Chain Iteration, natural gradient, Newton on J and Newton on S.
"""
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np

from dsorl import envs, planning, progress
from dsorl.algorithms import blackwell, nbw
from dsorl.envs.nbw import PAPER_SETTINGS
from dsorl.jobs import chain_newton, mixing_study
from dsorl.markov import discounted_value, laurent_coefficients
from dsorl.mdp import induced_chain
from dsorl.policies import deterministic, tabular_softmax
from dsorl.results import keep_on_interrupt

__all__ = ["DEFAULTS", "SECTIONS", "run", "figures", "thresholds", "laurent_error",
           "policy_gradient", "newton", "mixing"]

DEFAULTS = {
    "sections": ["thresholds", "laurent_error", "policy_gradient"],
    "envs": list(envs.NBW_NAMES),
    "laurent_orders": [-1, 0, 1, 2, 3],
    "laurent_rho": {"high": 1.0, "low": 1.0e-3, "points": 16},
    "laurent_fit_points": 6,
    "pg_envs": ["blackwell_tie"],
    "pg_orders": [1, 2],
    "pg_sampled": True,
    "pg_steps": 200,
    "pg_starts": 16,
    "pg_start_scale": 1.0,
    "pg_hparams": {"barrier_init": 0.1, "barrier_divisor": 10.0, "slack": 0.01,
                   "tolerance": 1.0e-4},
    "pg_episode_length": 8,
    "pg_episodes": 32,
    "pg_damping": 1.0e-3,
    "pg_decided": 0.9,
    # the `newton` and `mixing` sections: the configs of `dsorl.jobs.chain_newton` and
    # `dsorl.jobs.mixing_study` (their DEFAULTS)
    "newton": {k: v for k, v in chain_newton.DEFAULTS.items() if k != "output_dir"},
    "mixing": {k: v for k, v in mixing_study.DEFAULTS.items() if k != "output_dir"},
    "seed": 0,
    "output_dir": "results/blackwell",
}


def run(config: dict) -> dict:
    """Run the config's `sections` in order: `{"tables", "arrays", "seeds"}`."""
    unknown = [s for s in config["sections"] if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown section {unknown[0]!r} in sections; known: "
                         f"{', '.join(SECTIONS)}.")
    tables, arrays = {}, {}
    result = lambda: {"tables": dict(tables), "arrays": dict(arrays),
                      "seeds": {"seed": config["seed"]}}
    with keep_on_interrupt(result):
        for name in progress.track(config["sections"], "blackwell", unit="sections"):
            out = SECTIONS[name](config)
            tables.update(out["tables"])
            arrays.update(out.get("arrays", {}))
    return result()


# ----------------------------------------------------------------------------------------
# (a) thresholds


def thresholds(config: dict) -> dict:
    """Table `thresholds` (module docstring)."""
    rows = []
    for name in config["envs"]:
        mdp = envs.make(name)
        solution = planning.blackwell_optimal(mdp)
        gamma_star = planning.blackwell_threshold(mdp)
        n_blackwell = int(np.prod(solution.conserving.sum(axis=1)))
        row = {"env": name, "states": mdp.n_states, "gamma_star": gamma_star,
               "blackwell_actions": "".join(map(str, solution.actions)),
               "nbw_policies": len(planning.nearly_blackwell_optimal(mdp).nbw_optimal),
               "blackwell_policies": n_blackwell}
        gammas = PAPER_SETTINGS["discounts"].get(name, ())
        row["paper_gammas"] = " ".join(f"{g:g}" for g in gammas)
        row["paper_gammas_above"] = " ".join("y" if g > gamma_star else "n" for g in gammas)
        rows.append(row)
    return {"tables": {"thresholds": rows}}


# ----------------------------------------------------------------------------------------
# (b) Laurent-series truncation error


def laurent_error(config: dict) -> dict:
    """Tables `laurent_error` and `laurent_slopes`, arrays `laurent_rho`, `<env>_laurent`."""
    orders = [int(n) for n in config["laurent_orders"]]
    if not orders or min(orders) < -1:
        raise ValueError(f"laurent_orders = {orders} must be a non-empty list of integers >= -1.")
    spec = config["laurent_rho"]
    if not 0 < spec["low"] < spec["high"] or spec["points"] < 2:
        raise ValueError(f"laurent_rho = {spec} needs 0 < low < high and points >= 2.")
    fit = config["laurent_fit_points"]
    if not 2 <= fit <= spec["points"]:
        raise ValueError(f"laurent_fit_points = {fit} must lie in [2, laurent_rho.points].")
    rhos = np.geomspace(spec["high"], spec["low"], int(spec["points"]))
    gammas = 1 / (1 + rhos)
    rows, slopes, arrays = [], [], {"laurent_rho": rhos}
    for name in config["envs"]:
        mdp = envs.make(name)
        actions = planning.blackwell_optimal(mdp).actions
        chain = induced_chain(mdp, deterministic(jnp.asarray(actions), mdp.n_actions))
        y = np.asarray(laurent_coefficients(chain, max(orders)))           # [n + 2, S]
        v = np.asarray(jax.vmap(lambda g: discounted_value(chain, g))(jnp.asarray(gammas)))
        errors = np.empty((len(orders), len(rhos)))
        for i, n in enumerate(orders):
            powers = rhos[:, None] ** np.arange(-1, n + 1)[None]          # [G, n + 2]
            series = (1 + rhos)[:, None] * (powers @ y[:n + 2])
            errors[i] = np.abs(v - series).max(axis=1)
            for rho, gamma, err in zip(rhos, gammas, errors[i]):
                rows.append({"env": name, "order": n, "rho": rho, "gamma": gamma,
                             "error": err, "relative_error": err / np.abs(v).max()})
            tail = slice(len(rhos) - fit, None)
            resolved = errors[i, tail] > 1e-12 * np.abs(v[tail]).max()
            slope = (np.polyfit(np.log(rhos[tail][resolved]), np.log(errors[i, tail][resolved]),
                                1)[0] if resolved.sum() >= 2 else float("nan"))
            slopes.append({"env": name, "order": n, "slope": float(slope), "expected": n + 1,
                           "min_rho_fitted": float(rhos[-1]), "points": int(resolved.sum())})
        arrays[f"{name}_laurent"] = errors
    return {"tables": {"laurent_error": rows, "laurent_slopes": slopes}, "arrays": arrays}


# ----------------------------------------------------------------------------------------
# (c) the n-level policy gradient


def policy_gradient(config: dict) -> dict:
    """Table `policy_gradient`, arrays `<env>_<method>_values` (`[n_steps, 3]`: y_{-1..1}(s0)
    along the run from theta = 0)."""
    orders = [int(n) for n in config["pg_orders"]]
    if any(n < 1 for n in orders):
        raise ValueError(f"pg_orders = {orders}: the n-level orders compared with nBw-PG"
                         " (order 0) must be >= 1.")
    if not 0 < config["pg_decided"] <= 1 or config["pg_damping"] < 0:
        raise ValueError(f"pg_decided = {config['pg_decided']} must lie in (0, 1] and"
                         f" pg_damping = {config['pg_damping']} be >= 0.")
    if config["pg_steps"] < 1 or config["pg_starts"] < 0:
        raise ValueError(f"pg_steps = {config['pg_steps']} must be >= 1 and pg_starts ="
                         f" {config['pg_starts']} >= 0.")
    hp = config["pg_hparams"]
    rows, arrays = [], {}
    for name in config["pg_envs"]:
        mdp = envs.make(name)
        S, A = mdp.n_states, mdp.n_actions
        policy = tabular_softmax(S, A)
        key = jax.random.key(config["seed"])
        starts = jnp.concatenate([jnp.zeros((1, S, A)), config["pg_start_scale"] * jax.random.normal(
            key, (config["pg_starts"], S, A))])
        order_s0 = max(S - 2, 1)  # S - 2 decides Blackwell optimality; 1 for the table's y_1
        y_star = _laurent_at_s0(mdp, planning.blackwell_optimal(mdp).actions, order_s0)
        methods = [("nbw", None, False)] + [(f"blackwell_n{n}", n, False) for n in orders]
        if config["pg_sampled"]:
            methods += [(f"blackwell_n{n}_sampled", n, True) for n in orders]
        for method, order, sampled in methods:
            start = time.perf_counter()
            finals, values = _pg_runs(name, mdp, policy, starts, order, sampled, hp, config)
            seconds = time.perf_counter() - start
            probs = np.asarray(jax.vmap(policy.probs)(finals))
            chosen = np.where(probs.max(-1) >= config["pg_decided"], probs.argmax(-1), -1)
            blackwell_at_s0 = np.array([_blackwell_at_s0(mdp, d, y_star) for d in chosen])
            final = values[0, -1]
            rows.append({"env": name, "method": method,
                         "gain": final[0], "bias_s0": final[1], "y1_s0": final[2],
                         "chosen_policy": "".join("?" if a < 0 else str(a) for a in chosen[0]),
                         "blackwell_at_s0": bool(blackwell_at_s0[0]),
                         "share_blackwell": float(blackwell_at_s0.mean()),
                         "starts": len(chosen), "optimal_gain": y_star[0],
                         "optimal_bias_s0": y_star[1], "optimal_y1_s0": y_star[2],
                         "seconds": seconds})
            arrays[f"{name}_{method}_values"] = values[0]
    return {"tables": {"policy_gradient": rows}, "arrays": arrays}


def _pg_runs(name, mdp, policy, starts, order, sampled, hp, config):
    """Final parameters `[starts, ...]` and `y_{-1..1}(s0)` traces `[starts, n_steps, 3]`."""
    steps = int(config["pg_steps"])
    if order is None:
        cfg = nbw.Config(policy=policy, n_steps=steps, damping=config["pg_damping"])
        hparams = nbw.HParams(barrier_init=hp["barrier_init"], barrier_divisor=hp["barrier_divisor"],
                              slack=hp["slack"], gain_tolerance=hp["tolerance"])

        def one(theta, key):
            state, trace = nbw.run(mdp, theta, hparams, config=cfg, keep_params=True)
            values = jax.vmap(lambda p: laurent_coefficients(
                induced_chain(mdp, policy.probs(p)), 1)[:, 0])(trace.params)
            return state.params, values
    else:
        length = (envs.nbw_reference(name)["episode_length"] if name in envs.NBW_NAMES
                  else int(config["pg_episode_length"]))
        cfg = blackwell.Config(policy=policy, order=order, n_steps=steps, episode_length=length,
                               damping=config["pg_damping"],
                               n_episodes=int(config["pg_episodes"]))
        hparams = blackwell.HParams(**hp)
        algorithm = blackwell.SAMPLED if sampled else blackwell.EXACT

        def one(theta, key):
            state, trace = algorithm.run(mdp, theta, hparams, key, config=cfg)
            return state.params, trace.values[:, :3]
    keys = jax.random.split(jax.random.key(config["seed"] + 1), len(starts))
    finals, values = jax.jit(jax.vmap(one))(starts, keys)
    return finals, np.asarray(values)


def _blackwell_at_s0(mdp, chosen, y_star, max_completions: int = 1 << 12) -> bool:
    """Whether every completion of `chosen` (-1: undecided) is Blackwell optimal at s0."""
    undecided = np.flatnonzero(chosen < 0)
    if mdp.n_actions ** len(undecided) > max_completions:
        return False  # too many open choices to call the policy chosen
    for fill in itertools.product(range(mdp.n_actions), repeat=len(undecided)):
        actions = chosen.copy()
        actions[undecided] = fill
        y = _laurent_at_s0(mdp, actions, len(y_star) - 2)
        if np.any(np.abs(y - y_star) > 1e-9 * np.maximum(1, np.abs(y_star))):
            return False
    return True


def _laurent_at_s0(mdp, actions, order: int) -> np.ndarray:
    chain = induced_chain(mdp, deterministic(jnp.asarray(actions), mdp.n_actions))
    return np.asarray(laurent_coefficients(chain, order)[:, 0])


def newton(config: dict) -> dict:
    """Second-order Chain Iteration (item 5): `dsorl.jobs.chain_newton` on `config["newton"]`;
    its tables prefixed `newton_`."""
    return _prefixed("newton", chain_newton, config["newton"])


def mixing(config: dict) -> dict:
    """Mixing-time regularisation (item 4): `dsorl.jobs.mixing_study` on `config["mixing"]`;
    its tables prefixed `mixing_`."""
    return _prefixed("mixing", mixing_study, config["mixing"])


def _prefixed(prefix, job, sub_config):
    out = job.run({**job.DEFAULTS, **sub_config})
    return {"tables": {f"{prefix}_{k}": v for k, v in out["tables"].items()}}


SECTIONS = {"thresholds": thresholds, "laurent_error": laurent_error,
            "policy_gradient": policy_gradient, "newton": newton, "mixing": mixing}


# ----------------------------------------------------------------------------------------


def figures(tables, arrays, config, plt) -> dict:
    """`laurent_error`: truncation error against rho (log-log), a panel per environment, a
    line per order n (slope n + 1 expected); `policy_gradient`: y_0(s0) and y_1(s0) along
    the runs from theta = 0, a panel per environment of `pg_envs`."""
    from dsorl import plots

    out = {}
    if "laurent_rho" in arrays:
        rhos = np.asarray(arrays["laurent_rho"])
        names = [n for n in config["envs"] if f"{n}_laurent" in arrays]
        fig, axs = plots.facets(plt, len(names), ncols=min(len(names), 3), width=3.8)
        colours = plots.palette(len(config["laurent_orders"]))
        for ax, name in zip(axs, names):
            errors = np.asarray(arrays[f"{name}_laurent"])
            for colour, n, err in zip(colours, config["laurent_orders"], errors):
                ax.loglog(rhos, np.maximum(err, 1e-18), "o-", ms=3, color=colour, label=f"n = {n}")
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("rho = (1 - γ) / γ")
            ax.set_ylabel("max_s |v_γ - truncated series|")
            ax.grid(True, which="both", alpha=0.3)
        handles, labels = axs[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        fig.suptitle("Laurent series of the Blackwell-optimal policy's value: error O(rho^(n+1))",
                     fontsize=10)
        fig.tight_layout()
        out["laurent_error"] = fig
    pg = [n for n in config["pg_envs"] if f"{n}_nbw_values" in arrays]
    if pg:
        fig, axs = plots.facets(plt, len(pg), ncols=min(len(pg), 3), width=4.4)
        for ax, name in zip(axs, pg):
            keys = [k for k in arrays if k.startswith(f"{name}_") and k.endswith("_values")]
            for colour, k in zip(plots.palette(len(keys)), keys):
                values = np.asarray(arrays[k])
                label = k[len(name) + 1:-len("_values")]
                ax.plot(values[:, 1], color=colour, label=f"{label}: y_0(s0)")
                if values.shape[1] > 2:
                    ax.plot(values[:, 2], "--", color=colour, label=f"{label}: y_1(s0)")
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("iteration")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        out["policy_gradient"] = fig
    for prefix, job in (("newton", chain_newton), ("mixing", mixing_study)):
        own = {k[len(prefix) + 1:]: v for k, v in tables.items() if k.startswith(prefix + "_")}
        if own:
            sub = {**job.DEFAULTS, **config.get(prefix, {})}
            out.update({k if k.startswith(prefix) else f"{prefix}_{k}": fig
                        for k, fig in job.figures(own, {}, sub, plt).items()})
    return out
