"""The `dsorl` command.

    dsorl run CONFIG [--set key=value ...]   run a job, print its tables, save results
    dsorl list                               jobs and environments
"""
import argparse
import sys

from dsorl import config as config_lib


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dsorl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run the job a config names")
    run_p.add_argument("config", help="YAML config file (see configs/)")
    run_p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value (dotted keys for nesting)")
    run_p.add_argument("--output-dir", help="where to write results (default: the config's)")
    sub.add_parser("list", help="list jobs and environments")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        return _list()
    except ValueError as err:
        print(f"dsorl: error: {err}", file=sys.stderr)
        return 2


def _run(args) -> int:
    cfg = config_lib.load_config(args.config, args.set)
    import jax

    jax.config.update("jax_enable_x64", True)  # exact analysis and references need float64
    from dsorl.results import format_table, write_results

    out = args.output_dir or cfg.get("output_dir", f"results/{cfg['job']}")
    result = config_lib.job_module(cfg["job"]).run(cfg)
    for name, rows in result.get("tables", {}).items():
        print(f"\n== {name} ==\n{format_table(rows)}")
    path = write_results(out, cfg, tables=result.get("tables"), arrays=result.get("arrays"),
                         seeds=result.get("seeds"))
    print(f"\nresults written to {path}/")
    return 0


def _list() -> int:
    from dsorl import envs

    print("jobs:", ", ".join(config_lib.available_jobs()))
    print("environments: garnet (random), nbw:", ", ".join(envs.NBW_NAMES),
          "| gymnasium toy-text: FrozenLake-v1, CliffWalking-v1, Taxi-v3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
