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
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

from dsorl.jobs import large_mdp  # noqa: E402
from dsorl.jobs._script import script_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    return script_main(large_mdp, "configs/large_mdp.yaml", __doc__, argv, root=ROOT)


if __name__ == "__main__":
    sys.exit(main())
