"""Mean-field Langevin PG: throughput and peak memory against NumPy, and convergence curves.

    python benchmarks/meanfield.py [CONFIG] [--set key=value ...]

CONFIG defaults to configs/meanfield_benchmark.yaml (keys: see
dsorl/jobs/meanfield_benchmark.py). Each (implementation, N) runs in its own subprocess so
that its peak RSS is its own. Prints the tables and writes CSV tables, arrays.npz,
meta.json (config, versions, devices, git commit) and two PNG plots to the config's
output_dir. The machine is shared: run it with `nice`, compare only ratios measured in one
run, and repeat it to see the spread.
"""
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

from dsorl.jobs import meanfield_benchmark  # noqa: E402
from dsorl.jobs._script import script_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    return script_main(meanfield_benchmark, "configs/meanfield_benchmark.yaml", __doc__, argv, root=ROOT)


if __name__ == "__main__":
    sys.exit(main())
