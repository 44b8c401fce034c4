"""Scaling study: exact-gradient steps to epsilon-optimality, DynPG against vanilla softmax PG.

On `dsorl.envs.chains.committal_chain(n, gamma)`, as the effective horizon `1 / (1 - gamma)`
grows (with the chain length tied to it, `n = max(2, round(horizon * chain_per_horizon))`)
and as the chain grows at a fixed `gamma`. A policy is epsilon-optimal when its mean gap
over the initial law is small, `rho . (V* - V^pi) <= epsilon` (the metric of Klein et al.'s
experiment).

- DynPG: the authors' adaptive schedule with steps coefficient `k` (45 in the paper; the
  bandits must be solved more accurately for a smaller epsilon, so `k` is swept like
  vanilla PG's step size), `n + extra_epochs` epochs; its count is the cumulative number
  of gradient steps at the end of the first epoch whose newest policy is
  epsilon-optimal. Runs planning more than `dynpg_budget` steps are skipped.
- Vanilla PG: exact gradients, plain gradient ascent, one run per step size in
  `pg_step_sizes` (one vmapped program), at most `pg_budget` steps; its count is the
  first step whose policy is epsilon-optimal.

Each program is jitted once per setting; compile time is reported apart from run time
(median of `repeats` runs). Exponents are least-squares slopes of log(count) against
log(horizon) or log(n) over the points that reached epsilon.

Tables `horizon` and `chain`, one row per setting (a count not reached is NaN, with
`reached` False; a skipped DynPG run has NaN timings too):
  horizon, gamma, n, epsilon      the chain and the target
  method                          "dynpg" or "pg"
  setting                         the step rule as a label: "k=45", "eta=10", "1/L"
  k                               DynPG's steps coefficient (NaN for pg)
  step_size                       PG's step size, 1/L included (NaN for dynpg)
  budget_steps                    steps the run had: DynPG's planned total, `pg_budget`
  skipped                         DynPG planned more than `dynpg_budget` steps: not run
  reached                         epsilon-optimal within the budget
  steps_to_eps, epochs_to_eps     gradient steps (DynPG: also epochs) to epsilon
  run_s, compile_s, seconds_to_eps  seconds (median run, compile, run up to steps_to_eps)
Table `exponents`: study ("horizon" or "n"), method, setting, exponent (NaN with fewer
than two points), points (settings that reached epsilon), unreached (settings that did not).
"""
import jax
import jax.numpy as jnp
import numpy as np

from dsorl import progress, timing
from dsorl.algorithms import dynpg, pg
from dsorl.envs.chains import committal_chain, committal_chain_optimum

DEFAULTS = {
    "horizons": [10, 20, 50, 100, 200, 500],
    "chain_per_horizon": 0.2,
    "chain_lengths": [2, 4, 8, 16, 32, 64],
    "chain_gamma": 0.99,
    "epsilon": 0.01,
    "extra_epochs": 10,
    "dynpg_steps_coefficients": [45.0, 450.0, 4500.0],
    "dynpg_budget": 20000000,
    "pg_step_sizes": [1.0, 10.0, 100.0],
    "pg_theory_step": True,
    "pg_budget": 100000,
    "repeats": 3,
    "output_dir": "benchmarks/results/dynpg_scaling",
}


def measure(n: int, gamma: float, config: dict) -> list:
    """Rows for DynPG and each vanilla-PG step size on `committal_chain(n, gamma)`."""
    env = committal_chain(n, gamma)
    mdp = env.mdp
    v_star, _ = committal_chain_optimum(n, gamma)
    j_star = float(np.asarray(mdp.rho) @ v_star)
    eps = config["epsilon"]
    zeros = jnp.zeros(mdp.R.shape)
    horizon = 1 / (1 - gamma)
    base = {"horizon": round(horizon, 6), "gamma": gamma, "n": n, "epsilon": eps}

    nan = float("nan")
    rows = []
    cfg = dynpg.Config(n_steps=n + config["extra_epochs"])
    for k in config["dynpg_steps_coefficients"]:
        hp = dynpg.HParams(gamma, 1.0, float(k))
        planned = int(np.sum(dynpg.epoch_schedule(np.arange(cfg.n_steps), hp, xp=np)[1]))
        row = dict(base, method="dynpg", setting=f"k={k:g}", k=float(k), step_size=nan,
                   budget_steps=planned, skipped=planned > config["dynpg_budget"], reached=False,
                   steps_to_eps=nan, epochs_to_eps=nan, run_s=nan, compile_s=nan,
                   seconds_to_eps=nan)
        if row["skipped"]:
            rows.append(row)
            continue
        tm = timing.timed(lambda: dynpg.run(mdp, zeros, hp, config=cfg),
                          repeats=config["repeats"], warmup=0, what=f"dynpg n={n} k={k:g}")
        (_, trace), c_s, r_s = tm.result, tm.compile_seconds, tm.median_seconds
        gaps = j_star - np.asarray(trace.objective)
        hit = np.flatnonzero(gaps <= eps)
        steps = float(trace.steps[hit[0]]) if hit.size else nan
        rows.append(dict(row, reached=bool(hit.size), steps_to_eps=steps,
                         epochs_to_eps=float(hit[0] + 1) if hit.size else nan,
                         run_s=r_s, compile_s=c_s, seconds_to_eps=r_s * steps / planned))

    # the smoothness step 1/L, L = 8 / (1 - gamma)^3 (Agarwal et al. 2021, Lemma D.4)
    step_sizes = list(config["pg_step_sizes"]) + (
        [(1 - gamma) ** 3 / 8] if config["pg_theory_step"] else [])
    etas = jnp.asarray(step_sizes, jnp.float64)
    pcfg = pg.Config(n_steps=config["pg_budget"])

    def pg_runs():
        return jax.vmap(lambda eta: pg.run(mdp, zeros, pg.HParams(gamma, eta),
                                           config=pcfg)[1].objective)(etas)

    tm = timing.timed(pg_runs, repeats=config["repeats"], warmup=0,
                      what=f"pg n={n} ({len(etas)} step sizes)")
    objectives, c_s, r_s = tm.result, tm.compile_seconds, tm.median_seconds
    theory = len(step_sizes) - 1 if config["pg_theory_step"] else None
    for i, (eta, obj) in enumerate(zip(step_sizes, np.asarray(objectives))):
        hit = np.flatnonzero(j_star - obj <= eps)  # obj[i]: after step i + 1
        steps = float(hit[0] + 1) if hit.size else nan
        rows.append(dict(base, method="pg", setting="1/L" if i == theory else f"eta={eta:g}",
                         k=nan, step_size=float(eta), budget_steps=config["pg_budget"],
                         skipped=False, reached=bool(hit.size), steps_to_eps=steps,
                         epochs_to_eps=nan, run_s=r_s / len(etas), compile_s=c_s,
                         seconds_to_eps=(r_s / len(etas)) * steps / config["pg_budget"]))
    return rows


def fit_exponent(x, y) -> float:
    """Least-squares slope of log y against log x (NaN with fewer than two points)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2:
        return float("nan")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def exponents(rows: list, axis: str) -> list:
    """One row per method and step size: the fitted exponent of steps against `axis`."""
    out = []
    keys = sorted({(r["method"], r["setting"]) for r in rows})
    for method, setting in keys:
        sel = [r for r in rows if (r["method"], r["setting"]) == (method, setting)]
        ok = [r for r in sel if r["reached"] and r["steps_to_eps"] > 0]
        out.append({"study": axis, "method": method, "setting": setting,
                    "exponent": fit_exponent([r[axis] for r in ok],
                                             [r["steps_to_eps"] for r in ok]),
                    "points": len(ok), "unreached": len(sel) - len(ok)})
    return out


def run(config: dict) -> dict:
    """Returns the tables `horizon`, `chain` and `exponents`."""
    jax.config.update("jax_enable_x64", True)
    horizon_rows, chain_rows = [], []
    for h in progress.track(config["horizons"], "dynpg_scaling horizons", unit="horizons"):
        n = max(2, int(round(h * config["chain_per_horizon"])))
        horizon_rows += measure(n, 1 - 1 / h, config)
        _report(horizon_rows[-_per_setting(config):])
    for n in progress.track(config["chain_lengths"], "dynpg_scaling chains", unit="lengths"):
        chain_rows += measure(n, config["chain_gamma"], config)
        _report(chain_rows[-_per_setting(config):])
    table = exponents(horizon_rows, "horizon") + exponents(chain_rows, "n")
    return {"tables": {"horizon": horizon_rows, "chain": chain_rows, "exponents": table},
            "arrays": {}, "seeds": [0]}


def _per_setting(config):
    return (len(config["dynpg_steps_coefficients"]) + len(config["pg_step_sizes"])
            + bool(config["pg_theory_step"]))


def _report(rows):
    for r in rows:
        progress.note(f"horizon {r['horizon']:g} n {r['n']} {r['method']} {r['setting']}:"
                      f" steps {r['steps_to_eps']:g} (reached: {r['reached']}),"
                      f" run {r['run_s']:.3g} s")


def figures(tables, arrays, config, plt) -> dict:
    """`scaling`: gradient steps to epsilon-optimality against the horizon and against the
    chain length (log-log), one line per method and step rule; settings that did not reach
    epsilon are left out of the lines and counted in the legend."""
    from dsorl import plots

    studies = [(name, axis, label) for name, axis, label in (
        ("horizon", "horizon", "effective horizon 1/(1-γ)"),
        ("chain", "n", f"chain length n (γ = {config['chain_gamma']:g})"))
        if len(tables[name]["n"])]
    fig, axs = plots.facets(plt, len(studies), ncols=len(studies), width=5.0)
    for ax, (name, axis, label) in zip(axs, studies):
        t = tables[name]
        keys = sorted(set(zip(t["method"].tolist(), t["setting"].tolist())))
        for (method, setting), colour in zip(keys, plots.palette(len(keys))):
            sel = (t["method"] == method) & (t["setting"] == setting)
            ok = sel & t["reached"]
            order = np.argsort(t[axis][ok])
            missed = int(sel.sum() - ok.sum())
            ax.plot(t[axis][ok][order], t["steps_to_eps"][ok][order],
                    "o-" if method == "dynpg" else "s--", color=colour,
                    label=f"{method} {setting}" + (f" ({missed} not reached)" if missed else ""))
        plots.log_ticks(ax, t[axis])
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"gradient steps to ε = {config['epsilon']:g}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle("dynpg_scaling: DynPG vs vanilla softmax PG on committal chains", fontsize=10)
    fig.tight_layout()
    return {"scaling": fig}
