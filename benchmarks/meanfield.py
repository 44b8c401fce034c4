"""Mean-field Langevin PG: throughput and peak memory against NumPy, and convergence curves.

    python benchmarks/meanfield.py [CONFIG] [--set key=value ...]

CONFIG defaults to configs/meanfield_benchmark.yaml (keys: see
dsorl/jobs/meanfield_benchmark.py). Each (implementation, N) runs in its own subprocess so
that its peak RSS is its own. Prints the tables and writes CSV tables, arrays.npz,
meta.json (config, versions, devices, git commit) and two PNG plots to the config's
output_dir. The machine is shared: run it with `nice`, compare only ratios measured in one
run, and repeat it to see the spread.
"""
import argparse
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

from dsorl import config as config_lib  # noqa: E402
from dsorl.jobs import meanfield_benchmark  # noqa: E402
from dsorl.results import format_table, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def plot(result: dict, config: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["tables"]["throughput"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    n = [r["particles"] for r in rows]
    axes[0].loglog(n, [r["jax_particle_steps_per_s"] for r in rows], "o-", label="JAX (jit, scan)")
    axes[0].loglog(n, [r["numpy_particle_steps_per_s"] for r in rows], "s--", label="NumPy")
    axes[0].loglog(n, [r["numpy_1blas_particle_steps_per_s"] for r in rows], "^:",
                   label="NumPy, 1 BLAS thread")
    axes[0].set_xlabel("particles N")
    axes[0].set_ylabel("particle-steps per second")
    axes[0].legend()
    axes[1].loglog(n, [r["jax_peak_rss_mb"] for r in rows], "o-", label="JAX peak RSS")
    axes[1].loglog(n, [r["numpy_peak_rss_mb"] for r in rows], "s--", label="NumPy peak RSS")
    axes[1].loglog(n, [r["numpy_1blas_peak_rss_mb"] for r in rows], "^:",
                   label="NumPy (1 BLAS thread) peak RSS")
    axes[1].set_xlabel("particles N")
    axes[1].set_ylabel("MiB")
    axes[1].legend()
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("Mean-field Langevin update (float64, CPU)")
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=130)

    c = config["convergence"]
    curves = result["arrays"]
    fig, axes = plt.subplots(1, len(c["particles"]), figsize=(4.2 * len(c["particles"]), 4), sharey=True,
                             squeeze=False)
    for ax, n in zip(axes[0], c["particles"]):
        for sigma in c["sigmas"]:
            ax.semilogy(curves[f"gap_n{n}_sigma{sigma:g}"], label=f"σ = {sigma:g}")
        ax.set_title(f"N = {n}")
        ax.set_xlabel("Langevin step")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    axes[0, 0].set_ylabel(r"$V^*_\tau(\rho) - V_\tau^{\pi_\nu}(\rho)$")
    fig.suptitle(f"value gap, mean over {c['seeds']} seeds (η = {config['step_size']}, τ = {config['tau']})")
    fig.tight_layout()
    fig.savefig(out / "convergence.png", dpi=130)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs/meanfield_benchmark.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    cfg = config_lib.load_config(args.config, args.set)
    print("devices:", jax.devices())
    result = meanfield_benchmark.run(cfg)
    for name, rows in result["tables"].items():
        print(f"\n== {name} ==\n{format_table(rows, '.4g')}")
    out = write_results(ROOT / cfg["output_dir"], cfg, tables=result["tables"],
                        arrays=result["arrays"], seeds=result["seeds"])
    plot(result, cfg, out)
    print(f"\nresults written to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
