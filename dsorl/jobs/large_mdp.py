"""Large-MDP benchmark: exact quantities on sparse MDPs from 10^3 to 10^6 states.

Two MDP kinds, `A = 4` actions: a sparse garnet (`dsorl.envs.sparse_garnet`, `K =
branching` successors a pair) and an `n x n` gridworld (`dsorl.envs.large_gridworld`, goal
resetting to the start, slip `slip`, reward `gridworld_step_reward` a step (a cost: with
only the goal's reward the values of a wandering policy at the start are below 1e-40 on a
large grid, far under any solver's absolute accuracy, and relative comparisons of them
mean nothing); `S = n^2` with `n = round(sqrt(size))`). The policy is
a tabular softmax of standard-normal logits `theta[S, A]` from the seed (plus
`gridworld_drift` on "down" and "right" on the gridworld, 0 by default).

What the solves cost depends on the chain, and the table reports it (`iterations`).
Measured with the default tolerance (relative residual 1e-12): on the garnet about 10-25
BiCGSTAB iterations whatever S; on the gridworld the discounted solves take about 135
iterations at n = 64 and at n = 128 (gamma bounds the conditioning), but the average-reward
solves grow with n (about 870 at n = 64, 2000 at n = 128: the chain mixes over paths of
length ~n), so gain and bias on the gridworld stop at `gridworld_average_max_states`; a
policy drifting toward the goal (`gridworld_drift: 2`) makes the operator strongly
non-normal and even the discounted solves grow (200 at n = 64, 450 at n = 128).

Quantities, each a function of `(theta, mdp)` compiled once per size (compile time apart,
then the median of `repeats` calls; `dsorl.timing`):
  value            `J = rho . v`, `v = (I - gamma P_pi)^{-1} r_pi`
  value_grad       `J` and `dJ/dtheta` (the adjoint solve by `jax.grad`, implicitly)
  gain_bias        gain `g` and bias `h` (two Krylov solves on a sparse chain)
  bias_grad        `d h(s0) / d theta`, `s0` the first state
  value_iteration  `planning.value_iteration` to `tol` (its stopping rule: `gamma/(1-gamma)
                   ||v_k+1 - v_k|| <= tol max(1, ||v||)`), sizes up to `value_iteration_max_states`
  npg_step         one natural-PG step `theta + eta A_pi / (1 - gamma)`
                   (`objectives.natural_policy_gradient`: one value solve)
Methods: `sparse` (dsorl on the `SparseTransitions` MDP); `dense` (dsorl on the same MDP
made dense, for `S <= dense_max_states`); `scipy_spsolve` and `scipy_gmres` (SciPy as a
user would write it: `P_pi` assembled as CSR from the policy each call, `spsolve` or
`gmres(rtol=scipy_rtol, restart=30)`, the gradient by the adjoint solve
`(I - gamma P_pi)^T m = rho` and the policy-gradient theorem `m(s) pi(s, a) A(s, a)`;
gain and bias by `splu` of `I - P_pi` with its last column set to ones and two solves;
value iteration as a NumPy loop of CSR products with dsorl's stopping rule). SciPy has no
`bias_grad` (not written: it is the derivative of a bordered system, not a user's one-liner),
and `spsolve` stops at `scipy_spsolve_max_states[kind]`: SuperLU's fill-in on a random
garnet made one value solve take 10 s at S = 4000 (a gridworld's 2-D graph factors cheaply).
Every method's output is compared with the sparse one (`rel_diff`, max-norm relative).

Table `timings`, one row per (kind, S, quantity, method):
  kind, n_states, n_actions, fan_out   the MDP (fan_out: K of the kernel)
  quantity, method                     see above
  median_s, compile_s                  seconds per call (median) and lower+compile (NaN for SciPy)
  iterations                           Krylov iterations (forward solves; gain_bias: both),
                                       GMRES inner iterations, value-iteration sweeps; NaN for LU
  residual                             the solve's relative residual (NaN where not reported)
  converged                            bool (False: NaN outputs, see dsorl.krylov)
  rel_diff                             max |x - x_sparse| / max |x_sparse| over the outputs
  peak_rss_mb                          the process's peak resident memory so far (MB; sizes run
                                       in increasing order, so at a size it bounds that size's peak;
                                       the dense runs at S <= 4000 alone reach about 2 GB)
Table `memory` (with `memory_probe`): kind, n_states, quantity, peak_rss_mb: value+gradient
at the largest size in a fresh Python process (build included), the memory a user sees.
Table `fits`: kind, quantity, method, exponent (least-squares slope of log median_s against
log S over `n_states >= fit_min_states`), crossover_states (smallest S where sparse beats
dense, NaN when it never does in the measured range), sparse_beats_dense_everywhere (bool).
Table `goals`: goal, kind, value, target, met (the speed and memory goals set for the sparse
path, measured in this run).
Figure `scaling`: seconds against S (log-log), a panel per (kind, quantity), a line per method.
"""
import math
import resource
from typing import Optional

import jax
import numpy as np

from dsorl import markov, objectives, planning, progress, timing
from dsorl.krylov import Krylov
from dsorl.envs.garnet import sparse_garnet
from dsorl.envs.gridworld import large_gridworld
from dsorl.mdp import MDP, induced_chain
from dsorl.results import keep_on_interrupt

__all__ = ["DEFAULTS", "QUANTITIES", "run", "build", "figures"]

DEFAULTS = {
    "seed": 0,
    "kinds": ["garnet", "gridworld"],
    "sizes": [1000, 2000, 4000, 10000, 100000, 1000000],
    "actions": 4,
    "branching": 10,
    "slip": 0.1,
    "gridworld_drift": 0.0,
    "gridworld_step_reward": -1.0,
    "memory_probe": True,
    "gridworld_average_max_states": 10000,
    "max_iters": 5000,
    "gamma": 0.99,
    "quantities": ["value", "value_grad", "gain_bias", "bias_grad", "value_iteration",
                   "npg_step"],
    "methods": ["sparse", "dense", "scipy_spsolve", "scipy_gmres"],
    "dense_max_states": 4000,
    "scipy_spsolve_max_states": {"garnet": 4000, "gridworld": 100000},
    "value_iteration_max_states": 100000,
    "dense_vi_max_states": 1000,
    "vi_tol": 1.0e-8,
    "npg_step_size": 1.0,
    "scipy_rtol": 1.0e-12,
    "fit_min_states": 10000,
    "repeats": 3,
    "output_dir": "benchmarks/results/large_mdp",
}

QUANTITIES = ("value", "value_grad", "gain_bias", "bias_grad", "value_iteration", "npg_step")
METHODS = ("sparse", "dense", "scipy_spsolve", "scipy_gmres")


def build(kind: str, size: int, config: dict):
    """`(mdp, theta, cells)`: the sparse MDP of `kind` near `size` states and its logits."""
    key = jax.random.key(config["seed"])
    k_mdp, k_theta = jax.random.split(key)
    if kind == "garnet":
        mdp = sparse_garnet(k_mdp, size, config["actions"], config["branching"],
                            krylov=Krylov(max_iters=config["max_iters"]))
        theta = jax.random.normal(k_theta, (mdp.n_states, mdp.n_actions))
    elif kind == "gridworld":
        n = max(2, int(round(math.sqrt(size))))
        mdp = large_gridworld(n, slip=config["slip"], step_reward=config["gridworld_step_reward"],
                              krylov=Krylov(max_iters=config["max_iters"]))
        theta = jax.random.normal(k_theta, (mdp.n_states, mdp.n_actions))
        theta = theta.at[:, 1].add(config["gridworld_drift"]).at[:, 3].add(
            config["gridworld_drift"])  # down, right: toward the goal corner
    else:
        raise ValueError(f"kind must be 'garnet' or 'gridworld', got {kind!r}.")
    return mdp, theta


def _validate(config: dict) -> None:
    for name, allowed in (("kinds", ("garnet", "gridworld")), ("quantities", QUANTITIES),
                          ("methods", METHODS)):
        bad = [x for x in config[name] if x not in allowed]
        if bad:
            raise ValueError(f"{name} has unknown entries {bad}; choose from {list(allowed)}.")
    if not 0 <= config["gamma"] < 1:
        raise ValueError(f"gamma = {config['gamma']} must lie in [0, 1).")
    if any(int(s) < 4 for s in config["sizes"]):
        raise ValueError(f"sizes must be >= 4, got {config['sizes']}.")


# ----------------------------------------------------------------------------------------
# dsorl's programs: functions of (theta, mdp), the MDP an argument (never a captured
# constant: XLA would fold it for seconds)


def _programs(gamma, config):
    pi_of = lambda th: jax.nn.softmax(th, axis=-1)  # noqa: E731

    def value(theta, mdp):
        return objectives.discounted_return(mdp, pi_of(theta), gamma)

    def gain_bias(theta, mdp):
        chain = induced_chain(mdp, pi_of(theta))
        return markov.gain(chain), markov.bias(chain)

    def bias_grad(theta, mdp):
        return jax.grad(lambda th: objectives.policy_bias(mdp, pi_of(th))[0])(theta)

    def value_iteration(theta, mdp):
        sol = planning.value_iteration(mdp, gamma, tol=config["vi_tol"])
        return sol.value, sol.iterations

    def npg_step(theta, mdp):
        return theta + config["npg_step_size"] * objectives.natural_policy_gradient(
            mdp, pi_of(theta), gamma)

    return {"value": value, "value_grad": jax.value_and_grad(value), "gain_bias": gain_bias,
            "bias_grad": bias_grad, "value_iteration": value_iteration, "npg_step": npg_step}


def _solver_report(quantity, theta, mdp, gamma):
    """(iterations, residual, converged) of the forward solves (sparse MDPs only)."""
    chain = induced_chain(mdp, jax.nn.softmax(theta, axis=-1))
    # under jit: a solve that misses its tolerance is reported here, not raised
    if quantity in ("value", "value_grad", "npg_step"):
        _, info = jax.jit(lambda c: markov.discounted_value(c, gamma, return_info=True))(chain)
    elif quantity in ("gain_bias", "bias_grad"):
        _, info = jax.jit(lambda c: markov.bias(c, return_info=True))(chain)
    else:
        return math.nan, math.nan, True
    return int(info.iterations), float(info.residual), bool(info.converged)


# ----------------------------------------------------------------------------------------
# SciPy, written as a user would


class _SciPyMDP:
    """Host copies: the kernel as CSR `[S A, S]` (fixed), rewards, initial law."""

    def __init__(self, mdp: MDP):
        import scipy.sparse

        P = mdp.P
        S, A, K = P.successors.shape
        self.S, self.A = S, A
        self.succ = np.array(P.successors).reshape(S, A * K)
        self.probs = np.array(P.probs).reshape(S, A, K)
        self.K = K
        self.kernel = scipy.sparse.csr_matrix(
            (np.array(P.probs).reshape(-1), np.array(P.successors).reshape(-1),
             np.arange(0, S * A * K + 1, K)), shape=(S * A, S))
        self.R, self.rho = np.array(mdp.R), np.array(mdp.rho)

    def chain(self, theta):
        """`(pi, P_pi as CSR, r_pi)` of softmax logits."""
        import scipy.sparse

        z = np.exp(theta - theta.max(-1, keepdims=True))
        pi = z / z.sum(-1, keepdims=True)
        data = (pi[..., None] * self.probs).reshape(self.S, -1)
        # indices copied: summing duplicates sorts them in place
        P = scipy.sparse.csr_matrix((data.reshape(-1), self.succ.reshape(-1).copy(),
                                     np.arange(0, data.size + 1, data.shape[1])),
                                    shape=(self.S, self.S))
        P.sum_duplicates()
        return pi, P, (pi * self.R).sum(-1)


def _scipy_solver(method, rtol):
    import scipy.sparse.linalg as spla

    def solve(A, b, counter):
        if method == "scipy_spsolve":
            return spla.spsolve(A.tocsc(), b)
        x, info = spla.gmres(A, b, rtol=rtol, atol=0.0, restart=30, maxiter=10_000,
                             callback=lambda _: counter.append(1), callback_type="pr_norm")
        if info != 0:
            counter.append(math.inf)  # not converged: reported, the output kept as is
        return x
    return solve


def _scipy_programs(host: _SciPyMDP, gamma, method, config):
    import scipy.sparse
    import scipy.sparse.linalg as spla

    solve = _scipy_solver(method, config["scipy_rtol"])
    eye = scipy.sparse.identity(host.S, format="csr")
    counter: list = []

    def value(theta):
        _, P, r = host.chain(theta)
        return host.rho @ solve(eye - gamma * P, r, counter)

    def value_grad(theta):
        pi, P, r = host.chain(theta)
        A = (eye - gamma * P).tocsr()
        v = solve(A, r, counter)
        m = solve(A.T.tocsr(), host.rho, counter)  # the adjoint solve
        Q = host.R + gamma * (host.kernel @ v).reshape(host.S, host.A)
        advantage = Q - (pi * Q).sum(-1, keepdims=True)
        return host.rho @ v, m[:, None] * pi * advantage

    def gain_bias(theta):
        _, P, r = host.chain(theta)
        ones = scipy.sparse.csr_matrix((np.ones(host.S), (np.arange(host.S),
                                                          np.full(host.S, host.S - 1))),
                                       shape=(host.S, host.S))
        keep = scipy.sparse.diags(np.r_[np.ones(host.S - 1), 0.0])
        B = ((eye - P) @ keep + ones).tocsc()  # I - P, last column replaced by ones
        lu = spla.splu(B)
        x = lu.solve(r)
        g, w = x[-1], np.r_[x[:-1], 0.0]
        p = lu.solve(np.r_[np.zeros(host.S - 1), 1.0], trans="T")
        return g, w - p @ w

    def value_iteration(theta):
        del theta
        v = np.zeros(host.S)
        tol, sweeps = config["vi_tol"], 0
        while True:
            new = (host.R + gamma * (host.kernel @ v).reshape(host.S, host.A)).max(-1)
            sweeps += 1
            done = (gamma / (1 - gamma) * np.abs(new - v).max()
                    <= tol * max(1.0, np.abs(new).max()))
            v = new
            if done:
                counter.append(sweeps)
                return v, sweeps

    def npg_step(theta):
        pi, P, r = host.chain(theta)
        v = solve(eye - gamma * P, r, counter)
        Q = host.R + gamma * (host.kernel @ v).reshape(host.S, host.A)
        return theta + config["npg_step_size"] * (Q - (pi * Q).sum(-1, keepdims=True)) / (1 - gamma)

    programs = {"value": value, "value_grad": value_grad, "value_iteration": value_iteration,
                "npg_step": npg_step}
    if method == "scipy_spsolve":
        programs["gain_bias"] = gain_bias
    return programs, counter


# ----------------------------------------------------------------------------------------
# The run


def _peak_rss_mb() -> float:
    return _high_water_mb()


def _rel_diff(x, reference) -> float:
    xs = [np.asarray(a, float).reshape(-1) for a in jax.tree_util.tree_leaves(x)]
    rs = [np.asarray(a, float).reshape(-1) for a in jax.tree_util.tree_leaves(reference)]
    if len(xs) != len(rs):
        return math.nan
    worst = 0.0
    for a, b in zip(xs, rs):
        if a.shape != b.shape:
            return math.nan
        worst = max(worst, float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)))
    return worst


def _applies(kind, quantity, method, S, config) -> bool:
    if quantity == "value_iteration" and method == "dense" and S > config["dense_vi_max_states"]:
        return False  # 1833 dense sweeps at S = 4000 take 23 s a call
    if (kind == "gridworld" and quantity in ("gain_bias", "bias_grad")
            and S > config["gridworld_average_max_states"]):
        return False
    if method == "dense" and S > config["dense_max_states"]:
        return False
    if method == "scipy_spsolve" and S > config["scipy_spsolve_max_states"][kind]:
        return False
    if method.startswith("scipy") and quantity == "bias_grad":
        return False
    if method == "scipy_gmres" and quantity == "gain_bias":
        return False
    if quantity == "value_iteration" and (S > config["value_iteration_max_states"]
                                          or method == "scipy_gmres"):
        return False  # one NumPy value-iteration baseline (under the spsolve name) suffices
    return True


def _measure_size(kind, size, config) -> list:
    gamma = config["gamma"]
    mdp, theta = build(kind, size, config)
    S, A, K = mdp.P.successors.shape
    programs = _programs(gamma, config)
    rows, reference = [], {}
    methods = [m for m in config["methods"] if m in METHODS]
    dense = None
    if "dense" in methods and S <= config["dense_max_states"]:
        dense = MDP(mdp.P.to_dense(), mdp.R, mdp.rho, mdp.action_mask)
    host = _SciPyMDP(mdp) if any(m.startswith("scipy") for m in methods) else None
    for quantity in config["quantities"]:
        for method in methods:
            if not _applies(kind, quantity, method, S, config):
                continue
            row = dict(kind=kind, n_states=S, n_actions=A, fan_out=K, quantity=quantity,
                       method=method, median_s=math.nan, compile_s=math.nan,
                       iterations=math.nan, residual=math.nan, converged=True,
                       rel_diff=math.nan)
            if method in ("sparse", "dense"):
                problem = mdp if method == "sparse" else dense
                t = timing.timed(programs[quantity], theta, problem, repeats=config["repeats"],
                                 what=f"{kind} S={S} {quantity} ({method})")
                row.update(median_s=t.median_seconds, compile_s=t.compile_seconds)
                out = t.result
                if method == "sparse":
                    it, res, ok = _solver_report(quantity, theta, mdp, gamma)
                    if quantity == "value_iteration":
                        it = int(out[1])
                    row.update(iterations=it, residual=res, converged=ok)
            else:
                fns, counter = _scipy_programs(host, gamma, method, config)
                theta_host = np.asarray(theta)
                t = timing.timed(fns[quantity], theta_host, jit=False, repeats=config["repeats"])
                calls = 1 + config["repeats"]  # warm-up included
                row.update(median_s=t.median_seconds,
                           iterations=sum(counter) / calls if counter else math.nan,
                           converged=not any(math.isinf(c) for c in counter))
                out = t.result
            if quantity == "value_iteration":
                out = out[0]
            if method == "sparse":
                reference[quantity] = out
            elif quantity in reference:
                row["rel_diff"] = _rel_diff(out, reference[quantity])
            row["peak_rss_mb"] = _peak_rss_mb()
            rows.append(row)
            progress.note(f"{kind} S={S} {quantity:15s} {method:13s} {row['median_s']:.4g} s"
                          f" (iterations {row['iterations']}, rel_diff {row['rel_diff']:.2g})")
    return rows


_PROBE = """
import jax
jax.config.update("jax_enable_x64", True)
from dsorl.jobs import large_mdp
config = dict(large_mdp.DEFAULTS, **{config!r})
mdp, theta = large_mdp.build({kind!r}, {size}, config)
jax.block_until_ready(jax.jit(large_mdp._programs(config["gamma"], config)["value_grad"])(theta, mdp))
print(large_mdp._high_water_mb())
"""


def _high_water_mb() -> float:
    """This process's peak resident memory (MB): `VmHWM` of /proc/self/status, which starts
    afresh at exec (`getrusage`'s `ru_maxrss` keeps the forking parent's peak on Linux, so a
    child started from a 4 GB test process reported 4 GB); `ru_maxrss` elsewhere."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_probe(kind, size, config) -> dict:
    """Peak RSS (MB) of building the MDP and one value+gradient in a fresh process."""
    import subprocess
    import sys

    settings = {k: config[k] for k in DEFAULTS if k in config}
    code = _PROBE.format(config=settings, kind=kind, size=int(size))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=1800)
    peak = float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else math.nan
    return dict(kind=kind, n_states=size, quantity="value_grad", peak_rss_mb=peak)


def _fits(rows, config) -> list:
    out = []
    keys = sorted({(r["kind"], r["quantity"], r["method"]) for r in rows})
    for kind, quantity, method in keys:
        sel = [r for r in rows if (r["kind"], r["quantity"], r["method"]) == (kind, quantity, method)
               and r["n_states"] >= config["fit_min_states"] and np.isfinite(r["median_s"])]
        exponent = math.nan
        if len({r["n_states"] for r in sel}) >= 2:
            x = np.log([r["n_states"] for r in sel])
            y = np.log([r["median_s"] for r in sel])
            exponent = float(np.polyfit(x, y, 1)[0])
        crossover, everywhere = math.nan, False
        if method == "sparse":
            pairs = []
            for r in rows:
                if (r["kind"], r["quantity"], r["method"]) != (kind, quantity, "dense"):
                    continue
                sp = [q for q in rows if (q["kind"], q["quantity"], q["method"], q["n_states"])
                      == (kind, quantity, "sparse", r["n_states"])]
                if sp:
                    pairs.append((r["n_states"], sp[0]["median_s"] < r["median_s"]))
            pairs.sort()
            wins = [S for S, win in pairs if win]
            if wins:
                crossover = float(wins[0])
                everywhere = all(win for _, win in pairs)
        out.append(dict(kind=kind, quantity=quantity, method=method, exponent=exponent,
                        crossover_states=crossover, sparse_beats_dense_everywhere=everywhere))
    return out


def _goals(rows, fits, memory=()) -> list:
    def median(kind, S, quantity, method="sparse"):
        sel = [r["median_s"] for r in rows if (r["kind"], r["n_states"], r["quantity"],
                                               r["method"]) == (kind, S, quantity, method)]
        return sel[0] if sel else math.nan

    def nearest(kind, target):
        sizes = sorted({r["n_states"] for r in rows if r["kind"] == kind})
        near = [S for S in sizes if abs(math.log10(S) - math.log10(target)) < 0.05]
        return near[0] if near else None

    goals = []
    for kind in sorted({r["kind"] for r in rows}):
        S5, S6 = nearest(kind, 1e5), nearest(kind, 1e6)
        if S5:
            goals.append(dict(goal="value+gradient at S=1e5 (s)", kind=kind,
                              value=median(kind, S5, "value_grad"), target=1.0))
            goals.append(dict(goal="gain+bias+bias gradient at S=1e5 (s)", kind=kind,
                              value=median(kind, S5, "gain_bias") + median(kind, S5, "bias_grad"),
                              target=3.0))
        if S6:
            goals.append(dict(goal="value+gradient at S=1e6 (s)", kind=kind,
                              value=median(kind, S6, "value_grad"), target=15.0))
            peak = [m["peak_rss_mb"] for m in memory if (m["kind"], m["n_states"]) == (kind, S6)]
            goals.append(dict(goal="peak memory at S=1e6, value+gradient, fresh process (MB)",
                              kind=kind, value=peak[0] if peak else math.nan, target=2048.0))
        for S in sorted({r["n_states"] for r in rows if r["kind"] == kind and r["n_states"] >= 1e4}):
            baseline = np.nanmin([median(kind, S, "value_grad", m) for m in
                                  ("scipy_spsolve", "scipy_gmres")] + [math.inf])
            if np.isfinite(baseline):
                goals.append(dict(goal=f"speed-up over SciPy, value+gradient, S={S}", kind=kind,
                                  value=baseline / median(kind, S, "value_grad"), target=2.0))
        for f in fits:
            if f["kind"] == kind and f["method"] == "sparse" and f["quantity"] in (
                    "value", "value_grad", "gain_bias", "bias_grad"):
                goals.append(dict(goal=f"time exponent in S, {f['quantity']} (sparse)", kind=kind,
                                  value=f["exponent"], target=1.2))
    for g in goals:
        higher_better = g["goal"].startswith("speed-up")
        g["met"] = bool(np.isfinite(g["value"]) and (g["value"] >= g["target"] if higher_better
                                                      else g["value"] <= g["target"]))
    return goals


def run(config: dict, log: Optional[object] = None) -> dict:
    """Returns the tables `timings`, `fits`, `goals` and `memory` (see the module
    docstring); Ctrl-C keeps the sizes already measured (`timings` only)."""
    del log
    jax.config.update("jax_enable_x64", True)
    _validate(config)
    rows = []
    settings = [(kind, size) for size in sorted(config["sizes"]) for kind in config["kinds"]]
    with keep_on_interrupt(lambda: {"tables": {"timings": rows}, "arrays": {},
                                    "seeds": [config["seed"]]}):
        for kind, size in progress.track(settings, "large_mdp sizes", unit="MDPs"):
            rows += _measure_size(kind, size, config)
    fits = _fits(rows, config)
    memory = []
    if config["memory_probe"]:
        for kind in config["kinds"]:
            S = max(r["n_states"] for r in rows if r["kind"] == kind)
            memory.append(_memory_probe(kind, S, config))
    return {"tables": {"timings": rows, "fits": fits, "goals": _goals(rows, fits, memory),
                       "memory": memory},
            "arrays": {}, "seeds": [config["seed"]]}


def figures(tables, arrays, config, plt) -> dict:
    """`scaling`: seconds per call against S (log-log), a panel per MDP kind and quantity,
    a line per method; sizes where a method was not run are absent from its line."""
    from dsorl import plots

    t = tables["timings"]
    panels = sorted(set(zip(t["kind"].tolist(), t["quantity"].tolist())))
    if not panels:
        return {}
    fig, axs = plots.facets(plt, len(panels), ncols=min(len(panels), 3), width=4.0)
    methods = sorted(set(t["method"].tolist()))
    colours = dict(zip(methods, plots.palette(len(methods))))
    for ax, (kind, quantity) in zip(axs, panels):
        for method in methods:
            sel = (t["kind"] == kind) & (t["quantity"] == quantity) & (t["method"] == method)
            sel &= np.isfinite(t["median_s"])
            if not sel.any():
                continue
            order = np.argsort(t["n_states"][sel])
            ax.plot(t["n_states"][sel][order], t["median_s"][sel][order], "o-",
                    color=colours[method], label=method)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{kind}: {quantity}", fontsize=9)
        ax.set_xlabel("states S")
        ax.set_ylabel("seconds per call (median)")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axs[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle(f"large_mdp: A = {config['actions']}, garnet K = {config['branching']},"
                 f" gridworld slip {config['slip']}, γ = {config['gamma']}", fontsize=10)
    fig.tight_layout()
    return {"scaling": fig}
