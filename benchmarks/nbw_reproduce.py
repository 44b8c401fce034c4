"""Reproduce Dewanto & Gallagher's Fig. 6 (nBw PG vs discounted PG) and time the exact grid.

    python benchmarks/nbw_reproduce.py [CONFIG] [--set key=value ...] [--speed-subset N]

CONFIG defaults to configs/nbw_reproduce_quick.yaml (coarse grid); the paper's full
setting is configs/nbw_reproduce.yaml. Prints and writes (to the config's output_dir):
`summary.csv` (mean +- std over starts of |h_final(s0) - h*(s0)| and of the gain gap, per
environment and method, next to the authors' numbers), `speed.csv` (the exact barrier
method: one batched jitted call per environment, compile time apart, against a per-start
PyTorch loop written like the authors' code on `N` starts of each environment, measured in
this run), `arrays.npz`, `meta.json`, and `fig6_errors.png` (error maps over the start grid
and the gain/bias landscapes, the paper's Fig. 6 layout). PyTorch is optional: without it
the speed comparison is skipped (`pip install torch`; the `bench` extra).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from dsorl import compilation  # noqa: E402
from dsorl import config as config_lib  # noqa: E402
from dsorl import envs, progress  # noqa: E402
from dsorl.algorithms import nbw  # noqa: E402
from dsorl.envs.nbw import paper_hyperparams  # noqa: E402
from dsorl.jobs import nbw_reproduce  # noqa: E402
from dsorl.plots import plot_results  # noqa: E402
from dsorl.results import format_table, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------
# Baseline: the exact barrier method for one start, as the authors' code computes it
# (PyTorch autograd through a matrix inverse, per-state/per-action score loops, pinverse,
# Python backtracking loop). Same rules as dsorl's run, so the trajectories agree.


def torch_barrier_method(P, R, start, hp, iterations, s0=0, tau=2, max_tries=100, c=1e-4):
    import torch

    P, R = torch.tensor(P, dtype=torch.float64), torch.tensor(R, dtype=torch.float64)
    S = P.shape[0]
    eye = torch.eye(S, dtype=torch.float64)
    feats = torch.stack([torch.arange(S, dtype=torch.float64), torch.ones(S, dtype=torch.float64)], 1)

    def evaluate(w):
        p0 = torch.sigmoid(feats @ w)
        pi = torch.stack([p0, 1 - p0], 1)
        r, Ppi = (pi * R).sum(1), torch.einsum("sa,sat->st", pi, P)
        A = torch.cat([(eye - Ppi).T[:-1], torch.ones(1, S, dtype=torch.float64)])
        p = torch.linalg.solve(A, eye[-1])
        Pstar = p.expand(S, S)
        H = torch.inverse(eye - Ppi + Pstar) @ (eye - Pstar)
        return p @ r, (H @ r)[s0], Ppi, p

    def objective(w, barrier, g_ref, beta):
        g, h, _, _ = evaluate(w)
        return h + beta * torch.log(g - g_ref + hp.slack) if barrier else g

    w = torch.tensor(np.asarray(start), dtype=torch.float64)
    barrier, g_ref, beta = False, 0.0, 0.0
    for _ in range(iterations):
        w = w.detach().requires_grad_(True)
        g, h, Ppi, p = evaluate(w)
        grad_g = torch.autograd.grad(g, w, retain_graph=True)[0]
        if not barrier and torch.linalg.norm(grad_g) < hp.gain_tolerance:
            barrier, g_ref, beta = True, g.item(), hp.barrier_init
        fisher_s = torch.zeros(S, 2, 2, dtype=torch.float64)
        for s in range(S):
            for a in range(2):
                logits = feats[s] @ w
                logp = torch.nn.functional.logsigmoid(logits if a == 0 else -logits)
                score = torch.autograd.grad(logp, w, retain_graph=True)[0]
                fisher_s[s] += logp.exp().detach() * torch.outer(score, score)
        Ppi, p = Ppi.detach(), p.detach()
        F_g = torch.einsum("s,sij->ij", p, fisher_s)
        if barrier:
            grad_h = torch.autograd.grad(h, w)[0]
            gap = g.item() - g_ref + hp.slack
            grad = grad_h + beta / gap * grad_g
            row, weights = eye[s0], torch.zeros(S, dtype=torch.float64)
            for _ in range(tau):
                weights, row = weights + row, row @ Ppi
            F_b = torch.einsum("s,sij->ij", weights + tau * p, fisher_s)
            C = F_b + beta / gap * F_g + beta / gap ** 2 * torch.outer(grad_g, grad_g)
            value = h.item() + beta * np.log(gap)
        else:
            grad, C, value = grad_g, F_g, g.item()
        w = w.detach()
        d = torch.linalg.pinv(C) @ grad
        slope = float(grad @ d)
        alpha, resolution = 1.0, 4 * np.finfo(float).eps * max(1.0, abs(value))
        for _ in range(max_tries):
            if alpha * slope <= resolution:
                alpha = 0.0
                break
            with torch.no_grad():
                trial = float(objective(w + alpha * d, barrier, g_ref, beta))
            if np.isfinite(trial) and trial >= value + c * alpha * slope:
                break
            alpha *= 0.5
        else:
            alpha = 0.0
        w = w + alpha * d
    with torch.no_grad():
        g, h, _, _ = evaluate(w)
    return float(g), float(h)


def speed_table(summary, grid, subset, iterations):
    """Per-start seconds of the batched JAX grid vs the PyTorch loop on `subset` starts."""
    try:
        import torch
    except ImportError:
        print("PyTorch not installed: speed comparison skipped.")
        return []
    torch.set_num_threads(1)
    rows = []
    rng = np.random.default_rng(0)
    exact = [row for row in summary if row["method"] == "nbw_exact"]
    for row in progress.track(exact, "PyTorch per-start loop", unit="environments"):
        name = row["env"]
        mdp = envs.nbw_env(name)
        hp = nbw.HParams(**paper_hyperparams(name))
        idx = rng.choice(len(grid), size=min(subset, len(grid)), replace=False)
        times, agree = [], []
        for i in idx:
            start = time.perf_counter()
            g, h = torch_barrier_method(np.asarray(mdp.P), np.asarray(mdp.R), grid[i], hp,
                                        iterations)
            times.append(time.perf_counter() - start)
            agree.append(abs(h - row["_bias"][i]))
        jax_per_start = row["run_s"] / row["starts"]
        torch_per_start = statistics.median(times)
        rows.append({
            "env": name, "starts": row["starts"], "jax_compile_s": row["compile_s"],
            "jax_run_s": row["run_s"], "jax_per_start_ms": 1e3 * jax_per_start,
            "torch_starts": len(idx), "torch_per_start_ms": 1e3 * torch_per_start,
            "speedup": torch_per_start / jax_per_start,
            "max_bias_disagreement": max(agree),
        })
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?",
                        default=str(ROOT / "configs/nbw_reproduce_quick.yaml"),
                        help="YAML config file (default: configs/nbw_reproduce_quick.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (dotted keys for nesting)")
    parser.add_argument("--speed-subset", type=int, default=4,
                        help="starts per environment for the PyTorch loop (0: skip)")
    args = parser.parse_args(argv)
    compilation.configure()  # persistent cache (DSORL_CACHE_DIR, DSORL_CACHE=0), meta record
    cfg = config_lib.load_config(args.config, args.set)
    print("devices:", jax.devices())
    result = nbw_reproduce.run(cfg)
    summary = result["tables"]["summary"]
    grid = result["arrays"]["grid"]
    for row in summary:  # final biases of the exact runs, for the agreement check
        row["_bias"] = result["arrays"][f"{row['env']}/{row['method']}/bias"][0]
    speed = (speed_table(summary, grid, args.speed_subset, cfg["n_steps"])
             if args.speed_subset > 0 and "nbw_exact" in cfg["methods"] else [])
    for row in summary:
        del row["_bias"]
    tables = {"summary": summary}
    print(f"\n== summary ==\n{format_table(summary, '.4g')}")
    if speed:
        tables["speed"] = speed
        total = sum(r["jax_run_s"] for r in speed)
        print(f"\n== speed (exact grid, {len(grid)} starts per environment) ==\n"
              f"{format_table(speed, '.4g')}\nwhole exact grid: {total:.2f} s run, "
              f"{sum(r['jax_compile_s'] for r in speed):.2f} s compile")
    out = write_results(ROOT / cfg["output_dir"], cfg, tables=tables, arrays=result["arrays"],
                        seeds=result["seeds"], extra={"speed_subset": args.speed_subset})
    plot_results(out, out_dir=out)  # fig6_errors.png (the job's `figures`)
    print(f"\nresults written to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
