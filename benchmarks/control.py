"""Neural policies on a gymnax control environment: dsorl's PCO, DSO Algorithm 1 and
REINFORCE with a baseline against rejax's PPO (same environment steps, seeds as one vmap).

    python benchmarks/control.py [CONFIG] [--set key=value ...]

CONFIG defaults to configs/control.yaml. Prints the tables, writes CSV tables and
meta.json (config, versions, devices) and learning-curve PNGs to the config's output_dir.
"""
import sys
from pathlib import Path

# float32, as rejax's PPO: no x64 here

from dsorl.jobs import control  # noqa: E402
from dsorl.jobs._script import script_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    # scores (one row per seed and evaluation) stay in scores.csv
    return script_main(control, "configs/control.yaml", __doc__, argv, root=ROOT,
                       printed=["curves", "final", "hyperparameters"])


if __name__ == "__main__":
    sys.exit(main())
