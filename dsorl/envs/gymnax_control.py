"""JAX control environments for dsorl's sampled estimators: gymnax by name, and a finite
MDP written as a gymnax-style environment.

- `make(name, **env_params)`: `gymnax.make(name)` (CartPole-v1, Acrobot-v1, Pendulum-v1 or
  any other gymnax environment) as a `dsorl.rollouts.ControlProblem`, with keyword
  overrides of its `EnvParams` (`make("CartPole-v1", max_steps_in_episode=200)`). Pure
  JAX, `jit`ted and `vmap`ped by the algorithms of `dsorl.algorithms.control`. gymnax is an
  optional dependency (`pip install 'dsorl[control]'`), imported here when used.
- `TabularEnv(mdp, max_steps)` / `tabular(mdp, max_steps)`: a dense `dsorl.MDP` with
  one-hot observations, expected rewards `R[s, a]`, `s' ~ P[s, a]`, episodes of exactly
  `max_steps` steps (the time limit ends them, `done` at step `max_steps - 1`), auto-reset
  like gymnax. The objective of its episodes, `J_T = E sum_{t<T} gamma^t R(s_t, a_t)` with
  `T = max_steps`, is computable exactly (`finite_horizon_return`), so the sampled
  gradients can be checked against `jax.grad` of it.
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dsorl.mdp import MDP
from dsorl.rollouts import Box, ControlProblem, Discrete
from dsorl.sparse import is_sparse

__all__ = ["make", "names", "TabularEnv", "TabularParams", "TabularState", "tabular",
           "finite_horizon_return"]


def _gymnax():
    try:
        import gymnax
    except ImportError as err:  # an optional dependency: say how to get it
        raise ImportError("gymnax environments need the 'control' extra:"
                          " pip install 'dsorl[control]'.") from err
    return gymnax


def names() -> list:
    """The environment names gymnax registers."""
    return list(_gymnax().registered_envs)


def _space(space):
    """gymnax's `Discrete` / `Box` as dsorl's (read by attribute, no gymnax import)."""
    if hasattr(space, "n"):
        return Discrete(int(space.n))
    shape = tuple(int(d) for d in space.shape)
    low = tuple(np.broadcast_to(np.asarray(space.low, float), shape).ravel().tolist())
    high = tuple(np.broadcast_to(np.asarray(space.high, float), shape).ravel().tolist())
    return Box(low, high, shape)


def make(name: str, **env_params) -> ControlProblem:
    """`gymnax.make(name)` as a `ControlProblem`; `env_params` override fields of its
    default `EnvParams` (`ValueError` naming an unknown field or environment)."""
    gymnax = _gymnax()
    if not isinstance(name, str) or name not in gymnax.registered_envs:
        raise ValueError(f"unknown gymnax environment {name!r}; gymnax has:"
                         f" {', '.join(gymnax.registered_envs)}.")
    env, params = gymnax.make(name)
    fields = set(getattr(params, "__dataclass_fields__", {}))
    unknown = sorted(set(env_params) - fields)
    if unknown:
        raise ValueError(f"{name} has no parameter {', '.join(unknown)} (its parameters:"
                         f" {', '.join(sorted(fields))}).")
    if env_params:
        params = params.replace(**env_params)
    return ControlProblem(env, params, tuple(env.observation_space(params).shape),
                          _space(env.action_space(params)), name)


class TabularParams(NamedTuple):
    """`P[S, A, S]`, `R[S, A]`, `rho[S]` of the MDP (traced: vmap over MDPs works)."""

    P: Any
    R: Any
    rho: Any


class TabularState(NamedTuple):
    """The current state index `s` and the step `time` within the episode."""

    s: Any
    time: Any


class TabularEnv:
    """A finite MDP as a gymnax-style environment (see the module docstring)."""

    def __init__(self, n_states: int, n_actions: int, max_steps: int):
        if not (isinstance(max_steps, (int, np.integer)) and max_steps >= 1):
            raise ValueError(f"max_steps = {max_steps!r} must be an int >= 1.")
        self.n_states, self.n_actions, self.max_steps = int(n_states), int(n_actions), int(max_steps)

    def _obs(self, s, dtype):
        return jax.nn.one_hot(s, self.n_states, dtype=dtype)

    def reset(self, key, params: TabularParams):
        s = jax.random.categorical(key, jnp.log(params.rho))
        return self._obs(s, params.R.dtype), TabularState(s, jnp.zeros((), jnp.int32))

    def step(self, key, state: TabularState, action, params: TabularParams):
        k_next, k_reset = jax.random.split(key)
        reward = params.R[state.s, action]
        s_next = jax.random.categorical(k_next, jnp.log(params.P[state.s, action]))
        time = state.time + 1
        done = time >= self.max_steps
        s_reset = jax.random.categorical(k_reset, jnp.log(params.rho))
        s_new = jnp.where(done, s_reset, s_next)
        new = TabularState(s_new, jnp.where(done, 0, time))
        return self._obs(s_new, params.R.dtype), new, reward, done, {}


def tabular(mdp: MDP, max_steps: int) -> ControlProblem:
    """A dense `dsorl.MDP` as a `ControlProblem` with one-hot observations and episodes of
    `max_steps` steps (`TabularEnv`). Action masks are not supported (a sampled policy
    would have to know them): `ValueError`."""
    if not isinstance(mdp, MDP):
        raise ValueError(f"mdp must be a dsorl.MDP, got {type(mdp).__name__}.")
    if is_sparse(mdp.P):
        raise ValueError("tabular needs a dense MDP (SparseTransitions.to_dense()).")
    if mdp.action_mask is not None:
        raise ValueError("tabular does not support action masks: every action must be"
                         " available in every state.")
    env = TabularEnv(mdp.n_states, mdp.n_actions, max_steps)
    return ControlProblem(env, TabularParams(mdp.P, mdp.R, mdp.rho), (mdp.n_states,),
                          Discrete(mdp.n_actions), f"tabular(S={mdp.n_states},"
                                                   f" A={mdp.n_actions}, T={max_steps})")


def finite_horizon_return(mdp: MDP, pi, gamma, horizon: int):
    """`J_T = sum_{t<T} gamma^t rho^T P_pi^t r_pi` for `pi[S, A]`: the expected discounted
    return of episodes of `T = horizon` steps (differentiable in `pi` and `gamma`)."""
    P_pi = jnp.einsum("sa,sat->st", pi, mdp.P)
    r_pi = jnp.sum(pi * mdp.R, axis=-1)

    def back(v, _):  # V_t = r_pi + gamma P_pi V_{t+1}, V_T = 0
        return r_pi + gamma * P_pi @ v, None

    v, _ = jax.lax.scan(back, jnp.zeros_like(r_pi), None, length=horizon)
    return mdp.rho @ v
