"""Sweep throughput: members per second of `dsorl.sweep` as the sweep grows, on forced
CPU device counts, against a plain `jit(vmap)`. Run: `nice python benchmarks/sweep_scaling.py`.

The swept algorithm is vanilla softmax PG with exact gradients (`dsorl.algorithms.pg`,
`n_steps` steps on a small garnet); members differ in γ and seed. For every batch size B
and device count, three ways to run the same B members:

- `vmap`: `jax.jit(jax.vmap(member))` on the materialised batch, default device (the
  baseline a user would write);
- `sweep`: `dsorl.sweep.sweep` (grid gathering, padding to the device count, sharding
  over the mesh, one chunk while it fits in memory), results in memory;
- `sweep+disk`: the same, writing chunks of `disk_chunk` members to disk as it goes
  (the resumable mode), in a fresh directory each run.

Timing (`dsorl.timing`): the vmap program is compiled apart (`compile_vmap_s`); one
warm-up round runs all three (the sweeps compile in it: `compile_sweep_s`, and their
objectives are checked against vmap's: `max_abs_diff`); then `repeats` rounds, one run of
each per round, report medians: vmap's wall time, the sweeps' own `run_seconds` (their
set-up left out). Each device count runs in its own process (XLA's forced host devices are
fixed at start). The machine is shared: run with `nice`, compare ratios within a run.

Table `sweep_scaling`, one row per (device count, B): devices, B, chunk (members per
compiled call); vmap_s, sweep_s, sweep_disk_s (median seconds); vmap_members_per_s,
sweep_members_per_s, sweep_disk_members_per_s; sweep_over_vmap, disk_over_vmap (time
ratios); compile_vmap_s, compile_sweep_s; max_abs_diff (sweep against vmap); device
(platform). Figure (`figures`): members per second against B.
"""
import json
import os
import subprocess
import sys
import tempfile

from dsorl import progress

__all__ = ["DEFAULTS", "PRINTED", "run", "worker", "figures"]

DEFAULTS = {
    "sizes": [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536],
    "devices": [1, 4],
    "repeats": 3,
    "env": {"n_states": 5, "n_actions": 3, "branching": 3, "seed": 0},
    "n_steps": 20,
    "disk_chunk": 4096,       # the on-disk variant writes chunks of this many members
    "output_dir": "benchmarks/results/sweep_scaling",
}
PRINTED = ["devices", "B", "chunk", "vmap_members_per_s", "sweep_members_per_s",
           "sweep_disk_members_per_s", "sweep_over_vmap", "disk_over_vmap",
           "compile_vmap_s", "compile_sweep_s", "max_abs_diff"]
ROW_PREFIX = '{"devices": '  # how a worker's finished row starts on its stderr


def run(config: dict, log=progress.note) -> dict:
    """Table `sweep_scaling`: one row per (device count, B); see the module docstring."""
    rows = []
    total = len(config["devices"]) * len(config["sizes"])
    with progress.task("sweep_scaling", total, unit="(devices, B) settings") as bar:
        for n in config["devices"]:
            # the worker reports each finished size on stderr as a JSON row: one step each
            env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
                       DSORL_PROGRESS="0")
            proc = subprocess.Popen([sys.executable, "-m", "dsorl.jobs.sweep_scaling",
                                     json.dumps(config)], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            tail = []
            for line in proc.stderr:
                if line.startswith(ROW_PREFIX):
                    bar.advance()
                tail = (tail + [line])[-60:]
            stdout = proc.stdout.read()
            if proc.wait():
                raise RuntimeError(f"sweep_scaling worker on {n} device(s) failed:\n"
                                   f"{''.join(tail)[-3000:]}")
            rows += json.loads(stdout.splitlines()[-1])
            log(f"{n} device(s): {len(config['sizes'])} sizes done")
    return {"tables": {"sweep_scaling": rows}, "arrays": {}, "seeds": [config["env"]["seed"]]}


def worker(cfg: dict) -> list:
    """The rows of one device count (run in a process started with its XLA_FLAGS)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    import dsorl
    from dsorl import sweep as sw
    from dsorl import timing
    from dsorl.algorithms import pg

    env = cfg["env"]
    mdp = dsorl.envs.garnet(jax.random.key(env["seed"]), env["n_states"], env["n_actions"],
                            env["branching"])
    params0 = jnp.zeros(mdp.R.shape)
    config = pg.Config(n_steps=cfg["n_steps"])
    hparams = lambda p: pg.HParams(gamma=p["gamma"], step_size=1.0)
    metrics = lambda s, t, m: {"objective": t.objective[-1]}
    n_dev = len(jax.devices())

    def member(gamma, seed):
        _, trace = pg.run(mdp, params0, pg.HParams(gamma, 1.0), jax.random.key(seed), config=config)
        return trace.objective[-1]

    rows = []
    for B in cfg["sizes"]:
        n_gamma = min(B, 16)
        gammas = np.linspace(0.5, 0.99, n_gamma)
        grid = sw.Grid(gamma=gammas, seed=np.arange(B // n_gamma))
        g_flat = np.repeat(gammas, B // n_gamma)
        s_flat = np.tile(np.arange(B // n_gamma), n_gamma)
        plain, compile_vmap = timing.compile(jax.vmap(member), g_flat, s_flat)

        def in_memory():
            return sw.sweep(pg.run, mdp, grid, config=config, params0=params0,
                            hparams=hparams, metrics=metrics)

        def on_disk():
            with tempfile.TemporaryDirectory() as d:
                return sw.sweep(pg.run, mdp, grid, config=config, params0=params0,
                                hparams=hparams, chunk_size=cfg["disk_chunk"], out_dir=d,
                                metrics=metrics)

        calls = {"vmap": lambda: plain(g_flat, s_flat), "sweep": in_memory, "sweep+disk": on_disk}
        first = {name: call() for name, call in calls.items()}  # warm-up round (sweeps compile)
        compile_sweep = sum(first["sweep"].meta["compile_seconds"].values())
        check = float(np.max(np.abs(first["sweep"].table["objective"] - np.asarray(first["vmap"]))))
        run_seconds = lambda res: res.meta["run_seconds"]
        t = timing.compare(calls, repeats=cfg["repeats"], warmup=0,
                           own_seconds={"sweep": run_seconds, "sweep+disk": run_seconds})
        med = {k: v.median_seconds for k, v in t.items()}
        rows.append({
            "devices": n_dev, "B": B, "chunk": t["sweep"].result.meta["chunk_size"]["all"],
            "vmap_s": med["vmap"], "sweep_s": med["sweep"], "sweep_disk_s": med["sweep+disk"],
            "vmap_members_per_s": B / med["vmap"], "sweep_members_per_s": B / med["sweep"],
            "sweep_disk_members_per_s": B / med["sweep+disk"],
            "sweep_over_vmap": med["sweep"] / med["vmap"],
            "disk_over_vmap": med["sweep+disk"] / med["vmap"],
            "compile_vmap_s": compile_vmap, "compile_sweep_s": compile_sweep,
            "max_abs_diff": check, "device": str(jax.devices()[0].platform),
        })
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def figures(tables, arrays, config, plt) -> dict:
    """`throughput`: members per second against the batch size B (log-log), one panel per
    device count, one line per way of running (plain vmap, sweep, sweep to disk)."""
    import numpy as np

    from dsorl import plots

    t = tables["sweep_scaling"]
    devices = sorted(set(t["devices"].tolist()))
    ways = [("vmap_members_per_s", "jit(vmap)"), ("sweep_members_per_s", "dsorl.sweep"),
            ("sweep_disk_members_per_s", "dsorl.sweep to disk")]
    fig, axs = plots.facets(plt, len(devices), sharey=True)
    for ax, n in zip(axs, devices):
        sel = t["devices"] == n
        order = np.argsort(t["B"][sel])
        for (col, label), colour in zip(ways, plots.palette(len(ways))):
            ax.plot(t["B"][sel][order], t[col][sel][order], "o-", color=colour, label=label)
        plots.log_ticks(ax, t["B"])
        ax.set_yscale("log")
        ax.set_xlabel("members B")
        ax.set_ylabel("members per second")
        ax.set_title(f"{n} device(s)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axs[0].get_legend_handles_labels()
    plots.legend_outside(fig, handles, labels)
    env = config["env"]
    fig.suptitle(f"sweep_scaling: softmax PG, {config['n_steps']} steps on a garnet"
                 f" (S={env['n_states']}, A={env['n_actions']}); medians of"
                 f" {config['repeats']} runs", fontsize=10)
    fig.tight_layout()
    return {"throughput": fig}


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))
