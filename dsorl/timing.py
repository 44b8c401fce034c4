"""The one timing helper of the jobs and benchmarks: compile apart, warm-up, median of repeats.

    t = timed(fn, *args, repeats=5)        # jit fn, time lower+compile apart, then run it
    t.result, t.compile_seconds, t.median_seconds

    ts = compare({"jax": lambda: f(x), "numpy": lambda: g(x)}, repeats=15,
                 min_sample_seconds=0.02, max_seconds=15.0)   # round-robin samples

A *sample* is `calls_per_sample` calls in a row (enough to last `min_sample_seconds`),
divided by their number; each call's result is blocked on (`jax.block_until_ready`), so
asynchronous dispatch never hides work. The median of the samples is reported; the
samples themselves (wall and CPU seconds per call) are kept. The machine is shared: compare
ratios measured within one run, and run benchmarks under `nice`.
"""
import math
import statistics
import time
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax

from dsorl import progress

__all__ = ["Timing", "compile", "timed", "compare", "blas_info"]


class Timing(NamedTuple):
    """What `timed` / `compare` measured for one callable (seconds are per call)."""
    result: Any                 # the output of the last call (blocked on)
    compile_seconds: float      # lower + compile (0.0 for a callable that is not compiled here)
    samples: tuple              # wall seconds per call, one entry per sample
    cpu_samples: tuple          # process (CPU) seconds per call, one entry per sample
    calls_per_sample: int = 1

    @property
    def median_seconds(self) -> float:
        return float(statistics.median(self.samples))

    @property
    def cpu_median_seconds(self) -> float:
        return float(statistics.median(self.cpu_samples))

    @property
    def repeats(self) -> int:
        """Samples taken (fewer than asked when `max_seconds` ran out)."""
        return len(self.samples)


def compile(fn: Callable, *args, clock: Callable[[], float] = time.perf_counter,
            what: Optional[str] = None):
    """`(compiled, seconds)`: `jax.jit(fn).lower(*args).compile()` and the time it took,
    announced by `dsorl.progress.compiling` (as `what`, default the function's name)."""
    with progress.compiling(what or _name(fn)):
        start = clock()
        compiled = jax.jit(fn).lower(*args).compile()
        seconds = clock() - start
    return compiled, seconds


def _name(fn) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def timed(fn: Callable, *args, repeats: int = 3, warmup: int = 1, jit: bool = True,
          min_sample_seconds: float = 0.0, max_seconds: float = math.inf,
          own_seconds: Optional[Callable[[Any], float]] = None,
          clock: Callable[[], float] = time.perf_counter,
          cpu_clock: Callable[[], float] = time.process_time, what: Optional[str] = None) -> Timing:
    """Time `fn(*args)`: compile apart (`jit=True`: `jax.jit(fn)` lowered and compiled
    for `args`, announced as `what`; `jit=False`: `fn` is called as it is, e.g. NumPy, and
    `compile_seconds` is 0), `warmup` untimed calls, then `repeats` samples (at least one);
    see `compare`."""
    if jit:
        call_fn, compile_seconds = compile(fn, *args, clock=clock, what=what)
    else:
        call_fn, compile_seconds = fn, 0.0
    out = compare({"fn": lambda: call_fn(*args)}, repeats=max(1, repeats), warmup=warmup,
                  min_sample_seconds=min_sample_seconds, max_seconds=max_seconds,
                  own_seconds=None if own_seconds is None else {"fn": own_seconds},
                  clock=clock, cpu_clock=cpu_clock)["fn"]
    return out._replace(compile_seconds=compile_seconds)


def compare(calls: Mapping[str, Callable[[], Any]], *, repeats: int, warmup: int = 1,
            min_sample_seconds: float = 0.0, max_seconds: float = math.inf,
            own_seconds: Optional[Mapping[str, Callable[[Any], float]]] = None,
            clock: Callable[[], float] = time.perf_counter,
            cpu_clock: Callable[[], float] = time.process_time) -> dict:
    """`{name: Timing}` of zero-argument `calls`, sampled round-robin so drifting load on a
    shared machine hits every competitor alike.

    Each call gets `warmup` untimed calls; with `min_sample_seconds > 0` one more call is
    timed to choose `calls_per_sample = ceil(min_sample_seconds / its seconds)`. Then up to
    `repeats` rounds of one sample per call; after at least 3 rounds (or `repeats`, if
    fewer) the rounds stop once `max_seconds` have passed. `own_seconds[name](result)`, if
    given, replaces the clock for that call by the seconds the call reports itself (e.g. a
    sweep's `meta["run_seconds"]`, which leaves out its set-up). Results are blocked on.
    """
    own_seconds = own_seconds or {}
    reps, samples, cpu_samples, results = {}, {}, {}, {}

    def sample(name, n):
        wall, cpu = clock(), cpu_clock()
        own = 0.0
        for _ in range(n):
            results[name] = jax.block_until_ready(calls[name]())
            if name in own_seconds:
                own += own_seconds[name](results[name])
        wall, cpu = clock() - wall, cpu_clock() - cpu
        return (own if name in own_seconds else wall) / n, cpu / n

    for name, call in calls.items():
        for _ in range(warmup):
            results[name] = jax.block_until_ready(call())
        reps[name] = 1
        if min_sample_seconds > 0:
            probe, _ = sample(name, 1)
            reps[name] = max(1, math.ceil(min_sample_seconds / max(probe, 1e-7)))
        samples[name], cpu_samples[name] = [], []
    start = clock()
    for round_ in range(repeats):
        for name in calls:
            wall, cpu = sample(name, reps[name])
            samples[name].append(wall)
            cpu_samples[name].append(cpu)
        if round_ + 1 >= min(3, repeats) and clock() - start > max_seconds:
            break
    return {name: Timing(results.get(name), 0.0, tuple(samples[name]), tuple(cpu_samples[name]),
                         reps[name]) for name in calls}


def blas_info(threads: Optional[int] = None) -> Any:
    """The BLAS libraries loaded (threadpoolctl: API, kernel architecture, version, threads,
    file), after capping their threads at `threads` if given; JAX's CPU LAPACK calls are
    loaded first so their OpenBLAS is listed too. A string if threadpoolctl is missing."""
    jax.scipy.linalg.lu_factor(jax.numpy.eye(2))
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return "threadpoolctl missing"
    if threads is not None:
        threadpool_limits(limits=int(threads), user_api="blas")
    return [{k: p.get(k) for k in ("internal_api", "architecture", "version", "num_threads",
                                   "filepath")} for p in threadpool_info()]
