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

Separation study (`hard_horizons`, empty by default; configs/dynpg_scaling.yaml runs it): on
the hard MDPs of `dsorl.envs.hard_mdps`, for each effective horizon `h` (`gamma = 1 - 1/h`):
`li_chain(H, gamma)` with `H = max(3, floor(hard_li_c_h h))` (the paper's `H = c_h/(1-gamma)`)
and `reset_chain(n, hard_reset_actions)` with `n = max(2, round(hard_reset_per_horizon h))`,
start law a point mass on state 0. Vanilla PG: exact gradients from the uniform policy, step
sizes `hard_pg_step_sizes` and, if `hard_pg_li_step`, Li et al.'s bound `(1 - gamma)^2 / 5`
(their theorem assumes `eta` below it), all in one vmapped program of `hard_pg_budget`
steps. DynPG: the authors' schedule with `k` in `hard_dynpg_steps_coefficients`, `H + extra`
epochs (`extra_epochs`); on the reset chain its context law is uniform over the chain states
(DynPG needs full support) while the gap is measured under the point mass. Table `hard`,
one row per environment, horizon and method/setting:
  env, horizon, gamma, size, n_states, epsilon     the MDP (size: H or n) and the target
  method, setting, k, step_size, budget_steps, skipped, reached, steps_to_eps, epochs_to_eps,
  run_s, compile_s                                 as in `horizon`
  final_gap                                        rho . (V* - V^pi) after the budget
Table `hard_fits`, one row per environment, method and setting, over the horizons that
reached epsilon: exp_slope, exp_r2 (least squares of ln steps against h: exponential growth
is a straight line here) and poly_exponent, poly_r2 (ln steps against ln h), points,
unreached, and lower_bound: the largest budget among the unreached horizons (NaN if none):
the count there is at least that.

Horizon-adjustment sensitivity (`sens_envs`, empty by default; configs/dynpg_scaling.yaml runs
it): sampled DynPG (REINFORCE, `sens_batch` episodes per step, plain SGD, `sens_seeds` seeds
vmapped as one program per variant) on Sutton-extended (`dsorl.envs.dynpg`, each gamma of
`sens_sutton_gammas`, epsilon `sens_sutton_epsilon`) and on `li_chain` (`gamma = 1 - 1 /
sens_hard_horizon`, `H` as in the separation study, epsilon `sens_hard_epsilon`; the partial
reconstruction of Li et al.'s MDP, see `dsorl.envs.hard_mdps`). Each variant trains until its
output policy covers the longest episode (`T` horizon steps, `ceil(T / m)` epochs):
  authors        the adaptive schedule, steps coefficient `sens_k`, one horizon step an epoch
  fixed N=<n>    the authors' step size, `n` steps in every epoch (`schedule="fixed_steps"`)
  block m=<m>    the adaptive schedule, `m` horizon steps learnt together in each epoch
                 (`horizon_block`)
A run reaches epsilon at the first interaction count at which its newest policy (the one
being trained, or an epoch's frozen output) has mean gap `rho . (V* - V^pi) <= epsilon`.
Table `sensitivity`, one row per environment, gamma and variant:
  env, gamma, epsilon, variant, schedule, k, block, epochs, horizon, seeds
  reached_fraction                       seeds that reached epsilon
  interactions_median, interactions_lo, interactions_hi
                                         interactions to epsilon: median over seeds and its
                                         95% percentile-bootstrap interval (NaN where more
                                         than half the seeds, or resamples, did not reach it)
  final_gap_mean, final_gap_lo, final_gap_hi
                                         the output's gap after the last epoch: mean over seeds
                                         and its 95% percentile-bootstrap interval
  total_interactions                     median interactions a whole run used
  run_s, compile_s                       seconds of the vmapped program (all seeds)
"""
import jax
import jax.numpy as jnp
import numpy as np

from dsorl import progress, timing
from dsorl.algorithms import dynpg, pg
from dsorl.envs.chains import committal_chain, committal_chain_optimum
from dsorl.envs.dynpg import sutton_extended, sutton_extended_reference
from dsorl.envs.hard_mdps import li_chain, li_chain_optimum, reset_chain, reset_chain_optimum
from dsorl.mdp import MDP
from dsorl.objectives import policy_objective
from dsorl.policies import tabular_softmax

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
    "hard_horizons": [],
    "hard_envs": ["li_chain", "reset_chain"],
    "hard_li_c_h": 0.4,
    "hard_reset_per_horizon": 0.5,
    "hard_reset_actions": 3,
    "hard_pg_step_sizes": [1.0, 10.0, 100.0],
    "hard_pg_li_step": True,
    "hard_pg_budget": 100000,
    "hard_dynpg_steps_coefficients": [45.0, 450.0, 4500.0],
    "sens_envs": [],
    "sens_sutton_gammas": [0.99, 0.9],
    "sens_sutton_epsilon": 0.01,
    "sens_hard_horizon": 20.0,
    "sens_hard_epsilon": 0.05,
    "sens_k": 45.0,
    "sens_fixed_steps": [45.0, 150.0],
    "sens_blocks": [2, 3],
    "sens_seeds": 32,
    "sens_batch": 1,
    "sens_bootstrap": 1000,
    "sens_seed": 0,
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


def hard_problem(env: str, horizon: float, config: dict):
    """`(mdp, context mdp for DynPG, V*, size)` of environment `env` at `gamma = 1 - 1/h`."""
    gamma = 1 - 1 / horizon
    if env == "li_chain":
        size = max(3, int(np.floor(config["hard_li_c_h"] * horizon)))
        mdp = li_chain(size, gamma).mdp
        return mdp, mdp, li_chain_optimum(size, gamma), size
    if env == "reset_chain":
        size = max(2, int(round(config["hard_reset_per_horizon"] * horizon)))
        mdp = reset_chain(size, config["hard_reset_actions"]).mdp
        context = np.r_[np.full(size, 1 / size), 0.0]
        return (mdp, MDP(mdp.P, mdp.R, context, action_mask=mdp.action_mask),
                reset_chain_optimum(size, gamma), size)
    raise ValueError(f"hard_envs: unknown environment {env!r} (li_chain, reset_chain).")


def measure_hard(env: str, horizon: float, config: dict) -> list:
    """Rows of table `hard` for one environment and horizon (see the module docstring)."""
    gamma = 1 - 1 / horizon
    mdp, context, v_star, size = hard_problem(env, horizon, config)
    rho = np.asarray(mdp.rho)
    j_star = float(rho @ v_star)
    eps = config["epsilon"]
    zeros = jnp.zeros(mdp.R.shape)
    nan = float("nan")
    base = {"env": env, "horizon": float(horizon), "gamma": gamma, "size": size,
            "n_states": int(mdp.R.shape[0]), "epsilon": eps}
    rows = []
    policy = tabular_softmax(*mdp.R.shape, mdp.action_mask)
    cfg = dynpg.Config(n_steps=size + config["extra_epochs"])
    for k in config["hard_dynpg_steps_coefficients"]:
        hp = dynpg.HParams(gamma, 1.0, float(k))
        planned = int(np.sum(dynpg.epoch_schedule(np.arange(cfg.n_steps), hp, xp=np)[1]))
        row = dict(base, method="dynpg", setting=f"k={k:g}", k=float(k), step_size=nan,
                   budget_steps=planned, skipped=planned > config["dynpg_budget"],
                   reached=False, steps_to_eps=nan, epochs_to_eps=nan, run_s=nan,
                   compile_s=nan, final_gap=nan)
        if row["skipped"]:
            rows.append(row)
            continue

        def dyn_objectives():
            _, trace = dynpg.run(context, zeros, hp, config=cfg, keep_params=True)
            # the epoch's newest policy, evaluated under the MDP's own initial law
            objective = jax.vmap(lambda th: policy_objective(mdp, policy.probs(th), gamma))
            return objective(trace.params), trace.steps

        tm = timing.timed(jax.jit(dyn_objectives), repeats=config["repeats"], warmup=0,
                          what=f"dynpg {env} h={horizon:g} k={k:g}")
        objectives, steps = (np.asarray(x) for x in tm.result)
        gaps = j_star - objectives
        hit = np.flatnonzero(gaps <= eps)
        rows.append(dict(row, reached=bool(hit.size),
                         steps_to_eps=float(steps[hit[0]]) if hit.size else nan,
                         epochs_to_eps=float(hit[0] + 1) if hit.size else nan,
                         run_s=tm.median_seconds, compile_s=tm.compile_seconds,
                         final_gap=float(gaps[-1])))

    step_sizes = list(config["hard_pg_step_sizes"]) + (
        [(1 - gamma) ** 2 / 5] if config["hard_pg_li_step"] else [])
    etas = jnp.asarray(step_sizes, jnp.float64)
    budget = config["hard_pg_budget"]
    pcfg = pg.Config(n_steps=budget)

    def pg_runs():
        return jax.vmap(lambda eta: pg.run(mdp, zeros, pg.HParams(gamma, eta),
                                           config=pcfg)[1].objective)(etas)

    tm = timing.timed(pg_runs, repeats=config["repeats"], warmup=0,
                      what=f"pg {env} h={horizon:g} ({len(etas)} step sizes)")
    li_step = len(step_sizes) - 1 if config["hard_pg_li_step"] else None
    for i, (eta, obj) in enumerate(zip(step_sizes, np.asarray(tm.result))):
        hit = np.flatnonzero(j_star - obj <= eps)  # obj[i]: after step i + 1
        rows.append(dict(base, method="pg",
                         setting="(1-g)^2/5" if i == li_step else f"eta={eta:g}", k=nan,
                         step_size=float(eta), budget_steps=budget, skipped=False,
                         reached=bool(hit.size),
                         steps_to_eps=float(hit[0] + 1) if hit.size else nan,
                         epochs_to_eps=nan, run_s=tm.median_seconds / len(etas),
                         compile_s=tm.compile_seconds, final_gap=float(j_star - obj[-1])))
    return rows


def sensitivity_cases(config: dict) -> list:
    """`(env name, EpisodicMDP, gamma, epsilon, J*)` of the sensitivity study."""
    cases = []
    for env in config["sens_envs"]:
        if env == "sutton_extended":
            for gamma in config["sens_sutton_gammas"]:
                cases.append((env, sutton_extended(), float(gamma),
                              config["sens_sutton_epsilon"],
                              sutton_extended_reference(gamma)["mean_v_star"]))
        elif env == "li_chain":
            h = float(config["sens_hard_horizon"])
            gamma = 1 - 1 / h
            size = max(3, int(np.floor(config["hard_li_c_h"] * h)))
            problem = li_chain(size, gamma)
            cases.append((env, problem, gamma, config["sens_hard_epsilon"],
                          float(np.asarray(problem.mdp.rho) @ li_chain_optimum(size, gamma))))
        else:
            raise ValueError(f"sens_envs: unknown environment {env!r} (sutton_extended,"
                             " li_chain).")
    return cases


def sensitivity_variants(config: dict) -> list:
    """`(label, schedule, steps coefficient, horizon block)` of each variant."""
    k = float(config["sens_k"])
    return ([("authors", "adaptive", k, 1)]
            + [(f"fixed N={n:g}", "fixed_steps", float(n), 1) for n in config["sens_fixed_steps"]]
            + [(f"block m={int(m)}", "adaptive", k, int(m)) for m in config["sens_blocks"]])


def first_reach(counts, gaps, valid, eps) -> np.ndarray:
    """Per seed (first axis): the interaction count of the first valid point (later axes in
    order) whose gap is <= eps; `inf` if none."""
    counts, hit = np.asarray(counts, float), np.asarray(valid) & (np.asarray(gaps) <= eps)
    n = counts.shape[0]
    counts, hit = counts.reshape(n, -1), hit.reshape(n, -1)
    return np.where(hit.any(axis=1), counts[np.arange(n), hit.argmax(axis=1)], np.inf)


def bootstrap_interval(x, statistic, n: int, seed: int = 0):
    """Percentile-bootstrap 95% interval of `statistic` over the seeds `x` (NaN where the
    resampled statistic is infinite)."""
    x = np.asarray(x, float)
    rng = np.random.default_rng(seed)
    stats = np.array([statistic(x[rng.integers(0, x.size, x.size)]) for _ in range(n)])
    with np.errstate(invalid="ignore"):  # inf - inf between infinite resamples
        lo, hi = np.percentile(stats, [2.5, 97.5])
    return tuple(float(v) if np.isfinite(v) else float("nan") for v in (lo, hi))


def measure_sensitivity(env: str, problem, gamma: float, eps: float, j_star: float,
                        config: dict) -> list:
    """Rows of table `sensitivity` for one environment and gamma."""
    zeros = jnp.zeros(problem.mdp.R.shape)
    longest = int(problem.max_episode_length)
    keys = jax.random.split(jax.random.key(config["sens_seed"]), config["sens_seeds"])
    rows = []
    for label, schedule, k, m in sensitivity_variants(config):
        epochs = -(-longest // m)
        hp = dynpg.HParams(gamma, 1.0, k)
        index = (np.arange(epochs) + 1) * m - 1
        longest_epoch = int(np.max(dynpg.epoch_schedule(index, hp, schedule, xp=np)[1]))
        cfg = dynpg.Config(n_steps=epochs, schedule=schedule, estimator="reinforce",
                           batch_size=config["sens_batch"], max_steps_per_epoch=longest_epoch,
                           episode_length=min(longest, epochs * m),
                           evaluation_sweeps=longest + 1, horizon_block=m)

        def program(keys):
            def one(key):
                _, trace = dynpg.run(problem, zeros, hp, key, config=cfg)
                return (trace.inner.interactions, trace.inner.objective, trace.inner.valid,
                        trace.interactions, trace.objective)
            return jax.vmap(one)(keys)

        tm = timing.timed(jax.jit(program), keys, repeats=1, warmup=0,
                          what=f"dynpg sensitivity {env} gamma={gamma:g} {label}")
        inner_n, inner_j, valid, end_n, end_j = (np.asarray(x) for x in tm.result)
        # per epoch: its steps (objective before each step), then its frozen output
        counts = np.concatenate([inner_n, end_n[..., None]], axis=-1)
        gaps = j_star - np.concatenate([inner_j, end_j[..., None]], axis=-1)
        ok = np.concatenate([valid, np.ones(end_n.shape + (1,), bool)], axis=-1)
        first = first_reach(counts, gaps, ok, eps)
        final = j_star - end_j[:, -1]
        median = float(np.median(first))
        n_boot = config["sens_bootstrap"]
        rows.append({
            "env": env, "gamma": gamma, "epsilon": eps, "variant": label, "schedule": schedule,
            "k": k, "block": m, "epochs": epochs, "horizon": epochs * m,
            "seeds": int(first.size), "reached_fraction": float(np.mean(np.isfinite(first))),
            "interactions_median": median if np.isfinite(median) else float("nan"),
            **dict(zip(("interactions_lo", "interactions_hi"),
                       bootstrap_interval(first, np.median, n_boot))),
            "final_gap_mean": float(final.mean()),
            **dict(zip(("final_gap_lo", "final_gap_hi"),
                       bootstrap_interval(final, np.mean, n_boot))),
            "total_interactions": float(np.median(end_n[:, -1])),
            "run_s": tm.median_seconds, "compile_s": tm.compile_seconds})
        progress.note(f"sensitivity {env} gamma {gamma:g} {label}: reached"
                      f" {rows[-1]['reached_fraction']:.2f}, median interactions {median:g},"
                      f" final gap {rows[-1]['final_gap_mean']:.3g}")
    return rows


def growth_fits(x, y) -> dict:
    """Least squares of `ln y` against `x` (exponential growth: `exp_slope`, `exp_r2`) and
    against `ln x` (polynomial: `poly_exponent`, `poly_r2`); NaN with fewer than 3 points
    (two points fit both lines exactly and tell nothing apart)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    out = {"exp_slope": float("nan"), "exp_r2": float("nan"),
           "poly_exponent": float("nan"), "poly_r2": float("nan")}
    if x.size < 3:
        return out
    ly = np.log(y)
    for name, r2, u in (("exp_slope", "exp_r2", x), ("poly_exponent", "poly_r2", np.log(x))):
        coef = np.polyfit(u, ly, 1)
        resid = ly - np.polyval(coef, u)
        total = np.sum((ly - ly.mean()) ** 2)
        out[name] = float(coef[0])
        out[r2] = float(1 - np.sum(resid ** 2) / total) if total > 0 else float("nan")
    return out


def hard_fits(rows: list) -> list:
    """Table `hard_fits` (module docstring) from the rows of table `hard`."""
    out = []
    for env, method, setting in sorted({(r["env"], r["method"], r["setting"]) for r in rows}):
        sel = [r for r in rows if (r["env"], r["method"], r["setting"]) == (env, method, setting)]
        ok = [r for r in sel if r["reached"] and r["steps_to_eps"] > 0]
        missed = [r["budget_steps"] for r in sel if not r["reached"] and not r["skipped"]]
        out.append({"env": env, "method": method, "setting": setting,
                    **growth_fits([r["horizon"] for r in ok], [r["steps_to_eps"] for r in ok]),
                    "points": len(ok), "unreached": len(sel) - len(ok),
                    "lower_bound": float(max(missed)) if missed else float("nan")})
    return out


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
    tables = {"horizon": horizon_rows, "chain": chain_rows, "exponents": table}
    if config["hard_horizons"]:
        hard_rows = []
        for env in config["hard_envs"]:
            hard_problem(env, 10.0, config)  # an unknown name fails before any run
        for h in progress.track(config["hard_horizons"], "dynpg_scaling hard MDPs",
                                unit="horizons"):
            for env in config["hard_envs"]:
                new = measure_hard(env, float(h), config)
                hard_rows += new
                _report(new)
        tables.update(hard=hard_rows, hard_fits=hard_fits(hard_rows))
    if config["sens_envs"]:
        sens_rows = []
        for case in progress.track(sensitivity_cases(config), "dynpg_scaling sensitivity",
                                   unit="cases"):
            sens_rows += measure_sensitivity(*case, config)
        tables["sensitivity"] = sens_rows
    return {"tables": tables, "arrays": {}, "seeds": [0]}


def _per_setting(config):
    return (len(config["dynpg_steps_coefficients"]) + len(config["pg_step_sizes"])
            + bool(config["pg_theory_step"]))


def _report(rows):
    for r in rows:
        where = f"{r['env']} size {r['size']}" if "env" in r else f"n {r['n']}"
        progress.note(f"horizon {r['horizon']:g} {where} {r['method']} {r['setting']}:"
                      f" steps {r['steps_to_eps']:g} (reached: {r['reached']}),"
                      f" run {r['run_s']:.3g} s")


def figures(tables, arrays, config, plt) -> dict:
    """`scaling`: gradient steps to epsilon-optimality against the horizon and against the
    chain length (log-log), one line per method and step rule; settings that did not reach
    epsilon are left out of the lines and counted in the legend."""
    from dsorl import plots

    figs = {}
    if "hard" in tables and len(tables["hard"]["env"]):
        figs["separation"] = _separation_figure(tables["hard"], config, plt)
    if "sensitivity" in tables and len(tables["sensitivity"]["env"]):
        figs["sensitivity"] = _sensitivity_figure(tables["sensitivity"], plt)
    studies = [(name, axis, label) for name, axis, label in (
        ("horizon", "horizon", "effective horizon 1/(1-γ)"),
        ("chain", "n", f"chain length n (γ = {config['chain_gamma']:g})"))
        if len(tables.get(name, {}).get("n", ()))]  # an empty table has no columns
    if not studies:
        return figs
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
    return {"scaling": fig, **figs}


def _separation_figure(t, config, plt):
    """Steps to epsilon against the horizon on a linear x-axis and a log y-axis (exponential
    growth is a straight line), one panel per hard MDP; a run that did not reach epsilon is
    an open marker at its budget (a lower bound)."""
    from dsorl import plots

    envs = list(dict.fromkeys(t["env"].tolist()))
    fig, axs = plots.facets(plt, len(envs), ncols=len(envs), width=5.0)
    for ax, env in zip(axs, envs):
        on = t["env"] == env
        keys = sorted(set(zip(t["method"][on].tolist(), t["setting"][on].tolist())))
        for (method, setting), colour in zip(keys, plots.palette(len(keys))):
            sel = on & (t["method"] == method) & (t["setting"] == setting)
            ok, miss = sel & t["reached"], sel & ~t["reached"] & ~t["skipped"]
            order = np.argsort(t["horizon"][ok])
            ax.plot(t["horizon"][ok][order], t["steps_to_eps"][ok][order],
                    "o-" if method == "dynpg" else "s--", color=colour,
                    label=f"{method} {setting}")
            ax.plot(t["horizon"][miss], t["budget_steps"][miss], "^", color=colour,
                    markerfacecolor="none", linestyle="none")
        ax.set_yscale("log")
        ax.set_xlabel("effective horizon 1/(1-γ)")
        ax.set_ylabel(f"gradient steps to ε = {config['epsilon']:g}")
        ax.set_title(f"{env} (open ▲: budget, not reached)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle("dynpg_scaling: separation on the hard MDPs (exact gradients)", fontsize=10)
    fig.tight_layout()
    return fig


def _sensitivity_figure(t, plt):
    """One column per environment and gamma: interactions to epsilon (median, 95% bootstrap
    interval; variants that did not reach it in half the seeds are left out) above, the
    final gap (mean, 95% bootstrap interval) below, one point per variant."""
    cases = list(dict.fromkeys(zip(t["env"].tolist(), t["gamma"].tolist())))
    fig, axs = plt.subplots(2, len(cases), figsize=(4.2 * len(cases), 6.0), squeeze=False)
    for col, (env, gamma) in enumerate(cases):
        sel = np.flatnonzero((t["env"] == env) & (t["gamma"] == gamma))
        x = np.arange(sel.size)
        labels = [f"{v}\n({r:.0%} reached)" for v, r in zip(t["variant"][sel],
                                                           t["reached_fraction"][sel])]
        for ax, key, ylabel in ((axs[0, col], "interactions", "interactions to ε"),
                                (axs[1, col], "final_gap", "final gap ρ·(V*−V^π)")):
            centre = t[f"{key}_median" if key == "interactions" else f"{key}_mean"][sel]
            lo, hi = t[f"{key}_lo"][sel], t[f"{key}_hi"][sel]
            ok = np.isfinite(centre)
            err = np.vstack([centre - np.where(np.isfinite(lo), lo, centre),
                             np.where(np.isfinite(hi), hi, centre) - centre])
            ax.errorbar(x[ok], centre[ok], yerr=err[:, ok], fmt="o", capsize=3)
            if not ok.any():
                ax.text(0.5, 0.5, "ε reached by fewer than half the seeds\nin every variant",
                        transform=ax.transAxes, ha="center", va="center", fontsize=8)
            ax.set_xticks(x)
            ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        eps = float(t["epsilon"][sel[0]])
        axs[0, col].set_title(f"{env}, γ = {gamma:g}, ε = {eps:g}", fontsize=9)
        axs[1, col].axhline(eps, color="grey", linestyle=":", linewidth=1)
    fig.suptitle("dynpg_scaling: horizon-adjustment sensitivity of sampled DynPG"
                 f" ({int(t['seeds'][0])} seeds, 95% bootstrap intervals)", fontsize=10)
    fig.tight_layout()
    return fig
