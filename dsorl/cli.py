"""The `dsorl` command.

    dsorl run CONFIG [--set key=value ...]     run a job, save its results, print its tables
    dsorl run CONFIG|JOB --show-config         the job's keys with their values and defaults
    dsorl sweep CONFIG [--set key=value ...]   run a sweep job: one row per member, resumable
    dsorl plot RESULTS [--out DIR]             PNG figures of a result directory
    dsorl list                                 jobs, algorithms and environments

CONFIG is a YAML file (configs/) or a job's name (its defaults). The output directory is
checked before a job runs: a directory holding another job's results is refused unless
--force. A user error prints one `dsorl: error:` line and exits with code 2; Ctrl-C
exits with code 130, a `run` job leaving what it finished (meta.json status
"interrupted"), a sweep its finished chunks (the same command resumes).

Compiled programs are kept in a cache directory (see --cache-dir, --no-cache), so a rerun
of a command loads them instead of compiling again; meta.json records what compiling cost.

Several processes run one sweep together when each is started with the same command plus
`--coordinator HOST:PORT --num-processes N --process-id I` (jax.distributed).
"""
import argparse
import os
import sys

from dsorl import config as config_lib


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dsorl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, what in (("run", "run the job a config names"),
                       ("sweep", "run a sweep job (resumes from its output directory)")):
        p = sub.add_parser(name, help=what)
        p.add_argument("config", help="YAML config file (see configs/)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value (dotted keys for nesting)")
        p.add_argument("--output-dir", help="where to write results (default: the config's)")
        p.add_argument("--force", action="store_true",
                       help="replace another job's results in the output directory")
        p.add_argument("--show-config", action="store_true",
                       help="print the job's keys with their values and defaults, run nothing")
        p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="compile lines and progress bars on stderr (default: when stderr"
                            " is a terminal, or DSORL_PROGRESS=1)")
        p.add_argument("--cache-dir", metavar="DIR",
                       help="persistent compilation cache (default: $DSORL_CACHE_DIR, else"
                            " $XDG_CACHE_HOME/dsorl/jax or ~/.cache/dsorl/jax)")
        p.add_argument("--no-cache", action="store_true",
                       help="compile without the persistent cache (also DSORL_CACHE=0)")
    sweep_p = sub.choices["sweep"]
    sweep_p.add_argument("--overwrite", action="store_true",
                         help="discard results of a different sweep in the output directory")
    sweep_p.add_argument("--coordinator", metavar="HOST:PORT",
                         help="jax.distributed coordinator address (several processes)")
    sweep_p.add_argument("--num-processes", type=int, help="number of processes (with --coordinator)")
    sweep_p.add_argument("--process-id", type=int, help="this process's index (with --coordinator)")
    plot_p = sub.add_parser("plot", help="draw PNG figures of a result directory")
    plot_p.add_argument("results", help="a result directory of `dsorl run` or `dsorl sweep`")
    plot_p.add_argument("--out", help="where to write the PNGs (default: RESULTS/plots)")
    plot_p.add_argument("--metric", action="append", default=None,
                        help="metric to plot (repeatable; default: all)")
    sub.add_parser("list", help="list jobs, algorithms and environments")
    args = parser.parse_args(argv)
    from dsorl import progress

    progress.configure(getattr(args, "progress", None))  # for this command only
    try:
        if args.command in ("run", "sweep"):
            from dsorl import compilation

            # a rerun loads what an earlier command compiled (meta.json: "compilation")
            with compilation.session(args.cache_dir, enabled=False if args.no_cache else None):
                return _run(args) if args.command == "run" else _sweep(args)
        if args.command == "plot":
            return _plot(args)
        return _list()
    except ValueError as err:
        print(f"dsorl: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dsorl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout's reader went away (`dsorl run ... | head`): results are on disk
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
        return 141
    finally:
        progress.configure(None)


def _run(args) -> int:
    cfg = config_lib.load_config(args.config, args.set)
    if args.show_config:
        return _show_config(cfg)
    module = config_lib.job_module(cfg["job"])
    if not callable(getattr(module, "run", None)):
        return _sweep(args, cfg)
    import jax

    jax.config.update("jax_enable_x64", True)  # exact analysis and references need float64
    from dsorl.results import Interrupted, check_output_dir, format_table

    out = check_output_dir(args.output_dir or cfg.get("output_dir", f"results/{cfg['job']}"),
                           cfg, force=args.force)
    try:
        result = module.run(cfg)
    except KeyboardInterrupt as stop:
        partial = stop.partial if isinstance(stop, Interrupted) else {}
        _write(out, cfg, partial, status="interrupted")
        what = ("what it finished" if partial.get("tables") or partial.get("arrays")
                else "its config (no finished part)")
        print(f"dsorl: interrupted; {what} written to {out}/ (status: interrupted)",
              file=sys.stderr)
        return 130
    _write(out, cfg, result)
    figures = _figures(out)
    # files first: whatever happens to stdout (`| head`), the results are on disk
    for name, rows in result.get("tables", {}).items():
        print(f"\n== {name} ==\n{format_table(rows)}")
    print(f"\nresults written to {out}/; {figures}")
    return 0


def _figures(out) -> str:
    """Draw the job's figures into `out/plots`; says what it drew (or why not)."""
    from dsorl import plots

    try:
        paths = plots.plot_results(out)
    except ValueError as err:  # matplotlib missing: the results stand without figures
        return f"no figures ({err})"
    return f"{len(paths)} figure(s) in {out}/plots/" if paths else "no figures"


def _write(out, cfg, result, status="complete"):
    from dsorl.results import write_results

    return write_results(out, cfg, tables=result.get("tables"), arrays=result.get("arrays"),
                         seeds=result.get("seeds"), extra=result.get("extra"), status=status)


def _show_config(cfg: dict) -> int:
    import yaml

    module = config_lib.job_module(cfg["job"])
    print(f"# {cfg['job']}: {config_lib.summary(module.__doc__)}")
    print("# every key with its value (the job's default unless the config or --set gives one)")
    print(yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None).rstrip())
    return 0


def _sweep(args, cfg=None) -> int:
    cfg = cfg or config_lib.load_config(args.config, args.set)
    if args.show_config:
        return _show_config(cfg)
    module = config_lib.job_module(cfg["job"])
    if not config_lib.is_sweep_job(module):
        sweeps = [n for n, kinds, _ in config_lib.job_summaries() if "sweep" in kinds]
        raise ValueError(f"job {cfg['job']!r} is not a sweep (it has no sweep_spec); sweep jobs:"
                         f" {', '.join(sweeps) or 'none'}. Use `dsorl run` for it.")
    coordinator = getattr(args, "coordinator", None)
    if coordinator is not None or getattr(args, "num_processes", None) is not None:
        if coordinator is None or args.num_processes is None or args.process_id is None:
            raise ValueError("several processes need --coordinator, --num-processes and --process-id.")
    import jax

    if coordinator is not None:
        jax.distributed.initialize(coordinator_address=coordinator,
                                   num_processes=args.num_processes, process_id=args.process_id)
    jax.config.update("jax_enable_x64", True)
    from dsorl import sweep as sweep_lib
    from dsorl.results import check_output_dir, format_table, write_results

    settings = cfg["sweep"]
    out = check_output_dir(args.output_dir or cfg.get("output_dir", f"results/{cfg['job']}"))
    overwrite = getattr(args, "overwrite", False) or args.force
    if (out / "meta.json").exists() and not (out / "sweep.json").exists() and not overwrite:
        raise ValueError(f"output directory {str(out)!r} holds the results of another job"
                         " (not a sweep); use another --output-dir, or --force to replace them.")
    spec = dict(module.sweep_spec(cfg))
    progress = getattr(args, "progress", None)
    try:
        result = _run_sweep(sweep_lib, spec, settings, out, overwrite, progress, cfg)
    except KeyboardInterrupt:
        print(f"dsorl: interrupted; the finished chunks are in {out}/chunks: the same command"
              " resumes", file=sys.stderr)
        return 130
    if jax.process_index() != 0:
        return 0
    grid = spec["grid"]
    seeds = grid.axes["seed"].values.tolist() if "seed" in grid.axes else None
    write_results(out, cfg, tables={"table": result.table}, arrays=result.traces, seeds=seeds,
                  extra={"sweep": result.meta})
    print(f"\n== {cfg['job']}: {len(result)} members ==\n{format_table(result.table, max_rows=20)}")
    m = result.meta
    rate = m["members_per_second"]
    print(f"\n{m['members_computed']} members computed in {m['chunks']} chunk(s)"
          f" ({m['members'] - m['members_computed']} were on disk) on {len(m['devices'])}"
          f" device(s) x {m['processes']} process(es);"
          f" compile {sum(m['compile_seconds'].values()):.2f} s, run {m['run_seconds']:.2f} s"
          + (f", {rate:.4g} members/s" if rate else ""))
    print(f"results written to {out}/")
    return 0


def _run_sweep(sweep_lib, spec, settings, out, overwrite, progress, cfg):
    traces = settings["traces"]
    return sweep_lib.sweep(
        **spec, traces=True if "all" in traces else list(traces),
        trace_every=settings["trace_every"], chunk_size=settings["chunk_size"],
        memory_budget=settings["memory_budget_mb"] * 2 ** 20, out_dir=out,
        overwrite=overwrite,
        progress=settings["progress"] if progress is None else progress,
        record=_sweep_record(cfg))


def _sweep_record(cfg: dict) -> dict:
    """What identifies a sweep's results: its config without the settings that only
    change how it runs (chunking, progress, output place)."""
    record = {k: v for k, v in cfg.items() if k != "output_dir"}
    record["sweep"] = {k: v for k, v in cfg["sweep"].items()
                       if k in ("traces", "trace_every")}
    return record


def _plot(args) -> int:
    from dsorl import plots

    paths = plots.plot_results(args.results, out_dir=args.out, metrics=args.metric)
    for p in paths:
        print(p)
    if not paths:
        print("nothing to plot", file=sys.stderr)
    return 0


def _list() -> int:
    from dsorl import envs

    print("jobs (dsorl run / dsorl sweep CONFIG):")
    for name, kinds, summary in config_lib.job_summaries():
        print(f"  {name:24s} [{kinds}] {summary}")
    print("algorithms (the contract of dsorl.algorithms.base; dsorl.sweep and the sweep_algorithm"
          " job take them):")
    algorithms = _algorithms()
    for name, summary in algorithms:
        print(f"  {name:24s} {summary}")
    if not algorithms:
        print("  (none yet)")
    print("environments (dsorl.envs.make(name, **kwargs)):")
    for name, description in envs.registry().items():
        print(f"  {name:24s} {description}")
    return 0


def _algorithms() -> list:
    """`(name, summary of the docstring [its run functions])` of each `dsorl.algorithms`
    module."""
    import importlib
    import pkgutil

    import dsorl.algorithms

    out = []
    for m in sorted(pkgutil.iter_modules(dsorl.algorithms.__path__), key=lambda m: m.name):
        if m.name.startswith("_") or m.name == "base":  # base: the contract, no algorithm
            continue
        try:
            module = importlib.import_module(f"dsorl.algorithms.{m.name}")
        except Exception as err:  # an algorithm under construction must not break `dsorl list`
            out.append((m.name, f"(cannot import: {type(err).__name__})"))
            continue
        runs = _run_functions(module)
        if runs:
            named = "" if runs == ["run"] else f" [{', '.join(runs)}]"
            out.append((m.name, config_lib.summary(module.__doc__) + named))
    return out


def _run_functions(module) -> list:
    """Public functions of `module` shaped like `run(problem, params0, hparams, key, *, config)`."""
    import inspect

    runs = []
    for name in getattr(module, "__all__", dir(module)):
        fn = getattr(module, name, None)
        if (name.startswith("_") or name.split("_")[-1] in ("step", "init")
                or not inspect.isfunction(fn) or fn.__module__ != module.__name__):
            continue
        params = inspect.signature(fn).parameters
        if "hparams" in params and "key" in params and "config" in params:
            runs.append(name)
    return sorted(runs, key=lambda n: (n != "run", n))


if __name__ == "__main__":
    sys.exit(main())
