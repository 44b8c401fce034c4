"""Second-order Chain Iteration study: how good the DSO surrogate's Hessian is, and what
Newton steps on the surrogate and on the objective buy over first-order Chain Iteration.

Todorov, "Dynamical System Optimization" (arXiv 2506.08340) leaves open how well the
surrogate Hessian `H_S = hess_theta S(theta, alpha)|_{theta = alpha}` (values and
occupancies frozen at `alpha`) approximates the exact `H_J = hess J(alpha)`; they differ by
the value-Jacobian coupling `K + K^T` (`dsorl.chain_models.hessian`). Where the optimum is
optimal from every start state (tabular or desirability parameterisations), `dv/dtheta = 0`
there, so `K = 0` and `H_S = H_J` at the optimum: Newton on `S` then converges like
Newton on `J`.

Problems (each a `dsorl.chain_models.ChainModel` with its optimum `J*` computed
independently by planning):
- `garnet tau=<t>`: `seeds` garnets (`dsorl.envs.garnet`), tabular softmax, start uniform;
  `t = 0`: marginal chain, `J* = rho . v*` by policy iteration; `t > 0`: KL-regularised
  chain (uniform reference), `J*` by soft policy iteration;
- `lmdp random walk`: `dsorl.envs.lmdp.random_walk_lmdp` (first exit), desirability
  controls `u ∝ p exp(theta[x'])`, `J* = P0 . log z` (one linear solve);
- `lmdp random`: `seeds` of `dsorl.envs.lmdp.random_lmdp` (first exit), same controls.

Methods (`dsorl.algorithms.dso`): `chain_iteration` (first order, Adam inner loop),
`natural_gradient` (chain Fisher), `newton_exact` (trust-region Newton on `J`),
`newton_surrogate` (second-order Chain Iteration). Target: relative gap
`(J* - J) / |J*| <= target`.

Config keys (`DEFAULTS`): `seed`; `target`; `repeats` (timed runs, median); `garnet`:
`n_states`, `n_actions`, `branching`, `gamma`, `seeds`, `taus` (list); `lmdp`:
`walk_states` (odd), `noise`, `cost_weight`, `random_states`, `branching`, `seeds`;
`chain_iteration`: `n_steps`, `inner_steps`, `step_size`; `natural_gradient`: `n_steps`,
`damping`, `step_size` (a number, or a mapping from the family `garnet`,
`garnet_regularised`, `lmdp` to a number); `newton`: `n_steps`, `radius`, `max_radius`, `damping`, `accept`;
`paths`: the methods whose iterates get the Hessian gap.

Tables (`newton_tables`), pandas DataFrames:
- `convergence`: case, seed, method, iterations (budget), reached, iterations_to_target
  (NaN if not reached), final_gap, run_s (median wall time of the whole run, compile
  apart), seconds_to_target (`run_s * iterations_to_target / iterations`), compile_s;
- `curves`: case, seed, method, iteration (0 = start), gap;
- `hessian_gap`: case, seed, path (method), iteration, gap, hessian_gap
  `||H_S - H_J||_F / ||H_J||_F` at that iterate.
Figures (`newton_figures`): `hessian_gap` (against iteration, per case) and
`newton_convergence` (gap against iteration per method, per case), matplotlib.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dsorl import chain_models as cm
from dsorl import progress, timing
from dsorl.algorithms import dso as alg
from dsorl.algorithms import lmdp as lm
from dsorl.envs import garnet
from dsorl.envs.lmdp import random_lmdp, random_walk_lmdp
from dsorl.jobs.dso_lmdp import first_hit
from dsorl.planning import policy_iteration, soft_policy_iteration
from dsorl.policies import tabular_softmax

__all__ = ["DEFAULTS", "METHODS", "run", "figures", "hessian_gap", "problems", "newton_tables",
           "newton_figures"]

DEFAULTS = {
    "seed": 0,
    "target": 1.0e-8,
    "repeats": 2,
    "garnet": {"n_states": 10, "n_actions": 3, "branching": 3, "gamma": 0.9, "seeds": 2,
               "taus": [0.0, 0.3]},
    "lmdp": {"walk_states": 21, "noise": 0.2, "cost_weight": 4.0, "random_states": 10,
             "branching": 3, "seeds": 2},
    "chain_iteration": {"n_steps": 40, "inner_steps": 100, "step_size": 0.1},
    # the natural gradient's step size is tuned per family (grid 0.3, 1, 3, 10 on one seed:
    # too long a step stalls or diverges on the regularised garnets and the LMDPs)
    "natural_gradient": {"n_steps": 200, "damping": 1.0e-8,
                         "step_size": {"garnet": 10.0, "garnet_regularised": 0.3,
                                       "lmdp": 0.3}},
    "newton": {"n_steps": 40, "radius": 1.0, "max_radius": 100.0, "damping": 0.0,
               "accept": 0.1},
    "paths": ["newton_surrogate", "chain_iteration"],
    "output_dir": "results/chain_newton",
}

METHODS = ("chain_iteration", "natural_gradient", "newton_exact", "newton_surrogate")


def hessian_gap(model, theta, gamma):
    """`||H_S - H_J||_F / ||H_J||_F` at `theta`: the surrogate Hessian at `theta = alpha`
    (`dsorl.algorithms.dso.surrogate_hessian`) against the exact one (`objective_hessian`)."""
    H_S = alg.surrogate_hessian(model, theta, gamma)
    H_J = alg.objective_hessian(model, theta, gamma)
    return jnp.linalg.norm(H_S - H_J) / jnp.linalg.norm(H_J)


def problems(config: dict) -> list:
    """`[(case, family, seed, model, theta0, gamma, J*)]` of the study (see the module
    docstring); `family`: `garnet`, `garnet_regularised` or `lmdp`."""
    out = []
    g = config["garnet"]
    S, A = g["n_states"], g["n_actions"]
    policy = tabular_softmax(S, A)
    for i in range(g["seeds"]):
        mdp = garnet(jax.random.key(config["seed"] + i), S, A, g["branching"])
        for tau in g["taus"]:
            if tau:
                model = cm.kl_regularised(mdp, policy, tau)
                J_star = mdp.rho @ soft_policy_iteration(mdp, g["gamma"], tau).value
            else:
                model = cm.marginal(mdp, policy)
                J_star = mdp.rho @ policy_iteration(mdp, g["gamma"]).value
            family = "garnet_regularised" if tau else "garnet"
            out.append((f"garnet tau={tau:g}", family, i, model, jnp.zeros((S, A)), g["gamma"],
                        float(J_star)))
    m = config["lmdp"]
    walk = random_walk_lmdp(m["walk_states"], noise=m["noise"], cost_weight=m["cost_weight"])
    lmdps = [("lmdp random walk", 0, walk)] + [
        ("lmdp random", i, random_lmdp(jax.random.key(config["seed"] + 100 + i),
                                       m["random_states"], m["branching"]))
        for i in range(m["seeds"])]
    for case, i, lmdp in lmdps:
        J_star = float(lmdp.initial @ jnp.log(lm.first_exit_desirability(lmdp)))
        out.append((case, "lmdp", i, cm.lmdp_chain(lmdp), jnp.zeros(lmdp.n_states), 1.0, J_star))
    return out


def _runner(method, family, model, gamma, config):
    """`theta0 -> (J[iterations + 1], params[iterations + 1])` of one method."""
    if method == "chain_iteration":
        c = config["chain_iteration"]
        record, hparams = alg.CHAIN_ITERATION, alg.ChainIterationHParams(gamma, c["step_size"])
        settings = alg.ChainIterationConfig(n_steps=c["n_steps"], inner_steps=c["inner_steps"])
    elif method == "natural_gradient":
        c = config["natural_gradient"]
        record = alg.GRADIENT_ASCENT
        step = c["step_size"]
        step = step[family] if isinstance(step, dict) else step
        hparams = alg.AscentHParams(gamma, step, c["damping"])
        settings = alg.AscentConfig(n_steps=c["n_steps"], optimizer=optax.sgd, natural=True)
    else:
        c = config["newton"]
        record = alg.NEWTON_CHAIN_ITERATION
        hparams = alg.NewtonHParams(gamma, c["radius"], c["max_radius"], c["damping"],
                                    c["accept"])
        settings = alg.NewtonConfig(n_steps=c["n_steps"], hessian=method.split("_")[1])

    def run(theta0):
        _, trace = record.run(model, theta0, hparams, config=settings, keep_params=True)
        J = jnp.concatenate([cm.objective(model, theta0, gamma)[None], trace.objective])
        return J, jnp.concatenate([theta0[None], trace.params])

    return run, c["n_steps"]


def newton_tables(config: dict, log=progress.note) -> dict:
    """The study's tables `{convergence, curves, hessian_gap}` (see the module docstring);
    `config` as `DEFAULTS` (missing top-level keys taken from there)."""
    import pandas as pd

    config = {**DEFAULTS, **config}
    convergence, curves, gaps = [], [], []
    for case, family, seed, model, theta0, gamma, J_star in progress.track(
            problems(config), "chain_newton", unit="problems"):
        for method in METHODS:
            run, iterations = _runner(method, family, model, gamma, config)
            tm = timing.timed(run, theta0, repeats=config["repeats"],
                              what=f"chain_newton {case} {seed} {method}")
            J, params = (np.asarray(x) for x in tm.result)
            gap = (J_star - J) / abs(J_star)
            hit = first_hit(gap, config["target"])
            convergence.append({
                "case": case, "seed": seed, "method": method, "iterations": iterations,
                "reached": hit is not None,
                "iterations_to_target": float(hit) if hit is not None else math.nan,
                "final_gap": float(gap[-1]), "run_s": tm.median_seconds,
                "seconds_to_target": (tm.median_seconds * hit / iterations
                                      if hit is not None else math.nan),
                "compile_s": tm.compile_seconds})
            curves += [{"case": case, "seed": seed, "method": method, "iteration": k,
                        "gap": float(v)} for k, v in enumerate(gap)]
            if method in config["paths"]:
                along = jax.jit(jax.vmap(lambda th: hessian_gap(model, th, gamma)))(params)
                gaps += [{"case": case, "seed": seed, "path": method, "iteration": k,
                          "gap": float(gap[k]), "hessian_gap": float(h)}
                         for k, h in enumerate(np.asarray(along))]
        log(f"chain_newton: {case} seed {seed}: " + ", ".join(
            f"{r['method']} {r['iterations_to_target']:g}" for r in convergence[-len(METHODS):]))
    return {"convergence": pd.DataFrame(convergence), "curves": pd.DataFrame(curves),
            "hessian_gap": pd.DataFrame(gaps)}


def run(config: dict, log=progress.note) -> dict:
    """`dsorl run` entry: `newton_tables` as rows (also the `newton` section of the
    `blackwell` job)."""
    tables = newton_tables({k: config[k] for k in DEFAULTS if k in config}, log=log)
    return {"tables": {k: v.to_dict("records") for k, v in tables.items()}, "arrays": {},
            "seeds": {"seed": config["seed"]}}


def figures(tables, arrays, config, plt) -> dict:
    """`newton_figures` of the tables as read back (columns)."""
    import pandas as pd

    return newton_figures({k: pd.DataFrame(v) for k, v in tables.items()}, plt,
                          target=config.get("target", DEFAULTS["target"]))


def newton_figures(tables: dict, plt, *, target: float = DEFAULTS["target"]) -> dict:
    """`{hessian_gap, newton_convergence}`: per case (one panel each), the Hessian gap
    `||H_S - H_J||_F / ||H_J||_F` against iteration along each recorded path, and the
    relative gap to `J*` against iteration per method (log scale; dotted: `target`)."""
    from dsorl import plots

    figures = {}
    for name, table, series, value, ylabel in (
            ("hessian_gap", tables["hessian_gap"], "path", "hessian_gap",
             "||H_S - H_J||_F / ||H_J||_F"),
            ("newton_convergence", tables["curves"], "method", "gap",
             "relative gap (J* - J) / |J*|")):
        cases = list(dict.fromkeys(table["case"]))
        fig, axs = plots.facets(plt, len(cases))
        names = list(dict.fromkeys(table[series]))
        colours = dict(zip(names, plots.palette(len(names))))
        for ax, case in zip(axs, cases):
            for (seed, label), rows in table[table["case"] == case].groupby(["seed", series]):
                ax.semilogy(rows["iteration"], np.maximum(np.abs(rows[value]), 1e-17),
                            color=colours[label], alpha=0.8,
                            label=label.replace("_", " ") if seed == 0 else None)
            if value == "gap":
                ax.axhline(target, color="k", ls=":", lw=1)
            ax.set_title(case, fontsize=9)
            ax.set_xlabel("iteration")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        figures[name] = fig
    return figures
