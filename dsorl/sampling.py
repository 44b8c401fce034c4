"""Sampled trajectories: one episode is a `lax.scan`, many are a `vmap` over keys.

Every draw is the one inverse-CDF draw `draw(probs, u)` of a uniform `u` taken from an
explicit `jax.random` key, so episodes of two policies (or two MDPs) run with the same key
share their uniforms: common random numbers for free. Rewards are the expected rewards
`R[s, a]` plus, optionally, Gaussian noise of standard deviation `reward_std[s, a]`.
"""
import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from dsorl.markov import Chain
from dsorl.mdp import MDP

__all__ = ["Trajectory", "rollout", "rollouts", "chain_rollout", "sample_episode", "Cumulative",
           "cumulative", "draw"]

Array = jax.Array


class Trajectory(NamedTuple):
    """`states[T + 1]` (s_0..s_T), `actions[T]`, `rewards[T]` (r_t = reward of (s_t, a_t))."""

    states: Array
    actions: Array
    rewards: Array


def rollout(key: Array, mdp: MDP, pi: Array, horizon: int, *, initial_state=None,
            reward_std: Optional[Array] = None) -> Trajectory:
    """One episode of `horizon` steps of the stationary `pi[S, A]` on `mdp`.

    `sample_episode` with `policy_at(t, s) = pi[s]` (same key, same episode): `s_0 ~ rho`
    unless `initial_state` (an int, may be traced) is given; masked actions have
    probability 0 and are never drawn.
    """
    pi = jnp.asarray(pi, mdp.R.dtype)
    return sample_episode(key, mdp, lambda t, s: pi[s], horizon, initial_state=initial_state,
                          reward_std=reward_std)


def rollouts(key: Array, mdp: MDP, pi: Array, horizon: int, n_episodes: int, **kwargs) -> Trajectory:
    """`n_episodes` independent episodes (leading axis), one `vmap` over split keys."""
    keys = jax.random.split(key, n_episodes)
    return jax.vmap(lambda k: rollout(k, mdp, pi, horizon, **kwargs))(keys)


def chain_rollout(key: Array, chain: Chain, horizon: int, initial_law: Array) -> Array:
    """States `x_0..x_T` (shape `[T + 1]`, int32) of a chain, `x_0 ~ initial_law`.

    `x_{t+1} = draw(P[x_t], u_{t+1})` on the table `cumulative(P)` built once, one uniform
    per state (`categorical` would draw one Gumbel variate per state: 15-25x slower at
    S = 100; summing the row at every step, about 1.5x slower at S = 100-300); `u_0` from
    the first half of `split(key)`, `u_1..u_T` from `split(second half, T)`. Never a
    zero-probability state.
    """
    k0, kscan = jax.random.split(key)
    dtype = chain.P.dtype
    table = cumulative(chain.P)  # once per episode, not once per step

    def step(x, k):
        return draw(table.row(x), jax.random.uniform(k, dtype=dtype)), x

    x0 = draw(jnp.asarray(initial_law, dtype), jax.random.uniform(k0, dtype=dtype))
    x_last, xs = lax.scan(step, x0, jax.random.split(kscan, horizon))
    return jnp.append(xs, x_last)


def sample_episode(key: Array, mdp: MDP, policy_at: Callable, length: int, *,
                   initial_state=None, reward_std=None) -> Trajectory:
    """One episode of `length` steps with a possibly time-varying policy.

    `s_0 = draw(rho, u[0, 0])` (or `initial_state`, an int that may be traced);
    `a_t = draw(policy_at(t, s_t), u[t+1, 0])` (a probability row `[A]`, `t` traced);
    `s_{t+1} = draw(P[s_t, a_t], u[t+1, 1])`; `r_t = R[s_t, a_t] + reward_std[s_t, a_t] z_t`,
    with `u[length + 1, 2]` uniform from the first half of `split(key)` and `z[length]`
    standard normal from the second. Inverting a cumulative distribution with one uniform
    is cheaper than Gumbel-max when actions are many (300 in Sutton-extended; see `draw`).
    Zero-probability entries are never drawn.
    """
    k_u, k_n = jax.random.split(key)
    reward_std = None if reward_std is None else jnp.asarray(reward_std, mdp.R.dtype)
    u = jax.random.uniform(k_u, (length + 1, 2), mdp.R.dtype)
    noise = (jnp.zeros(length, mdp.R.dtype) if reward_std is None
             else jax.random.normal(k_n, (length,), mdp.R.dtype))
    s0 = (draw(mdp.rho, u[0, 0]) if initial_state is None
          else jnp.asarray(initial_state, jnp.int32))

    def step(s, xs):
        t, (ua, us), z = xs
        a = draw(policy_at(t, s), ua)
        r = mdp.R[s, a] + (0 if reward_std is None else reward_std[s, a] * z)
        return draw(mdp.P[s, a], us), (s, a, r)

    s_last, (states, actions, rewards) = lax.scan(step, s0, (jnp.arange(length), u[1:], noise))
    return Trajectory(jnp.append(states, s_last), actions, rewards)


class Cumulative(NamedTuple):
    """Rows `probs[..., n]` prepared for repeated draws (`cumulative`): `cdf` their
    cumulative sums `[..., n]`, `total = cdf[..., -1]` and `last`, the index of their last
    positive entry `[...]`. `table.row(i)` is row `i`, for `draw(table.row(i), u)`."""

    cdf: Array
    total: Array
    last: Array

    def row(self, i) -> "Cumulative":
        return Cumulative(self.cdf[i], self.total[i], self.last[i])


def cumulative(probs: Array) -> Cumulative:
    """`Cumulative` tables of the rows of `probs[..., n]` (last axis), computed once: a
    chain's `P` sampled for many steps then costs one comparison pass per draw."""
    cdf = jnp.cumsum(probs, axis=-1)
    return Cumulative(cdf, cdf[..., -1], _last_positive(probs))


def draw(probs, u) -> Array:
    """Inverse-CDF draw: the index `i` with `c[i-1] <= u * c[-1] < c[i]`, `c = cumsum(probs)`.

    `probs[n]` >= 0 (not necessarily normalised), or one row of a `Cumulative` table (the
    same index, without recomputing the sums); `u` uniform on [0, 1): `i` has law
    `probs / sum(probs)` and is never a zero-probability entry. Two levels of about
    `sqrt(n)` (blocks, then one block's entries) replace the length-`n` cumulative sum: on
    XLA:CPU a long cumulative sum or an associative scan costs 2-4x more in large vmaps
    (n = 300, 1000 vmapped rows: about 0.35 against 0.8-1.2 us per draw per row; rows whose
    length is not a multiple of the block width cost a padding copy). Int32 scalar.
    """
    if isinstance(probs, Cumulative):
        return _first_above(probs.cdf, u * probs.total, probs.last).astype(jnp.int32)
    n = probs.shape[-1]
    width = _block_width(n)
    if width in (1, n):  # small or prime n: one level
        return draw(cumulative(probs), u)
    blocks = -(-n // width)
    table = jnp.pad(probs, (0, blocks * width - n)).reshape(blocks, width)
    mass = jnp.sum(table, axis=1)
    upper = jnp.cumsum(mass)
    x = u * upper[-1]
    i = _first_above(upper, x, _last_positive(mass))
    # the offset inside block i; the clip guards against rounding of the two-level sums
    x = jnp.clip(x - (upper[i] - mass[i]), 0, None)
    j = _first_above(jnp.cumsum(table[i]), x, _last_positive(table[i]))
    return (i * width + j).astype(jnp.int32)


def _block_width(n: int) -> int:
    """A block width near `sqrt(n)`: a divisor of `n` when one lies in [sqrt(n)/2, 2 sqrt(n)]
    (padding the row to a multiple costs a copy per draw), else `ceil(sqrt(n))`."""
    root = math.isqrt(n)
    root += root * root < n
    divisors = [w for w in range(max(1, root // 2), 2 * root + 1) if n % w == 0]
    return min(divisors, key=lambda w: abs(w - root)) if divisors else root


def _last_positive(probs: Array) -> Array:
    """The index of the last positive entry along the last axis (0 if none)."""
    return jnp.max(jnp.where(probs > 0, jnp.arange(probs.shape[-1]), 0), axis=-1)


def _first_above(cdf: Array, x, last) -> Array:
    """The first index with `cdf > x`, or `last` (the last positive entry) if rounding put
    `x` at or above `cdf[-1]` (so a zero-probability entry is never returned)."""
    return jnp.minimum(jnp.sum(cdf <= x), last)
