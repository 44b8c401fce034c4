"""Linearly-solvable MDPs (LMDPs): two families of instances of `dsorl.lmdp.LMDP`.

Todorov, "Linearly-solvable Markov decision problems" (NIPS 2006) and "Efficient
computation of optimal actions" (PNAS 2009); DSO's LMDP mapping (arXiv 2506.08340, 2.1).
A quadratic-cost random walk on a grid (the paper's third suggested experiment) and
garnet-like random LMDPs, first exit or average cost.
"""
import jax
import jax.numpy as jnp
import numpy as np

from dsorl import _checks
from dsorl.lmdp import LMDP

__all__ = ["random_walk_lmdp", "random_lmdp"]

Array = jax.Array


def random_walk_lmdp(n_states: int, *, noise=0.1, cost_weight=4.0, first_exit: bool = True,
                     dtype=None) -> LMDP:
    """A discretised 1-D random walk on `[-1, 1]` with quadratic state cost.

    Grid `x_i = -1 + 2 i / (X - 1)`; passive `p(x_j|x_i) ∝ exp(-(x_j - x_i)^2 / (2 noise^2))`
    (a Gaussian step, renormalised on the grid: reflecting ends); cost
    `q(x) = cost_weight * x^2`; initial law uniform on the non-terminal states. With
    `first_exit` (X odd) the centre `x = 0` is the terminal goal (cost 0, absorbing);
    otherwise the LMDP is average cost. The paper's third suggested experiment
    (quadratic cost, Gaussian dynamics) on a grid.
    """
    if n_states < 3:
        raise ValueError(f"n_states = {n_states} must be >= 3.")
    if first_exit and n_states % 2 == 0:
        raise ValueError(f"n_states = {n_states} must be odd so that x = 0 is a grid point.")
    _checks.check_positive("noise", noise)
    dtype = dtype or jnp.result_type(float)
    x = np.linspace(-1.0, 1.0, n_states)
    kernel = np.exp(-(x[None, :] - x[:, None]) ** 2 / (2 * float(noise) ** 2))
    passive = kernel / kernel.sum(axis=1, keepdims=True)
    cost = float(cost_weight) * x ** 2
    terminal = None
    initial = np.full(n_states, 1.0 / n_states)
    if first_exit:
        terminal = np.zeros(n_states, bool)
        centre = n_states // 2
        terminal[centre] = True
        passive[centre] = np.eye(n_states)[centre]
        initial = np.where(terminal, 0.0, 1.0 / (n_states - 1))
    return LMDP(jnp.asarray(passive, dtype), jnp.asarray(cost, dtype),
                jnp.asarray(initial, dtype), terminal)


def random_lmdp(key: Array, n_states: int, branching: int, *, n_terminal: int = 1,
                dtype=None) -> LMDP:
    """A random LMDP: each state has `branching` random successors (garnet-like), costs
    uniform on [0, 1), uniform initial law. With `n_terminal > 0` the last `n_terminal`
    states are absorbing terminal states and every non-terminal state can also step to
    the first terminal state (so the terminal set is reached); `n_terminal = 0` gives an
    average-cost LMDP whose passive chain also steps to state 0 from everywhere
    (unichain). Jittable; `vmap` over keys."""
    if not 1 <= branching <= n_states:
        raise ValueError(f"branching = {branching} must lie in [1, n_states = {n_states}].")
    if not 0 <= n_terminal < n_states:
        raise ValueError(f"n_terminal = {n_terminal} must lie in [0, n_states).")
    dtype = dtype or jnp.result_type(float)
    k_next, k_prob, k_cost = jax.random.split(key, 3)
    order = jnp.argsort(jax.random.uniform(k_next, (n_states, n_states)), axis=-1)
    weights = jax.random.uniform(k_prob, (n_states, branching), dtype, 0.1, 1.0)
    passive = jnp.zeros((n_states, n_states), dtype).at[
        jnp.arange(n_states)[:, None], order[:, :branching]].set(weights)
    hub = n_states - n_terminal if n_terminal else 0  # reached from every state
    passive = passive.at[:, hub].add(0.1)
    terminal = jnp.arange(n_states) >= n_states - n_terminal
    if n_terminal:
        passive = jnp.where(terminal[:, None], jnp.eye(n_states, dtype=dtype), passive)
    passive = passive / passive.sum(axis=1, keepdims=True)
    cost = jax.random.uniform(k_cost, (n_states,), dtype)
    initial = jnp.where(terminal, 0.0, 1.0).astype(dtype) if n_terminal else jnp.ones(n_states, dtype)
    return LMDP(passive, cost, initial / initial.sum(), terminal if n_terminal else None)
