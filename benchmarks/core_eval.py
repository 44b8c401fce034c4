"""Core benchmark (issue #2, item 10): exact chain quantities and their gradients.

    nice python benchmarks/core_eval.py [configs/core_eval.yaml] [--set key=value ...]

What is timed, in float64 on the CPU, for a random dense MDP with S states and A = 4
actions and a tabular softmax policy with logits `theta[S, A]`:

- `value`: `v = (I - gamma P_pi)^{-1} r_pi`; its gradient is `d(rho . v)/d theta`.
- `gain`: `g = p* . r_pi`; gradient `dg/d theta`.
- `bias`: `h` with `h = r_pi - g + P_pi h`, `p* . h = 0`; gradient `d h(s0)/d theta`, s0 = 0.

Each from the logits: softmax, marginalisation (`P_pi = sum_a pi P`), solve(s). Batches:
`single` (B = 1), `policy` (B logit tensors on one MDP: B distinct chains, the solve cost
of B MDPs without storing B copies of `P[S, A, S]`) and `gamma` (one chain, B discount
factors; value only, where dsorl's shared-Hessenberg sweep path may apply).

Baselines, measured in the same run on the same inputs (and checked to agree with dsorl
before anything is timed):
- NumPy loop: a Python loop over the batch. Coded two ways, and the faster is reported:
  `solve` (one `np.linalg.solve` per linear system) and `lu` (one `scipy.linalg.lu_factor`
  per chain, `lu_solve` for the systems that share it, as dsorl does).
- NumPy stacked: `np.linalg.solve` on `(B, S, S)` stacks, one call per linear system
  (NumPy cannot reuse a factorisation between calls).
The gradients of the baselines are the analytic formulas (policy-gradient theorems and
the derivative of the bias, `dh = H (dr + dP h) - (p*^T dP H h) 1`).

Also: value iteration against pymdptoolbox at equal iterates (both run the same number of
sweeps from v = 0; pymdptoolbox's own span stopping rule is reported beside it), and the
gamma-sweep table (one Hessenberg reduction shared by B discount factors vs one LU each).

Timing: each case is compiled first (its lower + compile time reported apart), warmed up,
then timed as the median of repeated samples, a sample being as many calls as fill
`min_sample_s`. The machine is shared: run under `nice`, compare ratios within one run.
OpenBLAS: `OPENBLAS_CORETYPE` and `OPENBLAS_L2_SIZE`, set on some machines for older
OpenBLAS builds, slow a current one down; this script unsets both in its own process
before NumPy loads, and records what it unset and which kernels threadpoolctl reports.
"""
import os
import sys

BLAS_ENV_UNSET = {k: os.environ.pop(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                  if k in os.environ}
os.environ.setdefault("JAX_ENABLE_X64", "1")

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402
import yaml  # noqa: E402

import dsorl  # noqa: E402
from dsorl import gamma_sweep  # noqa: E402
from dsorl.results import format_table, write_results  # noqa: E402

jax.config.update("jax_enable_x64", True)

DEFAULTS = {
    "seed": 0,
    "actions": 4,
    "sizes": [10, 100, 1000],
    "batches": [1, 64, 1024],
    "quantities": ["value", "gain", "bias"],
    "modes": ["forward", "gradient"],
    "batch_kinds": ["policy", "gamma"],
    "gamma": 0.95,               # discount of `single` and `policy` cases
    "gamma_range": [0.5, 0.999],  # B evenly spaced discount factors in `gamma` cases
    "max_batch_bytes": 1.0e9,    # skip (S, B) whose B float64 S x S matrices exceed this
    "repeats": 15,               # timing samples per case (fewer if max_case_s runs out)
    "min_sample_s": 0.02,
    "max_case_s": 15.0,
    "blas_threads": None,        # cap OpenBLAS threads (NumPy's and the LAPACK JAX calls)
    "value_iteration": {"sizes": [100, 1000], "gammas": [0.9, 0.99], "tol": 1.0e-8},
    "gamma_sweep": {"sizes": [100, 300, 1000], "batch": 64,
                    "threshold_sizes": [64, 96, 128, 200], "threshold_batches": [4, 8, 16, 32]},
    "output_dir": "benchmarks/results/core_eval",
}
GOAL_SMALL = "S<=100: >=5x NumPy loop and >=1x NumPy stacked"
GOAL_LARGE = "S>100: time <= 1.5x NumPy's best (LAPACK rate)"


# ----------------------------------------------------------------------------------------
# Timing


def measure(calls: dict, cfg) -> dict:
    """Median seconds per call of each `calls[name]()` (which must block).

    After a warm-up call each, samples are taken round-robin (one sample of every
    competitor per round), so drifting load on a shared machine hits all of them alike.
    A sample repeats a call as often as fills `min_sample_s`.
    """
    reps = {}
    for name, call in calls.items():
        call()
        t0 = time.perf_counter()
        call()
        reps[name] = max(1, math.ceil(cfg["min_sample_s"] / max(time.perf_counter() - t0, 1e-7)))
    samples = {name: [] for name in calls}
    start = time.perf_counter()
    for round_ in range(cfg["repeats"]):
        for name, call in calls.items():
            t0 = time.perf_counter()
            for _ in range(reps[name]):
                call()
            samples[name].append((time.perf_counter() - t0) / reps[name])
        if round_ >= 2 and time.perf_counter() - start > cfg["max_case_s"]:
            break
    return {name: {"median_s": float(np.median(x)), "samples": len(x)}
            for name, x in samples.items()}


def compile_jax(fn, args):
    """`(jitted, seconds to lower and compile)`; the jitted function is then warm."""
    jitted = jax.jit(fn)
    t0 = time.perf_counter()
    jitted.lower(*args).compile()
    seconds = time.perf_counter() - t0
    jax.block_until_ready(jitted(*args))
    return jitted, seconds


def jax_call(jitted, args):
    return lambda: jax.block_until_ready(jitted(*args))


# ----------------------------------------------------------------------------------------
# Problems


def random_mdp(rng, S, A):
    P = rng.random((S, A, S)) + 0.01  # dense: every policy's chain is unichain
    P /= P.sum(-1, keepdims=True)
    return P, rng.normal(size=(S, A)), rng.dirichlet(np.ones(S))


def batch_inputs(rng, kind, S, A, B, cfg):
    """Logits `theta` ([S, A] or [B, S, A]) and discount(s) for one case."""
    if kind == "gamma":
        return rng.normal(size=(S, A)), np.linspace(*cfg["gamma_range"], B)
    if kind == "policy":
        return rng.normal(size=(B, S, A)), cfg["gamma"]
    return rng.normal(size=(S, A)), cfg["gamma"]


# ----------------------------------------------------------------------------------------
# dsorl (JAX)


def jax_case(quantity, mode, kind, S, A):
    """`fn(mdp, theta, gamma)` for one case, batched with vmap as the case asks."""
    policy = dsorl.policies.tabular_softmax(S, A)

    def pi(theta):
        return policy.probs(theta)

    forward = {
        "value": lambda mdp, th, g: dsorl.discounted_value(dsorl.induced_chain(mdp, pi(th)), g),
        "gain": lambda mdp, th, g: dsorl.policy_gain(mdp, pi(th)),
        "bias": lambda mdp, th, g: dsorl.policy_bias(mdp, pi(th)),
    }[quantity]
    objective = {
        "value": lambda mdp, th, g: dsorl.discounted_return(mdp, pi(th), g),
        "gain": lambda mdp, th, g: dsorl.policy_gain(mdp, pi(th)),
        "bias": lambda mdp, th, g: dsorl.policy_bias(mdp, pi(th))[0],
    }[quantity]
    fn = forward if mode == "forward" else jax.grad(objective, argnums=1)
    if kind == "policy":
        return jax.vmap(fn, in_axes=(None, 0, None))
    if kind == "gamma":
        return jax.vmap(fn, in_axes=(None, None, 0))
    return fn


# ----------------------------------------------------------------------------------------
# NumPy baselines: the same quantities, single-instance or on stacks (leading batch axis)


class NumpySolve:
    """One `np.linalg.solve` per system (works on single matrices and on stacks)."""
    name = "solve"

    @staticmethod
    def factor(M):
        return M

    @staticmethod
    def solve(F, b):
        return np.linalg.solve(F, b[..., None])[..., 0]

    @staticmethod
    def solve_t(F, b):
        return np.linalg.solve(np.swapaxes(F, -1, -2), b[..., None])[..., 0]


class ScipyLU:
    """One LU per matrix, reused by every system with that matrix (single instances)."""
    name = "lu"

    @staticmethod
    def factor(M):
        return scipy.linalg.lu_factor(M, check_finite=False)

    @staticmethod
    def solve(F, b):
        return scipy.linalg.lu_solve(F, b, check_finite=False)

    @staticmethod
    def solve_t(F, b):
        return scipy.linalg.lu_solve(F, b, trans=1, check_finite=False)


def np_policy(theta):
    z = np.exp(theta - theta.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def np_chain(P, R, pi):
    return np.einsum("...sa,sat->...st", pi, P), np.sum(pi * R, -1)


def np_centred(pi, G):
    """`pi * (G - sum_a pi G)`: the pull-back of `dJ/dpi = G` to the softmax logits."""
    return pi * (G - np.sum(pi * G, -1, keepdims=True))


def np_gain_matrix(P_pi):
    B = np.eye(P_pi.shape[-1]) - P_pi
    B[..., :, -1] = 1
    return B


def np_value(solver, mdp, pi, gamma, P_pi=None, r_pi=None, *, grad):
    P, R, rho = mdp
    if P_pi is None:
        P_pi, r_pi = np_chain(P, R, pi)
    gamma = np.asarray(gamma)[..., None, None] if np.ndim(gamma) else gamma
    F = solver.factor(np.eye(P_pi.shape[-1]) - gamma * P_pi)
    v = solver.solve(F, r_pi)
    if not grad:
        return v
    m = solver.solve_t(F, np.broadcast_to(rho, v.shape))  # occupancy, unnormalised
    q = R + gamma * np.einsum("sat,...t->...sa", P, v)
    return m[..., None] * np_centred(pi, q)  # policy-gradient theorem (Sutton et al. 2000)


def np_average(solver, mdp, pi, quantity, *, grad):
    """Gain or bias (and gradients) from one factorisation of `I - P_pi` with its last
    column set to ones (the same algebra as dsorl.markov, written independently)."""
    P, R, _ = mdp
    P_pi, r_pi = np_chain(P, R, pi)
    S = P_pi.shape[-1]
    F = solver.factor(np_gain_matrix(P_pi))
    x = solver.solve(F, r_pi)
    e_last = np.broadcast_to(np.eye(S)[-1], x.shape)
    if quantity == "gain" and not grad:
        return x[..., -1]
    p = solver.solve_t(F, e_last)  # stationary law
    w = x.copy()
    w[..., -1] = 0  # relative values
    if quantity == "gain":
        return np_centred(pi, p[..., None] * (R + np.einsum("sat,...t->...sa", P, w)))
    h = w - np.sum(p * w, -1, keepdims=True)
    if not grad:
        return h
    # d h(s0) = y . (dr + dP h) - p . (dP z), y = row s0 of H, z = H h
    rhs = np.broadcast_to(np.eye(S)[0], p.shape) - p
    rhs[..., -1] = 0
    y = solver.solve_t(F, rhs)
    z = solver.solve(F, h)
    z[..., -1] = 0
    z -= np.sum(p * z, -1, keepdims=True)
    G = (y[..., None] * (R + np.einsum("sat,...t->...sa", P, h))
         - p[..., None] * np.einsum("sat,...t->...sa", P, z))
    return np_centred(pi, G)


def numpy_case(quantity, mode, kind, solver, mdp, theta, gamma, *, stacked):
    """A zero-argument callable computing the case with NumPy (loop or stacked)."""
    grad = mode == "gradient"
    P, R, _ = mdp

    def one(theta_i, gamma_i, chain=None):
        pi = np_policy(theta_i)
        if quantity == "value":
            P_pi, r_pi = chain if chain is not None else (None, None)
            return np_value(solver, mdp, pi, gamma_i, P_pi, r_pi, grad=grad)
        return np_average(solver, mdp, pi, quantity, grad=grad)

    if kind == "single" or stacked and kind == "policy":
        return lambda: one(theta, gamma)
    if kind == "policy":
        return lambda: np.stack([one(t, gamma) for t in theta])

    def gamma_sweep_np():  # one chain, many discount factors
        chain = np_chain(P, R, np_policy(theta))
        if stacked:
            return one(theta, gamma, chain)
        return np.stack([one(theta, g, chain) for g in gamma])

    return gamma_sweep_np


def numbers_agree(a, b, rtol=1e-8):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and np.max(np.abs(a - b)) <= rtol * max(np.max(np.abs(b)), 1.0)


# ----------------------------------------------------------------------------------------
# The main table


def systems(quantity, mode):
    """Number of linear systems one instance needs in the NumPy baselines."""
    return {("value", "forward"): 1, ("value", "gradient"): 2, ("gain", "forward"): 1,
            ("gain", "gradient"): 2, ("bias", "forward"): 2, ("bias", "gradient"): 4}[
        (quantity, mode)]


def main_cases(cfg):
    for S in cfg["sizes"]:
        for B in cfg["batches"]:
            for quantity in cfg["quantities"]:
                for mode in cfg["modes"]:
                    kinds = ["single"] if B == 1 else [
                        k for k in cfg["batch_kinds"] if k == "policy" or quantity == "value"]
                    for kind in kinds:
                        yield S, B, quantity, mode, kind


def run_main(cfg, rng, log):
    rows, skipped = [], []
    A = cfg["actions"]
    mdps = {}
    for S, B, quantity, mode, kind in main_cases(cfg):
        case = dict(quantity=quantity, mode=mode, batch=kind, S=S, B=B)
        if B * S * S * 8 > cfg["max_batch_bytes"]:
            skipped.append({**case, "reason": f"B*S*S*8 bytes = {B * S * S * 8:.2e} >"
                                              f" max_batch_bytes = {cfg['max_batch_bytes']:.2e}"})
            continue
        if S not in mdps:
            mdps[S] = random_mdp(rng, S, A)
        mdp_np = mdps[S]
        mdp = dsorl.MDP(*mdp_np)
        theta, gamma = batch_inputs(rng, kind, S, A, B, cfg)
        fn = jax_case(quantity, mode, kind, S, A)
        args = (mdp, jnp.asarray(theta), jnp.asarray(gamma))
        jitted, compile_s = compile_jax(fn, args)
        sweep_path = kind == "gamma" and "hessenberg" in str(jax.make_jaxpr(fn)(*args))
        expected = np.asarray(jitted(*args))
        solvers = [NumpySolve] + ([ScipyLU] if systems(quantity, mode) > 1 else [])
        calls = {"jax": jax_call(jitted, args)}
        for style in ("loop", "stacked"):
            for solver in solvers if style == "loop" else [NumpySolve]:
                call = numpy_case(quantity, mode, kind, solver, mdp_np, theta, gamma,
                                  stacked=style == "stacked")
                out = call()
                if not numbers_agree(out, expected):
                    raise AssertionError(f"NumPy {style}/{solver.name} disagrees with dsorl on"
                                         f" {case}: max diff {np.max(np.abs(out - expected))}")
                calls[f"{style}/{solver.name}"] = call
        timed = measure(calls, cfg)
        results, codings = {"jax": timed["jax"]}, {}
        for style in ("loop", "stacked"):
            name = min((k for k in timed if k.startswith(style)), key=lambda k: timed[k]["median_s"])
            results[style], codings[style] = timed[name], name.split("/")[1]
        jax_s, loop_s, stacked_s = (results[k]["median_s"] for k in ("jax", "loop", "stacked"))
        if S <= 100:
            goal, met = GOAL_SMALL, loop_s / jax_s >= 5 and stacked_s / jax_s >= 1
        else:
            goal, met = GOAL_LARGE, jax_s <= 1.5 * min(loop_s, stacked_s)
        lu_flops = B * 2 / 3 * S ** 3 if (quantity, mode) in {("value", "forward"),
                                                              ("gain", "forward")} else None
        row = {**case, "jax_ms": 1e3 * jax_s, "numpy_loop_ms": 1e3 * loop_s,
               "loop_coding": codings["loop"], "numpy_stacked_ms": 1e3 * stacked_s,
               "speedup_vs_loop": loop_s / jax_s, "speedup_vs_stacked": stacked_s / jax_s,
               "compile_s": compile_s, "sweep_path": sweep_path,
               "jax_lu_gflops": lu_flops / jax_s / 1e9 if lu_flops and not sweep_path else None,
               "numpy_lu_gflops": lu_flops / min(loop_s, stacked_s) / 1e9 if lu_flops else None,
               "goal": goal, "goal_met": bool(met), "samples": results["jax"]["samples"]}
        rows.append(row)
        log(f"{quantity:5s} {mode:8s} {kind:6s} S={S:5d} B={B:5d}  jax {row['jax_ms']:9.3f} ms"
            f"  loop {row['numpy_loop_ms']:9.3f} ms ({row['loop_coding']})"
            f"  stacked {row['numpy_stacked_ms']:9.3f} ms  x{row['speedup_vs_loop']:.2f}"
            f" / x{row['speedup_vs_stacked']:.2f}  compile {compile_s:.2f} s")
    return rows, skipped


# ----------------------------------------------------------------------------------------
# Value iteration against pymdptoolbox


def run_value_iteration(cfg, rng, log):
    import mdptoolbox.mdp

    vi_cfg, rows = cfg["value_iteration"], []
    for S in vi_cfg["sizes"]:
        P, R, rho = random_mdp(rng, S, cfg["actions"])
        mdp = dsorl.MDP(P, R, rho)
        P_toolbox = np.ascontiguousarray(np.transpose(P, (1, 0, 2)))  # its layout: [A, S, S']
        for gamma in vi_cfg["gammas"]:
            v_star = np.asarray(dsorl.policy_iteration(mdp, gamma).value)
            solved = dsorl.value_iteration(mdp, gamma, tol=vi_cfg["tol"])
            sweeps = int(solved.iterations)

            # equal iterates: K sweeps from v = 0 for both (tol = 0 never stops early)
            def ours(mdp, gamma):
                return dsorl.value_iteration(mdp, gamma, tol=0.0, max_iter=sweeps).value

            jitted, compile_s = compile_jax(ours, (mdp, gamma))
            v_ours = np.asarray(jitted(mdp, gamma))

            def toolbox(epsilon=0.01, max_iter=None):
                vi = mdptoolbox.mdp.ValueIteration(P_toolbox, R, gamma, epsilon=epsilon)
                if max_iter is not None:  # run exactly max_iter sweeps
                    vi.max_iter, vi.thresh = max_iter, -1.0
                return vi

            fixed = toolbox(max_iter=sweeps)
            fixed.run()
            v_tb = np.asarray(fixed.V)
            if fixed.iter != sweeps or not numbers_agree(v_tb, v_ours, 1e-9):
                raise AssertionError(f"pymdptoolbox and dsorl iterates differ (S={S}, gamma={gamma})")
            runs = [toolbox(max_iter=sweeps) for _ in range(cfg["repeats"] + 2)]
            timed = measure({"dsorl": jax_call(jitted, (mdp, gamma)),
                             "pymdptoolbox": lambda: runs.pop().run()},
                            {**cfg, "min_sample_s": 0.0})  # one run per sample: run() mutates
            t_ours, t_tb = timed["dsorl"], timed["pymdptoolbox"]["median_s"]
            own = toolbox()  # pymdptoolbox's own stopping rule, epsilon = 0.01
            own.run()
            scale = np.max(np.abs(v_star))
            rows.append({
                "S": S, "A": cfg["actions"], "gamma": gamma, "sweeps": sweeps,
                "dsorl_ms": 1e3 * t_ours["median_s"], "pymdptoolbox_ms": 1e3 * t_tb,
                "speedup": t_tb / t_ours["median_s"], "compile_s": compile_s,
                "rel_error_at_sweeps": float(np.max(np.abs(v_ours - v_star)) / scale),
                "toolbox_own_rule_sweeps": int(own.iter),
                "toolbox_own_rule_rel_error": float(np.max(np.abs(np.asarray(own.V) - v_star)) / scale),
            })
            log(f"VI S={S} gamma={gamma}: {sweeps} sweeps, dsorl {rows[-1]['dsorl_ms']:.2f} ms,"
                f" pymdptoolbox {rows[-1]['pymdptoolbox_ms']:.2f} ms, x{rows[-1]['speedup']:.2f};"
                f" its own rule stops after {own.iter} sweeps at rel. error"
                f" {rows[-1]['toolbox_own_rule_rel_error']:.1e}")
    return rows


# ----------------------------------------------------------------------------------------
# Gamma sweeps: one Hessenberg reduction vs one LU per gamma


def plain_values(P, gammas, r):
    """One LU per gamma (the path without the sweep): vmapped `jnp.linalg.solve`."""
    return jax.vmap(lambda g: jnp.linalg.solve(jnp.eye(P.shape[-1]) - g * P, r))(gammas)


def sweep_values(P, gammas, r):
    """The sweep path forced, whatever the thresholds: `gamma_sweep_factor` + `lu_solve`."""
    Q, lu, piv = gamma_sweep.gamma_sweep_factor(P, gammas)
    y = jax.vmap(lambda lu, piv: jax.scipy.linalg.lu_solve((lu, piv), Q.T @ r))(lu, piv)
    return y @ Q.T


def run_gamma_sweep(cfg, rng, log):
    gs_cfg, rows = cfg["gamma_sweep"], []
    A = cfg["actions"]

    def compare(table, S, B, fast_fn, plain_fn, args, check=True):
        fast, fast_compile = compile_jax(fast_fn, args)
        plain, plain_compile = compile_jax(plain_fn, args)
        if check and not numbers_agree(fast(*args), plain(*args), 1e-6):
            raise AssertionError(f"sweep and plain paths disagree ({table}, S={S}, B={B})")
        timed = measure({"sweep": jax_call(fast, args), "lu": jax_call(plain, args)}, cfg)
        t_fast, t_plain = timed["sweep"], timed["lu"]
        row = {"table": table, "S": S, "B": B, "sweep_ms": 1e3 * t_fast["median_s"],
               "lu_per_gamma_ms": 1e3 * t_plain["median_s"],
               "speedup": t_plain["median_s"] / t_fast["median_s"],
               "sweep_compile_s": fast_compile, "lu_compile_s": plain_compile}
        rows.append(row)
        log(f"gamma sweep {table:10s} S={S:5d} B={B:3d}: sweep {row['sweep_ms']:9.2f} ms,"
            f" LU per gamma {row['lu_per_gamma_ms']:9.2f} ms, x{row['speedup']:.2f}")

    for S in gs_cfg["sizes"]:
        B = gs_cfg["batch"]
        P, R, rho = random_mdp(rng, S, A)
        mdp = dsorl.MDP(P, R, rho)
        theta = jnp.asarray(rng.normal(size=(S, A)))
        pi = dsorl.policies.tabular_softmax(S, A).probs(theta)
        chain = dsorl.induced_chain(mdp, pi)
        gammas = jnp.linspace(*cfg["gamma_range"], B)
        compare("factor", S, B, gamma_sweep.gamma_sweep_factor, gamma_sweep._dense_sweep_factor,
                (chain.P, gammas), check=False)  # different factorisations of one matrix
        compare("value", S, B, sweep_values, plain_values, (chain.P, gammas, chain.r))

        def plain_return(mdp, theta, g):
            c = dsorl.induced_chain(mdp, dsorl.policies.tabular_softmax(S, A).probs(theta))
            return mdp.rho @ jnp.linalg.solve(jnp.eye(S) - g * c.P, c.r)

        def dsorl_return(mdp, theta, g):
            return dsorl.discounted_return(mdp, dsorl.policies.tabular_softmax(S, A).probs(theta), g)

        batched_grad = lambda f: jax.vmap(jax.grad(f, argnums=1), in_axes=(None, None, 0))
        compare("value_grad", S, B, batched_grad(dsorl_return), batched_grad(plain_return),
                (mdp, theta, gammas))  # the MDP as an argument: no constant folding of P
    for S in gs_cfg["threshold_sizes"]:
        P, R, rho = random_mdp(rng, S, A)
        chain = dsorl.induced_chain(dsorl.MDP(P, R, rho), np.full((S, A), 1 / A))
        for B in gs_cfg["threshold_batches"]:
            compare("threshold", S, B, sweep_values, plain_values,
                    (chain.P, jnp.linspace(*cfg["gamma_range"], B), chain.r))
    return rows


# ----------------------------------------------------------------------------------------


def load_config(path, overrides):
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    given = (yaml.safe_load(Path(path).read_text()) if path else None) or {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes key=value, got {item!r}.")
        node = given
        *parents, leaf = key.split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = yaml.safe_load(value)
    for key, value in given.items():
        if key not in DEFAULTS:
            raise ValueError(f"unknown config key {key!r}; valid: {', '.join(DEFAULTS)}.")
        if isinstance(DEFAULTS[key], dict):
            unknown = set(value) - set(DEFAULTS[key])
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)} under {key!r};"
                                 f" valid: {', '.join(DEFAULTS[key])}.")
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


def blas_record(threads):
    """What OpenBLAS runs (threadpoolctl), after capping its threads if asked."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return {"unset_in_this_process": BLAS_ENV_UNSET, "threadpools": "threadpoolctl missing"}
    if threads is not None:
        threadpool_limits(limits=int(threads), user_api="blas")
    return {"unset_in_this_process": BLAS_ENV_UNSET,
            "threadpools": [{k: p.get(k) for k in ("internal_api", "architecture", "version",
                                                   "num_threads", "filepath")}
                            for p in threadpool_info()]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--only", choices=["main", "value_iteration", "gamma_sweep"],
                        action="append", help="run only these parts (repeatable)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    parts = args.only or ["main", "value_iteration", "gamma_sweep"]
    rng = np.random.default_rng(cfg["seed"])
    log = lambda msg: print(msg, flush=True)
    jax.scipy.linalg.lu_factor(jnp.eye(2))  # loads the LAPACK JAX calls (SciPy's OpenBLAS)
    blas = blas_record(cfg["blas_threads"])
    log(f"device: {jax.devices()[0]} | BLAS: {blas['threadpools']}"
        f" | unset: {BLAS_ENV_UNSET or 'none were set'}")
    tables, extra = {}, {"blas": blas, "goals": {"small": GOAL_SMALL, "large": GOAL_LARGE},
                         "load_average_at_start": os.getloadavg()}
    if "main" in parts:
        tables["core_eval"], extra["skipped"] = run_main(cfg, rng, log)
    if "value_iteration" in parts:
        tables["value_iteration"] = run_value_iteration(cfg, rng, log)
    if "gamma_sweep" in parts:
        tables["gamma_sweep"] = run_gamma_sweep(cfg, rng, log)
    extra["rows"] = tables
    extra["load_average_at_end"] = os.getloadavg()
    out = write_results(cfg["output_dir"], cfg, tables=tables, seeds=[cfg["seed"]], extra=extra)
    for name, table in tables.items():
        print(f"\n== {name} ==\n{format_table(table, floatfmt='.4g')}")
    for row in extra.get("skipped", []):
        print(f"skipped: {row}")
    print(f"\nresults in {out}/ (meta.json holds every table as JSON, the config and versions)")


if __name__ == "__main__":
    sys.exit(main())
