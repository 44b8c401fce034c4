"""Signs of life: the one progress and logging layer of jobs, sweeps and benchmarks.

    with progress.compiling("nbw exact program"):   # "compiling ..." / "compiled ... in 3.2 s"
        compiled = jax.jit(fn).lower(*args).compile()
    for env in progress.track(envs, "environments"):  # a bar with an ETA, one step per item
        ...
    with progress.task("sweep", total=n, unit="members") as t:
        t.advance(k)                                  # k more done

Every message is a record of the logger `"dsorl"` (`logging.getLogger("dsorl")`): compile
starts and ends and the start and end of a task at INFO, a task's steps at INFO at most once
every `STEP_LOG_SECONDS` (and its last step). A user whose `logging` set-up shows them (a
handler, and INFO enabled for "dsorl") gets them through it, and nothing else is drawn.

Otherwise the *display* draws them on stderr: a live `rich` progress bar per task (done/total,
elapsed, ETA) with the compile lines printed above it on a terminal; plain lines (the same
records as the log) when stderr is not a terminal. The display is on when asked, else when
`DSORL_PROGRESS` is set (`1`/`true`/`yes` on, `0`/`false`/`no` off), else when stderr is
a terminal; `configure(True/False)` (the CLI's `--progress/--no-progress`) asks for the rest
of the process, the `progress=` argument of a task for that task. Steps are counted on the
host between compiled calls (per chunk, environment, seed or outer iteration): the layer
never adds a host call inside a jitted loop.
"""
import contextlib
import logging
import math
import os
import sys
import time
from typing import Iterable, Optional

__all__ = ["logger", "STEP_LOG_SECONDS", "configure", "display_enabled", "note", "compiling",
           "task", "track", "Task"]

logger = logging.getLogger("dsorl")

STEP_LOG_SECONDS = 10.0  # a task's step records are at least this far apart (its last one excepted)

_asked: Optional[bool] = None    # configure(): the CLI's --progress/--no-progress
_live = None                     # the rich.progress.Progress drawing the open tasks on a terminal
_open = 0                        # tasks drawn by _live


def configure(progress: Optional[bool]) -> None:
    """Ask for the display (`True`), refuse it (`False`) or leave it to `DSORL_PROGRESS`
    and the terminal (`None`) for the rest of the process."""
    global _asked
    if progress is not None and not isinstance(progress, bool):
        raise ValueError(f"progress must be True, False or None, got {progress!r}.")
    _asked = progress


def display_enabled(progress: Optional[bool] = None) -> bool:
    """Whether the display draws: `progress` if given, else `configure`'s choice, else
    `DSORL_PROGRESS`, else whether stderr is a terminal."""
    for choice in (progress, _asked):
        if choice is not None:
            return bool(choice)
    env = os.environ.get("DSORL_PROGRESS", "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    if env in ("0", "false", "no", "off"):
        return False
    if env:
        raise ValueError(f"DSORL_PROGRESS must be 1/true/yes/on or 0/false/no/off, got {env!r}.")
    return _is_terminal()


def _is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def _user_logging() -> bool:
    """The user's `logging` set-up shows our INFO records (a handler on "dsorl" or an
    ancestor, and INFO enabled): they go there, and the display stays quiet."""
    return logger.isEnabledFor(logging.INFO) and logger.hasHandlers()


def _say(message: str, shown: bool, *, step: bool = False) -> None:
    """Log `message` at INFO; draw it too when `shown` and nobody else handles the log.
    On a terminal a step line is left to its live bar."""
    logger.info(message)
    if not shown or _user_logging():
        return
    if _live is not None and _is_terminal():
        if not step:
            _live.console.print(message, highlight=False, markup=False)
    elif not (step and _is_terminal()):
        print(f"dsorl: {message}", file=sys.stderr, flush=True)


def note(message: str, progress: Optional[bool] = None) -> None:
    """A line of news from a job (INFO; drawn when the display is on)."""
    _say(message, display_enabled(progress))


class _Seconds:
    seconds: float = math.nan


@contextlib.contextmanager
def compiling(what: str, progress: Optional[bool] = None):
    """Context of a compile step: says `compiling {what} ...` when it starts and `compiled
    {what} in S s` when it ends; the yielded object's `seconds` holds S afterwards."""
    shown = display_enabled(progress)
    out = _Seconds()
    _say(f"compiling {what} ...", shown)
    start = time.perf_counter()
    yield out
    out.seconds = time.perf_counter() - start
    _say(f"compiled {what} in {out.seconds:.2f} s", shown)


class Task:
    """Progress over `total` steps of one piece of work (`advance(n)` after n more):
    a live bar on a terminal, rate-limited step records otherwise (see the module)."""

    def __init__(self, what: str, total: int, *, unit: str = "", progress: Optional[bool] = None,
                 clock=time.perf_counter):
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise ValueError(f"total must be a non-negative integer, got {total!r}.")
        self.what, self.total, self.unit, self.clock = what, total, unit, clock
        self.shown = display_enabled(progress)
        self.done, self.start, self._logged, self._bar = 0, clock(), -math.inf, None
        self._closed = False
        _say(f"{what}: {total} {unit}".rstrip() + " to do", self.shown)
        if self.shown and _is_terminal() and not _user_logging():
            self._bar = _bar_open(what, total)

    def eta_seconds(self) -> float:
        """Seconds left at the mean rate so far (NaN before the first step)."""
        if self.done == 0:
            return math.nan
        return (self.clock() - self.start) / self.done * (self.total - self.done)

    def advance(self, n: int = 1) -> None:
        self.done += int(n)
        if self._bar is not None:
            _live.update(self._bar, completed=self.done)
        now = self.clock()
        if self.done >= self.total or now - self._logged >= STEP_LOG_SECONDS:
            self._logged = now
            _say(f"{self.what}: {self.done}/{self.total} {self.unit}".rstrip()
                 + f", {_clock(now - self.start)} elapsed, ETA {_clock(self.eta_seconds())}",
                 self.shown, step=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            _bar_close(self._bar)
        _say(f"{self.what}: {self.done}/{self.total} done in"
             f" {_clock(self.clock() - self.start)}", self.shown)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def task(what: str, total: int, *, unit: str = "", progress: Optional[bool] = None) -> Task:
    """A `Task` (use it as a context manager so it closes)."""
    return Task(what, total, unit=unit, progress=progress)


def track(items: Iterable, what: str, *, total: Optional[int] = None, unit: str = "",
          progress: Optional[bool] = None):
    """Iterate over `items`, one step of a `Task` per item (done when the loop body ends)."""
    items = list(items) if total is None else items
    with Task(what, len(items) if total is None else total, unit=unit, progress=progress) as t:
        for item in items:
            yield item
            t.advance()


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return (f"{h}:" if h else "") + f"{rest // 60:02d}:{rest % 60:02d}"


def _bar_open(what: str, total: int):
    """A row of the one live display (opened with the first row)."""
    global _live, _open
    if _live is None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        _live = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                         TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                         console=Console(file=sys.stderr), transient=False)
        _live.start()
    _open += 1
    return _live.add_task(what, total=total)


def _bar_close(bar) -> None:
    global _live, _open
    _open -= 1
    if _open == 0:
        _live.stop()  # the last row stays on screen with its final count
        _live = None
    else:  # a finished inner row (one environment's seeds) makes way for the next
        _live.remove_task(bar)
