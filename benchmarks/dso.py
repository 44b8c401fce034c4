"""DSO benchmark (issue #4): optimisers on garnets, Algorithm 1's variance, an LMDP.

    nice python benchmarks/dso.py [configs/dso_benchmark.yaml] [--set key=value ...]

The work is the `dso_benchmark` job (see `dsorl/jobs/dso_benchmark.py` for what is
measured and how); this script adds the BLAS thread cap, prints the tables and writes
CSV tables, arrays.npz, meta.json (config, versions, devices, git commit, load average)
and PNG plots to the config's output_dir. float64, CPU. The machine is shared: run it
with `nice`, compare ratios measured within one run, and repeat it to see the spread.
OpenBLAS (which JAX's CPU LAPACK calls use) is capped at `BLAS_THREADS` threads (default
1): on a loaded 2-core machine its threads contend and a 400 x 400 solve slowed 60x.
"""
import argparse
import os
import sys
from pathlib import Path

BLAS_THREADS = os.environ.get("BLAS_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", BLAS_THREADS)

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

from dsorl import config as config_lib  # noqa: E402
from dsorl.jobs import dso_benchmark  # noqa: E402
from dsorl.results import format_table, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHOD_STYLE = {"gradient_ascent": "C0", "chain_iteration": "C1", "natural_gradient": "C2",
                "pco": "C3"}


def plot_garnet(arrays, out: Path, target: float) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, color in METHOD_STYLE.items():
        gaps = arrays.get(f"garnet/{name}")
        if gaps is None:
            continue
        k = np.arange(1, gaps.shape[1] + 1)
        gaps = np.maximum(gaps, 1e-16)
        ax.loglog(k, np.median(gaps, 0), color=color, label=name.replace("_", " "))
        ax.fill_between(k, np.quantile(gaps, 0.1, 0), np.quantile(gaps, 0.9, 0), color=color,
                        alpha=0.2, lw=0)
    ax.axhline(target, color="k", ls=":", lw=1, label=f"target {target:g}")
    ax.set_xlabel("iteration + 1")
    ax.set_ylabel("relative gap (J* - J) / |J*|")
    ax.set_title("Garnets (S=100, A=4, gamma=0.99): median and 10-90% of seeds")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "garnet_convergence.png", dpi=130)
    plt.close(fig)


def plot_lmdp(arrays, out: Path, samples_per_iteration: int) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, gaps in arrays.items():
        if not name.startswith("lmdp/") or name == "lmdp/optimum":
            continue
        label = name.removeprefix("lmdp/").replace("_", " ")
        gaps = np.maximum(np.abs(gaps), 1e-16)
        k = np.arange(len(gaps))
        if "z_learning" in name:
            axes[1].loglog(1 + k * samples_per_iteration, gaps, label=label)
        else:
            axes[0].loglog(1 + k, gaps, label=label)
    axes[0].set_xlabel("iteration + 1")
    axes[1].set_xlabel("sampled transitions + 1")
    for ax in axes:
        ax.set_ylabel("relative gap |J* - J| / |J*|")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("exact DSO methods")
    axes[1].set_title("Z-learning (gap of the chain u(z_k))")
    fig.suptitle("First-exit LMDP: quadratic cost, Gaussian random walk")
    fig.tight_layout()
    fig.savefig(out / "lmdp_convergence.png", dpi=130)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs/dso_benchmark.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    cfg = config_lib.load_config(args.config, args.set)
    log = lambda msg: print(msg, flush=True)
    log(f"device: {jax.devices()[0]} | OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}"
        f" | load average {os.getloadavg()}")
    extra = {"load_average_at_start": os.getloadavg(),
             "openblas_num_threads": os.environ["OPENBLAS_NUM_THREADS"]}
    result = dso_benchmark.run(cfg, log)
    extra["load_average_at_end"] = os.getloadavg()
    extra["rows"] = result["tables"]
    out = write_results(cfg["output_dir"], cfg, tables=result["tables"], arrays=result["arrays"],
                        seeds=result["seeds"], extra=extra)
    import matplotlib

    matplotlib.use("Agg")
    if "garnet" in cfg["parts"]:
        plot_garnet(result["arrays"], out, cfg["garnet"]["target"])
    if "lmdp" in cfg["parts"]:
        plot_lmdp(result["arrays"], out, cfg["lmdp"]["n_states"] - 1)
    for name, rows in result["tables"].items():
        print(f"\n== {name} ==\n{format_table(rows, floatfmt='.4g')}")
    print(f"\nresults and plots in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
