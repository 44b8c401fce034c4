"""dsorl.timing with a fake clock: compile time apart from the median, the median of the
samples, warm-up calls left out, results blocked on, round-robin order, adaptive calls per
sample, the time budget, self-timed calls; and one real jitted function (no speed asserted)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsorl import timing


class Clock:
    """A fake clock: time passes only when a fake call says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def costs(self, *seconds, result=None):
        """A call whose i-th run takes `seconds[i]` (the last one repeats)."""
        runs = []

        def call(*args):
            self.now += seconds[min(len(runs), len(seconds) - 1)]
            runs.append(args)
            return result if result is not None else len(runs)

        call.runs = runs
        return call


def test_median_of_the_samples_after_warmup():
    clock = Clock()
    fn = clock.costs(50.0, 1.0, 3.0, 2.0, 4.0)
    t = timing.timed(fn, "x", jit=False, repeats=4, warmup=1, clock=clock, cpu_clock=clock)
    assert t.samples == (1.0, 3.0, 2.0, 4.0) and t.median_seconds == 2.5  # warm-up left out
    assert t.cpu_samples == t.samples and t.cpu_median_seconds == 2.5
    assert t.compile_seconds == 0.0 and t.repeats == 4 and t.calls_per_sample == 1
    assert t.result == 5 and fn.runs == [("x",)] * 5  # the last call's output; args passed
    no_warmup = timing.timed(clock.costs(7.0, 1.0), jit=False, repeats=3, warmup=0, clock=clock)
    assert no_warmup.samples == (7.0, 1.0, 1.0) and no_warmup.median_seconds == 1.0


def test_compile_time_is_reported_apart(monkeypatch):
    clock = Clock()
    run = clock.costs(1.0, result="out")

    class FakeJit:  # jax.jit(fn).lower(*args).compile() takes 10 s, each call 1 s
        def __init__(self, fn):
            self.fn = fn

        def lower(self, *args):
            return self

        def compile(self):
            clock.now += 10.0
            return run

    monkeypatch.setattr(timing.jax, "jit", FakeJit)
    t = timing.timed(lambda x: x, 3, repeats=5, clock=clock)
    assert t.compile_seconds == 10.0 and t.samples == (1.0,) * 5 and t.median_seconds == 1.0
    assert len(run.runs) == 6 and t.result == "out"  # one warm-up + five samples
    compiled, seconds = timing.compile(lambda x: x, 3, clock=clock)
    assert compiled is run and seconds == 10.0


def test_results_are_blocked_on():
    clock = Clock()

    class Pending:  # finishing the (asynchronous) work takes 7 s
        blocked = 0

        def block_until_ready(self):
            Pending.blocked += 1
            clock.now += 7.0
            return self

    fn = clock.costs(1.0, result={"a": Pending(), "b": [Pending()]})
    t = timing.timed(fn, jit=False, repeats=2, warmup=1, clock=clock)
    assert Pending.blocked == 2 * 3 and t.samples == (15.0, 15.0)  # both leaves, every call


def test_compare_round_robin_adaptive_repeats_and_budget():
    clock, order = Clock(), []

    def call(name, seconds):
        def run():
            order.append(name)
            clock.now += seconds
        return run

    ts = timing.compare({"a": call("a", 1.0), "b": call("b", 2.0)}, repeats=2, clock=clock)
    assert order == ["a", "b", "a", "b", "a", "b"]  # warm-ups, then one sample each per round
    assert ts["a"].median_seconds == 1.0 and ts["b"].median_seconds == 2.0

    # enough calls per sample to last min_sample_seconds (one more call timed to choose)
    fast = timing.compare({"f": call("f", 0.25)}, repeats=3, min_sample_seconds=1.0,
                          clock=clock)["f"]
    assert fast.calls_per_sample == 4 and fast.samples == (0.25,) * 3

    # the budget stops the rounds, but only after 3 of them
    slow = timing.compare({"s": call("s", 1.0)}, repeats=10, max_seconds=2.5, clock=clock)["s"]
    assert slow.repeats == 3
    slow = timing.compare({"s": call("s", 1.0)}, repeats=10, max_seconds=4.5, clock=clock)["s"]
    assert slow.repeats == 5
    assert timing.compare({"s": call("s", 1.0)}, repeats=2, max_seconds=0.0,
                          clock=clock)["s"].repeats == 2


def test_own_seconds_replace_the_clock():
    clock = Clock()
    fn = clock.costs(5.0, result={"run_seconds": 0.5})
    t = timing.compare({"sweep": fn}, repeats=3, clock=clock,
                       own_seconds={"sweep": lambda r: r["run_seconds"]})["sweep"]
    assert t.samples == (0.5,) * 3


def test_a_real_jitted_function():
    x = jnp.arange(4.0)
    t = timing.timed(lambda x: jnp.sin(x) @ x, x, repeats=3)
    np.testing.assert_allclose(t.result, np.sin(np.arange(4.0)) @ np.arange(4.0))
    assert t.compile_seconds > 0 and t.repeats == 3 and t.median_seconds > 0
    assert isinstance(t.result, jax.Array) and t.result.is_ready()


def test_blas_info_lists_libraries_or_says_why_not():
    info = timing.blas_info()
    assert info == "threadpoolctl missing" or all("internal_api" in p for p in info)


@pytest.mark.parametrize("repeats", [0, -1])
def test_timed_takes_at_least_one_sample(repeats):
    clock = Clock()
    t = timing.timed(clock.costs(2.0), jit=False, repeats=repeats, clock=clock)
    assert t.samples == (2.0,)
