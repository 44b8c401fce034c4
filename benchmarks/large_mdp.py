"""Large-MDP benchmark: exact quantities on sparse MDPs, 10^3 to 10^6 states.

    nice python benchmarks/large_mdp.py [CONFIG] [--set key=value ...]

CONFIG defaults to configs/large_mdp.yaml. What is measured and how is in
`dsorl/jobs/large_mdp.py`: value, value + gradient, gain + bias, bias gradient, value
iteration and one natural-PG step on a sparse garnet and a gridworld, by dsorl's sparse
path, dsorl's dense path (small S) and SciPy (spsolve, gmres) in the same run. Prints the
tables (timings, fitted exponents and crossover, goals), writes CSV tables, meta.json
(config, versions, seeds) and the scaling figure to the config's output_dir. Also
`dsorl run configs/large_mdp.yaml`.
"""
import argparse
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

from dsorl import compilation  # noqa: E402
from dsorl import config as config_lib  # noqa: E402
from dsorl.jobs import large_mdp  # noqa: E402
from dsorl.plots import plot_results  # noqa: E402
from dsorl.results import format_table, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs/large_mdp.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    compilation.configure()  # persistent cache (DSORL_CACHE_DIR, DSORL_CACHE=0), meta record
    cfg = config_lib.load_config(args.config, args.set)
    result = large_mdp.run(cfg)
    out = write_results(ROOT / cfg["output_dir"], cfg, tables=result["tables"],
                        seeds=result["seeds"])
    plot_results(out, out_dir=out)  # the job's `figures`
    for name, rows in result["tables"].items():
        print(f"\n== {name} ==\n{format_table(rows, '.4g')}")
    print(f"\nresults written to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
