"""Core benchmark: exact chain quantities and their gradients against NumPy and pymdptoolbox.

    nice python benchmarks/core_eval.py [configs/core_eval.yaml] [--set key=value ...]
                                        [--only main|value_iteration|gamma_sweep ...]

The work is the `core_eval` job (see `dsorl/jobs/core_eval.py` for what is measured and
how; the baselines are in `dsorl/jobs/_baselines.py`); this script adds the OpenBLAS
environment fix and the BLAS record, prints the tables and writes CSV tables and meta.json
(config, versions, devices, git commit, BLAS libraries, load average) and PNG figures
to the config's output_dir. `--only` sets the config's `parts`. float64, CPU. The machine
is shared: run it under `nice`, compare ratios within one run.
OpenBLAS: `OPENBLAS_CORETYPE` and `OPENBLAS_L2_SIZE`, set on some machines for older
OpenBLAS builds, slow a current one down; this script unsets both in its own process
before NumPy loads, and records what it unset and which kernels threadpoolctl reports
(`blas_threads` in the config caps OpenBLAS's threads).
"""
import os
import sys

BLAS_ENV_UNSET = {k: os.environ.pop(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                  if k in os.environ}
os.environ.setdefault("JAX_ENABLE_X64", "1")

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

from dsorl import compilation  # noqa: E402
from dsorl import config as config_lib  # noqa: E402
from dsorl.jobs import core_eval  # noqa: E402
from dsorl.plots import plot_results  # noqa: E402
from dsorl.results import format_table, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs/core_eval.yaml"),
                        help="YAML config file (default: configs/core_eval.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (dotted keys for nesting)")
    parser.add_argument("--only", choices=list(core_eval.PARTS), action="append",
                        help="run only these parts (repeatable; sets `parts`)")
    args = parser.parse_args(argv)
    compilation.configure()  # persistent cache (DSORL_CACHE_DIR, DSORL_CACHE=0), meta record
    overrides = args.set + ([f"parts=[{', '.join(args.only)}]"] if args.only else [])
    cfg = config_lib.load_config(args.config, overrides)
    log = lambda msg: print(msg, flush=True)
    log(f"OpenBLAS variables unset: {BLAS_ENV_UNSET or 'none were set'}")
    extra = {"load_average_at_start": os.getloadavg()}
    result = core_eval.run(cfg, log)
    tables = result["tables"]
    extra.update(result["extra"])
    extra["blas"] = {"unset_in_this_process": BLAS_ENV_UNSET, "threadpools": extra["blas"]}
    extra["rows"] = tables
    extra["load_average_at_end"] = os.getloadavg()
    out = write_results(cfg["output_dir"], cfg, tables=tables, seeds=result["seeds"], extra=extra)
    plot_results(out, out_dir=out)  # speedups.png, gamma_sweep.png (the job's `figures`)
    for name, table in tables.items():
        print(f"\n== {name} ==\n{format_table(table, floatfmt='.4g')}")
    for row in extra.get("skipped", []):
        print(f"skipped: {row}")
    print(f"\nresults in {out}/ (meta.json holds every table as JSON, the config and versions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
