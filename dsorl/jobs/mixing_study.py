"""Mixing-time regularisation study (issue 14 item 4): measures, and the sampled nBw method.

Two questions, one table each (`mixing_tables(config)`; figure: `plot_tradeoff`).

1. **Which smooth measure tracks mixing?** (`correlation`). For chains of three families
   (dense random rows, sparse lazy random chains, and the chains that sigmoid policies induce
   on `dsorl.envs.chains.coupled_clusters` over a log grid of couplings), the Spearman and
   Kendall rank correlations of each measure of `dsorl.mixing.MEASURES` (Kemeny's constant,
   the stationary hitting time of state 0, `||H||_F`) with `dsorl.markov.mixing_time` at
   `mixing_eps`, of the whole matrix and of the row of state 0.
2. **Does regularising by a measure reduce the bias of the sampled bias gradient, and at
   what cost?** (`tradeoff`, per run: `runs`). For each environment and each weight
   lambda of `lambdas`, Algorithm 2 of Dewanto & Gallagher (`dsorl.algorithms.nbw`,
   regularised by `measure`: objectives minus lambda M) runs from every start of `starts`
   with `seeds` sampling keys at the fixed `episode_length` T. At the iterates it reaches,
   the **gradient-estimation bias** is `E[g_hat] - grad h(s0)`, `g_hat` the per-episode
   bias-gradient estimator (`dsorl.estimators.average_reward`, score post-mixing form):
   exactly (`estimator_bias`, the finite-T expectation from the state laws `P^t(s0, .)`),
   and by Monte Carlo (`estimate_episodes` fresh episodes at every iterate of the run: the
   sample mean minus the exact gradient, with its standard error). Both at the final
   iterate and averaged over the run's iterates (a run that converges to a nearly
   deterministic policy has a vanishing gradient and estimator there, so the path average
   is the informative one). The cost is the exact final bias `h(s0)` (and gain) against
   lambda = 0 and against the nBw optimum (enumeration).

Exactly, with `rho_t = P^t(s0, .)`, `u(s) = E_a[q_b psi]`, `post(s) = E_a[q_w psi]` and the
Jacobian `J[s] = grad h(s)`, the estimator's bias is

    E[g_hat] - grad h(s0) = (rho_T - p*) . (post - J - T u)

(unrolling `grad h = u - grad g 1 + P grad h` T times, and `p* . (post - J) = 0`, Thm 3.2):
it vanishes when `rho_T = p*` and is of order `T ||rho_T - p*||_1`, which a faster mixing
chain makes smaller at the same T.

Config keys (`DEFAULTS`):

* `envs`: list of environment specs, a registered name (`"B2"`) or `{"name": ..., **kwargs}`
  (`{"name": "coupled_clusters", "n": 3, "coupling": 0.02}`); each is built by
  `dsorl.envs.make`. nBw environments get the paper's barrier settings
  (`dsorl.envs.nbw.paper_hyperparams`), others `nbw.HParams()`; `hparams` overrides both.
* `measure` (one of `MEASURES`), `mixing_state` (reference of "hitting_time", else None).
* `mixing_gradient`: "exact" (the measure's exact value and gradient) or "sampled" (Kemeny's
  constant and its gradient from episodes from every state, `dsorl.estimators.mixing`;
  `measure` "kemeny" only): `nbw.Config.mixing_gradient`.
* `lambdas`: the weights (>= 0, finite; 0 is the unregularised method and the reference).
* `starts`: initial sigmoid parameters `[[w_x, w_y], ...]`; `seeds`: sampling keys per
  start; `seed`: the root key.
* `n_steps`, `episode_length` T, `n_episodes` (per iteration), `line_search` ("critic": the
  paper's exact objective values, so only the gradients are sampled; or "sampled"),
  `state` s0: Algorithm 2's settings (`nbw.Config`).
* `estimate_episodes`: episodes of the Monte Carlo check at the final parameters.
* `correlation`: `{"chains": per family, "n_states", "mixing_eps", "couplings": [low, high],
  "seed"}`; `correlation: None` skips table 1.

Tables (pandas DataFrames):

* `correlation`: family, measure, chains, spearman (vs full-matrix mixing time),
  spearman_s0 (vs the mixing time of state 0's row), kendall, mixing_time_min/max.
* `runs`: env, lam, start, seed, final gain/bias (exact), measure at the end, mixing time
  of s0 at the end, grad_norm `||grad h(s0)||`, grad_bias_exact, grad_bias_mc (norm of the
  MC mean minus the exact gradient), grad_bias_mc_se (delta method), mc_noise
  (`sqrt(tr Cov / N)`, the norm the MC difference shows at zero bias), all at the final
  iterate; path_grad_bias, path_grad_bias_mc (+ _se) and path_mc_noise: the same averaged
  over the run's `n_steps` iterates (each with its own `estimate_episodes` episodes).
  Reading the MC columns: the norm of a noisy mean is biased upwards by about `mc_noise`, so
  an MC norm below the noise floor does not resolve the bias; and near a deterministic
  policy the per-episode estimator is heavy-tailed (rare actions with large scores), so a
  sample that saw none of them understates both the mean and its standard error (measured:
  coupled_clusters, coupling 0.02, lambda = 1: path MC 2.5e-5 against exact 5.7e-6 with a
  standard error of 4e-10). The exact columns are the reference.
* `tradeoff`: per (env, lam): means over runs (with standard errors `_se` over runs for
  final_gain and final_bias; grad_bias_mc_se the sampling standard error of the mean),
  bias_cost = final_bias(lambda = 0) - final_bias, optimal_gain, optimal_bias.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from dsorl import envs, policies, progress
from dsorl.algorithms import nbw
from dsorl.bias_gradient import bias_gradient
from dsorl.config import Free
from dsorl.envs.chains import coupled_clusters
from dsorl.estimators.average_reward import oracle_critic, sample_estimates
from dsorl.fisher import score_table
from dsorl.markov import Chain, bias, gain, mixing_time
from dsorl.mdp import induced_chain
from dsorl.mixing import MEASURES, check_measure, mixing_measure
from dsorl.planning import nearly_blackwell_optimal

__all__ = ["DEFAULTS", "run", "figures", "mixing_tables", "plot_tradeoff", "tradeoff_figure", "estimator_bias",
           "sampled_estimator_bias", "correlation_table", "tradeoff_tables"]

DEFAULTS = {
    "envs": [*envs.NBW_NAMES, {"name": "coupled_clusters", "n": 3, "coupling": 0.02},
             {"name": "coupled_clusters", "n": 3, "coupling": 0.1}],
    "measure": "kemeny",
    "mixing_state": None,
    "mixing_gradient": "exact",
    "lambdas": [0.0, 0.003, 0.01, 0.03, 0.05, 0.1, 0.3, 1.0, 3.0],
    "starts": [[0.0, 0.0], [1.0, -2.0], [-1.0, 2.0], [-0.5, -0.5]],
    "seeds": 2,
    "seed": 0,
    "n_steps": 30,
    "episode_length": 4,
    "n_episodes": 16,
    "line_search": "critic",
    "state": 0,
    "hparams": Free(),  # nbw.HParams fields replacing the defaults, checked by nbw
    "estimate_episodes": 500,
    "correlation": {"chains": 200, "n_states": 6, "mixing_eps": 1e-3,
                    "couplings": [0.002, 0.5], "seed": 0},
    "output_dir": "results/mixing_study",
}


def run(config: dict) -> dict:
    """`dsorl run` entry: `mixing_tables` as rows (also the `mixing` section of the
    `blackwell` job)."""
    tables = mixing_tables({k: config[k] for k in DEFAULTS if k in config})
    return {"tables": {k: v.to_dict("records") for k, v in tables.items()}, "arrays": {},
            "seeds": {"seed": config["seed"]}}


def figures(tables, arrays, config, plt) -> dict:
    """`{"tradeoff": tradeoff_figure}`."""
    return {"tradeoff": tradeoff_figure(tables, plt)}


# ----------------------------------------------------------------------------------------
# The estimator's bias, exact and sampled


def estimator_bias(mdp, policy, params, state, episode_length: int):
    """`E[g_hat] - grad h(state)`, `[d]`: the exact bias of the per-episode bias-gradient
    estimator at episode length T (`sample_estimates`, post-mixing form "score").

    `E[g_hat] = sum_{t<T} rho_t . u - T rho_T . u + rho_T . post` (module docstring) from
    the state laws `rho_t = P^t(state, .)` (a `lax.scan` of T vector-matrix products) and the
    exact critic; `grad h(state)` by autodiff (`dsorl.bias_gradient.bias_gradient`). The
    baseline does not change the expectation (`E_a[psi] = 0`). Jittable, `vmap`pable.
    """
    pi = policy.probs(params)
    critic = oracle_critic(mdp, policy, params)
    psi = score_table(policy, params)
    u = jnp.einsum("sa,sa,sad->sd", pi, critic.q_bias, psi)
    post = jnp.einsum("sa,sa,sad->sd", pi, critic.q_offset, psi)
    P = induced_chain(mdp, pi).P
    rho0 = jnp.zeros(mdp.n_states, P.dtype).at[state].set(1)

    def step(carry, _):
        rho, total = carry
        return (rho @ P, total + rho), None

    (rho_T, before), _ = jax.lax.scan(step, (rho0, jnp.zeros_like(rho0)), None,
                                      length=episode_length)
    expectation = before @ u - episode_length * (rho_T @ u) + rho_T @ post
    return expectation - bias_gradient(mdp, policy, params, state)


def sampled_estimator_bias(key, mdp, policy, params, state, *, episode_length: int,
                           n_episodes: int):
    """Monte Carlo estimate of `estimator_bias` from `n_episodes` episodes from `key`:
    `(difference[d], se[d])`, the sample mean of the per-episode bias gradients minus the
    exact `grad h(state)`, and its standard error (sample standard deviation / sqrt(N))."""
    samples = sample_estimates(key, mdp, policy, params, state, episode_length=episode_length,
                               n_episodes=n_episodes)
    g = samples.bias_gradient
    se = jnp.std(g, axis=0, ddof=1) / jnp.sqrt(n_episodes)
    return g.mean(axis=0) - bias_gradient(mdp, policy, params, state), se, g


# ----------------------------------------------------------------------------------------
# Table 1: measures against the mixing time


def _dense_chains(rng, count, S):
    alphas = np.exp(rng.uniform(np.log(0.1), np.log(10.0), count))
    return np.stack([rng.dirichlet(np.full(S, a), S) for a in alphas])


def _sparse_lazy_chains(rng, count, S):
    out = []
    for _ in range(count):
        P = rng.random((S, S)) * (rng.random((S, S)) < 2.0 / S)
        P[:, 0] += 0.02  # state 0 reachable from everywhere: unichain
        P /= P.sum(1, keepdims=True)
        lazy = rng.uniform(0, 0.98, S)[:, None]  # state-dependent holding: aperiodic
        out.append(lazy * np.eye(S) + (1 - lazy) * P)
    return np.stack(out)


def _cluster_chains(rng, count, S, couplings):
    out = []
    for _ in range(count):
        c = float(np.exp(rng.uniform(*np.log(couplings))))
        mdp = coupled_clusters(S // 2, c)
        w = rng.uniform(-5, 5, 2)
        out.append(np.asarray(induced_chain(mdp, policies.sigmoid(S).probs(w)).P))
    return np.stack(out)


def correlation_table(config: dict):
    """Table 1 (`correlation`, module docstring) from `config["correlation"]`."""
    import pandas as pd
    from scipy import stats

    c = config["correlation"]
    S, eps, rng = int(c["n_states"]), float(c["mixing_eps"]), np.random.default_rng(c["seed"])
    if S < 2 or S % 2:
        raise ValueError(f"correlation n_states = {S} must be an even number >= 2"
                         " (coupled_clusters has two clusters of n_states / 2).")
    families = {"dense_random": _dense_chains(rng, c["chains"], S),
                "sparse_lazy": _sparse_lazy_chains(rng, c["chains"], S),
                "coupled_clusters": _cluster_chains(rng, c["chains"], S, c["couplings"])}

    @jax.jit
    def measures(Ps):
        def one(P):
            chain = Chain(P, jnp.zeros(S, P.dtype))
            return jnp.stack([mixing_measure(chain, m, state=0) for m in MEASURES])
        return jax.vmap(one)(Ps)

    @jax.jit
    def mixing(Ps):
        def one(P):
            chain = Chain(P, jnp.zeros(S, P.dtype))
            return (mixing_time(chain, eps, max_steps=100_000),
                    mixing_time(chain, eps, state=0, max_steps=100_000))
        return jax.vmap(one)(Ps)

    rows = []
    for family, Ps in families.items():
        Ps = jnp.asarray(Ps)
        values = np.asarray(measures(Ps))
        t_all, t_s0 = (np.asarray(t) for t in mixing(Ps))
        if t_all.max() > 100_000:
            raise ValueError(f"a {family} chain did not mix to eps = {eps} in 1e5 steps.")
        for k, m in enumerate(MEASURES):
            rows.append({"family": family, "measure": m, "chains": len(Ps),
                         "spearman": stats.spearmanr(values[:, k], t_all).statistic,
                         "spearman_s0": stats.spearmanr(values[:, k], t_s0).statistic,
                         "kendall": stats.kendalltau(values[:, k], t_all).statistic,
                         "mixing_time_min": int(t_all.min()),
                         "mixing_time_max": int(t_all.max())})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------
# Table 2: the regularised sampled Algorithm 2


def _env(spec):
    if isinstance(spec, str):
        return spec, envs.make(spec), spec
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    label = f"{spec['name']}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
    return spec["name"], envs.make(spec["name"], **kwargs), label


def _check_lambdas(lambdas):
    lam = np.asarray(lambdas, float)
    if lam.ndim != 1 or lam.size == 0:
        raise ValueError(f"lambdas = {lambdas!r} must be a non-empty list of weights.")
    bad = ~(np.isfinite(lam) & (lam >= 0))
    if bad.any():
        raise ValueError(f"lambdas: entry {int(np.argmax(bad))} = {lam[bad][0]} must be"
                         " finite and >= 0.")
    return lam


def _study_env(name, mdp, label, config, lam):
    """Runs and exact/MC analysis of one environment: a list of `runs` rows."""
    S, s0, T = mdp.n_states, int(config["state"]), int(config["episode_length"])
    policy = policies.sigmoid(S)
    hp = nbw.HParams(**{**(envs.nbw.paper_hyperparams(name) if name in envs.NBW_NAMES
                           else {}), **config["hparams"]})
    cfg = nbw.Config(policy, n_steps=int(config["n_steps"]), state=s0, episode_length=T,
                     n_episodes=int(config["n_episodes"]), line_search=config["line_search"],
                     mixing_measure=config["measure"], mixing_state=config["mixing_state"],
                     mixing_gradient=config["mixing_gradient"])
    for weight in lam:  # concrete checks once; the vmapped runs see traced weights
        nbw.validate_sampled(mdp, hp._replace(mixing_weight=float(weight)), cfg)
    starts = jnp.asarray(config["starts"], jnp.float64)
    if starts.ndim != 2 or starts.shape[1] != 2:
        raise ValueError(f"starts must be a list of [w_x, w_y] pairs, got shape {starts.shape}.")
    n_seeds = int(config["seeds"])
    keys = jax.random.split(jax.random.fold_in(jax.random.key(config["seed"]), S), n_seeds)

    @jax.jit
    def runs(lams):
        def one(weight, w0, key):
            state, trace = nbw.SAMPLED.run(mdp, w0, hp._replace(mixing_weight=weight), key,
                                           config=cfg, keep_params=True)
            return state.params, trace.params
        over_keys = jax.vmap(one, (None, None, 0))
        over_starts = jax.vmap(over_keys, (None, 0, None))
        return jax.vmap(over_starts, (0, None, None))(lams, starts, keys)

    final, path = runs(jnp.asarray(lam))            # [L, starts, seeds, 2], [..., n_steps, 2]
    flat_final = final.reshape(-1, 2)

    @jax.jit
    def exact(ws):
        def one(w):
            chain = induced_chain(mdp, policy.probs(w))
            return (gain(chain), bias(chain)[s0],
                    mixing_measure(chain, config["measure"], state=config["mixing_state"]),
                    mixing_time(chain, 1e-3, state=s0, max_steps=100_000),
                    jnp.linalg.norm(bias_gradient(mdp, policy, w, s0)),
                    jnp.linalg.norm(estimator_bias(mdp, policy, w, s0, T)))
        return jax.vmap(one)(ws)

    g, h, m, tmix, grad_norm, grad_bias = (np.asarray(x) for x in exact(flat_final))
    n_steps = path.shape[-2]
    flat_path = path.reshape(-1, 2)                 # run-major: [runs * n_steps, 2]
    N = int(config["estimate_episodes"])
    mc_keys = jax.random.split(jax.random.fold_in(jax.random.key(config["seed"]), 7919 + S),
                               len(flat_path))

    @jax.jit
    def along_path(ks, ws):
        def one(k, w):
            diff, se, g_i = sampled_estimator_bias(k, mdp, policy, w, s0, episode_length=T,
                                                   n_episodes=N)
            norm = jnp.linalg.norm(diff)
            cov = jnp.cov(g_i, rowvar=False) / N
            # delta method: Var ||d_hat|| ~ d^T Cov d / ||d||^2 (Cov of the mean)
            norm_se = jnp.sqrt(diff @ cov @ diff) / jnp.maximum(norm, 1e-300)
            exact_norm = jnp.linalg.norm(estimator_bias(mdp, policy, w, s0, T))
            return exact_norm, norm, norm_se, jnp.sqrt(jnp.sum(se ** 2))
        # batches of 64 iterates bound the memory of the per-episode estimates
        return jax.lax.map(lambda kw: one(*kw), (ks, ws), batch_size=64)

    per_iterate = [np.asarray(x).reshape(-1, n_steps) for x in along_path(mc_keys, flat_path)]
    path_exact, mc, mc_se, noise = per_iterate
    L, n_starts = len(lam), len(starts)
    idx = np.indices((L, n_starts, n_seeds)).reshape(3, -1)
    return [{"env": label, "lam": float(lam[i]), "start": int(j), "seed": int(k),
             "final_gain": float(g[r]), "final_bias": float(h[r]), "final_measure": float(m[r]),
             "final_mixing_time_s0": int(tmix[r]), "grad_norm": float(grad_norm[r]),
             "grad_bias_exact": float(grad_bias[r]), "grad_bias_mc": float(mc[r, -1]),
             "grad_bias_mc_se": float(mc_se[r, -1]), "mc_noise": float(noise[r, -1]),
             "path_grad_bias": float(path_exact[r].mean()),
             "path_grad_bias_mc": float(mc[r].mean()),
             "path_grad_bias_mc_se": float(np.sqrt(np.sum(mc_se[r] ** 2)) / n_steps),
             "path_mc_noise": float(noise[r].mean())}
            for r, (i, j, k) in enumerate(idx.T)]


def tradeoff_tables(config: dict):
    """Tables `runs` and `tradeoff` (module docstring)."""
    import pandas as pd

    check_measure(config["measure"], config["mixing_state"])
    lam = _check_lambdas(config["lambdas"])
    rows, optimum = [], {}
    for spec in progress.track(config["envs"], "mixing_study", unit="environments"):
        name, mdp, label = _env(spec)
        start = time.perf_counter()
        rows += _study_env(name, mdp, label, config, lam)
        opt = nearly_blackwell_optimal(mdp)
        optimum[label] = (opt.gain, float(opt.bias[int(config["state"])]),
                          time.perf_counter() - start)
    runs = pd.DataFrame(rows)
    grouped = runs.groupby(["env", "lam"], sort=False)
    n = grouped.size()
    table = grouped.agg(
        runs=("final_bias", "size"), final_gain=("final_gain", "mean"),
        final_gain_se=("final_gain", "sem"), final_bias=("final_bias", "mean"),
        final_bias_se=("final_bias", "sem"), final_measure=("final_measure", "mean"),
        final_mixing_time_s0=("final_mixing_time_s0", "median"),
        grad_norm=("grad_norm", "mean"), grad_bias_exact=("grad_bias_exact", "mean"),
        grad_bias_mc=("grad_bias_mc", "mean"), mc_noise=("mc_noise", "mean"),
        path_grad_bias=("path_grad_bias", "mean"),
        path_grad_bias_mc=("path_grad_bias_mc", "mean"), path_mc_noise=("path_mc_noise", "mean"))
    for column in ("grad_bias_mc_se", "path_grad_bias_mc_se"):  # independent samples per run
        table[column] = grouped[column].apply(lambda s: float(np.sqrt(np.sum(s ** 2)))) / n
    table = table.reset_index()
    reference = table[table["lam"] == lam.min()].set_index("env")["final_bias"]
    table["bias_cost"] = table["env"].map(reference) - table["final_bias"]
    table["optimal_gain"] = table["env"].map({k: v[0] for k, v in optimum.items()})
    table["optimal_bias"] = table["env"].map({k: v[1] for k, v in optimum.items()})
    table["seconds"] = table["env"].map({k: v[2] for k, v in optimum.items()})
    return runs, table


def mixing_tables(config: dict) -> dict:
    """`{"correlation", "runs", "tradeoff"}` DataFrames (module docstring); `config` is
    merged over `DEFAULTS` (unknown keys: `ValueError`)."""
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown mixing_study config keys {sorted(unknown)}; known:"
                         f" {sorted(DEFAULTS)}.")
    config = {**DEFAULTS, **config}
    runs, tradeoff = tradeoff_tables(config)
    tables = {"runs": runs, "tradeoff": tradeoff}
    if config["correlation"] is not None:
        tables["correlation"] = correlation_table(config)
    return tables


def plot_tradeoff(tables: dict, path):
    """`tradeoff_figure` saved as a PNG at `path`; returns the path."""
    from pathlib import Path

    from dsorl import plots

    plt = plots.pyplot()
    fig = tradeoff_figure(tables, plt)
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def tradeoff_figure(tables: dict, plt):
    """Trade-off curves: per environment, lambda against the gradient-estimation bias
    (exact at the final iterate and along the path; MC with 2 SE bars) and, on a second
    axis, the final exact bias `h(s0)`. `tables["tradeoff"]`: a DataFrame or columns."""
    import pandas as pd

    from dsorl import plots

    t = pd.DataFrame(tables["tradeoff"])
    labels = list(dict.fromkeys(t["env"]))
    fig, axs = plots.facets(plt, len(labels), ncols=min(len(labels), 3), width=5.6,
                            height=3.6)
    twins = []
    for ax, env in zip(axs, labels):
        d = t[t["env"] == env].sort_values("lam")
        # lambda = 0 sits at a tenth of the smallest positive weight on the log axis
        positive = d["lam"][d["lam"] > 0]
        x = np.where(d["lam"] > 0, d["lam"], positive.min() / 10 if len(positive) else 1.0)
        ax.plot(x, d["grad_bias_exact"], "o-", color="C0", label="‖E ĝ − ∇h‖ final (exact)")
        ax.plot(x, d["path_grad_bias"], "s--", color="C2", label="‖E ĝ − ∇h‖ path mean")
        ax.errorbar(x, d["path_grad_bias_mc"], yerr=2 * d["path_grad_bias_mc_se"], fmt="x",
                    color="C3", label="path mean, MC (± 2 SE)")
        ax.set_xscale("log")
        ax.set_xlabel("λ (leftmost point: λ = 0)")
        ax.set_ylabel("bias-gradient estimation bias")
        ax.set_title(env, fontsize=9)
        twin = ax.twinx()
        twins.append(twin)
        twin.errorbar(x, d["final_bias"], yerr=2 * d["final_bias_se"], fmt="^-", color="C1",
                      label="final h(s0) (exact)")
        twin.axhline(d["optimal_bias"].iloc[0], color="C1", lw=0.8, ls=":")
        twin.set_ylabel("final h(s0)", color="C1")
    handles, names = (sum(parts, []) for parts in zip(
        *(a.get_legend_handles_labels() for a in (axs[0], twins[0]))))
    plots.legend_outside(fig, handles, names)
    fig.suptitle("mixing-time regularisation: gradient-estimation bias vs final bias", fontsize=10)
    fig.tight_layout()
    return fig
