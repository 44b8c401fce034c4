"""Batch sweeps: one algorithm run for every point of a grid (γ × seed × start × ...).

An algorithm is `run(mdp, params0, hparams, key, *, config) -> (final_state, trace)`
(docs/design.md §7). A `Grid` is a product of named axes; its points are flattened in C order
(first axis slowest) into members `0 .. B-1`. `sweep` compiles one program that runs a
chunk of members with `vmap`, shards the chunk over a one-axis device mesh
(`NamedSharding`; with `jax.distributed.initialize` the mesh spans every process), runs
the chunks in turn, drops the padding and returns a tidy table: one row per member with
its grid coordinates and final metrics (per seed, never only aggregates).

- Axis names `mdp`, `params0` and `seed` are reserved: a `seed` axis gives each member the
  key `jax.random.key(seed)`, an `mdp` or `params0` axis holds stacked pytrees (leading
  axis = points). Every other axis is a hyperparameter, a traced argument, so `vmap` sweeps
  it. Keys depend on the seed only: members that differ in γ or start share their random
  numbers (common random numbers), and the table does not depend on how members are split
  over chunks, devices or processes.
- Inside the compiled program a member only receives its flat index; its coordinates are
  gathered from the (replicated) axis values, so the host never materialises the product.
- Chunks: at most `chunk_size` members per call, a multiple of the device count (the last
  chunk is padded with copies of its last member, computed and dropped). By default the
  largest chunk whose compiled footprint (XLA's memory analysis) keeps two chunks in flight
  within `memory_budget` bytes, capped at `MAX_CHUNK_PER_DEVICE` members per device.
- Resumable: with `out_dir`, each finished chunk is written atomically to
  `out_dir/chunks/`; a rerun skips the members already on disk, and a sweep whose
  description differs from the one on disk is refused (`ValueError` naming what differs).
  The description is the sweep's content (`_Canonical`): arrays by their bytes, and the
  swept function by its code and every value it reads (closure cells, defaults, globals,
  `functools.partial` arguments, algorithm records, the package code it calls), so a
  function closing over another constant is another sweep. A sweep that reads a value
  with no fingerprint is never resumed (`overwrite=True` recomputes it).
"""
import collections
import dataclasses
import enum
import functools
import hashlib
import json
import os
import re
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dsorl import progress as progress_lib

__all__ = ["Axis", "axis", "Grid", "Member", "SweepResult", "last_values", "sweep", "check_grid",
           "grid_columns", "load", "RESERVED"]

RESERVED = ("mdp", "params0", "seed")
MAX_CHUNK_PER_DEVICE = 8192
MESH_AXIS = "members"
_FORMAT = 2  # version of the on-disk layout and of the sweep's description


class Axis(NamedTuple):
    """One grid axis: `values` (a pytree whose leaves share a leading axis of points) and
    `labels`, the table columns that name each point (`{column: array[n]}`)."""

    values: Any
    labels: Mapping[str, np.ndarray]


def axis(values, **labels) -> Axis:
    """An axis of pytree `values` (leading axis = points) with table columns `labels`.

    Without labels a pytree axis `name` gets the column `name_index` (0 .. n-1); e.g.
    `axis(starts, w_x=starts[:, 0], w_y=starts[:, 1])` labels the nBw paper's grid of
    initial parameters by its coordinates.
    """
    leaves = jax.tree_util.tree_leaves(values)
    if not leaves:
        raise ValueError("an axis needs at least one array of values.")
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"every leaf of an axis needs the same leading axis of points;"
                         f" got leading sizes {sorted(map(str, sizes))}.")
    (n,) = sizes
    if n == 0:
        raise ValueError("an axis needs at least one point.")
    cols = {}
    for name, col in labels.items():
        col = np.asarray(col)
        if col.shape != (n,):
            raise ValueError(f"label {name!r} must have shape ({n},) like the axis, got {col.shape}.")
        cols[name] = col
    return Axis(values, cols)


def _refuse_nan(values, what) -> None:
    """NaN is no value of a scalar axis (inf may be one, e.g. PCO's clip): `ValueError`
    naming it. Pytree axes (`params0`, `mdp`) are checked by the algorithm (`check_grid`)."""
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.inexact):
        bad = np.argwhere(np.isnan(values))
        if len(bad):
            where = ", ".join(map(str, bad[0]))
            raise ValueError(f"{what} holds NaN (point {where}: {values.tolist()});"
                             " a grid value must be a number.")


class Grid:
    """The product of named axes, flattened in C order (the first axis varies slowest).

    `Grid(gamma=[0.9, 0.99], seed=range(8), params0=axis(starts, ...))`: a list, tuple,
    range or 1-D array is a scalar axis (its column is its name); an `Axis` is a pytree axis.
    """

    def __init__(self, **axes):
        if not axes:
            raise ValueError("a grid needs at least one axis.")
        self.axes = {}
        for name, ax in axes.items():
            if not isinstance(ax, Axis):
                vals = np.asarray(list(ax) if isinstance(ax, (range, tuple, list)) else ax)
                if vals.ndim != 1 or vals.size == 0:
                    raise ValueError(f"grid axis {name!r} must be a non-empty 1-D list of numbers"
                                     f" (or dsorl.sweep.axis(...) for arrays); got shape {vals.shape}.")
                if not (np.issubdtype(vals.dtype, np.number) or vals.dtype == bool):
                    raise ValueError(f"grid axis {name!r} must hold numbers, got {vals.dtype}.")
                if name == "seed" and not np.issubdtype(vals.dtype, np.integer):
                    raise ValueError(f"grid axis 'seed' must hold integers, got {vals.tolist()}.")
                _refuse_nan(vals, f"grid axis {name!r}")
                ax = Axis(vals, {name: vals})
            elif not ax.labels:
                n = _axis_size(ax)
                ax = Axis(ax.values, {f"{name}_index": np.arange(n)})
            self.axes[name] = ax
        self.names = tuple(self.axes)
        self.sizes = tuple(_axis_size(a) for a in self.axes.values())
        self.size = int(np.prod(self.sizes))
        columns = [c for a in self.axes.values() for c in a.labels]
        if len(set(columns)) != len(columns):
            raise ValueError(f"grid columns must be distinct, got {columns}.")

    def __repr__(self):
        return "Grid(" + ", ".join(f"{n}[{s}]" for n, s in zip(self.names, self.sizes)) + ")"

    def coordinates(self, members: np.ndarray) -> np.ndarray:
        """Per-axis point indices of flat member indices, shape `[len(members), n_axes]`."""
        return np.stack(np.unravel_index(np.asarray(members), self.sizes), axis=-1)

    def columns(self, members: np.ndarray) -> dict:
        """The label columns of flat member indices (host side, NumPy)."""
        coords = self.coordinates(members)
        return {col: np.asarray(values)[coords[:, i]]
                for i, ax in enumerate(self.axes.values()) for col, values in ax.labels.items()}


class Member(NamedTuple):
    """The inputs of one member's run, handed to `metrics` with its outputs."""

    mdp: Any
    params0: Any
    hparams: Any
    key: jax.Array


@dataclasses.dataclass
class SweepResult:
    """`table`: columns of equal length, one row per member; `traces`: `[B, T]` arrays
    (when kept); `meta`: how the sweep ran (sizes, chunks, devices, timings)."""

    table: dict
    traces: dict
    meta: dict

    def __len__(self):
        return len(next(iter(self.table.values()))) if self.table else 0

    def rows(self) -> list:
        """The table as a list of dicts (for `dsorl.results.format_table`)."""
        cols = {k: np.asarray(v).tolist() for k, v in self.table.items()}
        return [dict(zip(cols, vals)) for vals in zip(*cols.values())]

    def to_pandas(self):
        """The table as a `pandas.DataFrame` (pandas must be installed)."""
        import pandas as pd

        return pd.DataFrame(self.table)


def last_values(final_state, trace, member: Member) -> dict:
    """Default metrics: the last entry of every per-step scalar trace leaf (shape `[T]`),
    named by its path; leaves with more axes per step are left to `traces`."""
    del final_state, member
    return {name: leaf[-1] for name, leaf in _named_leaves(trace).items() if jnp.ndim(leaf) == 1}


def sweep(run: Callable, mdp, grid: Grid, *, config=None, hparams=None, params0=None,
          metrics: Callable = last_values, traces: Union[bool, Sequence[str]] = False,
          trace_every: int = 1, chunk_size: Optional[int] = None,
          memory_budget: float = 2 ** 30, out_dir=None, overwrite: bool = False,
          devices: Optional[Sequence] = None, progress: Optional[bool] = None,
          record: Optional[Mapping] = None) -> SweepResult:
    """Run `run` for every member of `grid`; one table row per member.

    Args:
      run: an algorithm (a module or `dsorl.algorithms.base.Algorithm` with the contract
        of `dsorl.algorithms.base`), or any `run(mdp, params0, hparams, key, *, config) ->
        (final_state, trace)`. For an algorithm, each member's hyperparameters are its
        `HParams` built from the grid point (missing or unknown fields: `ValueError`), and
        before anything is compiled the algorithm's `validate` runs on every concrete
        hyperparameter point of the grid (and `params0` is checked for shape and
        finiteness), so a bad grid value raises a `ValueError` naming the point instead
        of returning numbers.
      mdp: `run`'s first argument: one MDP (any pytree of arrays is passed as an argument;
        another object, e.g. a DSO `ChainModel`, is closed over), or `{name: MDP}` (an
        outer `env` axis; one compiled program per entry, so the MDPs may differ in size).
        Ignored when the grid has an `mdp` axis.
      grid: the swept axes (see `Grid`).
      config: the static `config` handed to `run` (sizes, step counts, choices).
      hparams: how a member's hyperparameters are built from its non-reserved axis values
        `point` (a dict of traced scalars or pytrees): `None` gives `point` itself, a
        mapping gives `{**hparams, **point}`, a callable gives `hparams(point)`; with a
        mapping of MDPs, a callable also finds the entry's name in `point["env"]` (a
        Python string: settings may differ per MDP).
      params0: initial parameters when the grid has no `params0` axis: a pytree, or a
        callable `params0(mdp)` (useful with several MDPs).
      metrics: `metrics(final_state, trace, member) -> {name: scalar}` per member; the
        default takes the last value of every trace leaf.
      traces: keep every trace leaf (`True`) or the named ones, subsampled every
        `trace_every` steps, as `[B, T]` arrays in `SweepResult.traces`.
      chunk_size: members per compiled call (rounded up to a multiple of the device count);
        default: fit `memory_budget` bytes (see the module docstring).
      out_dir: write chunks as they finish and the final table there; rerunning resumes
        (with several processes: a directory every process sees; process 0 writes).
      overwrite: discard results of a different sweep found in `out_dir` (or of a sweep
        that cannot be fingerprinted, see the module docstring) instead of failing.
      devices: the mesh (default `jax.devices()`, every process's devices).
      progress: show compile lines and a progress bar per chunk on stderr (default: see
        `dsorl.progress`: when asked by `DSORL_PROGRESS` or stderr is a terminal).
      record: a JSON-able description of the sweep (e.g. the CLI's config), stored with the
        results and part of the resume check.
    Returns:
      `SweepResult` with columns `member`, (`env`), the grid's label columns, the metrics.
    """
    if not isinstance(grid, Grid):
        raise ValueError(f"grid must be a dsorl.sweep.Grid, got {type(grid).__name__}.")
    algorithm = _as_algorithm(run)
    if algorithm is not None:
        hparams = _HParamsOf(algorithm, hparams)
        run = _AlgorithmRun(algorithm)
    elif not callable(run):
        from dsorl.algorithms import base

        records = [n for n, v in vars(run).items() if isinstance(v, base.Algorithm)] \
            if isinstance(run, types.ModuleType) else []
        raise ValueError(f"run must be an algorithm or a function run(mdp, params0, hparams, key,"
                         f" *, config); got {getattr(run, '__name__', type(run).__name__)}"
                         + (f", a module of several algorithms: pass one of its records"
                            f" ({', '.join(records)})" if records else "") + ".")
    if "params0" not in grid.axes and params0 is None:
        raise ValueError("give initial parameters: a 'params0' grid axis or params0=...")
    if isinstance(trace_every, bool) or not isinstance(trace_every, int) or trace_every < 1:
        raise ValueError(f"trace_every must be a positive integer, got {trace_every!r}.")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}.")
    if not memory_budget > 0:
        raise ValueError(f"memory_budget must be > 0 bytes, got {memory_budget!r}.")
    if "mdp" in grid.axes:
        envs = {None: None}
    elif isinstance(mdp, Mapping):
        if not mdp:
            raise ValueError("mdp mapping is empty.")
        envs = dict(mdp)
    else:
        envs = {None: mdp}
    devices = list(jax.devices() if devices is None else devices)
    mesh = Mesh(np.array(devices), (MESH_AXIS,))
    multi = jax.process_count() > 1
    lead = jax.process_index() == 0

    if algorithm is not None:  # every grid value checked before anything is written
        for env_name, env in envs.items():
            check_grid(algorithm, env, grid, config=config, hparams=hparams,
                       params0=params0(env) if callable(params0) else params0, env_name=env_name)
    spec = _describe(run, envs, grid, config, hparams, params0, metrics, traces, trace_every, record)
    # compiled programs are reused only for the same code and closed-over values
    content = object() if spec["unfingerprinted"] else _digest(
        [spec[k] for k in ("run", "config", "hparams", "metrics")])
    store = _Store(out_dir, spec, overwrite) if out_dir is not None else None
    done = store.done_members(len(envs) * grid.size) if store else np.zeros(len(envs) * grid.size, bool)
    if multi:  # one truth about what is left, whatever each process sees on disk
        from jax.experimental import multihost_utils

        done = np.asarray(multihost_utils.broadcast_one_to_all(done)).astype(bool)
        multihost_utils.sync_global_devices("dsorl.sweep:start")
    if store and lead:
        store.write_spec()

    stats = {"compile_seconds": {}, "chunk_size": {}, "chunks": 0}
    plans = []  # (offset, todo mask, program, chunk size, pending chunk starts) per MDP
    for e, (env_name, env) in enumerate(envs.items()):
        offset = e * grid.size
        todo = ~done[offset:offset + grid.size]
        if not todo.any():
            continue  # everything on disk: nothing to compile
        p0 = params0(env) if callable(params0) else params0
        program = _Program(run, env, p0, grid, config, hparams, metrics, traces, trace_every, mesh,
                           env_name, content)
        program.shown = progress if lead else False  # compile lines, like the bar below
        size = _chunk_size(program, chunk_size, memory_budget, grid.size, len(devices))
        program.compiled(size)
        label = "all" if env_name is None else str(env_name)
        stats["chunk_size"][label] = size
        stats["compile_seconds"][label] = program.compile_seconds
        pending = [s for s in range(0, grid.size, size) if todo[s:s + size].any()]
        stats["chunks"] += len(pending)
        plans.append((offset, todo, program, size, pending))
    with progress_lib.task("sweep", int((~done).sum()), unit="members",
                           progress=progress if lead else False) as bar:
        start_time = time.perf_counter()
        pieces = _execute(plans, grid.size, store if lead else None, store is None, multi, bar)
        run_seconds = time.perf_counter() - start_time
    if multi:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("dsorl.sweep:done")
    if store:
        pieces = store.read_chunks()
    table, trace_arrays = _tidy(_assemble(pieces, len(envs) * grid.size), envs, grid)
    computed = int((~done).sum())
    meta = {
        "members": len(envs) * grid.size,
        "grid": [{"name": n, "size": s, "columns": list(grid.axes[n].labels)}
                 for n, s in zip(grid.names, grid.sizes)],
        "envs": [e for e in envs if e is not None],
        "metrics": [k for k in table if k not in ("member", "env", *grid_columns(grid))],
        "traces": sorted(trace_arrays),
        "trace_every": trace_every,
        "devices": [str(d) for d in devices],
        "processes": jax.process_count(),
        "members_computed": computed,
        "run_seconds": run_seconds,
        "members_per_second": computed / run_seconds if computed and run_seconds > 0 else None,
        **stats,
        "fingerprint": spec["fingerprint"],
    }
    return SweepResult(table, trace_arrays, meta)


# ---------------------------------------------------------------------------------------
# Algorithms: hyperparameters from grid points, validated before compiling


def _as_algorithm(run):
    """The `Algorithm` record of `run` if it is an algorithm (record or module), else None."""
    from dsorl.algorithms import base

    if isinstance(run, base.Algorithm):
        return run
    if all(hasattr(run, name) for name in ("HParams", "init", "step", "validate")):
        return base.as_algorithm(run)
    return None


@dataclasses.dataclass(frozen=True)
class _AlgorithmRun:
    """`run` of an algorithm, hashable and described by the algorithm (resume check)."""

    algorithm: Any

    def __call__(self, mdp, params0, hparams, key, *, config):
        return self.algorithm.run(mdp, params0, hparams, key, config=config)


@dataclasses.dataclass(frozen=True)
class _HParamsOf:
    """A member's `HParams` from its grid point: `given` is None, a mapping of defaults,
    or a callable `point -> HParams or mapping` (see `sweep`'s `hparams`)."""

    algorithm: Any
    given: Any

    def __call__(self, point):
        from dsorl.algorithms import base

        if callable(self.given):  # it may read the entry's name, point["env"]
            values = self.given(point)
        else:
            point = {k: v for k, v in point.items() if k != "env"}
            values = point if self.given is None else {**self.given, **point}
        return base.make_hparams(self.algorithm.HParams, values)


_MAX_CHECKED_POINTS = 4096


def check_grid(algorithm, problem, grid: Grid, *, config, hparams=None, params0=None,
               env_name=None) -> None:
    """Run `algorithm.validate` on every concrete hyperparameter point of `grid` (each axis
    alone when their product exceeds `_MAX_CHECKED_POINTS`) and check `params0` (or every
    point of a `params0` axis) for shape and finiteness: a `ValueError` naming the grid
    point. `sweep` calls it for an algorithm; call it yourself when you sweep a wrapper
    around one. `hparams` as in `sweep`."""
    from dsorl.algorithms import base

    algorithm = _as_algorithm(algorithm)
    if not isinstance(hparams, _HParamsOf):
        hparams = _HParamsOf(algorithm, hparams)
    names = [n for n in grid.names if n not in RESERVED]
    sizes = [grid.sizes[grid.names.index(n)] for n in names]
    if int(np.prod(sizes, dtype=np.int64)) <= _MAX_CHECKED_POINTS:
        combos = list(np.ndindex(*sizes)) if names else [()]
    else:  # every value of every axis, the others at their first point
        combos = [tuple(j if a == i else 0 for a in range(len(names)))
                  for i, n in enumerate(sizes) for j in range(n)]
    problems = [problem]
    if "mdp" in grid.axes:  # a stacked MDP axis: validate with every point (or the first 64)
        values = grid.axes["mdp"].values
        problems = [jax.tree_util.tree_map(lambda v: v[i], values)
                    for i in range(min(_axis_size(grid.axes["mdp"]), 64))]
    stacked = "params0" in grid.axes
    starts = grid.axes["params0"].values if stacked else params0
    for problem in problems:
        expected = (None if algorithm.expected_params is None
                    else algorithm.expected_params(problem, config))
        # a params0 axis at once (leading axis = points), not a Python loop over its points
        base.check_params0(starts, expected, stacked=stacked,
                           name="params0 axis" if stacked else "params0")
        first = jax.tree_util.tree_map(lambda v: v[0], starts) if stacked else starts
        dtype = base.problem_dtype(problem, first)
        for combo in combos:
            point = {n: jax.tree_util.tree_map(lambda v: np.asarray(v)[j], grid.axes[n].values)
                     for n, j in zip(names, combo)}
            where = ", ".join(f"{n}={np.asarray(v).tolist()}" for n, v in point.items()
                              if np.ndim(v) == 0)
            try:
                hp = hparams(point if env_name is None else {**point, "env": env_name})
                algorithm.validate(problem, base.coerce_hparams(hp, dtype), config)
            except (ValueError, TypeError) as err:
                raise ValueError(f"grid point {where or '(no swept hyperparameters)'}:"
                                 f" {err}") from err


def grid_columns(grid: Grid) -> list:
    """The label columns of `grid`, in table order."""
    return [c for a in grid.axes.values() for c in a.labels]


def _execute(plans, grid_size, store, keep, multi, bar) -> list:
    """Run the pending chunks, writing each to `store` as it finishes; returns
    `(first member, end, outputs)` per chunk when `keep`."""
    pieces = []
    for offset, todo, program, size, pending in plans:
        in_flight = None
        for s in pending + [None]:  # dispatch chunk k+1 before fetching chunk k
            launched = None if s is None else (s, min(s + size, grid_size), program(s, size))
            if in_flight is not None:
                a, b, out = in_flight
                piece = {k: v[: b - a] for k, v in _to_host(out, multi).items()}  # drop padding
                if store:
                    store.write_chunk(offset + a, offset + b, piece)
                if keep:
                    pieces.append((offset + a, offset + b, piece))
                bar.advance(int(todo[a:b].sum()))
            in_flight = launched
    return pieces


def _tidy(data, envs, grid):
    """The table (member, env, grid labels, metrics) and the trace arrays."""
    members = np.arange(len(envs) * grid.size)
    table = {"member": members}
    if None not in envs:
        table["env"] = np.repeat(np.array(list(envs)), grid.size)
    table.update(grid.columns(members % grid.size))
    table.update({k[len("metric:"):]: v for k, v in data.items() if k.startswith("metric:")})
    return table, {k[len("trace:"):]: v for k, v in data.items() if k.startswith("trace:")}


def load(out_dir) -> SweepResult:
    """The result of a finished sweep written by `sweep(..., out_dir=...)` or `dsorl sweep`."""
    from dsorl.results import read_results

    tables, arrays, meta = read_results(out_dir)
    if "table" not in tables:
        raise ValueError(f"{out_dir} holds no sweep table (table.csv).")
    return SweepResult(tables["table"], arrays, meta.get("sweep", {}))


# ---------------------------------------------------------------------------------------
# The compiled program


class _Program:
    """`program(start, size)`: the outputs of members `start .. start+size-1` (clamped)."""

    def __init__(self, run, mdp, params0, grid, config, hparams, metrics, traces, trace_every, mesh,
                 env_name=None, content=None):
        self.mesh = mesh
        self.sharded = NamedSharding(mesh, PartitionSpec(MESH_AXIS))
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.grid_size = grid.size
        self.columns = ["member"] + (["env"] if env_name is not None else []) + grid_columns(grid)
        values = {n: a.values for n, a in grid.axes.items()}
        self.values = self._replicate(values)
        # an MDP of arrays is an argument; anything else (e.g. a DSO ChainModel holding
        # functions) is closed over as a constant of the program
        closed = None if mdp is None or _is_arrays(mdp) else mdp
        self.mdp = None if mdp is None or closed is not None else self._replicate(mdp)
        self.params0 = None if params0 is None else self._replicate(params0)
        sizes = grid.sizes

        def member(index, mdp, params0, values):
            point = {}
            for name, n in reversed(list(zip(grid.names, sizes))):
                point[name] = jax.tree_util.tree_map(lambda v: v[index % n], values[name])
                index = index // n
            mdp = point.pop("mdp", closed if closed is not None else mdp)
            params0 = point.pop("params0", params0)
            key = jax.random.key(point.pop("seed", 0))
            point = {n: point[n] for n in grid.names if n in point}
            if hparams is None:
                hp = point
            elif callable(hparams):
                hp = hparams(point if env_name is None else {**point, "env": env_name})
            else:
                hp = {**hparams, **point}
            final_state, trace = run(mdp, params0, hp, key, config=config)
            out = {f"metric:{k}": v for k, v in
                   _check_metrics(metrics(final_state, trace, Member(mdp, params0, hp, key))).items()}
            if traces:
                named = _named_leaves(trace)
                keep = named if traces is True else _pick(named, traces)
                out.update({f"trace:{k}": v[::trace_every] for k, v in keep.items()})
            return out

        # programs are cached across sweeps (a rerun or a resumed sweep reuses the
        # compiled executable): the key holds everything `member` closes over, `content`
        # the digest of the code and values `run`, `hparams` and `metrics` read (a global
        # array changed between two sweeps of one function must not reuse the program)
        key = (content, _token(run), _token(config), _token(hparams), _token(metrics), _token(traces),
               trace_every, grid.names, sizes, tuple(mesh.devices.flat),
               env_name if callable(hparams) else None, _token(closed))
        if key not in _PROGRAMS:
            batched = jax.vmap(member, in_axes=(0, None, None, None))
            _PROGRAMS[key] = (jax.jit(batched, in_shardings=(self.sharded, self.replicated,
                                                             self.replicated, self.replicated),
                                      out_shardings=self.sharded), {})
            while len(_PROGRAMS) > _PROGRAM_CACHE_SIZE:
                _PROGRAMS.popitem(last=False)
        _PROGRAMS.move_to_end(key)
        self._jitted, self._compiled = _PROGRAMS[key]
        self._signature = jax.tree_util.tree_structure((self.mdp, self.params0, self.values)), tuple(
            (x.shape, str(x.dtype)) for x in jax.tree_util.tree_leaves((self.mdp, self.params0, self.values)))
        self.compile_seconds = 0.0

    def _replicate(self, tree):
        def put(x):
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, self.replicated, lambda idx: x[idx])
        return jax.tree_util.tree_map(put, tree)

    shown: Optional[bool] = None  # the sweep's `progress` (compile lines)

    def compiled(self, size):
        key = (size, self._signature)
        if key not in self._compiled:
            t0 = time.perf_counter()
            spec = jax.ShapeDtypeStruct((size,), jnp.int32, sharding=self.sharded)
            try:
                lowered = self._jitted.lower(spec, self.mdp, self.params0, self.values)
            except (TypeError, ValueError) as err:
                raise ValueError(f"the algorithm cannot be batched over this grid: {err}") from err
            _check_names(lowered.out_info, self.columns)
            with progress_lib.compiling(f"sweep program ({size} members per call)", self.shown):
                self._compiled[key] = lowered.compile()
            self.compile_seconds += time.perf_counter() - t0
        return self._compiled[key]

    def footprint(self, size) -> int:
        """Bytes XLA reports for one call on `size` members (arguments, outputs, scratch)."""
        mem = self.compiled(size).memory_analysis()
        if mem is None:
            return 0
        return int(mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes)

    def __call__(self, start, size):
        index = np.minimum(np.arange(start, start + size), self.grid_size - 1).astype(np.int32)
        arr = jax.make_array_from_callback((size,), self.sharded, lambda idx: index[idx])
        return self.compiled(size)(arr, self.mdp, self.params0, self.values)


_PROGRAMS = collections.OrderedDict()  # cache key -> (jitted program, {(size, signature): compiled})
_PROGRAM_CACHE_SIZE = 16


def _token(x):
    """A hashable stand-in for `x` that is equal only for equal contents (functions by
    identity, arrays by content); an object it cannot judge gets a fresh token (no reuse)."""
    try:
        hash(x)
        return x
    except TypeError:
        pass
    if isinstance(x, Mapping):
        return ("map",) + tuple((str(k), _token(v)) for k, v in sorted(x.items(), key=lambda kv: str(kv[0])))
    if isinstance(x, (list, tuple)):
        return (type(x).__qualname__,) + tuple(_token(v) for v in x)
    if isinstance(x, (np.ndarray, jax.Array)):
        return json.dumps(_array_digest(x))
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return (type(x).__qualname__,) + tuple(_token(getattr(x, f.name)) for f in dataclasses.fields(x))
    return object()


def _chunk_size(program, requested, budget, total, n_devices) -> int:
    round_up = lambda n: -(-n // n_devices) * n_devices
    if requested is not None:
        return round_up(min(requested, total))
    size = round_up(min(total, MAX_CHUNK_PER_DEVICE * n_devices))
    for _ in range(3):  # memory grows linearly in the chunk: one correction usually suffices
        need = 2 * program.footprint(size)  # two chunks in flight
        if need <= budget or size == n_devices:
            return size
        size = max(n_devices, int(size * budget / need) // n_devices * n_devices)
    return size


def _is_arrays(tree) -> bool:
    leaves = jax.tree_util.tree_leaves(tree)
    return bool(leaves) and all(isinstance(x, (np.ndarray, jax.Array, np.generic, int, float))
                                for x in leaves)


def _check_names(outputs, columns) -> None:
    """Metrics must not shadow the table's other columns (checked before compiling)."""
    clash = sorted({k.split(":", 1)[1] for k in outputs if k.startswith("metric:")} & set(columns))
    if clash:
        raise ValueError(f"metric {clash[0]!r} has the name of a table column; the grid and"
                         f" member columns are: {', '.join(columns)}.")


def _to_host(out, multi) -> dict:
    if multi:
        from jax.experimental import multihost_utils

        out = multihost_utils.process_allgather(out, tiled=True)
    return {k: np.asarray(v) for k, v in jax.device_get(out).items()}


def _check_metrics(values) -> dict:
    if not isinstance(values, Mapping):
        raise ValueError(f"metrics must return a mapping name -> scalar, got {type(values).__name__}.")
    out = {}
    for name, v in values.items():
        v = jnp.asarray(v)
        if v.shape != ():
            raise ValueError(f"metric {name!r} has shape {v.shape}; a metric is one scalar per"
                             " member (keep per-step values with traces=...).")
        out[str(name)] = v
    return out


def _named_leaves(tree) -> dict:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {(jax.tree_util.keystr(p, simple=True, separator=".") or "value"): x for p, x in leaves}


def _pick(named, wanted) -> dict:
    missing = sorted(set(wanted) - set(named))
    if missing:
        raise ValueError(f"unknown trace {missing[0]!r}; the trace has: {', '.join(sorted(named))}.")
    return {k: named[k] for k in wanted}


def _axis_size(ax: Axis) -> int:
    return int(np.shape(jax.tree_util.tree_leaves(ax.values)[0])[0])


def _assemble(pieces, total) -> dict:
    """One array per output over all members, each member taken from exactly one piece."""
    have = np.zeros(total, bool)
    data = {}
    for a, b, piece in sorted(pieces, key=lambda p: p[0]):
        new = ~have[a:b]
        if not new.any():
            continue
        for k, v in piece.items():
            if k not in data:
                data[k] = np.zeros((total,) + v.shape[1:], v.dtype)
            data[k][a:b][new] = v[new]
        have[a:b] = True
    if not have.all():
        raise RuntimeError(f"sweep results are missing members {np.flatnonzero(~have)[:10].tolist()}...")
    return data


# ---------------------------------------------------------------------------------------
# Resuming: the sweep's description and its chunks on disk


def _describe(run, envs, grid, config, hparams, params0, metrics, traces, trace_every, record):
    """A JSON description of everything that determines the results, and its hash.

    `unfingerprinted` lists the values that have no content fingerprint (see
    `_Canonical`): such a sweep is never resumed from disk (`_Store` refuses it).
    """
    canon = _Canonical()
    spec = {
        "format": _FORMAT,
        "run": canon(run, "run"),
        "config": canon(config, "config"),
        "hparams": canon(hparams, "hparams"),
        "params0": canon(params0, "params0"),
        "metrics": canon(metrics, "metrics"),
        "traces": traces if isinstance(traces, bool) else sorted(traces),
        "trace_every": trace_every,
        "envs": {str(k): canon(v, f"mdp {k}" if k is not None else "mdp") for k, v in envs.items()},
        "grid": {n: {"values": canon(a.values, f"grid axis {n!r}"),
                     "labels": canon(dict(a.labels), f"grid axis {n!r} labels")}
                 for n, a in grid.axes.items()},
        "record": canon(record, "record"),
    }
    spec["unfingerprinted"] = sorted(set(canon.problems))
    spec["fingerprint"] = _digest(spec)
    return spec


def _digest(x) -> str:
    return hashlib.sha256(json.dumps(x, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def _array_digest(x) -> dict:
    """Shape, dtype and SHA-256 of an array's bytes (a typed PRNG key by its key data)."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return {"key": str(x.dtype), **_array_digest(jax.random.key_data(x))}
    a = np.asarray(x)
    return {"shape": list(a.shape), "dtype": str(a.dtype),
            "sha256": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]}


_IMPORTED_LIBRARY_DIRS = None


def _is_library(module_name: Optional[str]) -> bool:
    """Whether `module_name` belongs to an installed library (the standard library or a
    package under site-packages) other than dsorl: its code is identified by name and
    version, not read."""
    global _IMPORTED_LIBRARY_DIRS
    top = (module_name or "builtins").split(".")[0]
    if top == "dsorl":
        return False
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return True
    module = sys.modules.get(top)
    file = getattr(module, "__file__", None)
    if file is None:
        return module is not None  # a namespace or extension package without a file
    if _IMPORTED_LIBRARY_DIRS is None:
        import site
        import sysconfig

        dirs = set(site.getsitepackages()) | {site.getusersitepackages()}
        dirs |= {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
        _IMPORTED_LIBRARY_DIRS = tuple(Path(d).resolve() for d in dirs)
    path = Path(file).resolve()
    return any(path.is_relative_to(d) for d in _IMPORTED_LIBRARY_DIRS)


def _library_name(x) -> dict:
    module = getattr(x, "__module__", None) or type(x).__module__
    top = sys.modules.get((module or "builtins").split(".")[0])
    name = getattr(x, "__qualname__", None) or getattr(x, "__name__", None) or type(x).__qualname__
    return {"library": f"{module}.{name}", "version": str(getattr(top, "__version__", ""))}


class _Canonical:
    """JSON-able stand-ins, by content, for the values that determine a sweep's results.

    Data: numbers and strings as themselves; arrays by shape, dtype and SHA-256 of their
    bytes; mappings, sequences, NamedTuples, dataclasses, registered pytrees and other
    objects by their parts or attributes. Code: a function by its bytecode and constants
    (nested functions included), its defaults, the values its closure cells hold, and the
    globals it reads (`module.attribute` chains followed, function-level imports
    included), each in turn by content; `functools.partial` by its function and
    arguments; a class by its attributes. A function, class or module of an installed
    library other than dsorl (`_is_library`) by its name and the library's version.

    A value with no such stand-in (no attributes, not a pytree) is named in `problems`
    (`where` says how it was reached) and described by its type only.
    """

    def __init__(self):
        self.problems = []
        self._memo = {}  # id -> stand-in of functions, classes and modules (shared, cyclic)
        self._keep = []  # the memo's objects stay alive: their ids stay theirs
        self._active = set()  # ids being described (a cycle is described by its type)

    def __call__(self, x, where):
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        if isinstance(x, (complex, bytes)):
            return repr(x)
        if isinstance(x, np.dtype):
            return {"dtype": str(x)}
        if isinstance(x, np.generic):
            return {"dtype": str(x.dtype), "value": x.item()} if x.dtype != object else repr(x)
        if isinstance(x, (np.ndarray, jax.Array)):
            return _array_digest(x)
        if isinstance(x, (types.FunctionType, type, types.ModuleType)):
            return self._shared(x, where)
        if id(x) in self._active:
            return {"cycle": type(x).__qualname__}
        self._active.add(id(x))
        try:
            return self._compound(x, where)
        finally:
            self._active.discard(id(x))

    def _compound(self, x, where):
        if isinstance(x, Mapping):
            return {"mapping": type(x).__qualname__,
                    "items": {str(k): self(v, f"{where}[{k!r}]") for k, v in x.items()}}
        if isinstance(x, tuple) and hasattr(x, "_fields"):
            return {"type": self(type(x), where),
                    **{f: self(getattr(x, f), f"{where}.{f}") for f in x._fields}}
        if dataclasses.is_dataclass(x):
            return {"type": self(type(x), where),
                    **{f.name: self(getattr(x, f.name), f"{where}.{f.name}")
                       for f in dataclasses.fields(x)}}
        if isinstance(x, (list, tuple, set, frozenset)):
            items = sorted(x, key=repr) if isinstance(x, (set, frozenset)) else x
            return [type(x).__qualname__] + [self(v, f"{where}[{i}]") for i, v in enumerate(items)]
        if isinstance(x, functools.partial):
            return {"partial": self(x.func, f"{where}.func"), "args": self(x.args, f"{where}.args"),
                    "keywords": self(x.keywords, f"{where}.keywords")}
        if isinstance(x, types.MethodType):
            return {"method": self(x.__func__, where), "self": self(x.__self__, f"{where}.__self__")}
        if isinstance(x, enum.Enum):
            return {"enum": self(type(x), where), "name": x.name}
        if hasattr(x, "__array__") and not callable(x):
            return _array_digest(x)
        if callable(x) and hasattr(x, "__name__") and _is_library(
                getattr(x, "__module__", None) or type(x).__module__):
            return _library_name(x)  # a library's builtin, ufunc, dispatcher or jitted function
        if hasattr(x, "__wrapped__"):  # jax.jit, functools.wraps: the function it wraps
            return {"wrapper": _library_name(type(x)) if _is_library(type(x).__module__)
                    else self(type(x), where), "wraps": self(x.__wrapped__, f"{where}.__wrapped__")}
        leaves, treedef = jax.tree_util.tree_flatten(x)
        if treedef.num_nodes > 1 or (leaves and leaves[0] is not x):  # a registered pytree
            return {"pytree": re.sub(r" at 0x[0-9a-f]+", "", str(treedef)),
                    "leaves": [self(v, f"{where} leaf {i}") for i, v in enumerate(leaves)]}
        attributes = _attributes(x)
        if attributes is None:
            self.problems.append(f"{where} (a {type(x).__module__}.{type(x).__qualname__})")
            return {"unfingerprinted": f"{type(x).__module__}.{type(x).__qualname__}"}
        return {"object": self(type(x), where),
                "attributes": {k: self(v, f"{where}.{k}") for k, v in attributes.items()}}

    def _shared(self, x, where):
        """Functions, classes and modules: described once per sweep, by a digest."""
        if id(x) in self._memo:
            return self._memo[id(x)]
        module = x.__name__ if isinstance(x, types.ModuleType) else x.__module__
        if _is_library(module):
            out = _library_name(x) if not isinstance(x, types.ModuleType) else {
                "library": x.__name__, "version": _library_name(x)["version"]}
            if isinstance(x, types.FunctionType) and (x.__closure__ or x.__defaults__
                                                      or x.__kwdefaults__):
                # a library's closure (e.g. an optax optimiser's update) holds the user's
                # values (its learning rate): those are content, its code is the version
                content = self._function(x, f"{where} ({module}.{x.__qualname__})", code=False)
                return {**out, "sha256": _digest(content)}
            self._memo[id(x)], _ = out, self._keep.append(x)
            return out
        name = getattr(x, "__qualname__", x.__name__)
        kind = ("function" if isinstance(x, types.FunctionType) else
                "class" if isinstance(x, type) else "module")
        # a placeholder first: a recursive function or a class naming itself ends here
        self._memo[id(x)] = {kind: f"{module}.{name}" if kind != "module" else name}
        self._keep.append(x)
        if kind == "function":
            content = self._function(x, f"{where} ({module}.{name})")
        elif kind == "class":
            content = self._class(x, f"{where} ({module}.{name})")
        else:  # a module used as a value: its source
            file = getattr(x, "__file__", None)
            content = hashlib.sha256(Path(file).read_bytes()).hexdigest() if file else None
        out = {kind: self._memo[id(x)][kind], "sha256": _digest(content)}
        self._memo[id(x)] = out
        return out

    def _function(self, fn, where, code=True):
        cells = []
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
            try:
                cells.append(self(cell.cell_contents, f"{where} closure {name!r}"))
            except ValueError:  # an empty cell: a name assigned after the function was made
                cells.append({"empty cell": name})
        values = {"defaults": self(fn.__defaults__, f"{where} defaults"),
                  "kwdefaults": self(fn.__kwdefaults__, f"{where} defaults"), "closure": cells}
        if not code:
            return values
        return {"code": self._code(fn.__code__), **values,
                "globals": {path: self(value, f"{where} global {path!r}")
                            for path, value in sorted(_globals_read(fn).items())}}

    def _code(self, code):
        consts = [self._code(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts]
        return {"bytecode": hashlib.sha256(code.co_code).hexdigest(), "consts": consts,
                "names": list(code.co_names)}

    def _class(self, cls, where):
        own = {}
        for k, v in vars(cls).items():
            if k in ("__dict__", "__weakref__", "__doc__", "__module__", "__qualname__"):
                continue
            if isinstance(v, (staticmethod, classmethod)):
                v = v.__func__
            elif isinstance(v, property):
                v = (v.fget, v.fset, v.fdel)
            elif not isinstance(v, (types.FunctionType, type, int, float, str, bytes, tuple,
                                    frozenset, Mapping, type(None))):
                continue  # slot and field descriptors: machinery the class statement made
            own[k] = self(v, f"{where}.{k}")
        return {"bases": [self(b, where) for b in cls.__bases__ if b is not object], "own": own}


def _attributes(x) -> Optional[dict]:
    """An object's attributes (`__dict__` and `__slots__`), or None when it has neither."""
    out = dict(vars(x)) if hasattr(x, "__dict__") else {}
    for cls in type(x).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if isinstance(slot, str) and slot not in ("__dict__", "__weakref__") and hasattr(x, slot):
                out[slot] = getattr(x, slot)
    return out if out or hasattr(x, "__dict__") else None


def _globals_read(fn) -> dict:
    """`{dotted path: value}` of the globals `fn` (and the functions nested in it) reads:
    `LOAD_GLOBAL m` followed by `LOAD_ATTR a` while `m` is a module gives `m.a`; a
    function-level `from m import a` gives `m.a`, `import m` the module `m`."""
    import builtins
    import dis

    out = {}
    codes = [fn.__code__]
    while codes:
        code = codes.pop()
        codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        path, value, imported = None, None, None
        for ins in dis.get_instructions(code):
            if path is not None and ins.opname in ("LOAD_ATTR", "LOAD_METHOD") \
                    and isinstance(value, types.ModuleType) and hasattr(value, ins.argval):
                path, value = f"{path}.{ins.argval}", getattr(value, ins.argval)
                continue
            if path is not None:
                out[path] = value
                path = None
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and ins.argval in fn.__globals__:
                path, value = ins.argval, fn.__globals__[ins.argval]
            elif ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and not hasattr(builtins, ins.argval):
                out[ins.argval] = {"undefined global": ins.argval}
            elif ins.opname == "IMPORT_NAME" and ins.argval in sys.modules:
                imported = ins.argval
                out[imported] = sys.modules[imported]
            elif ins.opname == "IMPORT_FROM" and imported in sys.modules:
                module = sys.modules[imported]
                if hasattr(module, ins.argval):
                    out[f"{imported}.{ins.argval}"] = getattr(module, ins.argval)
        if path is not None:
            out[path] = value
    return out


def _differences(a, b, prefix="") -> list:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                sub = _differences(a.get(k), b.get(k), f"{prefix}{k}.")
                out.extend(sub if sub else [f"{prefix}{k}"])
        return out
    return [] if a == b else [prefix[:-1]]


class _Store:
    """`out_dir/sweep.json` (the description) and `out_dir/chunks/<start>-<stop>.npz`."""

    def __init__(self, out_dir, spec, overwrite):
        self.dir = Path(out_dir)
        self.chunks = self.dir / "chunks"
        self.spec = spec
        path = self.dir / "sweep.json"
        if path.exists():
            old = json.loads(path.read_text())
            if spec["unfingerprinted"] and not overwrite:
                raise ValueError(
                    f"{self.dir} holds results of a sweep, and this sweep cannot be told apart"
                    " from another: it depends on values with no content fingerprint ("
                    + "; ".join(spec["unfingerprinted"]) + "), so those results may not be"
                    " its own. Use another output directory, or overwrite (--overwrite,"
                    " overwrite=True) to discard them and recompute; arrays, numbers,"
                    " dataclasses, NamedTuples, pytrees and objects with attributes are"
                    " fingerprinted.")
            if old.get("fingerprint") != spec["fingerprint"] or spec["unfingerprinted"]:
                if not overwrite:
                    what = sorted({".".join(p for p in d.split(".")[:2] if p != "sha256")
                                   for d in _differences(old, spec) if d != "fingerprint"})
                    code = [w for w in what if w.split(".")[0] in ("run", "hparams", "metrics")]
                    raise ValueError(
                        f"{self.dir} holds results of a different sweep (differs in: "
                        f"{', '.join(what) or 'its description'}"
                        + (f"; {', '.join(code)}: the code or a value it reads (closure,"
                           " defaults, globals)" if code else "")
                        + "); use another output directory, or overwrite (--overwrite,"
                        " overwrite=True) to discard them.")
                self._clear()

    def _clear(self):
        if self.chunks.exists():
            for f in self.chunks.iterdir():
                f.unlink()
        (self.dir / "sweep.json").unlink()

    def write_spec(self):
        self.chunks.mkdir(parents=True, exist_ok=True)
        path = self.dir / "sweep.json"
        if not path.exists():
            _atomic_bytes(path, json.dumps(self.spec, indent=1, sort_keys=True).encode())

    def _files(self):
        if not self.chunks.exists():
            return []
        out = []
        for f in sorted(self.chunks.glob("*.npz")):
            m = re.fullmatch(r"(\d+)-(\d+)\.npz", f.name)
            if m:
                out.append((int(m.group(1)), int(m.group(2)), f))
        return out

    def done_members(self, total) -> np.ndarray:
        done = np.zeros(total, bool)
        for a, b, _ in self._files():
            done[a:b] = True
        return done

    def write_chunk(self, a, b, piece):
        import io

        buf = io.BytesIO()
        np.savez(buf, **piece)
        _atomic_bytes(self.chunks / f"{a:010d}-{b:010d}.npz", buf.getvalue())

    def read_chunks(self):
        out = []
        for a, b, f in self._files():
            with np.load(f) as z:
                out.append((a, b, {k: z[k] for k in z.files}))
        return out


def _atomic_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, flush to disk, rename over `path`
    (with the permissions of a plain `open`: 0666 less the umask)."""
    from dsorl.results import _umask

    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(f.name, 0o666 & ~_umask())
    os.replace(f.name, path)
