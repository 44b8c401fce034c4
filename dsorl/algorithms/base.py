"""The algorithm contract and the one driver every algorithm runs through (docs/design.md §7).

An **algorithm** is anything with these attributes: a module that defines them, or an
`Algorithm` record when one module holds several algorithms (e.g. `dso`).

- `HParams`: a `NamedTuple` of traced numbers (γ, `step_size`, ...): everything a user may
  sweep with `vmap`. Float fields are cast to the problem's float dtype by `run`.
- `Config`: static choices (`n_steps`, sizes, methods, `keep_params`-independent). Hashable.
- `State`: a pytree with a `params` field (the current parameters).
- `Trace`: a `NamedTuple` of per-step records with a final field `params: Any = None`
  (filled by `run(..., keep_params=True)`). Each row describes one step and records the
  criterion **after** it (`objective` of the parameters in the new state), so the last
  row is the final policy's; the gradient norm of the step is `grad_norm`.
- `validate(problem, hparams, config)`: raises `ValueError`/`TypeError` naming the
  offending argument; checks concrete values only (traced leaves pass unchecked), so it
  is safe when the problem or hparams are captured inside `jit`/`vmap`.
- `init(problem, params0, hparams, key, *, config) -> State`.
- `step(problem, state, hparams, key, *, config) -> (State, Trace)`.

Optional: `expected_params(problem, config)` (a pytree of shapes that `params0` must
match, or None), `outer_update(problem, state, hparams, *, config) -> State` (run after
every `config.steps_per_outer` steps, e.g. nBw's barrier-weight division), and
`uses_key(config) -> bool` (False for exact methods, which then accept `key=None`).

`run(algorithm, problem, params0, hparams, key, *, config)` does the rest, identically for
every algorithm: casts `params0` and `hparams` to the problem's float dtype, validates
once (hparams by the algorithm, `params0` for shape and finiteness), gives step `i` the key
`fold_in(key, i)` (init gets `key` itself), runs `config.n_steps` steps as one `lax.scan`
(an outer scan when `outer_update` is defined) and returns `(final State, Trace[n_steps])`.
It is jittable and `vmap`pable over `params0`, `hparams`, `key` and the problem.
"""
import dataclasses
import types
from typing import Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dsorl import _checks
# the validation vocabulary an algorithm's `validate` uses (one home: dsorl._checks)
from dsorl._checks import check_discount, check_positive, is_concrete

Array = jax.Array

__all__ = ["Algorithm", "as_algorithm", "run", "make_hparams", "coerce_hparams",
           "problem_dtype", "check_params0", "nan_like", "tree_norm", "check_discount",
           "check_positive", "is_concrete"]

_REQUIRED = ("HParams", "Config", "State", "Trace", "init", "step", "validate")


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """One algorithm of a module that holds several (see the module docstring).

    `run(problem, params0, hparams, key=None, *, config, keep_params=False)` is
    `dsorl.algorithms.base.run` applied to this record.
    """

    name: str
    HParams: type
    Config: type
    State: type
    Trace: type
    init: Callable
    step: Callable
    validate: Callable
    expected_params: Optional[Callable] = None
    outer_update: Optional[Callable] = None
    uses_key: Optional[Callable] = None

    def run(self, problem, params0, hparams, key=None, *, config, keep_params: bool = False):
        """`dsorl.algorithms.base.run(self, ...)`."""
        return run(self, problem, params0, hparams, key, config=config, keep_params=keep_params)

    def __repr__(self):
        return f"Algorithm({self.name!r})"


def as_algorithm(algorithm) -> Algorithm:
    """An `Algorithm` record for a record or a module that defines the contract.

    `TypeError` naming the missing attributes otherwise.
    """
    if isinstance(algorithm, Algorithm):
        return algorithm
    missing = [name for name in _REQUIRED if not hasattr(algorithm, name)]
    if missing:
        what = getattr(algorithm, "__name__", type(algorithm).__name__)
        raise TypeError(f"{what} is not an algorithm: it lacks {', '.join(missing)} (an"
                        f" algorithm defines {', '.join(_REQUIRED)}; see"
                        " dsorl.algorithms.base).")
    name = getattr(algorithm, "__name__", "algorithm")
    if isinstance(algorithm, types.ModuleType):
        name = name.rsplit(".", 1)[-1]
    return Algorithm(name, *(getattr(algorithm, n) for n in _REQUIRED),
                     expected_params=getattr(algorithm, "expected_params", None),
                     outer_update=getattr(algorithm, "outer_update", None),
                     uses_key=getattr(algorithm, "uses_key", None))


def problem_dtype(problem, params0=None):
    """The float dtype of a problem: that of its first floating leaf (else of `params0`,
    else JAX's default float). `dtype follows the inputs` (docs/design.md §2)."""
    for tree in (problem, params0):
        for leaf in jax.tree_util.tree_leaves(tree):
            dtype = getattr(leaf, "dtype", None)
            if dtype is not None and jnp.issubdtype(dtype, jnp.floating):
                return jnp.dtype(dtype)
    return jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))


def _cast(x, dtype):
    """A float `dtype` array of a number or array (an integer step size is a number too);
    bools (flags) keep their kind."""
    if isinstance(x, (bool, np.bool_)) or getattr(x, "dtype", None) == bool:
        return jnp.asarray(x)
    return jnp.asarray(x, dtype)


def make_hparams(hparams_type: type, values) -> NamedTuple:
    """`hparams_type(**values)` for a mapping (or the instance itself), with a
    `ValueError` naming missing and unknown fields instead of a `TypeError` from Python."""
    if isinstance(values, hparams_type):
        return values
    if not isinstance(values, Mapping):
        raise TypeError(f"hparams must be a {hparams_type.__name__} or a mapping of its"
                        f" fields, got {type(values).__name__}.")
    fields = hparams_type._fields
    defaults = getattr(hparams_type, "_field_defaults", {})
    unknown = sorted(set(values) - set(fields))
    missing = [f for f in fields if f not in values and f not in defaults]
    if unknown or missing:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
                ([f"unknown {', '.join(unknown)}"] if unknown else [])
        raise ValueError(f"{hparams_type.__name__}: {'; '.join(parts)} (fields:"
                         f" {', '.join(fields)}).")
    return hparams_type(**values)


def coerce_hparams(hparams, dtype, hparams_type: Optional[type] = None):
    """Every numeric leaf of `hparams` as a `dtype` array (bools keep their kind). `hparams`
    may be a mapping when `hparams_type` is given."""
    if hparams_type is not None:
        hparams = make_hparams(hparams_type, hparams)
    return jax.tree_util.tree_map(lambda x: _cast(x, dtype), hparams)


def check_params0(params0, expected=None, *, name: str = "params0",
                  stacked: bool = False) -> None:
    """Concrete `params0`: numeric, finite, and (if `expected`, a pytree of shapes) of the
    expected structure and shapes. `stacked`: every leaf holds a leading axis of starts (a
    sweep's `params0` axis), checked at once; a bad entry is named with its point index
    first. `ValueError`/`TypeError` naming the entry."""
    if not _checks.is_concrete(params0):
        return
    leaves, treedef = jax.tree_util.tree_flatten(params0)
    if not leaves:
        raise ValueError(f"{name} is empty: an algorithm needs initial parameters.")
    where = [name if len(leaves) == 1 else f"{name} leaf {i}" for i in range(len(leaves))]
    if expected is not None:
        shapes, expected_def = jax.tree_util.tree_flatten(
            expected, is_leaf=lambda x: isinstance(x, tuple) and all(
                isinstance(i, (int, np.integer)) for i in x))
        if treedef != expected_def:
            raise ValueError(f"{name} must have the structure {expected_def}, got {treedef}.")
        for label, leaf, shape in zip(where, leaves, shapes):
            got = tuple(np.shape(leaf))[1 if stacked else 0:]
            if got != tuple(shape):
                raise ValueError(f"{label} must have shape {tuple(shape)}"
                                 f"{' per point' if stacked else ''}, got {got}.")
    for label, leaf in zip(where, leaves):
        x = np.asarray(leaf)
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise TypeError(f"{label} must be numeric, got dtype {x.dtype}.")
        _checks.check_finite(label, x)


def nan_like(dtype) -> Array:
    """The scalar NaN a trace records for a quantity it was not asked to evaluate."""
    return jnp.full((), jnp.nan, dtype)


def tree_norm(tree) -> Array:
    """Euclidean norm of all leaves of a pytree together (`grad_norm` of every trace)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


def _is_key(key) -> bool:
    """A typed key, or a legacy raw key (`uint32[2]`, `jax.random.PRNGKey`)."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return True
    return dtype == jnp.uint32 and np.shape(key) == (2,)


def _steps(config) -> tuple:
    n = getattr(config, "n_steps", None)
    if n is None or isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"config.n_steps must be an int, got {n!r}.")
    if n < 0:
        raise ValueError(f"config.n_steps = {n} must be >= 0.")
    per = getattr(config, "steps_per_outer", None) or max(int(n), 1)
    if per < 1 or n % per:
        raise ValueError(f"config.n_steps = {n} must be a multiple of config.steps_per_outer"
                         f" = {per} (>= 1).")
    return int(n) // per if n else 0, int(per)


def run(algorithm, problem, params0, hparams, key=None, *, config,
        keep_params: bool = False):
    """Run `config.n_steps` steps of `algorithm` from `params0`: `(final State, Trace)`.

    `algorithm`: a module or `Algorithm` record with the contract of this module's
    docstring. `hparams`: its `HParams` (or a mapping of the fields). `key`: a
    `jax.random` key; `None` only for algorithms whose `uses_key(config)` is False.
    With `keep_params`, `trace.params[i]` holds the parameters after step `i`.
    Concrete input is validated once here; traced input passes unchecked (and then a
    failure shows as NaN in the trace, never as a Python error from inside the scan).
    """
    alg = as_algorithm(algorithm)
    dtype = problem_dtype(problem, params0)
    hparams = coerce_hparams(hparams, dtype, alg.HParams)
    n_outer, per = _steps(config)
    expected = None if alg.expected_params is None else alg.expected_params(problem, config)
    check_params0(params0, expected)  # before the cast, which would hide a non-numeric dtype
    params0 = jax.tree_util.tree_map(lambda x: _cast(x, dtype), params0)
    alg.validate(problem, hparams, config)
    if key is None:
        if alg.uses_key is None or alg.uses_key(config):
            raise ValueError(f"{alg.name} draws random numbers: pass an explicit key"
                             " (jax.random.key(seed)).")
        key = jax.random.key(0)
    elif not _is_key(key):
        raise TypeError(f"key must be a jax.random key (jax.random.key(seed)), got {key!r}.")
    if keep_params and "params" not in alg.Trace._fields:
        raise TypeError(f"{alg.name}.Trace has no 'params' field: keep_params is unsupported.")

    state = alg.init(problem, params0, hparams, key, config=config)

    def inner(state, i):
        new, row = alg.step(problem, state, hparams, jax.random.fold_in(key, i), config=config)
        if keep_params:
            row = row._replace(params=new.params)
        return new, row

    def outer(state, indices):
        state, rows = lax.scan(inner, state, indices)
        if alg.outer_update is not None:
            state = alg.outer_update(problem, state, hparams, config=config)
        return state, rows

    indices = jnp.arange(n_outer * per, dtype=jnp.uint32).reshape(n_outer, per)
    state, rows = lax.scan(outer, state, indices)
    return state, jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), rows)
