"""Reproduction of Dewanto & Gallagher's Fig. 6 (arXiv 2105.13609, §7.1): nBw PG vs discounted PG.

For each environment (A1..B3) and each start on the sigmoid-parameter grid: the exact
barrier method (Algorithm 1), the sampled one (Algorithm 2, `sampling.seeds` seeds of
`sampling.episodes` episodes per step; `nbw_sampled` with the line search from samples,
`sampling.line_search_episodes` coupled episodes and `sampling.confidence` standard errors,
and `nbw_sampled_critic` with the paper's exact objective values in the line search) and
natural discounted PG for the paper's three discount factors, `n_steps` steps each (beta
divided every `steps_per_outer`; null: once). The exact method runs twice: with the exact
score (`nbw_exact`) and with the authors' clipped one (`nbw_exact_score_clip`:
`score_clip`, the probabilities clamped to [eps, 1 - eps] as `torch.distributions.Categorical`
does; null: skipped). Every method is one jitted, `vmap`ped call per
environment (and per seed), timed with the compile apart (median of `timing_repeats` calls
for the single-seed methods). Output: per environment and
method, the mean and standard deviation over starts of `|h_final(s0) - h*(s0)|` and of the
gain gap `g* - g_final` (sampled: averaged over seeds per start first, as the authors'
plots do), next to the authors' reported mean bias errors; the final gains/biases and the
gain and bias landscapes as arrays for the figure (`figures`: fig6_errors.png).

Table `summary`, one row per environment and method: env, method, starts, seeds;
bias_err_mean, bias_err_std (over starts of |h_final(s0) - h*(s0)|), reference_bias_err
(the authors' number; NaN where they give none); gain_gap_mean, gain_gap_std (g* -
g_final); nonfinite (starts whose final bias is not finite); compile_s, run_s. Arrays:
`grid` [starts, 2]; `<env>/<method>/gain` and `/bias` [seeds, starts];
`<env>/gain_landscape`, `<env>/bias_landscape` [starts].
"""
import jax
import jax.numpy as jnp
import numpy as np

from dsorl import envs, policies, progress, timing
from dsorl.algorithms import nbw
from dsorl.envs.nbw import PAPER_SETTINGS, paper_hyperparams
from dsorl.markov import bias, gain
from dsorl.mdp import induced_chain
from dsorl.results import keep_on_interrupt

# Mean absolute bias errors of the authors' code (Fig. 6 of arXiv 2105.13609, the numbers
# printed on its error maps), as quoted in this project's issue #3; B1 sampled not given.
# Ours, exact (41 x 41 grid, 100 steps): 0.000, 0.059, 0.147, 0.000, 0.644, 0.323 with the
# exact score; with score_clip (torch's clamp, float64 eps) B3 becomes 0.761, the rest stay.
REFERENCE_BIAS_ERROR = {
    "nbw_exact": {"A1": 0.000, "A2": 0.059, "A3": 0.147, "B1": 0.000, "B2": 0.634, "B3": 0.751},
    "nbw_sampled": {"A1": 0.122, "A2": 1.191, "A3": 0.247, "B2": 6.598, "B3": 1.428},
}

DEFAULTS = {
    "envs": list(envs.NBW_NAMES),
    "methods": ["nbw_exact", "nbw_sampled", "discounted"],
    "grid": {"low": -10.0, "high": 10.0, "step": 0.5},
    "n_steps": 100,
    "steps_per_outer": None,
    "score_clip": float(np.finfo(np.float64).eps),
    "sampling": {"seeds": 10, "episodes": 16, "baseline": True, "post_mixing": "score",
                 "line_search_episodes": 16, "confidence": 2.0, "gain_window": None,
                 "max_expansions": 10},
    "seed": 0,
    "timing_repeats": 3,
    "output_dir": "benchmarks/results/nbw_reproduce",
}


def run(config: dict) -> dict:
    """`{"tables": {"summary": rows}, "arrays": final values and landscapes, "seeds": ...}`.
    Ctrl-C keeps the methods already finished (`dsorl run` writes them, "interrupted")."""
    grid = policies.sigmoid_grid(**config["grid"], dtype=jnp.float64)
    arrays = {"grid": np.asarray(grid)}
    rows = []
    seeds = {"base": config["seed"], "sampled": config["sampling"]["seeds"]}
    with keep_on_interrupt(lambda: {"tables": {"summary": rows}, "arrays": arrays,
                                    "seeds": seeds}):
        _run_envs(config, grid, arrays, rows)
    return {"tables": {"summary": rows}, "arrays": arrays, "seeds": seeds}


def _run_envs(config, grid, arrays, rows) -> None:
    """Every environment and method: fills `arrays` and `rows` as each method finishes."""
    for name in progress.track(config["envs"], "nbw_reproduce", unit="environments"):
        mdp, ref = envs.nbw_env(name), envs.nbw_reference(name)
        policy = policies.sigmoid(mdp.n_states)
        arrays[f"{name}/gain_landscape"], arrays[f"{name}/bias_landscape"] = _landscapes(
            mdp, policy, grid)
        for method, label, fn, n_seeds in progress.track(
                _methods(name, mdp, policy, config), f"{name} methods", unit="methods"):
            finals, compile_s, run_s = _timed_runs(fn, grid, n_seeds, config["seed"],
                                                   config["timing_repeats"], f"{name}/{label}")
            g, h = finals  # [seeds, starts]
            arrays[f"{name}/{label}/gain"], arrays[f"{name}/{label}/bias"] = g, h
            bias_err = np.abs(h - ref["optimal_bias_s0"]).mean(axis=0)
            gain_gap = (ref["optimal_gain"] - g).mean(axis=0)
            rows.append({
                "env": name, "method": label, "starts": len(grid), "seeds": n_seeds,
                "bias_err_mean": float(np.mean(bias_err)), "bias_err_std": float(np.std(bias_err)),
                "reference_bias_err": REFERENCE_BIAS_ERROR.get(method, {}).get(name, float("nan")),
                "gain_gap_mean": float(np.mean(gain_gap)), "gain_gap_std": float(np.std(gain_gap)),
                "nonfinite": int(np.sum(~np.isfinite(h))),
                "compile_s": compile_s, "run_s": run_s,
            })


def _methods(name, mdp, policy, config):
    """`(method, label, fn(starts, key) -> (gain[N], bias[N]), seeds)` for each method."""
    ref = envs.nbw_reference(name)
    sampling = config["sampling"]
    sampling = {**DEFAULTS["sampling"], **sampling}
    barrier = nbw.Config(
        policy, n_steps=config["n_steps"], steps_per_outer=config["steps_per_outer"],
        episode_length=ref["episode_length"], n_episodes=sampling["episodes"],
        baseline=sampling["baseline"], post_mixing=sampling["post_mixing"],
        line_search_episodes=sampling["line_search_episodes"],
        gain_window=sampling["gain_window"], max_expansions=sampling["max_expansions"])
    hp = nbw.HParams(**paper_hyperparams(name), confidence=sampling["confidence"])
    nbw.validate(mdp, hp, barrier)  # entry checks on concrete values, before any compile
    if {"nbw_sampled", "nbw_sampled_critic"} & set(config["methods"]):
        nbw.validate_sampled(mdp, hp, barrier)
    finals = lambda trace: (trace.gain[:, -1], trace.bias[:, -1])
    out = []
    for method in config["methods"]:
        if method == "nbw_exact":
            configs = [("nbw_exact", barrier)]
            if config["score_clip"] is not None:  # the authors' clipped score
                configs.append(("nbw_exact_score_clip",
                                barrier._replace(score_clip=config["score_clip"])))
            for label, exact in configs:
                fn = lambda w, key, exact=exact: finals(jax.vmap(
                    lambda w0: nbw.run(mdp, w0, hp, config=exact)[1])(w))
                out.append((method, label, fn, 1))
        elif method in ("nbw_sampled", "nbw_sampled_critic"):
            line_search = "sampled" if method == "nbw_sampled" else "critic"
            sampled = barrier._replace(line_search=line_search)
            fn = lambda w, key, sampled=sampled: finals(jax.vmap(
                lambda w0: nbw.run_sampled(mdp, w0, hp, key, config=sampled)[1])(w))
            # both compare with the authors' sampled runs (theirs used the critic's values)
            out.append(("nbw_sampled", method, fn, sampling["seeds"]))
        elif method == "discounted":
            for gamma in PAPER_SETTINGS["discounts"][name]:
                dhp = nbw.DiscountedHParams(gamma, PAPER_SETTINGS["gain_phase_tolerance"])
                fn = lambda w, key, dhp=dhp: finals(jax.vmap(
                    lambda w0: nbw.discounted_run(mdp, w0, dhp, config=barrier)[1])(w))
                out.append((method, f"discounted_{gamma:g}", fn, 1))
        else:
            raise ValueError(f"unknown method {method!r}; choose from nbw_exact, nbw_sampled,"
                             " nbw_sampled_critic, discounted.")
    return out


def _timed_runs(fn, grid, n_seeds, seed, repeats, what):
    """Compile once (timed apart), then one call per seed; returns `[seeds, starts]` finals.

    `run_s`: seconds for all seeds; with one seed, the median of `repeats` calls (the
    machine is shared, so single timings are noisy).
    """
    keys = jax.random.split(jax.random.key(seed), n_seeds)
    compiled, compile_s = timing.compile(fn, grid, keys[0], what=f"{what} ({len(grid)} starts)")
    seeds = lambda: keys if n_seeds == 1 else progress.track(keys, f"{what} seeds", unit="seeds")
    tm = timing.timed(lambda: [jax.block_until_ready(compiled(grid, k)) for k in seeds()],
                      jit=False, warmup=0, repeats=max(1, repeats) if n_seeds == 1 else 1)
    results = tm.result
    g = np.stack([np.asarray(r[0]) for r in results])
    h = np.stack([np.asarray(r[1]) for r in results])
    return (g, h), compile_s, tm.median_seconds


def _landscapes(mdp, policy, grid):
    def one(w):
        chain = induced_chain(mdp, policy(w))
        return gain(chain), bias(chain)[0]
    g, h = jax.jit(jax.vmap(one))(grid)
    return np.asarray(g), np.asarray(h)


def figures(tables, arrays, config, plt) -> dict:
    """`fig6_errors`: per environment (rows), the mean over seeds of `|h_final(s0) -
    h*(s0)|` over the start grid for each method (its mean ± std over starts in the title),
    and the gain and bias landscapes of the sigmoid policy; the paper's Fig. 6 layout."""
    from dsorl import plots

    grid = np.asarray(arrays["grid"])
    wx, wy = np.unique(grid[:, 0]), np.unique(grid[:, 1])
    methods = tables["summary"]["method"].tolist()
    names = [n for n in config["envs"] if f"{n}/gain_landscape" in arrays]
    # the paper's layout: each environment's own discounts first (up to three columns)
    discounted = {n: sorted({m for m in methods if m.startswith("discounted")
                             and f"{n}/{m}/bias" in arrays}, key=lambda m: float(m.split("_")[1]))
                  for n in names}
    slots = max((len(d) for d in discounted.values()), default=0)
    others = sorted({m for m in methods if not m.startswith("discounted")})
    ncols = slots + 2 + len(others)
    fig, axs = plots.facets(plt, len(names) * ncols, ncols=ncols, width=3.2, height=2.9)
    for i, name in enumerate(names):
        ref = envs.nbw_reference(name)
        columns = ([(f"{m}/bias", m.replace("discounted_", "discounted γ = "))
                    for m in discounted[name]] + [None] * (slots - len(discounted[name]))
                   + [("gain_landscape", "gain landscape"),
                      ("bias_landscape", "bias h(s0) landscape")]
                   + [(f"{m}/bias", m.replace("_", " ")) for m in others])
        for j, column in enumerate(columns):
            ax = axs[i * ncols + j]
            if column is None or f"{name}/{column[0]}" not in arrays:
                ax.set_visible(False)
                continue
            key, title = column
            z = np.asarray(arrays[f"{name}/{key}"])
            if "landscape" in key:
                values, cmap, scale = z, "plasma", 0.0
            else:  # errors of a bias of magnitude |h*|: below 1e-9 |h*| they are rounding
                values, cmap = np.abs(z - ref["optimal_bias_s0"]).mean(axis=0), "cool"
                scale = abs(ref["optimal_bias_s0"])
                title = f"{title}\nerror {np.mean(values):.3f} ± {np.std(values):.3f}"
            plots.heatmap(fig, ax, wx, wy, values.reshape(len(wx), len(wy)).T, "w_x",
                          f"Env-{name}: w_y", f"{name}, {title}", cmap=cmap, scale=scale)
    fig.suptitle(f"{plots.describe(config)}: |h_final(s0) - h*(s0)| over the start grid"
                 " (mean over seeds), and the landscapes", fontsize=10)
    fig.tight_layout()
    return {"fig6_errors": fig}
