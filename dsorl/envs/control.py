"""Continuous control discretised on a grid: a noisy 1-D linear-quadratic regulator.

The state `x` and the action `u` live on uniform grids; the next state is
`x' = a x + b u + w`, `w ~ N(0, s^2)`, rounded to the nearest grid point (the grid's cells
are the intervals between midpoints, the two outer cells extend to infinity, so mass beyond
the grid lands on its end points). Reward `-(q x^2 + r u^2)` (the cost `L = q x^2 + r u^2`
is minimised; rewards are maximised). Its grid coordinates feed
`dsorl.features.coordinate_encoding`, so the particle method of `dsorl.algorithms.meanfield`
treats it like any finite MDP.

Reference (`soft_lqr`): on the continuous spaces, with Lebesgue reference measure on
actions, the entropy-regularised discounted LQR has a quadratic value `V(x) = -p x^2 + c`
and the Gaussian soft-optimal policy `pi*_tau(.|x) = N(k x, tau / (2 (r + gamma b^2 p)))`
with `p` the discounted Riccati solution and `k` the LQR gain (complete the square in
`Q(x, u) = -q x^2 - r u^2 + gamma E V(a x + b u + w)`; the noise only shifts `c`). On a
fine, wide grid the discretised problem has the same policy in the interior: rounding adds
`dx^2 / 12` to `E[x'^2]` (Sheppard's correction), a constant, and lattice sums of Gaussians
differ from integrals by `O(exp(-2 pi^2 std^2 / spacing^2))`.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

from dsorl import _checks
from dsorl.mdp import MDP

__all__ = ["GridControl", "linear_quadratic_regulator", "SoftLQR", "soft_lqr"]

Array = jax.Array


class GridControl(NamedTuple):
    """A discretised control problem: `mdp` and its grids `states[S]`, `actions[A]`."""

    mdp: MDP
    states: Array
    actions: Array


def linear_quadratic_regulator(n_states: int = 41, n_actions: int = 21, *,
                               state_bound=4.0, action_bound=4.0, a=1.0, b=1.0,
                               noise_std=0.3, state_cost=1.0, action_cost=1.0) -> GridControl:
    """The noisy 1-D LQR `x' = a x + b u + w` on grids, reward `-(q x^2 + r u^2)`.

    States: `n_states` points evenly spaced on `[-state_bound, state_bound]`; actions:
    `n_actions` points on `[-action_bound, action_bound]`; `w ~ N(0, noise_std^2)`;
    `q = state_cost`, `r = action_cost`; the initial law is uniform on the state grid.
    `P[i, j, k] = Pr(a x_i + b u_j + w falls in cell k)` (the outer cells are unbounded).
    Sizes are static; the numbers may be traced (vmap over noise_std, a, ...).
    """
    if not (isinstance(n_states, (int, np.integer)) and n_states >= 2):
        raise ValueError(f"n_states = {n_states!r} must be an integer >= 2.")
    if not (isinstance(n_actions, (int, np.integer)) and n_actions >= 1):
        raise ValueError(f"n_actions = {n_actions!r} must be an integer >= 1.")
    for name, value in (("state_bound", state_bound), ("action_bound", action_bound),
                        ("noise_std", noise_std)):
        _checks.check_positive(name, value)
    for name, value in (("state_cost", state_cost), ("action_cost", action_cost)):
        _checks.check_positive(name, value, allow_zero=True)
    dtype = jnp.result_type(float)
    x = jnp.linspace(-state_bound, state_bound, n_states, dtype=dtype)
    u = jnp.linspace(-action_bound, action_bound, n_actions, dtype=dtype)
    mean = a * x[:, None] + b * u[None, :]                                   # [S, A]
    edges = (x[1:] + x[:-1]) / 2
    lo = jnp.concatenate([jnp.full(1, -jnp.inf, dtype), edges])              # cell k = [lo_k, hi_k)
    hi = jnp.concatenate([edges, jnp.full(1, jnp.inf, dtype)])
    z_lo = (lo - mean[..., None]) / noise_std                                # [S, A, S]
    z_hi = (hi - mean[..., None]) / noise_std
    # upper tail through the survival function: no cancellation of 1 - (1 - tiny)
    P = jnp.where(z_lo > 0, ndtr(-z_lo) - ndtr(-z_hi), ndtr(z_hi) - ndtr(z_lo))
    R = -(state_cost * x[:, None] ** 2 + action_cost * u[None, :] ** 2)
    rho = jnp.full(n_states, 1 / n_states, dtype)
    return GridControl(MDP(P, R, rho), x, u)


class SoftLQR(NamedTuple):
    """Continuous-space reference: value `-p x^2 + c`, soft-optimal policy
    `N(gain x, action_std^2)` (the unregularised optimum is `u = gain x`)."""

    p: Array
    gain: Array
    action_std: Array


def soft_lqr(gamma, tau, *, a=1.0, b=1.0, state_cost=1.0, action_cost=1.0) -> SoftLQR:
    """Discounted entropy-regularised LQR on the real line (Lebesgue reference on actions).

    `p` is the positive root of the discounted Riccati equation
    `p = q + gamma a^2 p - (gamma a b p)^2 / (r + gamma b^2 p)`, i.e. of
    `gamma b^2 p^2 + (r - gamma q b^2 - gamma a^2 r) p - q r = 0`;
    `gain = -gamma a b p / (r + gamma b^2 p)`; `action_std^2 = tau / (2 (r + gamma b^2 p))`.
    (Bertsekas, Dynamic Programming and Optimal Control I, §4.1, for the Riccati equation;
    the Gaussian policy follows by completing the square in the soft Bellman equation.)
    """
    _checks.check_discount(gamma)
    _checks.check_positive("tau", tau)
    q, r = state_cost, action_cost
    lin = r - gamma * q * b ** 2 - gamma * a ** 2 * r
    quad = gamma * b ** 2
    root = jnp.sqrt(lin ** 2 + 4 * quad * q * r)
    # the cancellation-free form of the positive root for each sign of `lin` (gamma = 0 too)
    p = jnp.where(lin > 0, 2 * q * r / jnp.where(lin > 0, lin + root, 1),
                  (root - lin) / jnp.where(lin > 0, 1, 2 * quad))
    curvature = r + gamma * b ** 2 * p
    return SoftLQR(p, -gamma * a * b * p / curvature, jnp.sqrt(tau / (2 * curvature)))
