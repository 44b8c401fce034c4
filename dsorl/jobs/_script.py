"""The one `main` of the thin benchmark scripts: parse, run the job, write, draw, print.

    sys.exit(script_main(dynpg_scaling, "configs/dynpg_scaling.yaml", __doc__, root=ROOT))

Arguments: an optional CONFIG (default `root / default_config`) and `--set KEY=VALUE`
overrides. The persistent compilation cache is set up first (`dsorl.compilation`), then
the job runs; its results are written (CSV tables, arrays, meta.json) before anything is
printed, so a closed pipe never loses them, then its figures are drawn into the output
directory (`dsorl.plots.plot_results`, the job's `figures`), then the tables listed in
`printed` (default: all) are printed.
"""
import argparse
from pathlib import Path
from typing import Optional, Sequence

from dsorl import compilation
from dsorl import config as config_lib
from dsorl.plots import plot_results
from dsorl.results import format_table, write_results

__all__ = ["script_main"]


def script_main(job, default_config: str, description: str, argv=None, *, root: Path,
                printed: Optional[Sequence[str]] = None) -> int:
    """Run `job` (a module with `run(config) -> {"tables", "arrays", "seeds"}`) as a script;
    `root`: the repository root the default config and a relative `output_dir` hang from."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=str(root / default_config),
                        help=f"YAML config file (default: {default_config})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (dotted keys for nesting)")
    args = parser.parse_args(argv)
    compilation.configure()  # persistent cache (DSORL_CACHE_DIR, DSORL_CACHE=0), meta record
    cfg = config_lib.load_config(args.config, args.set)
    result = job.run(cfg)
    tables = result["tables"]
    out = write_results(root / cfg["output_dir"], cfg, tables=tables,
                        arrays=result.get("arrays"), seeds=result.get("seeds"))
    plot_results(out, out_dir=out)  # the job's `figures`
    for name in (tables if printed is None else [n for n in printed if n in tables]):
        print(f"\n== {name} ==\n{format_table(tables[name], '.4g')}")
    print(f"\nresults written to {out}/")
    return 0
