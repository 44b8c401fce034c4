"""REINFORCE-type (likelihood-ratio) gradient estimators from sampled episodes.

Williams (1992): for an episode `(s_t, a_t, r_t)_{t<T}` of a policy `pi_theta`,

    g = sum_{t<T} w_t grad log pi_theta(a_t | s_t) G_t,   G_t = sum_{k=t}^{T-1} gamma^{k-t} r_k,

with `w_t = gamma^t` (unbiased for the gradient of the `T`-step discounted return) or
`w_t = 1` (the common form, and the baseline of Klein et al., arXiv 2411.04913). DynPG's
contextual-bandit estimator keeps only the first term (the later actions come from
frozen policies): `g = grad log pi_theta(a_0 | s_0) sum_{t<h} gamma^t r_t`
(Klein et al., docs/design.md §9.3). Episodes are `dsorl.sampling.Trajectory`s; steps at or after
`length` (a traced int) are ignored, so one static scan length serves every horizon.
"""
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from dsorl.mdp import MDP
from dsorl.sampling import Trajectory
from dsorl.sparse import self_loops

__all__ = ["returns_to_go", "step_mask", "reinforce_gradient", "bandit_gradient",
           "absorbing_states", "interactions"]

Array = jax.Array


def returns_to_go(rewards: Array, gamma) -> Array:
    """`G_t = r_t + gamma G_{t+1}`, `G_T = 0`: discounted returns from each step, `[T]`."""
    def back(g, r):
        g = r + gamma * g
        return g, g

    _, G = lax.scan(back, jnp.zeros((), rewards.dtype), rewards, reverse=True)
    return G


def step_mask(n_steps: int, length=None, dtype=jnp.float32) -> Array:
    """`1` for steps `t < length` (all `n_steps` when `length` is None), else `0`; `[T]`."""
    t = jnp.arange(n_steps)
    return jnp.ones(n_steps, dtype) if length is None else (t < length).astype(dtype)


def reinforce_gradient(log_probs: Callable, params, episode: Trajectory, gamma, *,
                       length=None, discount_steps: bool = False):
    """`sum_t w_t grad log pi(a_t|s_t) G_t` over the first `length` steps of `episode`.

    `log_probs(params) -> log pi[S, A]`; `w_t = gamma^t` if `discount_steps` else 1 (the
    authors' baseline loss `-sum_t log pi(a_t|s_t) G_t`, Klein et al. 2024). Steps in an
    absorbing terminal state with one action add nothing (their log-probability is 0).
    Returns a pytree like `params` (an ascent direction).
    """
    T = episode.actions.shape[-1]
    dtype = episode.rewards.dtype
    alive = step_mask(T, length, dtype)
    G = returns_to_go(episode.rewards * alive, gamma)
    weight = alive * (gamma ** jnp.arange(T, dtype=dtype) if discount_steps else 1)
    weight = lax.stop_gradient(weight * G)

    def surrogate(p):
        lp = log_probs(p)[episode.states[:-1], episode.actions]
        return jnp.sum(weight * lp)

    return jax.grad(surrogate)(params)


def bandit_gradient(log_probs: Callable, params, episode: Trajectory, gamma, *, length=None):
    """DynPG's estimator `grad log pi_theta(a_0|s_0) sum_{t<length} gamma^t r_t`.

    Only `a_0` is drawn from `pi_theta`; the rest of `episode` follows the frozen tail
    policies (Klein et al., arXiv 2411.04913; docs/design.md §9.3). Pytree like `params`.
    """
    T = episode.actions.shape[-1]
    dtype = episode.rewards.dtype
    alive = step_mask(T, length, dtype)
    ret = jnp.sum(alive * gamma ** jnp.arange(T, dtype=dtype) * episode.rewards)

    def surrogate(p):
        return log_probs(p)[episode.states[0], episode.actions[0]] * lax.stop_gradient(ret)

    return jax.grad(surrogate)(params)


def absorbing_states(mdp: MDP) -> Array:
    """`[S]` bool: states all of whose available actions stay put with reward 0.

    These are the terminal states of an episodic MDP (`dsorl.envs.dynpg.episodic_mdp`).
    Jittable.
    """
    stay = self_loops(mdp.P)  # [S, A]: P[s, a, s]
    inert = (stay == 1) & (mdp.R == 0)
    return jnp.all(inert | ~mdp.allowed, axis=-1)


def interactions(episode: Trajectory, terminal: Array, length=None) -> Array:
    """Environment interactions in `episode`: steps `t < length` taken from a non-terminal
    state (an episode ends on entering a terminal state). Integer scalar."""
    T = episode.actions.shape[-1]
    live = ~terminal[episode.states[:-1]] & (step_mask(T, length, jnp.float32) > 0)
    return jnp.sum(live, dtype=jnp.int32)
