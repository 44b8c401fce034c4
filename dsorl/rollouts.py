"""Sampled episodes of gymnax-style environments: the problem container, action spaces,
vectorised rollouts and backward accumulation of returns.

A *gymnax-style environment* is an object with `reset(key, params) -> (obs, state)` and
`step(key, state, action, params) -> (obs, state, reward, done, info)` that resets itself
when an episode ends (the observation returned with `done = True` is the next episode's
first one), as `gymnax.make(name)` returns (`dsorl.envs.gymnax_control` builds them; this
module never imports gymnax). `ControlProblem` wraps one with its parameters and the
static facts the algorithms need (observation shape, action space); its only pytree leaves
are the environment parameters, so problems can be `vmap`ped over numbers such as gravity.

`collect` runs `N` copies of the environment for `T` steps as one `lax.scan` (`vmap`
over the copies) and carries the copies across calls, as on-policy methods with
vectorised environments do (PPO included). `discounted_returns` accumulates backwards
(Todorov, arXiv 2506.08340, Algorithm 1; docs/design.md §9.1):

    G_t = r_t + gamma (1 - done_t) G_{t+1},   G_T = v_hat(x_T)  (bootstrap at the cut),

so an episode cut by the end of a batch is completed by the fitted value. An episode's end
by the environment's time limit counts as termination, as in rejax's PPO (gymnax reports
one `done` for both).
"""
import dataclasses
from typing import Any, Callable, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["Discrete", "Box", "ControlProblem", "RolloutState", "Transitions", "start",
           "collect", "discounted_returns", "episode_weights"]

Array = jax.Array


class Discrete(NamedTuple):
    """Actions `0 .. n - 1`."""

    n: int


class Box(NamedTuple):
    """Real actions of `shape` in `[low, high]` (tuples, elementwise; `inf` for none)."""

    low: tuple
    high: tuple
    shape: tuple


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


@dataclasses.dataclass(frozen=True, eq=False)
class ControlProblem:
    """A gymnax-style environment `env` with its parameters `env_params` (the pytree
    leaves), `observation_shape`, `action_space` (`Discrete` or `Box`) and `name`.

    `reset(key) -> (obs, env_state)`; `step(key, env_state, action) -> (obs, env_state,
    reward, done)` (auto-reset; `done` a bool). Built by `dsorl.envs.gymnax_control`.
    """

    env: Any
    env_params: Any
    observation_shape: tuple
    action_space: Any
    name: str = "env"

    def __post_init__(self):
        for method in ("reset", "step"):
            if not callable(getattr(self.env, method, None)):
                raise ValueError(f"env must be a gymnax-style environment with reset and step;"
                                 f" {type(self.env).__name__} has no {method}.")
        if not (isinstance(self.observation_shape, tuple)
                and all(_is_int(d) and d >= 1 for d in self.observation_shape)):
            raise ValueError(f"observation_shape must be a tuple of positive ints, got"
                             f" {self.observation_shape!r}.")
        space = self.action_space
        if isinstance(space, Discrete):
            if not (_is_int(space.n) and space.n >= 1):
                raise ValueError(f"Discrete action space needs n >= 1, got {space.n!r}.")
        elif isinstance(space, Box):
            low, high = np.asarray(space.low, float), np.asarray(space.high, float)
            if low.shape != tuple(space.shape) or high.shape != tuple(space.shape):
                raise ValueError(f"Box bounds must have the space's shape {space.shape},"
                                 f" got low {low.shape}, high {high.shape}.")
            if np.any(~(low < high)):
                i = int(np.flatnonzero(~(low < high).ravel())[0])
                raise ValueError(f"Box bounds: low[{i}] = {low.ravel()[i]} must be below"
                                 f" high[{i}] = {high.ravel()[i]}.")
        else:
            raise ValueError(f"action_space must be dsorl.rollouts.Discrete or Box, got"
                             f" {space!r}.")

    def reset(self, key):
        return self.env.reset(key, self.env_params)

    def step(self, key, env_state, action):
        obs, env_state, reward, done, _ = self.env.step(key, env_state, action,
                                                        self.env_params)
        return obs, env_state, reward, done

    def __repr__(self):
        return (f"ControlProblem({self.name!r}, observation_shape={self.observation_shape},"
                f" action_space={self.action_space})")


jax.tree_util.register_pytree_node(
    ControlProblem,
    lambda p: ((p.env_params,), (p.env, p.observation_shape, p.action_space, p.name)),
    lambda aux, children: _unflatten(aux, children))


def _unflatten(aux, children):
    obj = object.__new__(ControlProblem)  # no validation: rebuilt inside jit/vmap
    for name, value in zip(("env", "observation_shape", "action_space", "name"), aux):
        object.__setattr__(obj, name, value)
    object.__setattr__(obj, "env_params", children[0])
    return obj


class RolloutState(NamedTuple):
    """`N` running copies: `obs[N, ...]`, `env_state`, `time[N]` (steps into the current
    episode, int32) and `episode_return[N]` (undiscounted reward so far)."""

    obs: Array
    env_state: Any
    time: Array
    episode_return: Array


class Transitions(NamedTuple):
    """`T` steps of `N` copies, axes `[T, N, ...]`: `obs`, `action`, `log_prob` (of the
    behaviour policy), `reward`, `done`, `time` (steps into the episode at `obs`),
    `finished_return` (the episode's undiscounted return where `done`, else 0);
    `last_obs[N, ...]`: the observations after the last step (for the bootstrap)."""

    obs: Array
    action: Array
    log_prob: Array
    reward: Array
    done: Array
    time: Array
    finished_return: Array
    last_obs: Array


def start(problem: ControlProblem, key, n_envs: int, dtype=None) -> RolloutState:
    """`n_envs` freshly reset copies (one key each, split from `key`)."""
    if not (_is_int(n_envs) and n_envs >= 1):
        raise ValueError(f"n_envs = {n_envs!r} must be an int >= 1.")
    obs, env_state = jax.vmap(problem.reset)(jax.random.split(key, n_envs))
    dtype = dtype or jnp.result_type(float)
    return RolloutState(jnp.asarray(obs, dtype), env_state, jnp.zeros(n_envs, jnp.int32),
                        jnp.zeros(n_envs, dtype))


def collect(problem: ControlProblem, act: Callable, state: RolloutState, key,
            n_steps: int) -> Tuple[RolloutState, Transitions]:
    """`n_steps` steps of every copy: `act(obs[N, ...], key) -> (action[N, ...],
    log_prob[N])` picks the actions (a `Box` action is clipped to the space's bounds before
    the environment sees it; `action` records the unclipped draw, whose log-probability the
    score function needs). Step `t` draws from `fold_in(key, t)`."""
    space = problem.action_space
    n = state.time.shape[0]
    dtype = state.episode_return.dtype

    def one(carry: RolloutState, t):
        k_act, k_env = jax.random.split(jax.random.fold_in(key, t))
        action, log_prob = act(carry.obs, k_act)
        env_action = action
        if isinstance(space, Box):
            env_action = jnp.clip(action, jnp.asarray(space.low, action.dtype),
                                  jnp.asarray(space.high, action.dtype))
        obs, env_state, reward, done = jax.vmap(problem.step)(
            jax.random.split(k_env, n), carry.env_state, env_action)
        reward = jnp.asarray(reward, dtype).reshape(n)
        done = jnp.asarray(done, bool).reshape(n)
        total = carry.episode_return + reward
        row = Transitions(carry.obs, action, log_prob, reward, done, carry.time,
                          jnp.where(done, total, 0), None)
        new = RolloutState(jnp.asarray(obs, dtype), env_state,
                           jnp.where(done, 0, carry.time + 1), jnp.where(done, 0, total))
        return new, row

    state, rows = lax.scan(one, state, jnp.arange(n_steps, dtype=jnp.uint32))
    return state, rows._replace(last_obs=state.obs)


def discounted_returns(reward: Array, done: Array, bootstrap: Array, gamma) -> Array:
    """Backward accumulation `G_t = r_t + gamma (1 - done_t) G_{t+1}`, `G_T = bootstrap`,
    over the leading (time) axis of `reward[T, N]`, `done[T, N]`; `bootstrap[N]`."""

    def back(G_next, inputs):
        r, d = inputs
        G = r + gamma * jnp.where(d, 0, G_next)
        return G, G

    _, G = lax.scan(back, jnp.asarray(bootstrap, reward.dtype), (reward, done), reverse=True)
    return G


def episode_weights(time: Array, gamma, discount: bool) -> Array:
    """`gamma^t` at episode time `t` (the weight of step `t` in the discounted objective's
    gradient, Algorithm 1) when `discount`, else ones (the common undiscounted practice)."""
    gamma = jnp.asarray(gamma)
    if not discount:
        return jnp.ones(time.shape, gamma.dtype)
    return gamma ** time.astype(gamma.dtype)
