"""Scaling study of DynPG against vanilla softmax PG (exact gradients) on committal chains.

    python benchmarks/dynpg_scaling.py [CONFIG] [--set key=value ...]

CONFIG defaults to configs/dynpg_scaling.yaml. Prints the tables, writes CSV tables and
meta.json (config, versions, devices) and log-log plots to the config's output_dir.
"""
import argparse
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

from dsorl import config as config_lib  # noqa: E402
from dsorl.jobs import dynpg_scaling  # noqa: E402
from dsorl.results import format_table, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def plot(tables: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (name, axis, label) in zip(axes, (("horizon", "horizon", "effective horizon 1/(1-γ)"),
                                              ("chain", "n", "chain length n (γ fixed)"))):
        rows = tables[name]
        for key in sorted({(r["method"], str(r["step_size"])) for r in rows}):
            sel = [r for r in rows if (r["method"], str(r["step_size"])) == key]
            ok = [r for r in sel if not r["censored"]]
            if not ok:
                continue
            style = "o-" if key[0] == "dynpg" else "s--"
            ax.loglog([r[axis] for r in ok], [r["steps_to_eps"] for r in ok], style,
                      label=f"{key[0]} {key[1]}")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("gradient steps to ε-optimality")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("DynPG vs vanilla softmax PG on committal chains (censored runs omitted)")
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=130)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs/dynpg_scaling.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    cfg = config_lib.load_config(args.config, args.set)
    print("devices:", jax.devices())
    result = dynpg_scaling.run(cfg)
    for name, rows in result["tables"].items():
        print(f"\n== {name} ==\n{format_table(rows, '.4g')}")
    out = write_results(ROOT / cfg["output_dir"], cfg, tables=result["tables"],
                        seeds=result["seeds"])
    plot(result["tables"], out)
    print(f"\nresults written to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
