"""The default job (`dsorl run configs/default.yaml`) end to end on a coarse grid."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_default_config_runs_and_writes_results(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "dsorl.cli", "run", str(ROOT / "configs" / "default.yaml"),
         "--set", "grid.step=5.0", "--set", "envs=[A1, B2]", "--output-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "B2" in out.stdout and "True" in out.stdout
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["config"]["grid"]["step"] == 5.0 and meta["environment"]["x64"]
    summary = (tmp_path / "summary.csv").read_text().splitlines()
    assert len(summary) == 3 and summary[0].startswith("env,")
    arrays = np.load(tmp_path / "arrays.npz")
    assert arrays["B2_gain"].shape == (25,)
    # the grid's best gain cannot beat the optimum found by enumeration
    assert arrays["B2_gain"].max() <= 13.344537815126051 + 1e-9


def test_bad_config_key_is_reported(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "dsorl.cli", "run", str(ROOT / "configs" / "default.yaml"),
         "--set", "gird.step=5"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "unknown config key 'gird'" in out.stderr and "grid" in out.stderr
