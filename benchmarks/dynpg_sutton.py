"""Sampled DynPG vs REINFORCE on Sutton-extended: success probability against interactions.

    python benchmarks/dynpg_sutton.py [CONFIG] [--set key=value ...]

CONFIG defaults to configs/dynpg_sutton.yaml. Prints the summary (success rates, JAX time
per run against a per-run NumPy loop, compile time apart), writes CSV tables, the
first-success counts (arrays.npz), meta.json and success_curves.png to the output_dir.
"""
import argparse
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

from dsorl import compilation  # noqa: E402
from dsorl import config as config_lib  # noqa: E402
from dsorl.jobs import dynpg_sutton  # noqa: E402
from dsorl.plots import plot_results  # noqa: E402
from dsorl.results import format_table, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs/dynpg_sutton.yaml"),
                        help="YAML config file (default: configs/dynpg_sutton.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (dotted keys for nesting)")
    args = parser.parse_args(argv)
    compilation.configure()  # persistent cache (DSORL_CACHE_DIR, DSORL_CACHE=0), meta record
    cfg = config_lib.load_config(args.config, args.set)
    print("devices:", jax.devices())
    result = dynpg_sutton.run(cfg)
    print(f"\n== summary ==\n{format_table(result['tables']['summary'], '.4g')}")
    out = write_results(ROOT / cfg["output_dir"], cfg, tables=result["tables"],
                        arrays=result["arrays"], seeds=result["seeds"])
    plot_results(out, out_dir=out)  # the job's `figures`
    print(f"\nresults written to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
