"""DSO benchmark: optimisers on garnets, Algorithm 1's variance, an LMDP.

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

jax.config.update("jax_enable_x64", True)

from dsorl import compilation  # noqa: E402
from dsorl import config as config_lib  # noqa: E402
from dsorl.jobs import dso_benchmark  # noqa: E402
from dsorl.plots import plot_results  # noqa: E402
from dsorl.results import format_table, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs/dso_benchmark.yaml"),
                        help="YAML config file (default: configs/dso_benchmark.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (dotted keys for nesting)")
    args = parser.parse_args(argv)
    compilation.configure()  # persistent cache (DSORL_CACHE_DIR, DSORL_CACHE=0), meta record
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
    plot_results(out, out_dir=out)  # the job's `figures`
    for name, rows in result["tables"].items():
        print(f"\n== {name} ==\n{format_table(rows, floatfmt='.4g')}")
    print(f"\nresults and plots in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
