"""DSO on an LMDP: gradient ascent vs natural gradient vs Chain Iteration vs Z-learning.

Todorov's third suggested experiment (arXiv 2506.08340): quadratic state cost, Gaussian
passive dynamics. Here a first-exit random walk on a grid of `[-1, 1]`
(`dsorl.envs.lmdp.random_walk_lmdp`: goal `x = 0`, cost `cost_weight * x^2`). The
optimum is exact (`z` by one linear solve, `J* = P0 . log z`); every method is judged by
the relative gap `(J* - J) / |J*|` of the chain it holds after each iteration:

- `gradient_ascent` (Adam) and `natural_gradient` (chain Fisher, SGD): exact DSO
  gradients of `u_theta ∝ p exp(theta[x'])` (`theta[X]`; optimum `theta = log z`);
- `chain_iteration`: exact surrogate, Adam inner loop, tabular controls
  `u_theta ∝ p exp(theta[x, x'])`, and the desirability controls with a proximal term;
- `z_learning` (on-chain, samples from `p`), `z_learning_off_chain` (samples from a
  behaviour chain: half `p`, half uniform), `z_learning_greedy` (samples from `u(z_k)`):
  the gap of the chain `u(z_k) ∝ p z_k`. One Z step draws one successor per state
  (`X - 1` transitions).

Each method is one jitted program; the table reports its compile time apart from the
median wall time of `repeats` runs.

Table `lmdp`, one row per method (NaN: the target was not reached, or no samples):
  method; iterations (its budget); final_gap; reached (gap <= target within the budget);
  iterations_to_target; samples_to_target (Z-learning: transitions drawn); run_s
  (median), seconds_to_target, compile_s; first_step_gap (the gap after one iteration).
Arrays: the gap curve of each method (`[iterations + 1]`) and `optimum` (J*).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dsorl import chain_models as cm
from dsorl import progress, timing
from dsorl.algorithms import dso as alg
from dsorl.algorithms import lmdp as lm
from dsorl.envs.lmdp import random_walk_lmdp

DEFAULTS = {
    "n_states": 51,
    "noise": 0.1,
    "cost_weight": 4.0,
    "seed": 0,
    "target": 1.0e-6,
    "repeats": 3,
    "gradient_ascent": {"n_steps": 3000, "step_size": 0.3},
    "natural_gradient": {"n_steps": 200, "step_size": 0.3, "damping": 1.0e-8},
    "chain_iteration": {"n_steps": 30, "inner_steps": 1000, "step_size": 0.1,
                        "proximal": 1.0},
    "z_learning": {"n_steps": 20000, "step_size": 10.0, "behaviour_mix": 0.5},
    "output_dir": "results/dso_lmdp",
}


def first_hit(gaps: np.ndarray, target: float):
    """First index with `gap <= target` (None if never)."""
    hits = np.flatnonzero(gaps <= target)
    return int(hits[0]) if hits.size else None


def run(config: dict) -> dict:
    """Returns the summary table and the gap curves (`arrays`)."""
    lmdp = random_walk_lmdp(config["n_states"], noise=config["noise"],
                            cost_weight=config["cost_weight"])
    X = lmdp.n_states
    z = lm.first_exit_desirability(lmdp)
    J_star = float(lmdp.initial @ jnp.log(z))
    by_desirability, tabular = cm.lmdp_chain(lmdp), cm.lmdp_chain(lmdp, "tabular")
    key = jax.random.key(config["seed"])
    reps = config["repeats"]
    ga, ng, ci, zl = (config[k] for k in ("gradient_ascent", "natural_gradient",
                                          "chain_iteration", "z_learning"))

    def curve(model, theta0, trace_objective):
        """`J(theta_0), J(theta_1), ..., J(theta_K)`: index = steps taken."""
        return jnp.concatenate([cm.objective(model, theta0, 1.0)[None], trace_objective])

    def ascent(theta0, natural):
        c = ng if natural else ga
        hparams = alg.AscentHParams(1.0, c["step_size"], c.get("damping", 0.0))
        settings = (alg.AscentConfig(n_steps=c["n_steps"], natural=True) if natural else
                    alg.AscentConfig(n_steps=c["n_steps"], optimizer=optax.adam))
        _, trace = alg.gradient_ascent(by_desirability, theta0, hparams, config=settings)
        return curve(by_desirability, theta0, trace.objective)

    def chain_iteration(theta0, model, proximal):
        settings = alg.ChainIterationConfig(n_steps=ci["n_steps"], inner_steps=ci["inner_steps"])
        hparams = alg.ChainIterationHParams(1.0, ci["step_size"], proximal)
        _, trace = alg.chain_iteration(model, theta0, hparams, config=settings)
        return curve(model, theta0, trace.objective)

    def z_learning(key, behaviour, greedy):
        settings = lm.ZLearningConfig(n_steps=zl["n_steps"], greedy=greedy)
        hparams = lm.ZLearningHParams(zl["step_size"], behaviour)
        _, trace = lm.z_learning(lmdp, jnp.ones(X), hparams, key, config=settings,
                                 keep_params=True)
        return jnp.concatenate([jnp.ones((1, X)), trace.params])

    @jax.jit
    def chain_values(estimates):
        """J of the chains u(z_k) ∝ p z_k: the DSO objective at theta = log z_k (not timed)."""
        return jax.lax.map(lambda zk: cm.objective(by_desirability, jnp.log(zk), 1.0),
                           estimates, batch_size=1000)

    mix = zl["behaviour_mix"]
    behaviour = (1 - mix) * lmdp.passive + mix / X
    cases = {
        "gradient_ascent": (lambda t: ascent(t, False), (jnp.zeros(X),), ga["n_steps"], 0),
        "natural_gradient": (lambda t: ascent(t, True), (jnp.zeros(X),), ng["n_steps"], 0),
        "chain_iteration_tabular": (lambda t: chain_iteration(t, tabular, 0.0),
                                    (jnp.zeros((X, X)),), ci["n_steps"], 0),
        "chain_iteration_proximal": (lambda t: chain_iteration(t, by_desirability,
                                                               ci["proximal"]),
                                     (jnp.zeros(X),), ci["n_steps"], 0),
        "z_learning": (lambda k: z_learning(k, None, False), (key,), zl["n_steps"], X - 1),
        "z_learning_off_chain": (lambda k: z_learning(k, behaviour, False), (key,),
                                 zl["n_steps"], X - 1),
        "z_learning_greedy": (lambda k: z_learning(k, None, True), (key,), zl["n_steps"],
                              X - 1),
    }
    rows, arrays = [], {"optimum": np.asarray(J_star)}
    for name, (fn, args, iterations, samples_per_iteration) in progress.track(
            cases.items(), "dso_lmdp", unit="methods"):
        tm = timing.timed(fn, *args, repeats=reps, what=f"dso_lmdp {name}")
        J, compile_s, run_s = tm.result, tm.compile_seconds, tm.median_seconds
        if name.startswith("z_learning"):
            J = chain_values(J)
        gaps = (J_star - np.asarray(J)) / abs(J_star)
        hit = first_hit(gaps, config["target"])
        arrays[name] = gaps
        rows.append({
            "method": name,
            "iterations": iterations,
            "final_gap": float(gaps[-1]),
            "reached": hit is not None,
            "iterations_to_target": float(hit) if hit is not None else float("nan"),
            "samples_to_target": (float(hit * samples_per_iteration) if hit is not None
                                  and samples_per_iteration else float("nan")),
            "run_s": run_s,
            "seconds_to_target": run_s * hit / iterations if hit is not None else float("nan"),
            "compile_s": compile_s,
            "first_step_gap": float(gaps[1]),
        })
    return {"tables": {"lmdp": rows}, "arrays": arrays, "seeds": [config["seed"]]}


def lmdp_figure(arrays, config, plt, prefix=""):
    """The relative gap `|J* - J| / |J*|` of each method (log-log): exact DSO methods against
    iterations, Z-learning against sampled transitions (`X - 1` per step)."""
    from dsorl import plots

    names = [k[len(prefix):] for k in arrays if k.startswith(prefix) and k != f"{prefix}optimum"]
    groups = [[n for n in names if not n.startswith("z_learning")],
              [n for n in names if n.startswith("z_learning")]]
    groups = [g for g in groups if g]
    fig, axs = plots.facets(plt, len(groups), ncols=len(groups), width=5.0)
    per_step = config["n_states"] - 1
    for ax, group in zip(axs, groups):
        for name, colour in zip(group, plots.palette(len(group))):
            gaps = np.maximum(np.abs(np.asarray(arrays[prefix + name], float)), 1e-16)
            k = np.arange(len(gaps))
            x = 1 + k * per_step if name.startswith("z_learning") else 1 + k
            ax.loglog(x, gaps, color=colour, label=name.replace("_", " "))
        ax.axhline(config["target"], color="k", ls=":", lw=1)
        z = group[0].startswith("z_learning")
        ax.set_xlabel("sampled transitions + 1" if z else "iteration + 1")
        ax.set_ylabel("relative gap |J* - J| / |J*|")
        ax.set_title("Z-learning (gap of the chain u(z_k))" if z else "exact DSO methods",
                     fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(f"first-exit LMDP: X={config['n_states']} states, noise {config['noise']:g},"
                 f" cost {config['cost_weight']:g} x^2 (dotted: target {config['target']:g})",
                 fontsize=10)
    fig.tight_layout()
    return fig


def figures(tables, arrays, config, plt) -> dict:
    """`lmdp_convergence`: see `lmdp_figure`."""
    return {"lmdp_convergence": lmdp_figure(arrays, config, plt)}
