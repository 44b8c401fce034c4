"""Sampled trajectories: one episode is a `lax.scan`, many are a `vmap` over keys.

Every draw comes from an explicit `jax.random` key. Rewards are the expected rewards
`R[s, a]` plus, optionally, Gaussian noise of standard deviation `reward_std[s, a]`.
"""
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from dsorl.markov import Chain
from dsorl.mdp import MDP

Array = jax.Array


class Trajectory(NamedTuple):
    """`states[T + 1]` (s_0..s_T), `actions[T]`, `rewards[T]` (r_t = reward of (s_t, a_t))."""

    states: Array
    actions: Array
    rewards: Array


def rollout(key: Array, mdp: MDP, pi: Array, horizon: int, *, initial_state=None,
            reward_std: Optional[Array] = None) -> Trajectory:
    """One episode of `horizon` steps of `pi[S, A]` on `mdp`.

    `s_0 ~ rho` unless `initial_state` (an int, may be traced) is given. Masked actions
    have probability 0 and are never drawn.
    """
    k0, kscan = jax.random.split(key)
    s0 = (jax.random.categorical(k0, jnp.log(mdp.rho)) if initial_state is None
          else jnp.asarray(initial_state, jnp.int32))
    log_pi = jnp.log(pi)
    log_P = jnp.log(mdp.P)
    if reward_std is not None:
        reward_std = jnp.asarray(reward_std, mdp.R.dtype)

    def step(s, k):
        ka, ks, kr = jax.random.split(k, 3)
        a = jax.random.categorical(ka, log_pi[s])
        s_next = jax.random.categorical(ks, log_P[s, a]).astype(s.dtype)
        r = mdp.R[s, a]
        if reward_std is not None:
            r = r + reward_std[s, a] * jax.random.normal(kr, dtype=mdp.R.dtype)
        return s_next, (s, a, r)

    s_last, (states, actions, rewards) = lax.scan(step, s0, jax.random.split(kscan, horizon))
    return Trajectory(jnp.append(states, s_last), actions, rewards)


def rollouts(key: Array, mdp: MDP, pi: Array, horizon: int, n_episodes: int, **kwargs) -> Trajectory:
    """`n_episodes` independent episodes (leading axis), one `vmap` over split keys."""
    keys = jax.random.split(key, n_episodes)
    return jax.vmap(lambda k: rollout(k, mdp, pi, horizon, **kwargs))(keys)


def chain_rollout(key: Array, chain: Chain, horizon: int, initial_law: Array) -> Array:
    """States `x_0..x_T` (shape `[T + 1]`) of a chain, `x_0 ~ initial_law`.

    Each state is drawn by inverting the cumulative law of its row with one uniform
    (`categorical` would draw one Gumbel variate per state: 15-25x slower at S = 100).
    """
    k0, kscan = jax.random.split(key)
    cdf = _cumulative(chain.P)

    def step(x, k):
        return _invert(k, cdf[x]), x

    x0 = _invert(k0, _cumulative(jnp.asarray(initial_law, chain.P.dtype)))
    x_last, xs = lax.scan(step, x0, jax.random.split(kscan, horizon))
    return jnp.append(xs, x_last)


def _cumulative(p: Array) -> Array:
    """Cumulative sums along the last axis, normalised to end at exactly 1."""
    c = jnp.cumsum(p, axis=-1)
    return (c / c[..., -1:]).at[..., -1].set(1)


def _invert(key: Array, cdf: Array) -> Array:
    """The index `#{j : cdf[j] <= u}`, `u ~ U[0, 1)`: never a zero-probability state."""
    u = jax.random.uniform(key, dtype=cdf.dtype)
    return jnp.sum(cdf <= u).astype(jax.dtypes.canonicalize_dtype(jnp.int64))
