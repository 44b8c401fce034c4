"""Benchmark of the mean-field Langevin particle update: JAX against NumPy, and convergence.

Throughput: for each number of particles N, one worker subprocess per implementation
(so that its peak resident memory, `ru_maxrss`, is that implementation's alone) times
`steps(N)` Langevin steps on a garnet MDP:

- `jax`: `dsorl.algorithms.meanfield.run` (jitted here: one `lax.scan`; Lions derivative
  by autodiff), compile time measured apart; the median of `repeats` runs after it;
- `jax_noise32`: the same with the opt-in float32 Langevin noise
  (`meanfield.Config(noise_dtype="float32")`; particles and everything else float64);
- `numpy`: the same update written with vectorised NumPy (the covariance formula with the
  closed-form feature gradients, dense solves, `numpy.random.Generator` noise, the same
  per-step statistics), the median of `repeats` runs after one warm-up step; run twice,
  with OpenBLAS's default threads and with one BLAS thread (`numpy_1blas`: on 2 shared
  cores, OpenBLAS's threads slow these thin matrix products down several times).

Reported: particle-steps per second (N * steps / median wall seconds), the ratio jax/numpy,
the CPU time per step of each (process time, all threads: less sensitive than wall time to
other processes on a shared machine) and its ratio, compile seconds, and the peak RSS of
each worker (with the RSS right after imports, the
interpreter and library baseline). Convergence: value gap `V*_tau(rho) - V_tau^{pi_nu}(rho)`
per step (entry k: after step k + 1), mean over seeds, for every (N, sigma) of
`convergence` (one vmapped program per N); `gap_step_k` in its table: after k steps.

Table `throughput`, one row per N: particles, steps; jax_particle_steps_per_s,
numpy_particle_steps_per_s, numpy_1blas_particle_steps_per_s; speedup,
speedup_vs_numpy_1blas; jax_step_ms, jax_noise32_step_ms, speedup_noise32 (the float32-noise
path against NumPy's best), numpy_step_ms, numpy_1blas_step_ms; jax_cpu_step_ms,
numpy_cpu_step_ms; jax_compile_s; jax_peak_rss_mb, numpy_peak_rss_mb,
numpy_1blas_peak_rss_mb, import_rss_mb; device. Table `convergence`, one row per (N,
sigma): particles, sigma, gap_step_1, gap_step_100, gap_last_10pct, gap_last_10pct_se.
Arrays: `gap_n<N>_sigma<sigma>` [steps], v_star.
"""
import json
import os
import resource
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from dsorl import features, progress, timing
from dsorl.algorithms import meanfield as mf
from dsorl.jobs.meanfield import build_problem, run_from_key
from dsorl.planning import soft_policy_iteration

DEFAULTS = {
    "env": {"n_states": 10, "n_actions": 4, "branching": 4, "seed": 0},
    "feature": {"width": 4, "bound": 2.0},
    "gamma": 0.9,
    "tau": 0.2,
    "sigma": 0.1,
    "step_size": 0.5,
    "sizes": [100, 1000, 10000, 100000],
    "particle_steps": 2000000,
    "min_steps": 5,
    "max_steps": 200,
    "repeats": 5,
    "convergence": {"particles": [10, 100, 1000], "sigmas": [0.0, 0.05, 0.2], "seeds": 4,
                    "steps": 1000},
    "seed": 0,
    "output_dir": "benchmarks/results/meanfield",
}


def steps_for(n: int, config: dict) -> int:
    """Steps per timed run: about `particle_steps / N`, clipped to [min_steps, max_steps]."""
    return int(np.clip(config["particle_steps"] // n, config["min_steps"], config["max_steps"]))


def run(config: dict) -> dict:
    throughput = []
    for n in progress.track(config["sizes"], "meanfield_benchmark throughput", unit="sizes"):
        jax_row = _in_subprocess("jax", n, config)
        noise32 = _in_subprocess("jax_noise32", n, config)
        numpy_row = _in_subprocess("numpy", n, config)
        single = _in_subprocess("numpy", n, config, single_blas_thread=True)
        throughput.append({
            "particles": n, "steps": jax_row["steps"],
            "jax_particle_steps_per_s": jax_row["rate"], "numpy_particle_steps_per_s": numpy_row["rate"],
            "numpy_1blas_particle_steps_per_s": single["rate"],
            "speedup": jax_row["rate"] / numpy_row["rate"],
            "speedup_vs_numpy_1blas": jax_row["rate"] / single["rate"],
            "jax_step_ms": 1e3 * jax_row["seconds"] / jax_row["steps"],
            "jax_noise32_step_ms": 1e3 * noise32["seconds"] / noise32["steps"],
            "speedup_noise32": noise32["rate"] / max(numpy_row["rate"], single["rate"]),
            "numpy_step_ms": 1e3 * numpy_row["seconds"] / numpy_row["steps"],
            "numpy_1blas_step_ms": 1e3 * single["seconds"] / single["steps"],
            "jax_cpu_step_ms": 1e3 * jax_row["cpu_seconds"] / jax_row["steps"],
            "numpy_cpu_step_ms": 1e3 * numpy_row["cpu_seconds"] / numpy_row["steps"],
            "jax_compile_s": jax_row["compile_seconds"],
            "jax_peak_rss_mb": jax_row["peak_rss_mb"], "numpy_peak_rss_mb": numpy_row["peak_rss_mb"],
            "numpy_1blas_peak_rss_mb": single["peak_rss_mb"],
            "import_rss_mb": jax_row["import_rss_mb"], "device": jax_row["device"]})
    curves, rows = convergence(config)
    return {"tables": {"throughput": throughput, "convergence": rows}, "arrays": curves,
            "seeds": {"seed": config["seed"], "env_seed": config["env"]["seed"]}}


def convergence(config: dict):
    """Mean value-gap curves over seeds, `{"gap_n{N}_sigma{s}": [steps]}`, and a summary."""
    problem = build_problem(config)
    c = config["convergence"]
    gamma, tau, step_size = config["gamma"], config["tau"], config["step_size"]
    v_star = float(problem.mdp.rho @ soft_policy_iteration(problem.mdp, gamma, tau).value)
    sigmas = np.repeat(np.asarray(c["sigmas"], float), c["seeds"])
    hp = mf.HParams(np.full(sigmas.shape, gamma), np.full(sigmas.shape, tau), sigmas,
                    np.full(sigmas.shape, step_size))
    mf.validate(problem, hp, mf.Config(c["steps"]))
    curves, rows = {"v_star": np.asarray(v_star)}, []
    for n in progress.track(c["particles"], "meanfield_benchmark convergence",
                            unit="particle counts"):
        run_config = mf.Config(c["steps"], n_particles=n)

        @jax.jit
        def runs(hp, keys):
            def one(hp, key):
                state, trace = run_from_key(problem, None, hp, key, config=run_config)
                return trace.value_tau, state.first_bad_step
            return jax.vmap(one)(hp, keys)

        values, first_bad = runs(hp, jax.random.split(jax.random.key(config["seed"] + n), sigmas.size))
        mf.check_divergence(first_bad, hp)
        gaps = v_star - np.asarray(values)
        for sigma in c["sigmas"]:
            mean = gaps[sigmas == sigma].mean(0)
            curves[f"gap_n{n}_sigma{sigma:g}"] = mean
            tail = gaps[sigmas == sigma][:, -c["steps"] // 10:].mean(1)
            rows.append({"particles": n, "sigma": sigma, "gap_step_1": float(mean[0]),
                         "gap_step_100": float(mean[min(100, c["steps"]) - 1]),
                         "gap_last_10pct": float(tail.mean()),
                         "gap_last_10pct_se": float(tail.std(ddof=1) / np.sqrt(tail.size))})
    return curves, rows


# ----------------------------------------------------------------------------------------
# Workers (one subprocess per implementation and size)


def _in_subprocess(impl: str, n: int, config: dict, *, single_blas_thread: bool = False) -> dict:
    spec = json.dumps({"impl": impl, "n": n, "config": config})
    env = dict(os.environ)
    if single_blas_thread:
        env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "dsorl.jobs.meanfield_benchmark", spec],
                         capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{impl} worker for N = {n} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _worker(impl: str, n: int, config: dict) -> dict:
    jax.config.update("jax_enable_x64", True)
    import_rss = _rss_mb()
    problem = build_problem(config)
    steps = steps_for(n, config)
    particles = features.init_particles(problem.feature, jax.random.key(config["seed"]), n,
                                        problem.encodings)
    hp = mf.HParams(*(jnp.float64(config[k]) for k in ("gamma", "tau", "sigma", "step_size")))
    if impl in ("jax", "jax_noise32"):
        cfg = mf.Config(steps, noise_dtype="float32" if impl == "jax_noise32" else None)
        key = jax.random.key(config["seed"] + 1)
        compiled, compile_seconds = timing.compile(lambda *a: mf.run(*a, config=cfg),
                                                   problem, particles, hp, key)

        def call():  # returns None: each run's output (the final particles) is freed before
            jax.block_until_ready(compiled(problem, particles, hp, key))  # the next, for RSS

        tm = timing.timed(call, jit=False, repeats=config["repeats"])
    else:
        baseline = NumpyLangevin(problem, jax.tree_util.tree_map(np.asarray, particles), hp,
                                 np.random.default_rng(config["seed"] + 1))
        baseline.step()  # warm-up (first-touch allocations)
        compile_seconds = 0.0
        tm = timing.timed(baseline.run, steps, jit=False, repeats=config["repeats"])
    seconds = tm.median_seconds
    return {"impl": impl, "n": n, "steps": steps, "seconds": seconds, "rate": n * steps / seconds,
            "cpu_seconds": tm.cpu_median_seconds, "compile_seconds": compile_seconds,
            "peak_rss_mb": _rss_mb(), "import_rss_mb": import_rss, "device": str(jax.devices()[0])}


class NumpyLangevin:
    """The same Langevin update in vectorised NumPy (float64): what a user would write.

    Lions derivative by the covariance formula with closed-form gradients of
    `f = sum_k psi(c_k) tanh(<w_k, x> + b_k)`; values and occupancy by dense solves;
    noise from `numpy.random.Generator.standard_normal`; the per-step statistics of
    `meanfield.Trace`, of the ensemble each step starts from (the trace's previous row).
    """

    def __init__(self, problem, particles, hparams, rng):
        p = particles["params"]
        self.c, self.w, self.b = (np.array(p[k]) for k in ("c", "w", "b"))
        mdp = problem.mdp
        self.P, self.R, self.rho, self.mu = (np.asarray(a) for a in (mdp.P, mdp.R, mdp.rho, problem.mu))
        self.x = np.asarray(problem.encodings).reshape(-1, problem.encodings.shape[-1])  # [M, d]
        self.bound = problem.feature.bound
        self.gamma, self.tau, self.sigma, self.step_size = (float(h) for h in hparams)
        self.rng = rng

    def run(self, steps: int) -> list:
        return [self.step() for _ in range(steps)]

    def step(self) -> tuple:
        N, K, d = self.w.shape
        S, A = self.R.shape
        B, g, tau, sigma, eta = self.bound, self.gamma, self.tau, self.sigma, self.step_size
        t = np.tanh((self.w.reshape(N * K, d) @ self.x.T).reshape(N, K, -1) + self.b[..., None])
        psi = B * np.tanh(self.c / B)
        f_nu = np.einsum("nk,nkm->m", psi, t).reshape(S, A) / N
        logits = f_nu + np.log(self.mu)
        pi = np.exp(logits - logits.max(1, keepdims=True))
        pi /= pi.sum(1, keepdims=True)
        log_ratio = np.log(pi / self.mu)
        I_gP = np.eye(S) - g * np.einsum("sa,sat->st", pi, self.P)
        V = np.linalg.solve(I_gP, (pi * (self.R - tau * log_ratio)).sum(1))
        m = np.linalg.solve(I_gP.T, self.rho)
        X = self.R + g * self.P @ V - tau * log_ratio
        G = (m[:, None] * pi * (X - (pi * X).sum(1, keepdims=True))).reshape(-1)   # [M]
        sech2 = 1 - t * t
        lions_c = (1 - np.tanh(self.c / B) ** 2) * (t @ G)
        lions_b = psi * (sech2 @ G)
        lions_w = psi[..., None] * ((sech2 * G).reshape(N * K, -1) @ self.x).reshape(N, K, d)
        row = self._statistics(pi, V, sigma)
        scale = sigma * np.sqrt(eta)
        for theta, lions in ((self.c, lions_c), (self.w, lions_w), (self.b, lions_b)):
            theta += eta * (lions - sigma ** 2 / 2 * theta) + scale * self.rng.standard_normal(theta.shape)
        return row

    def _statistics(self, pi, V, sigma) -> tuple:
        N = self.c.shape[0]
        flat = np.concatenate([self.b, self.c, self.w.reshape(N, -1)], axis=1)
        mean, var = flat.mean(0), flat.var(0)
        kl = 0.5 * np.sum(var + mean ** 2 - 1 - np.log(var))
        value_tau = self.rho @ V
        v0 = np.linalg.solve(np.eye(len(V)) - self.gamma * np.einsum("sa,sat->st", pi, self.P),
                             (pi * self.R).sum(1))
        return value_tau - sigma ** 2 / 2 * kl, value_tau, self.rho @ v0, var.mean()


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    print(json.dumps(_worker(spec["impl"], spec["n"], spec["config"])))


def figures(tables, arrays, config, plt) -> dict:
    """`throughput`: particle-steps per second and peak memory against N (log-log) for JAX,
    NumPy and NumPy on one BLAS thread; `convergence`: the value gap against Langevin steps,
    one panel per particle count, one line per sigma (mean over seeds)."""
    from dsorl import plots

    out = {}
    t = tables.get("throughput")
    if t is not None and len(t["particles"]):
        order = np.argsort(t["particles"])
        n = t["particles"][order]
        fig, axs = plots.facets(plt, 2, ncols=2, width=5.0)
        series = [(("jax_particle_steps_per_s", "jax_peak_rss_mb"), "JAX (jit, scan)", "o-"),
                  (("numpy_particle_steps_per_s", "numpy_peak_rss_mb"), "NumPy", "s--"),
                  (("numpy_1blas_particle_steps_per_s", "numpy_1blas_peak_rss_mb"),
                   "NumPy, 1 BLAS thread", "^:")]
        for (cols, label, style), colour in zip(series, plots.palette(len(series))):
            for ax, col in zip(axs, cols):
                ax.loglog(n, t[col][order], style, color=colour, label=label)
        for ax, ylabel in zip(axs, ("particle-steps per second", "peak RSS (MiB)")):
            plots.log_ticks(ax, n)
            ax.set_xlabel("particles N")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
        handles, labels = axs[0].get_legend_handles_labels()
        plots.legend_outside(fig, handles, labels)
        fig.suptitle("meanfield_benchmark: the mean-field Langevin update (float64, CPU)",
                     fontsize=10)
        fig.tight_layout()
        out["throughput"] = fig
    c = config["convergence"]
    counts = [n for n in c["particles"] if any(k.startswith(f"gap_n{n}_") for k in arrays)]
    if counts:
        fig, axs = plots.facets(plt, len(counts), sharey=True)
        colours = plots.palette(len(c["sigmas"]))
        for ax, n in zip(axs, counts):
            for sigma, colour in zip(c["sigmas"], colours):
                curve = np.asarray(arrays[f"gap_n{n}_sigma{sigma:g}"], float)
                ax.semilogy(np.arange(1, len(curve) + 1), np.maximum(curve, 1e-16),
                            color=colour, label=f"{sigma:g}")
            ax.set_title(f"N = {n}", fontsize=9)
            ax.set_xlabel("Langevin step")
            ax.set_ylabel("V*_tau(rho) - V_tau(rho)")
            ax.grid(True, which="both", alpha=0.3)
        handles, labels = axs[0].get_legend_handles_labels()
        plots.legend_outside(fig, handles, labels, title="σ")
        fig.suptitle(f"meanfield_benchmark: value gap, mean over {c['seeds']} seeds"
                     f" (η = {config['step_size']:g}, τ = {config['tau']:g})", fontsize=10)
        fig.tight_layout()
        out["convergence"] = fig
    return out
