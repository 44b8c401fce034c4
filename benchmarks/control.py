"""Neural policies on a gymnax control environment: dsorl's PCO, DSO Algorithm 1 and
REINFORCE with a baseline against rejax's PPO (same environment steps, seeds as one vmap).

    python benchmarks/control.py [CONFIG] [--set key=value ...]

CONFIG defaults to configs/control.yaml. Prints the tables, writes CSV tables and
meta.json (config, versions, devices) and learning-curve PNGs to the config's output_dir.
"""
import argparse
import sys
from pathlib import Path

import jax

# float32, as rejax's PPO: no x64 here
from dsorl import compilation  # noqa: E402
from dsorl import config as config_lib  # noqa: E402
from dsorl.jobs import control  # noqa: E402
from dsorl.plots import plot_results  # noqa: E402
from dsorl.results import format_table, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs/control.yaml"),
                        help="YAML config file (default: configs/control.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (dotted keys for nesting)")
    args = parser.parse_args(argv)
    compilation.configure()  # persistent cache (DSORL_CACHE_DIR, DSORL_CACHE=0), meta record
    cfg = config_lib.load_config(args.config, args.set)
    print("devices:", jax.devices())
    result = control.run(cfg)
    for name, rows in result["tables"].items():
        if name != "scores":  # one row per seed and evaluation: in scores.csv
            print(f"\n== {name} ==\n{format_table(rows, '.4g')}")
    out = write_results(ROOT / cfg["output_dir"], cfg, tables=result["tables"],
                        seeds=result["seeds"])
    plot_results(out, out_dir=out)  # the job's `figures`
    print(f"\nresults written to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
