"""Reproduction of Klein et al.'s experiment (arXiv 2411.04913): sampled DynPG against
REINFORCE on Sutton-extended, success probability against environment interactions.

For each `gamma`, each algorithm runs `runs` times in one jitted program (one key per run,
vmapped in chunks of `chunk` runs), each run for exactly `interactions` environment
interactions, one interaction per scan step (`dynpg.run_interactions`,
`pg.run_interactions`). A run succeeds within `c`
interactions when some policy it has output after at most `c` interactions has mean gap
`rho . (V* - V^pi) <= epsilon` over the initial states (the first hitting time). DynPG's
output is its newest policy (during epoch `h`, the one being trained); REINFORCE's is its
current policy.

- DynPG: one episode per step, the authors' adaptive schedule, parameters restarted at 0
  each epoch, as many epochs as the interaction budget can use.
- REINFORCE: loss `-sum_t log pi(a_t|s_t) G_t`, one episode per step, episodes capped at
  `ceil(1 / (1 - gamma))` steps, step size equal to DynPG's at horizon 6.

Speed: the same two algorithms written as a per-run NumPy loop (what a user would write
without JAX), run for the same interaction budget on `baseline_runs` runs in the same
process; the table reports the time per run of both and their ratio, with jit compile time
apart.

Table `summary`, one row per discount and algorithm: gamma, algorithm, runs;
success_at_budget, success_at_300, success_at_600 (fractions of runs); median_reached (at
least half the runs succeeded), median_first_success (interactions; NaN unless
median_reached); compile_s, run_s, jax_ms_per_run, numpy_ms_per_run, speedup_per_run;
numpy_success_at_budget, numpy_runs. Table `curves`: interactions and one success-fraction
column `<algorithm>_gamma<gamma>` per curve. Arrays: `first_success_*` per run (`inf`:
never within the budget, a hitting time) and `success_curve_*` at every interaction.
"""
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dsorl import progress, timing
from dsorl.algorithms import dynpg, pg
from dsorl.objectives import policy_objective
from dsorl.envs.dynpg import SUTTON_EXTENDED, sutton_extended, sutton_extended_reference
from dsorl.policies import tabular_softmax

DEFAULTS = {
    "gammas": [0.99, 0.9],
    "epsilon": 0.01,
    "interactions": 1200,
    "runs": 2000,
    "chunk": 250,
    "seed": 0,
    "baseline_runs": 20,
    "repeats": 1,
    "curve_table_every": 25,
    "output_dir": "benchmarks/results/dynpg_sutton",
}


def dynpg_epochs(gamma: float, budget: int) -> int:
    """Epochs a run can reach within `budget` interactions (each step uses at least one)."""
    hp = dynpg.HParams(gamma)
    counts = []
    while sum(counts) < budget:
        counts.append(int(dynpg.epoch_schedule(len(counts), hp, xp=np)[1]))
    return len(counts)


def first_success(initial, objective, j_star, eps):
    """Per run: the fewest interactions after which an output policy had gap <= eps
    (`inf` if none): 0 if the initial policy (objective `initial`) does, else `i + 1` for the
    first `objective[:, i]` (the policy after `i + 1` interactions) that does."""
    hit = j_star - objective <= eps
    first = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1.0, np.inf)
    return np.where(j_star - initial <= eps, 0.0, first)


def success_curve(first, budget):
    """Fraction of runs whose first success came within `c` interactions, c = 0..budget-1."""
    c = np.arange(budget)
    return (first[None, :] <= c[:, None]).mean(axis=1)


def _programs(env, gamma, config):
    mdp = env.mdp
    zeros = jnp.zeros(mdp.R.shape)
    budget = config["interactions"]
    sweeps = env.max_episode_length + 1  # exact values for this acyclic MDP
    epochs = dynpg_epochs(gamma, budget)
    dcfg = dynpg.Config(n_steps=epochs, estimator="reinforce",
                        episode_length=env.max_episode_length, evaluation_sweeps=sweeps)
    rcfg = pg.Config(n_steps=0, estimator="reinforce",
                     episode_length=env.max_episode_length, evaluation_sweeps=sweeps)
    step = float(pg.dynpg_horizon_step_size(gamma, SUTTON_EXTENDED["experiment"]
                                            ["reinforce_step_horizon"]))

    # runs vmapped in chunks of `chunk` (lax.map): each chunk's policy tables stay in cache
    # (2000 runs at once were 1.3-1.5x slower per run on this 2-core machine)
    def run_dynpg(keys):
        return lax.map(lambda k: dynpg.run_interactions(
            env, zeros, dynpg.HParams(gamma), k, budget=budget, config=dcfg)[1].objective,
            keys, batch_size=config["chunk"])

    def run_reinforce(keys):
        return lax.map(lambda k: pg.run_interactions(
            env, zeros, pg.HParams(gamma, step), k, budget=budget, config=rcfg)[1].objective,
            keys, batch_size=config["chunk"])

    initial = float(policy_objective(mdp, jnp.exp(_log_policy(mdp, zeros)), gamma, sweeps))
    return {"dynpg": run_dynpg, "reinforce": run_reinforce}, dict(
        epochs=epochs, reinforce_step_size=step, initial_objective=initial)


def _log_policy(mdp, theta):
    return tabular_softmax(*mdp.R.shape, mdp.action_mask).log_probs(theta)


def run(config: dict) -> dict:
    """Tables `summary` and `curves` (every `curve_table_every` interactions); arrays:
    first-success interaction counts per run and the full-resolution success curves."""
    jax.config.update("jax_enable_x64", True)
    env = sutton_extended()
    budget = config["interactions"]
    summary, curves, arrays = [], {"interactions": np.arange(budget)}, {}
    for gi, gamma in progress.track(list(enumerate(config["gammas"])), "dynpg_sutton",
                                    unit="discounts"):
        ref = sutton_extended_reference(gamma)
        programs, info = _programs(env, gamma, config)
        keys = jax.random.split(jax.random.key(config["seed"] + gi), config["runs"])
        for name, program in programs.items():
            tm = timing.timed(program, keys, repeats=config["repeats"], warmup=0,
                              what=f"dynpg_sutton {name} gamma={gamma:g} ({config['runs']} runs)")
            out, compile_s, run_s = tm.result, tm.compile_seconds, tm.median_seconds
            first = first_success(info["initial_objective"], np.asarray(out),
                                  ref["mean_v_star"], config["epsilon"])
            curve = success_curve(first, budget)
            base = BASELINES[name]
            rng = np.random.default_rng(config["seed"] + 1000 + gi)
            tm = timing.timed(lambda: [base(env, gamma, budget, config["epsilon"],
                                            ref["mean_v_star"], rng, info)
                                       for _ in range(config["baseline_runs"])],
                              jit=False, warmup=0, repeats=1)
            base_first, base_s = tm.result, tm.median_seconds / max(1, config["baseline_runs"])
            jax_per_run = run_s / config["runs"]
            summary.append({
                "gamma": gamma, "algorithm": name, "runs": config["runs"],
                "success_at_budget": float(curve[-1]),
                "success_at_300": float(curve[min(300, budget - 1)]),
                "success_at_600": float(curve[min(600, budget - 1)]),
                # interactions before the first success (NaN, median_reached False, when
                # more than half of the runs do not succeed within the budget)
                "median_reached": bool(np.isfinite(np.median(first))),
                "median_first_success": (float(np.median(first)) if np.isfinite(np.median(first))
                                         else float("nan")),
                "compile_s": compile_s, "run_s": run_s, "jax_ms_per_run": 1e3 * jax_per_run,
                "numpy_ms_per_run": 1e3 * base_s, "speedup_per_run": base_s / jax_per_run,
                "numpy_success_at_budget": float(np.mean(np.asarray(base_first) < budget)),
                "numpy_runs": config["baseline_runs"],
            })
            curves[f"{name}_gamma{gamma}"] = curve
            arrays[f"first_success_{name}_gamma{gamma}"] = first
            arrays[f"success_curve_{name}_gamma{gamma}"] = curve
    every = max(1, config["curve_table_every"])
    curve_rows = [{"interactions": int(c), **{k: float(v[c]) for k, v in curves.items()
                                              if k != "interactions"}}
                  for c in sorted(set(range(0, budget, every)) | {budget - 1})]
    return {"tables": {"summary": summary, "curves": curve_rows}, "arrays": arrays,
            "seeds": [config["seed"] + i for i in range(len(config["gammas"]))]}


# ----------------------------------------------------------------------------------------
# The per-run NumPy loops (the baseline a user would otherwise write), same algorithms.


def _numpy_env(env):
    mdp = env.mdp
    P, R, std, mask = (np.asarray(x) for x in (mdp.P, mdp.R, env.reward_std, mdp.allowed))
    starts = np.flatnonzero(np.asarray(mdp.rho) > 0)
    return P, R, std, mask, starts, np.asarray(env.terminal)


def _softmax_rows(theta, mask):
    z = np.where(mask, theta, -np.inf)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _mean_value(P, R, pi, gamma, starts, sweeps):
    Ppi = np.einsum("sa,sat->st", pi, P)
    rpi = (pi * R).sum(1)
    v = np.zeros(len(rpi))
    for _ in range(sweeps):
        v = rpi + gamma * Ppi @ v
    return v[starts].mean()


def _numpy_episode(P, R, std, terminal, policies, s, length, rng):
    """States, actions, rewards of one episode; `policies[t]` is `pi[S, A]` at step t."""
    out = []
    for t in range(length):
        if terminal[s]:
            break
        pi = policies[t]
        a = rng.choice(pi.shape[1], p=pi[s])
        r = R[s, a] + std[s, a] * rng.standard_normal()
        out.append((s, a, r))
        s = rng.choice(P.shape[2], p=P[s, a])
    return out


def numpy_dynpg(env, gamma, budget, eps, j_star, rng, info):
    """Sampled DynPG for `budget` interactions as a NumPy loop; returns the interactions
    used before the first epsilon-optimal policy (`inf` if none)."""
    P, R, std, mask, starts, terminal = _numpy_env(env)
    sweeps = env.max_episode_length + 1
    tail, used, first = [], 0, np.inf
    for h in range(info["epochs"]):
        eta, n = (float(x) for x in dynpg.epoch_schedule(h, dynpg.HParams(gamma), xp=np))
        theta = np.zeros(R.shape)
        for _ in range(int(n)):
            pi = _softmax_rows(theta, mask)
            if j_star - _mean_value(P, R, pi, gamma, starts, sweeps) <= eps:
                first = min(first, used)
            s0 = rng.choice(starts)
            ep = _numpy_episode(P, R, std, terminal, [pi] + tail[::-1], s0,
                                min(h + 1, env.max_episode_length), rng)
            if used + len(ep) > budget:  # the budget ends inside this episode
                return first
            ret = sum(gamma ** t * r for t, (_, _, r) in enumerate(ep))
            a0 = ep[0][1]
            grad = -pi[s0] * ret
            grad[a0] += ret
            theta[s0] += eta * grad
            used += len(ep)
        tail.append(_softmax_rows(theta, mask))
        if j_star - _mean_value(P, R, tail[-1], gamma, starts, sweeps) <= eps:
            first = min(first, used)
    return first


def numpy_reinforce(env, gamma, budget, eps, j_star, rng, info):
    """The REINFORCE baseline for `budget` interactions as a NumPy loop; returns the
    interactions used before the first epsilon-optimal policy (`inf` if none)."""
    P, R, std, mask, starts, terminal = _numpy_env(env)
    sweeps = env.max_episode_length + 1
    eta = info["reinforce_step_size"]
    cap = min(int(np.ceil(1 / (1 - gamma) - 1e-9)), env.max_episode_length)
    theta = np.zeros(R.shape)
    used, first = 0, np.inf
    while used < budget:
        pi = _softmax_rows(theta, mask)
        if j_star - _mean_value(P, R, pi, gamma, starts, sweeps) <= eps:
            first = min(first, used)
        ep = _numpy_episode(P, R, std, terminal, [pi] * cap, rng.choice(starts), cap, rng)
        if used + len(ep) > budget:  # the budget ends inside this episode
            break
        G = 0.0
        for s, a, r in reversed(ep):  # pi stays that of the step's start
            G = r + gamma * G
            grad = -pi[s] * G
            grad[a] += G
            theta[s] += eta * grad
        used += len(ep)
    return first


BASELINES = {"dynpg": numpy_dynpg, "reinforce": numpy_reinforce}


def figures(tables, arrays, config, plt) -> dict:
    """`success_curves`: the fraction of runs that have output an epsilon-optimal policy
    against environment interactions, DynPG and REINFORCE, one panel per discount."""
    from dsorl import plots

    gammas = config["gammas"]
    fig, axs = plots.facets(plt, len(gammas), ncols=len(gammas), width=5.0, sharey=True)
    x = np.arange(config["interactions"])
    for ax, gamma in zip(axs, gammas):
        for (name, label), colour in zip((("dynpg", "DynPG"), ("reinforce", "REINFORCE")),
                                         plots.palette(2)):
            key = f"success_curve_{name}_gamma{gamma}"
            if key in arrays:
                ax.plot(x, arrays[key], color=colour, label=label)
        ax.set_title(f"γ = {gamma:g}, ε = {config['epsilon']:g}", fontsize=9)
        ax.set_xlabel("environment interactions")
        ax.set_ylabel(f"success probability ({config['runs']} runs)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    handles, labels = axs[0].get_legend_handles_labels()
    plots.legend_outside(fig, handles, labels)
    fig.suptitle("dynpg_sutton: Sutton-extended, sampled DynPG against REINFORCE", fontsize=10)
    fig.tight_layout()
    return {"success_curves": fig}
