"""Parameterised stationary policies: each maps parameters to `pi[s, a]`.

A `Policy` is a pair of pure functions (`init`, `log_probs`) over a parameter pytree,
so `jax.grad`/`jax.vmap` see through it. Masked actions get log-probability
`finfo.min / 2` (so `pi = 0` exactly and `pi log pi = 0`, never NaN).
"""
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dsorl import _checks

__all__ = ["Policy", "tabular_softmax", "sigmoid", "sigmoid_grid", "linear_softmax",
           "deterministic"]

Array = jax.Array


class Policy(NamedTuple):
    """`init(dtype=None) -> params` (default: JAX's default float, float64 under x64),
    `log_probs(params) -> log pi[S, A]`."""

    init: Callable
    log_probs: Callable

    def probs(self, params) -> Array:
        """`pi[S, A] = exp(log_probs(params))`."""
        return jnp.exp(self.log_probs(params))

    def __call__(self, params) -> Array:
        return self.probs(params)


def tabular_softmax(n_states: int, n_actions: int, mask: Optional[Array] = None) -> Policy:
    """Tabular softmax `pi(a|s) = exp(theta[s, a]) / sum_b exp(theta[s, b])`.

    Params: `theta[S, A]`, initialised to zeros (the uniform policy on available actions).
    """
    mask = _check_mask(mask, n_states, n_actions)

    def init(dtype=None):
        return jnp.zeros((n_states, n_actions), _float(dtype))

    def log_probs(theta):
        return _masked_log_softmax(theta, mask)

    return Policy(init, log_probs)


def sigmoid(n_states: int) -> Policy:
    """Two-action policy of Dewanto & Gallagher (arXiv 2105.13609, §7, experiments).

    `pi(a0|s) = sigmoid(w_x * s + w_y)`, `pi(a1|s) = 1 - pi(a0|s)` with `s` the state index.
    Params: `w[2] = (w_x, w_y)`, initialised to zeros. The paper starts from every point
    of the grid [-10, 10]^2 at resolution 0.5 (see `sigmoid_grid`).
    """
    states = np.arange(n_states)

    def init(dtype=None):
        return jnp.zeros(2, _float(dtype))

    def log_probs(w):
        z = w[0] * states.astype(w.dtype) + w[1]
        # log sigmoid(z) and log sigmoid(-z), stable for |z| large
        return jnp.stack([jax.nn.log_sigmoid(z), jax.nn.log_sigmoid(-z)], axis=-1)

    return Policy(init, log_probs)


def sigmoid_grid(low: float = -10.0, high: float = 10.0, step: float = 0.5,
                 dtype=None) -> Array:
    """The paper's initial parameters: `[(w_x, w_y)]` on a square grid, shape `[n*n, 2]`.

    Defaults give 41 x 41 = 1681 points, `w_x` varying slowest; `dtype` None: JAX's default
    float (float64 under x64).
    """
    _checks.check_positive("step", step)
    if not (np.isfinite(low) and np.isfinite(high) and low <= high):
        raise ValueError(f"sigmoid_grid needs finite low <= high, got low = {low}, high = {high}.")
    ticks = np.linspace(low, high, int(round((high - low) / step)) + 1)
    wx, wy = np.meshgrid(ticks, ticks, indexing="ij")
    return jnp.asarray(np.stack([wx.ravel(), wy.ravel()], axis=-1), _float(dtype))


def linear_softmax(features: Array, mask: Optional[Array] = None) -> Policy:
    """Softmax over linear scores `pi(a|s) ∝ exp(<theta, phi(s, a)>)`.

    `features[S, A, d]`; params `theta[d]`, initialised to zeros.
    """
    features = jnp.asarray(features)
    if features.ndim != 3:
        raise ValueError(f"features must have shape [S, A, d], got {features.shape}.")
    n_states, n_actions, dim = features.shape
    mask = _check_mask(mask, n_states, n_actions)

    def init(dtype=None):
        return jnp.zeros(dim, _float(dtype))

    def log_probs(theta):
        return _masked_log_softmax(features.astype(theta.dtype) @ theta, mask)

    return Policy(init, log_probs)


def deterministic(actions: Array, n_actions: int, dtype=None) -> Array:
    """The one-hot policy `pi[S, A]` of an array of action indices `actions[S]`."""
    return jax.nn.one_hot(actions, n_actions, dtype=_float(dtype))


def _float(dtype):
    """`dtype`, or JAX's default float (float64 under x64) when None."""
    return jax.dtypes.canonicalize_dtype(jnp.float64) if dtype is None else dtype


def _masked_log_softmax(logits: Array, mask: Optional[Array]) -> Array:
    if mask is None:
        return jax.nn.log_softmax(logits, axis=-1)
    low = jnp.finfo(logits.dtype).min / 2
    return jax.nn.log_softmax(jnp.where(mask, logits, low), axis=-1)


def _check_mask(mask, n_states: int, n_actions: int):
    if mask is None:
        return None
    if _checks.is_concrete(mask):
        _checks.check_shape("mask", mask, (n_states, n_actions), "[S, A]")
        _checks.check_actions_available(mask)
    return jnp.asarray(mask, bool)
