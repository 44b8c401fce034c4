"""Vanilla policy gradient: exact gradients or sampled REINFORCE, with any optax optimiser.

Maximises `J(theta) = rho . V^{pi_theta}` (discounted, rewards maximised) by
`theta <- theta + optimiser(g)`, where `g` is

- `estimator="exact"`: `jax.grad` of `dsorl.discounted_return` (the linear solve is
  differentiated implicitly). For the tabular softmax this is
  `dJ/dtheta[s, a] = m(s) pi(a|s) A(s, a)`, `m = rho^T (I - gamma P_pi)^{-1}`
  (Agarwal, Kakade, Lee, Mahajan 2021, Lemma C.1), the softmax PG of Mei et al. (2020)
  and Li et al. (arXiv 2102.11270);
- `estimator="reinforce"`: the mean over `batch_size` episodes of
  `sum_t w_t grad log pi(a_t|s_t) G_t` (`dsorl.estimators.reinforce`), episodes cut at
  `min(ceil(1 / (1 - gamma)), episode_length)` steps. With `w_t = 1` this is the baseline
  of Klein et al. (arXiv 2411.04913): loss `-sum_t log pi(a_t|s_t) G_t`, one episode
  per step, step size equal to DynPG's at horizon 6 (`dynpg_horizon_step_size`).

`run` is one `lax.scan` over `n_steps` steps, vmappable over `params0`, `hparams`, `key`.
"""
import dataclasses
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from dsorl import _checks
from dsorl.estimators.reinforce import (absorbing_states, interactions, reinforce_gradient,
                                        sample_episode)
from dsorl._struct import unchecked
from dsorl.markov import Chain, discounted_value
from dsorl.mdp import MDP, induced_chain
from dsorl.objectives import discounted_return
from dsorl.policies import Policy, tabular_softmax

Array = jax.Array


class HParams(NamedTuple):
    """Swept numbers (traced): discount `gamma` and the optimiser's `step_size`."""

    gamma: Array
    step_size: Array


@dataclasses.dataclass(frozen=True)
class Config:
    """Static choices. `n_steps`: gradient steps; `optimizer`: `step_size -> optax
    GradientTransformation` (fed the negated gradient, so it ascends); `estimator`:
    "exact" or "reinforce"; `policy`: a `dsorl.policies.Policy` (default: tabular softmax
    with the MDP's action mask); `evaluate`: trace `rho . V^pi` (by a solve, or by
    `evaluation_sweeps` Bellman sweeps from 0, exact for episodes shorter than that).
    REINFORCE only: `batch_size` episodes per step, `episode_length` (the static scan
    length, required; the traced cap `ceil(1/(1-gamma))` applies within it), and
    `discount_steps` (`w_t = gamma^t` instead of 1)."""

    n_steps: int
    optimizer: Callable = optax.sgd
    estimator: str = "exact"
    policy: Optional[Policy] = None
    evaluate: bool = True
    evaluation_sweeps: Optional[int] = None
    batch_size: int = 1
    episode_length: int = 0
    discount_steps: bool = False


class State(NamedTuple):
    """`params`, optimiser state, `steps` taken, environment `interactions`, PRNG `key`."""

    params: object
    opt_state: object
    steps: Array
    interactions: Array
    key: Array


class Trace(NamedTuple):
    """Per step, before the update: `objective` `rho . V^pi` (NaN unless `evaluate`),
    `interactions` used so far, and the norm of the gradient (estimate) applied."""

    objective: Array
    interactions: Array
    grad_norm: Array


def episode_cap(gamma, xp=jnp):
    """`ceil(1 / (1 - gamma))`: the episode length of the authors' REINFORCE baseline."""
    return xp.ceil(1 / (1 - xp.asarray(gamma)) * (1 - 1e-12)).astype(xp.int32)


def dynpg_horizon_step_size(gamma, horizon: int = 6):
    """DynPG's step size at horizon `H`: `2 (1 - gamma) / (1 - gamma^H)` (Klein et al.'s
    baseline uses `H = 6`)."""
    return 2 * (1 - gamma) / (1 - gamma ** horizon)


def policy_objective(mdp: MDP, pi: Array, gamma, sweeps: Optional[int] = None) -> Array:
    """`rho . V^pi`, by a linear solve or by `sweeps` Bellman sweeps `v <- r_pi + gamma P_pi v`
    from `v = 0` (exact when every episode ends within `sweeps` steps). Scalar."""
    chain = induced_chain(mdp, pi)
    return chain_objective(mdp.rho, chain.P, chain.r, gamma, sweeps)


def chain_objective(rho: Array, P_pi: Array, r_pi: Array, gamma,
                    sweeps: Optional[int] = None) -> Array:
    """`rho . v` for the chain `(P_pi[S, S], r_pi[S])`: see `policy_objective`."""
    if sweeps is None:
        return rho @ discounted_value(unchecked(Chain, P=P_pi, r=r_pi), gamma)
    v = lax.fori_loop(0, sweeps, lambda _, v: r_pi + gamma * P_pi @ v, jnp.zeros_like(r_pi))
    return rho @ v


def validate(mdp: MDP, hparams: HParams, config: Config) -> None:
    """`ValueError` for gamma outside [0, 1), a non-positive step size, an action mask that
    leaves a state without actions, or bad static choices (concrete values only)."""
    _checks.check_discount(hparams.gamma)
    _checks.check_positive("step_size", hparams.step_size)
    if config.estimator not in ("exact", "reinforce"):
        raise ValueError(f"estimator must be 'exact' or 'reinforce', got {config.estimator!r}.")
    if config.n_steps < 0:
        raise ValueError(f"n_steps = {config.n_steps} must be >= 0.")
    if config.estimator == "reinforce" and config.episode_length < 1:
        raise ValueError("REINFORCE needs a static episode_length >= 1 (the scan length;"
                         " the cap ceil(1/(1-gamma)) is applied within it).")
    if _checks.is_concrete(mdp.action_mask) and mdp.action_mask is not None:
        empty = np.flatnonzero(~np.asarray(mdp.action_mask).any(axis=1))
        if empty.size:
            raise ValueError(f"the action mask leaves state {empty[0]} without actions; a"
                             " terminal state keeps one absorbing zero-reward action.")


def _policy(mdp: MDP, config: Config) -> Policy:
    return config.policy or tabular_softmax(*mdp.R.shape, mdp.action_mask)


def init(mdp: MDP, params0, hparams: HParams, key: Array, config: Config) -> State:
    """The state before the first step."""
    tx = config.optimizer(hparams.step_size)
    return State(params0, tx.init(params0), jnp.int32(0), jnp.int32(0), key)


def step(mdp: MDP, state: State, hparams: HParams, config: Config, reward_std=None):
    """One gradient step -> `(State, Trace row)`."""
    policy = _policy(mdp, config)
    pi = policy.probs(state.params)
    key, sub = jax.random.split(state.key)
    if config.estimator == "exact":
        grad = jax.grad(lambda p: discounted_return(mdp, policy.probs(p), hparams.gamma))(
            state.params)
        used = jnp.int32(0)
    else:
        length = jnp.minimum(episode_cap(hparams.gamma), config.episode_length)
        episodes = jax.vmap(lambda k: sample_episode(
            k, mdp, lambda t, s: pi[s], config.episode_length, reward_std=reward_std)
        )(jax.random.split(sub, config.batch_size))
        grads = jax.vmap(lambda ep: reinforce_gradient(
            policy.log_probs, state.params, ep, hparams.gamma, length=length,
            discount_steps=config.discount_steps))(episodes)
        grad = jax.tree_util.tree_map(lambda g: jnp.mean(g, axis=0), grads)
        terminal = absorbing_states(mdp)
        used = jnp.sum(jax.vmap(lambda ep: interactions(ep, terminal, length))(episodes),
                       dtype=jnp.int32)
    objective = (policy_objective(mdp, pi, hparams.gamma, config.evaluation_sweeps)
                 if config.evaluate else jnp.full((), jnp.nan, mdp.R.dtype))
    row = Trace(objective, state.interactions, optax.tree.norm(grad))
    tx = config.optimizer(hparams.step_size)
    neg = jax.tree_util.tree_map(jnp.negative, grad)
    updates, opt_state = tx.update(neg, state.opt_state, state.params)
    new = State(optax.apply_updates(state.params, updates), opt_state, state.steps + 1,
                state.interactions + used, key)
    return new, row


def run(mdp: MDP, params0, hparams: HParams, key: Array, *, config: Config,
        reward_std: Optional[Array] = None):
    """`n_steps` steps of vanilla PG as one `lax.scan` -> `(State, Trace)`.

    `params0`: initial parameters of `config.policy` (tabular softmax: `[S, A]`, zeros
    = uniform); `reward_std[S, A]`: Gaussian reward noise of sampled episodes.
    """
    hparams = HParams(*(jnp.asarray(x, mdp.R.dtype) for x in hparams))
    validate(mdp, hparams, config)
    std = None if reward_std is None else jnp.asarray(reward_std, mdp.R.dtype)

    def body(state, _):
        return step(mdp, state, hparams, config, std)

    return lax.scan(body, init(mdp, params0, hparams, key, config), None,
                    length=config.n_steps)
