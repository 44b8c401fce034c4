"""Sampled DynPG vs REINFORCE on Sutton-extended: success probability against interactions.

    python benchmarks/dynpg_sutton.py [CONFIG] [--set key=value ...]

CONFIG defaults to configs/dynpg_sutton.yaml. Prints the summary (success rates, JAX time
per run against a per-run NumPy loop, compile time apart), writes CSV tables, the
first-success counts (arrays.npz), meta.json and success_curves.png to the output_dir.
"""
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

from dsorl.jobs import dynpg_sutton  # noqa: E402
from dsorl.jobs._script import script_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    return script_main(dynpg_sutton, "configs/dynpg_sutton.yaml", __doc__, argv, root=ROOT, printed=["summary"])


if __name__ == "__main__":
    sys.exit(main())
