"""Members per second of `dsorl.sweep` as the sweep grows, on 1 and 4 forced CPU devices.

The swept algorithm is vanilla softmax PG with exact gradients (`dsorl.algorithms.pg`,
`n_steps` steps on a small garnet); members differ in γ and seed. For every batch size B
and device count, three ways to run the same B members, each timed after a warm-up call
(compile time reported apart) as the median of `repeats` runs:

- `vmap`: `jax.jit(jax.vmap(member))` on the materialised batch, default device (the
  baseline a user would write);
- `sweep`: `dsorl.sweep.sweep` (grid gathering, padding to the device count, sharding
  over the mesh, one chunk while it fits in memory), results in memory;
- `sweep+disk`: the same, writing chunks of `disk_chunk` members to disk as it goes
  (the resumable mode), in a fresh directory each run.

Each device count runs in its own process (XLA's forced host devices are fixed at start).
Run it with `nice`: the machine is shared, timings are noisy; compare ratios within a run.

    python benchmarks/sweep_scaling.py [CONFIG]
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def worker(cfg: dict) -> list:
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    import dsorl
    from dsorl import sweep as sw
    from dsorl.algorithms import pg

    env = cfg["env"]
    mdp = dsorl.envs.garnet(jax.random.key(env["seed"]), env["n_states"], env["n_actions"],
                            env["branching"])
    params0 = jnp.zeros(mdp.R.shape)
    config = pg.Config(n_steps=cfg["n_steps"])
    hparams = lambda p: pg.HParams(gamma=p["gamma"], step_size=1.0)
    n_dev = len(jax.devices())

    def member(gamma, seed):
        _, trace = pg.run(mdp, params0, pg.HParams(gamma, 1.0), jax.random.key(seed), config=config)
        return trace.objective[-1]

    plain = jax.jit(jax.vmap(member))
    rows = []
    for B in cfg["sizes"]:
        n_gamma = min(B, 16)
        gammas = np.linspace(0.5, 0.99, n_gamma)
        grid = sw.Grid(gamma=gammas, seed=np.arange(B // n_gamma))
        g_flat = np.repeat(gammas, B // n_gamma)
        s_flat = np.tile(np.arange(B // n_gamma), n_gamma)
        t0 = time.perf_counter()
        plain.lower(g_flat, s_flat).compile()
        compile_vmap = time.perf_counter() - t0
        plain(g_flat, s_flat).block_until_ready()
        times = {"vmap": [], "sweep": [], "sweep+disk": []}
        compile_sweep = None
        check = None
        for r in range(cfg["repeats"] + 1):  # the first run warms up (compiles)
            t0 = time.perf_counter()
            values = np.asarray(plain(g_flat, s_flat).block_until_ready())
            t_vmap = time.perf_counter() - t0
            res = sw.sweep(pg.run, mdp, grid, config=config, params0=params0, hparams=hparams,
                           metrics=lambda s, t, m: {"objective": t.objective[-1]})
            with tempfile.TemporaryDirectory() as d:
                disk = sw.sweep(pg.run, mdp, grid, config=config, params0=params0,
                                hparams=hparams, chunk_size=cfg["disk_chunk"], out_dir=d,
                                metrics=lambda s, t, m: {"objective": t.objective[-1]})
            if r == 0:
                compile_sweep = sum(res.meta["compile_seconds"].values())
                check = float(np.max(np.abs(res.table["objective"] - values)))
                continue
            times["vmap"].append(t_vmap)
            times["sweep"].append(res.meta["run_seconds"])
            times["sweep+disk"].append(disk.meta["run_seconds"])
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({
            "devices": n_dev, "B": B, "chunk": res.meta["chunk_size"]["all"],
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


def main(argv) -> int:
    if argv and argv[0] == "--worker":
        cfg = json.loads(argv[1])
        print(json.dumps(worker(cfg)))
        return 0
    cfg = yaml.safe_load(Path(argv[0] if argv else ROOT / "configs" / "sweep_scaling.yaml").read_text())
    rows = []
    for n in cfg["devices"]:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], env=env,
                             capture_output=True, text=True)
        if out.returncode:
            print(out.stderr, file=sys.stderr)
            return out.returncode
        rows += json.loads(out.stdout.splitlines()[-1])
    from dsorl.results import format_table, write_results

    cols = ["devices", "B", "chunk", "vmap_members_per_s", "sweep_members_per_s",
            "sweep_disk_members_per_s", "sweep_over_vmap", "disk_over_vmap",
            "compile_vmap_s", "compile_sweep_s", "max_abs_diff"]
    print(format_table([{k: r[k] for k in cols} for r in rows], floatfmt=".3g"))
    import jax

    jax.config.update("jax_enable_x64", True)
    path = write_results(ROOT / cfg["output"], cfg, tables={"sweep_scaling": rows})
    print(f"\nwritten to {path}/ (times: medians of {cfg['repeats']} runs after a warm-up;"
          " ratios > 1 mean the sweep is slower than the plain vmap)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
