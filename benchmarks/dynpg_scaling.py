"""Scaling study of DynPG against vanilla softmax PG (exact gradients) on committal chains.

    python benchmarks/dynpg_scaling.py [CONFIG] [--set key=value ...]

CONFIG defaults to configs/dynpg_scaling.yaml. Prints the tables, writes CSV tables and
meta.json (config, versions, devices) and log-log plots to the config's output_dir.
"""
import argparse
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

from dsorl import compilation  # noqa: E402
from dsorl import config as config_lib  # noqa: E402
from dsorl.jobs import dynpg_scaling  # noqa: E402
from dsorl.plots import plot_results  # noqa: E402
from dsorl.results import format_table, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs/dynpg_scaling.yaml"),
                        help="YAML config file (default: configs/dynpg_scaling.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (dotted keys for nesting)")
    args = parser.parse_args(argv)
    compilation.configure()  # persistent cache (DSORL_CACHE_DIR, DSORL_CACHE=0), meta record
    cfg = config_lib.load_config(args.config, args.set)
    print("devices:", jax.devices())
    result = dynpg_scaling.run(cfg)
    for name, rows in result["tables"].items():
        print(f"\n== {name} ==\n{format_table(rows, '.4g')}")
    out = write_results(ROOT / cfg["output_dir"], cfg, tables=result["tables"],
                        seeds=result["seeds"])
    plot_results(out, out_dir=out)  # the job's `figures`
    print(f"\nresults written to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
