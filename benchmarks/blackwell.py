"""The average-reward frontier: Blackwell thresholds, Laurent-series truncation error, the n-level policy gradient, mixing-time regularisation and second-order Chain Iteration.

    nice python benchmarks/blackwell.py [CONFIG] [--set key=value ...]

CONFIG defaults to configs/blackwell.yaml; its `sections` list chooses the studies. What is
computed and how is in `dsorl/jobs/blackwell.py`: the Blackwell thresholds gamma* of the six
nBw environments, the truncation error of the Laurent series of v_gamma against
rho = (1 - gamma) / gamma (with a log-log figure), and nBw-PG against the n-level barrier
method (`dsorl.algorithms.blackwell`) on `blackwell_tie` and the nBw environments, the
mixing-measure comparison and regularisation trade-off (`dsorl.jobs.mixing_study`, with its
trade-off figure) and Newton against first-order Chain Iteration with the surrogate-Hessian
gap (`dsorl.jobs.chain_newton`, with its figures). Prints the
tables, writes CSV tables, arrays, meta.json and the figures to the config's output_dir.
Also `dsorl run configs/blackwell.yaml`.
"""
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

from dsorl.jobs import blackwell  # noqa: E402
from dsorl.jobs._script import script_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    return script_main(blackwell, "configs/blackwell.yaml", __doc__, argv, root=ROOT,
                       printed=["thresholds", "laurent_slopes", "policy_gradient", "newton_convergence",
                                "mixing_correlation", "mixing_tradeoff"])


if __name__ == "__main__":
    sys.exit(main())
