"""Scaling study of DynPG against vanilla softmax PG (exact gradients) on committal chains.

    python benchmarks/dynpg_scaling.py [CONFIG] [--set key=value ...]

CONFIG defaults to configs/dynpg_scaling.yaml. Prints the tables, writes CSV tables and
meta.json (config, versions, devices) and log-log plots to the config's output_dir.
"""
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

from dsorl.jobs import dynpg_scaling  # noqa: E402
from dsorl.jobs._script import script_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    return script_main(dynpg_scaling, "configs/dynpg_scaling.yaml", __doc__, argv, root=ROOT)


if __name__ == "__main__":
    sys.exit(main())
