"""Sampled trajectories: one episode is a `lax.scan`, many are a `vmap` over keys.

Every draw comes from an explicit `jax.random` key. Rewards are the expected rewards
`R[s, a]` plus, optionally, Gaussian noise of standard deviation `reward_std[s, a]`.
"""
import math
from typing import Callable, NamedTuple, Optional

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


def sample_episode(key: Array, mdp: MDP, policy_at: Callable, length: int, *,
                   reward_std=None) -> Trajectory:
    """One episode of `length` steps with a possibly time-varying policy.

    `s_0 ~ rho`; `a_t ~ policy_at(t, s_t)` (a probability row `[A]`, `t` traced);
    `s_{t+1} ~ P[s_t, a_t]`; `r_t = R[s_t, a_t] + reward_std[s_t, a_t] N(0, 1)`. Each draw
    inverts a cumulative distribution with one uniform number: cheaper than Gumbel-max
    when actions are many (300 in Sutton-extended; see `draw`). Zero-probability entries are
    never drawn.
    """
    k_u, k_n = jax.random.split(key)
    reward_std = None if reward_std is None else jnp.asarray(reward_std, mdp.R.dtype)
    u = jax.random.uniform(k_u, (length + 1, 2), mdp.R.dtype)
    noise = (jnp.zeros(length, mdp.R.dtype) if reward_std is None
             else jax.random.normal(k_n, (length,), mdp.R.dtype))
    s0 = draw(mdp.rho, u[0, 0])

    def step(s, xs):
        t, (ua, us), z = xs
        a = draw(policy_at(t, s), ua)
        r = mdp.R[s, a] + (0 if reward_std is None else reward_std[s, a] * z)
        return draw(mdp.P[s, a], us), (s, a, r)

    s_last, (states, actions, rewards) = lax.scan(step, s0, (jnp.arange(length), u[1:], noise))
    return Trajectory(jnp.append(states, s_last), actions, rewards)


def draw(probs: Array, u) -> Array:
    """Inverse-CDF draw: the index `i` with `c[i-1] <= u * c[-1] < c[i]`, `c = cumsum(probs)`.

    `probs[n]` >= 0 (not necessarily normalised), `u` uniform on [0, 1): `i` has law
    `probs / sum(probs)` and is never a zero-probability entry. Two levels of about
    `sqrt(n)` (blocks, then one block's entries) replace the length-`n` cumulative sum: on
    XLA:CPU a long cumulative sum or an associative scan costs 2-4x more in large vmaps
    (n = 300, 1000 vmapped rows: about 0.35 against 0.8-1.2 us per draw per row; rows whose
    length is not a multiple of the block width cost a padding copy). Int32 scalar.
    """
    n = probs.shape[-1]
    width = _block_width(n)
    if width in (1, n):  # small or prime n: one level
        cdf = jnp.cumsum(probs)
        return _first_above(cdf, u * cdf[-1], probs > 0).astype(jnp.int32)
    blocks = -(-n // width)
    table = jnp.pad(probs, (0, blocks * width - n)).reshape(blocks, width)
    mass = jnp.sum(table, axis=1)
    upper = jnp.cumsum(mass)
    x = u * upper[-1]
    i = _first_above(upper, x, mass > 0)
    # the offset inside block i; the clip guards against rounding of the two-level sums
    x = jnp.clip(x - (upper[i] - mass[i]), 0, None)
    j = _first_above(jnp.cumsum(table[i]), x, table[i] > 0)
    return (i * width + j).astype(jnp.int32)


def _block_width(n: int) -> int:
    """A block width near `sqrt(n)`: a divisor of `n` when one lies in [sqrt(n)/2, 2 sqrt(n)]
    (padding the row to a multiple costs a copy per draw), else `ceil(sqrt(n))`."""
    root = math.isqrt(n)
    root += root * root < n
    divisors = [w for w in range(max(1, root // 2), 2 * root + 1) if n % w == 0]
    return min(divisors, key=lambda w: abs(w - root)) if divisors else root


def _first_above(cdf: Array, x, positive: Array) -> Array:
    """The first index with `cdf > x`, or the last positive entry if rounding put `x` at
    or above `cdf[-1]` (so a zero-probability entry is never returned)."""
    last = jnp.max(jnp.where(positive, jnp.arange(cdf.shape[0]), 0))
    return jnp.minimum(jnp.sum(cdf <= x), last)
