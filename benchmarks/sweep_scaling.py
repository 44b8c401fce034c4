"""Members per second of `dsorl.sweep` as the sweep grows, on 1 and 4 forced CPU devices.

    nice python benchmarks/sweep_scaling.py [configs/sweep_scaling.yaml] [--set key=value ...]

The work is the `sweep_scaling` job (see `dsorl/jobs/sweep_scaling.py` for what is
measured and how: a plain `jit(vmap)` against `dsorl.sweep` in memory and on disk, each
device count in its own process); this script prints the main columns and writes the
full table, meta.json and throughput.png to the config's output_dir. Run it with `nice`:
the machine is shared, timings are noisy; compare ratios within a run.
"""
import argparse
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

from dsorl import compilation  # noqa: E402
from dsorl import config as config_lib  # noqa: E402
from dsorl.jobs import sweep_scaling  # noqa: E402
from dsorl.plots import plot_results  # noqa: E402
from dsorl.results import format_table, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs/sweep_scaling.yaml"),
                        help="YAML config file (default: configs/sweep_scaling.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (dotted keys for nesting)")
    args = parser.parse_args(argv)
    compilation.configure()  # persistent cache (DSORL_CACHE_DIR, DSORL_CACHE=0), meta record
    cfg = config_lib.load_config(args.config, args.set)
    result = sweep_scaling.run(cfg, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    rows = result["tables"]["sweep_scaling"]
    print(format_table([{k: r[k] for k in sweep_scaling.PRINTED} for r in rows], floatfmt=".3g"))
    path = write_results(cfg["output_dir"], cfg, tables=result["tables"], seeds=result["seeds"])
    plot_results(path, out_dir=path)  # throughput.png (the job's `figures`)
    print(f"\nwritten to {path}/ (times: medians of {cfg['repeats']} runs after a warm-up;"
          " ratios > 1 mean the sweep is slower than the plain vmap)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
