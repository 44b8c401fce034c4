"""DSO benchmark: optimisers on garnets, the sampled estimator's
variance, and an LMDP. Run with plots: `nice python benchmarks/dso.py`.

`garnet`: `seeds` random garnet MDPs (`dsorl.envs.garnet`: S = 100, A = 4, gamma = 0.99),
each marginalised under a tabular softmax policy (`dsorl.chain_models.marginal`, d = S A
parameters, start at the uniform policy). Every method runs all seeds in one jitted,
vmapped program (`lax.map` in chunks of `batch_size` members where memory asks for it):
Chain Iteration (exact surrogate, Adam inner loop), vanilla gradient ascent (exact Thm-1
gradient, SGD), natural gradient (chain Fisher, damped solve, SGD) and PCO (sampled,
clipped). Per method: iterations to reach a relative gap `(J* - J) / |J*| <= target`
(median and worst seed, and the share of seeds that reach it within the budget), the
final gap, compile time apart from the median run time of the whole batch, and the time
to target (iterations x run time per iteration). Baselines in the same run: policy
iteration (`dsorl.planning.policy_iteration`, the ground truth, timed on the same batch)
and vanilla gradient ascent (the ratio column).

`variance`: Algorithm 1's per-episode gradient variance (total, trace of the covariance)
with `v_hat = 0`, fitted on the previous batch, and exact, on the 3-state chain of
`dso_gradient_check` and on garnets (marginal chain at two discounts, augmented chain
`x = (s, a)`); the relative error of N-episode means; and the estimator's throughput
against a vectorised NumPy implementation of Algorithm 1 (checked equal first).

`lmdp`: the `dso_lmdp` job (gradient ascent, natural gradient, Chain Iteration and
Z-learning on a quadratic-cost random-walk LMDP).

Table `garnet`, one row per method (NaN: not reached or does not apply):
  method; iterations (its budget; NaN for policy iteration); seeds, seeds_reached (how
  many reached the target), all_reached; median_iterations_to_target (over the seeds that
  reached it), max_iterations_to_target (NaN unless all_reached); median_final_gap,
  max_final_gap; run_s (whole batch, median), ms_per_iteration, s_to_target_all_seeds,
  compile_s; speedup_vs_gradient_ascent (speedup_is_lower_bound when gradient ascent
  missed the target), slowdown_vs_policy_iteration.
Table `variance` (see `dso_gradient_check.summarise`: case, gamma, parameters, baseline,
variance and relative-error columns) and `estimator_speed` (episodes per second of dsorl
and NumPy); table `lmdp` as in `dso_lmdp`.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from dsorl import chain_models as cm
from dsorl import progress, timing
from dsorl.algorithms import dso as alg
from dsorl.envs import garnet
from dsorl.estimators import dso as est
from dsorl.jobs import dso_gradient_check, dso_lmdp
from dsorl.jobs.dso_lmdp import first_hit
from dsorl.planning import policy_iteration
from dsorl.policies import tabular_softmax

DEFAULTS = {
    "seed": 0,
    "parts": ["garnet", "variance", "lmdp"],
    "repeats": 2,
    "garnet": {"n_states": 100, "n_actions": 4, "branching": 5, "gamma": 0.99, "seeds": 64,
               "target": 1.0e-6},
    "chain_iteration": {"n_steps": 30, "inner_steps": 200, "step_size": 0.1,
                        "batch_size": 64},
    "gradient_ascent": {"n_steps": 3000, "step_size": 10.0, "batch_size": 64},
    "natural_gradient": {"n_steps": 100, "step_size": 30.0, "damping": 1.0e-6,
                         "batch_size": 16},
    "pco": {"n_steps": 300, "n_episodes": 32, "horizon": 300, "epochs": 4,
            "step_size": 0.05, "clip": 0.2, "batch_size": 64},
    "variance": {"episodes": 1000, "repeats": 4, "gammas": [0.9, 0.99],
                 "augmented_states": 20, "truncation": 1.0e-6, "timing_episodes": 1000},
    "lmdp": {k: v for k, v in dso_lmdp.DEFAULTS.items() if k != "output_dir"},
    "output_dir": "benchmarks/results/dso",
}


def run(config: dict, log=progress.note) -> dict:
    tables, arrays = {}, {}
    if "garnet" in config["parts"]:
        tables["garnet"], arrays["garnet"] = garnet_part(config, log)
    if "variance" in config["parts"]:
        tables["variance"], tables["estimator_speed"] = variance_part(config, log)
    if "lmdp" in config["parts"]:
        result = dso_lmdp.run(config["lmdp"])
        tables["lmdp"] = result["tables"]["lmdp"]
        arrays["lmdp"] = result["arrays"]
    flat = {f"{part}/{name}": value for part, group in arrays.items()
            for name, value in group.items()}
    return {"tables": tables, "arrays": flat, "seeds": [config["seed"]]}


# ----------------------------------------------------------------------------------------
# Garnets


def garnet_part(config, log):
    g = config["garnet"]
    S, A, gamma = g["n_states"], g["n_actions"], g["gamma"]
    keys = jax.random.split(jax.random.key(config["seed"]), g["seeds"])
    mdps = jax.vmap(lambda k: garnet(k, S, A, g["branching"]))(keys)
    policy = tabular_softmax(S, A)
    theta0 = jnp.zeros((S, A))
    reps = config["repeats"]

    optimum_fn = lambda mdps: jax.vmap(lambda m: m.rho @ policy_iteration(m, gamma).value)(mdps)
    tm = timing.timed(optimum_fn, mdps, repeats=reps)
    J_star, pi_compile, pi_run = tm.result, tm.compile_seconds, tm.median_seconds
    J_star = np.asarray(J_star)
    log(f"garnet: policy iteration on {g['seeds']} MDPs: {pi_run:.3f} s (compile {pi_compile:.1f} s)")

    def batched(one, batch_size):
        return lambda mdps, keys: jax.lax.map(lambda a: one(*a), (mdps, keys),
                                              batch_size=batch_size)

    def curve(model, trace_objective):
        """`J(theta_0), J(theta_1), ..., J(theta_K)`: index = steps taken."""
        return jnp.concatenate([cm.objective(model, theta0, gamma)[None], trace_objective])

    c = config["chain_iteration"]

    def chain_iteration(mdp, key):
        model = cm.marginal(mdp, policy)
        _, trace = alg.chain_iteration(
            model, theta0, alg.ChainIterationHParams(gamma, c["step_size"]), key,
            config=alg.ChainIterationConfig(n_steps=c["n_steps"], inner_steps=c["inner_steps"]))
        return curve(model, trace.objective)

    a = config["gradient_ascent"]

    def gradient_ascent(mdp, key):
        model = cm.marginal(mdp, policy)
        _, trace = alg.gradient_ascent(model, theta0, alg.AscentHParams(gamma, a["step_size"]),
                                       key, config=alg.AscentConfig(n_steps=a["n_steps"]))
        return curve(model, trace.objective)

    n = config["natural_gradient"]

    def natural_gradient(mdp, key):
        model = cm.marginal(mdp, policy)
        _, trace = alg.gradient_ascent(
            model, theta0, alg.AscentHParams(gamma, n["step_size"], n["damping"]), key,
            config=alg.AscentConfig(n_steps=n["n_steps"], natural=True, pseudo_inverse=False))
        return curve(model, trace.objective)

    p = config["pco"]

    def pco(mdp, key):
        model = cm.marginal(mdp, policy)
        _, trace = alg.pco(model, theta0, alg.PCOHParams(gamma, p["step_size"], p["clip"]), key,
                           config=alg.PCOConfig(n_steps=p["n_steps"], n_episodes=p["n_episodes"],
                                                horizon=p["horizon"], epochs=p["epochs"]))
        return curve(model, trace.objective)

    methods = {"gradient_ascent": (gradient_ascent, a), "chain_iteration": (chain_iteration, c),
               "natural_gradient": (natural_gradient, n), "pco": (pco, p)}
    rows, curves = [], {"optimum": J_star}
    for name, (one, settings) in progress.track(methods.items(), "dso garnet", unit="methods"):
        tm = timing.timed(batched(one, settings["batch_size"]), mdps, keys, repeats=reps,
                          what=f"dso garnet {name} ({g['seeds']} MDPs)")
        J, compile_s, run_s = tm.result, tm.compile_seconds, tm.median_seconds
        gaps = (J_star[:, None] - np.asarray(J)) / np.abs(J_star)[:, None]
        curves[name] = gaps
        K = settings["n_steps"]
        hits = [first_hit(row, g["target"]) for row in gaps]
        reached = np.array([h for h in hits if h is not None])
        per_iteration = run_s / K
        rows.append({
            "method": name,
            "iterations": K,
            "seeds": len(hits), "seeds_reached": len(reached),
            "all_reached": len(reached) == len(hits),
            "median_iterations_to_target": float(np.median(reached)) if reached.size else math.nan,
            "max_iterations_to_target": (float(reached.max()) if len(reached) == len(hits)
                                         else math.nan),
            "median_final_gap": float(np.median(gaps[:, -1])),
            "max_final_gap": float(np.max(gaps[:, -1])),
            "run_s": run_s,
            "ms_per_iteration": 1e3 * per_iteration,
            "s_to_target_all_seeds": (per_iteration * reached.max()
                                      if len(reached) == len(hits) else math.nan),
            "compile_s": compile_s,
        })
        log(f"garnet: {name}: {len(reached)}/{len(hits)} seeds reached, median final gap"
            f" {rows[-1]['median_final_gap']:.2e}, {run_s:.2f} s")
    rows.append({"method": "policy_iteration (ground truth)", "iterations": math.nan,
                 "seeds": g["seeds"], "seeds_reached": g["seeds"], "all_reached": True,
                 "median_iterations_to_target": math.nan,
                 "max_iterations_to_target": math.nan, "median_final_gap": 0.0,
                 "max_final_gap": 0.0,
                 "run_s": pi_run, "ms_per_iteration": math.nan, "s_to_target_all_seeds": pi_run,
                 "compile_s": pi_compile})
    # speed-up over vanilla gradient ascent in time to target (all seeds); when gradient
    # ascent misses the target within its budget, its whole run time stands in and the
    # speed-up is a lower bound
    baseline = next(r for r in rows if r["method"] == "gradient_ascent")
    reference = baseline["s_to_target_all_seeds"]
    lower_bound = math.isnan(reference)
    reference = baseline["run_s"] if lower_bound else reference
    for r in rows:
        r["speedup_vs_gradient_ascent"] = reference / r["s_to_target_all_seeds"]
        r["speedup_is_lower_bound"] = lower_bound and r is not baseline
        r["slowdown_vs_policy_iteration"] = r["s_to_target_all_seeds"] / pi_run
    return rows, curves


# ----------------------------------------------------------------------------------------
# Variance of Algorithm 1


def variance_part(config, log):
    v = config["variance"]
    rows = []
    # the 3-state chain with the known gradient
    model = dso_gradient_check.exit_chain()
    theta = jnp.zeros(2)
    _, exact = dso_gradient_check.closed_form([0.0, 0.0])
    keys = jax.random.split(jax.random.key(config["seed"]), v["repeats"])
    study = jax.jit(lambda k: dso_gradient_check.baseline_study(
        model, theta, 1.0, 100, v["episodes"], k, cm.value(model, theta, 1.0)))
    for row in dso_gradient_check.summarise(study(keys), exact):
        rows.append({"case": "3-state exit chain", "gamma": 1.0, "parameters": 2, **row})
    # garnets: marginal chain (S states) and augmented chain (x = (s, a))
    g = config["garnet"]
    S, A = g["n_states"], g["n_actions"]
    cases = [(f"garnet S={S} marginal", S, gamma, "marginal") for gamma in v["gammas"]]
    small = v["augmented_states"]
    cases.append((f"garnet S={small} augmented", small, v["gammas"][0], "augmented"))
    speed = []
    for label, n_states, gamma, kind in progress.track(cases, "dso variance", unit="cases"):
        mdp = garnet(jax.random.key(config["seed"] + 1), n_states, A, g["branching"])
        policy = tabular_softmax(n_states, A)
        model = (cm.marginal if kind == "marginal" else cm.augmented)(mdp, policy)
        theta = jax.random.normal(jax.random.key(config["seed"] + 2), (n_states, A))
        horizon = int(math.ceil(math.log(v["truncation"]) / math.log(gamma)))
        exact_grad = np.asarray(cm.gradient(model, theta, gamma)).ravel()
        value = cm.value(model, theta, gamma)
        study = jax.jit(lambda k: dso_gradient_check.baseline_study(
            model, theta, gamma, horizon, v["episodes"], k, value))
        for row in dso_gradient_check.summarise(study(keys), exact_grad):
            rows.append({"case": label, "gamma": gamma, "parameters": exact_grad.size, **row})
        log(f"variance: {label}, gamma = {gamma}: done")
        if kind == "marginal" and gamma == v["gammas"][0]:
            speed = estimator_speed(mdp, policy, model, theta, gamma, horizon,
                                    v["timing_episodes"], config)
    return rows, speed


def numpy_algorithm_1(P, R, rho, pi, states, gamma):
    """Algorithm 1 for the marginal chain of a tabular softmax policy, in NumPy, vectorised
    over episodes (no baseline): `sum_t gamma^t [grad r(x_t) + grad log P(x_{t+1}|x_t) G_t]`
    with `d r(s)/d theta[s, a] = pi(a|s) (R[s, a] - r(s))` and
    `d log P(s'|s)/d theta[s, a] = pi(a|s) (P[s, a, s'] / P(s'|s) - 1)`."""
    P_pi = np.einsum("sa,sat->st", pi, P)
    r = (pi * R).sum(1)
    x, x_next = states[:, :-1], states[:, 1:]
    N, T = x.shape
    G = np.zeros((N, T + 1))
    for t in range(T - 1, -1, -1):
        G[:, t] = r[x[:, t]] + gamma * G[:, t + 1]
    discount = gamma ** np.arange(T)
    grad = np.zeros_like(pi)
    weight_r = np.zeros(len(r))
    np.add.at(weight_r, x, np.broadcast_to(discount, x.shape))
    grad += weight_r[:, None] * pi * (R - r[:, None])
    ratio = P[x, :, x_next] / P_pi[x, x_next][..., None]  # [N, T, A]
    np.add.at(grad, x, (discount * G[:, :T])[..., None] * pi[x] * (ratio - 1))
    return grad / N


def estimator_speed(mdp, policy, model, theta, gamma, horizon, n_episodes, config):
    """Algorithm 1 (sampling + estimate, N episodes) in dsorl vs the NumPy version."""
    key = jax.random.key(config["seed"] + 3)
    X = mdp.n_states

    def dsorl_estimate(key):
        states = est.sample_episodes(key, model, theta, horizon, n_episodes)
        return states, est.backward_accumulation(model, theta, gamma, states, jnp.zeros(X))

    tm = timing.timed(dsorl_estimate, key, repeats=config["repeats"] + 1)
    (states, grad), compile_s, run_s = tm.result, tm.compile_seconds, tm.median_seconds
    P, R, rho, pi = (np.asarray(x) for x in (mdp.P, mdp.R, mdp.rho, policy(theta)))
    states = np.asarray(states)
    reference = numpy_algorithm_1(P, R, rho, pi, states, gamma)
    np.testing.assert_allclose(grad, reference, rtol=1e-9, atol=1e-12)

    def numpy_estimate(rng):  # the sampling a NumPy user writes: inverse CDF per step
        P_pi = np.einsum("sa,sat->st", pi, P)
        cdf = np.cumsum(P_pi, axis=1)
        s = rng.choice(X, size=n_episodes, p=rho)
        out = np.empty((n_episodes, horizon + 1), int)
        out[:, 0] = s
        for t in range(horizon):
            s = np.minimum((rng.random(n_episodes)[:, None] > cdf[s]).sum(1), X - 1)
            out[:, t + 1] = s
        return numpy_algorithm_1(P, R, rho, pi, out, gamma)

    rng = np.random.default_rng(config["seed"])
    numpy_s = timing.timed(numpy_estimate, rng, jit=False,
                           repeats=config["repeats"] + 1).median_seconds
    return [{"estimator": "dsorl (jit: sample + Algorithm 1)", "episodes": n_episodes,
             "horizon": horizon, "states": X, "seconds": run_s, "compile_s": compile_s,
             "episodes_per_s": n_episodes / run_s, "speedup_vs_numpy": numpy_s / run_s},
            {"estimator": "NumPy (vectorised over episodes)", "episodes": n_episodes,
             "horizon": horizon, "states": X, "seconds": numpy_s, "compile_s": 0.0,
             "episodes_per_s": n_episodes / numpy_s, "speedup_vs_numpy": 1.0}]


def figures(tables, arrays, config, plt) -> dict:
    """`garnet_convergence`: the relative gap of each method against iterations (median and
    10–90% band over the garnets, log-log); `lmdp_convergence`: see `dso_lmdp.lmdp_figure`."""
    from dsorl import plots

    out = {}
    methods = [k[len("garnet/"):] for k in arrays if k.startswith("garnet/")
               and k != "garnet/optimum"]
    if methods:
        g = config["garnet"]
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for name, colour in zip(methods, plots.palette(len(methods))):
            gaps = np.maximum(np.asarray(arrays[f"garnet/{name}"], float), 1e-16)
            k = np.arange(1, gaps.shape[1] + 1)
            ax.loglog(k, np.median(gaps, 0), color=colour, label=name.replace("_", " "))
            ax.fill_between(k, np.quantile(gaps, 0.1, 0), np.quantile(gaps, 0.9, 0),
                            color=colour, alpha=0.2, lw=0)
        ax.axhline(g["target"], color="k", ls=":", lw=1, label=f"target {g['target']:g}")
        ax.set_xlabel("iteration + 1")
        ax.set_ylabel("relative gap (J* - J) / |J*|")
        ax.set_title(f"{g['seeds']} garnets (S={g['n_states']}, A={g['n_actions']},"
                     f" branching {g['branching']}, γ={g['gamma']:g}): median and 10–90%",
                     fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        plots.legend_outside(fig, handles, labels)
        fig.tight_layout()
        out["garnet_convergence"] = fig
    if any(k.startswith("lmdp/") for k in arrays):
        out["lmdp_convergence"] = dso_lmdp.lmdp_figure(arrays, config["lmdp"], plt, prefix="lmdp/")
    return out
