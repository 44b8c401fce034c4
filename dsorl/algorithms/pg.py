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
`run_interactions` runs sampled REINFORCE (tabular softmax, plain SGD) for a budget of
environment interactions, one interaction per scan step: the same algorithm, with work
proportional to the interactions (not to a padded episode length) and to a few policy
rows (not the whole table) per step.
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
                                        returns_to_go)
from dsorl.objectives import chain_objective, policy_objective, softmax_rows
from dsorl.sampling import draw, sample_episode
from dsorl.mdp import MDP
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


# ----------------------------------------------------------------------------------------
# Interaction-budgeted sampled REINFORCE, and the row-wise softmax machinery it shares with
# DynPG's sampled runs.


class BudgetState(NamedTuple):
    """`run_interactions`: logits `params[S, A]`, `pi[S, A]`, the chain `(P_pi, r_pi)`,
    gradient `steps` (episodes) completed."""

    params: Array
    pi: Array
    P_pi: Array
    r_pi: Array
    steps: Array


class BudgetTrace(NamedTuple):
    """One row per interaction `i`: `objective` `rho . V^pi` of the policy after `i + 1`
    interactions (NaN unless `evaluate`), `steps` completed by then."""

    objective: Array
    steps: Array


def run_interactions(mdp: MDP, params0: Array, hparams: HParams, key: Array, *, budget: int,
                     config: Config, reward_std: Optional[Array] = None):
    """Sampled REINFORCE for `budget` environment interactions, one per `lax.scan` step.

    The algorithm of `run` with `estimator="reinforce"`, `batch_size=1`, plain SGD
    (`optax.sgd`) and the tabular softmax (Williams 1992; the baseline of Klein et al.,
    arXiv 2411.04913): an episode (`s_0 ~ rho`, `a_t ~ pi`, at most
    `min(ceil(1/(1-gamma)), episode_length)` steps, ending in a terminal state) is played one
    interaction per scan step with `pi` fixed; when it ends,
    `theta[s_t] += eta w_t G_t (e_{a_t} - pi(.|s_t))` for its steps (`G_t` the discounted
    return from `t`, `w_t = 1` or `gamma^t` if `discount_steps`), and `pi`, `P_pi`, `r_pi`
    are updated on those rows only. An episode cut by the budget makes no update.
    Returns `(BudgetState, BudgetTrace)`; jittable, vmappable over `params0`, `hparams`, `key`.
    """
    hparams = HParams(*(jnp.asarray(x, mdp.R.dtype) for x in hparams))
    validate(mdp, hparams, config)
    _check_budget_config(config, budget)
    dtype = mdp.R.dtype
    std = jnp.zeros_like(mdp.R) if reward_std is None else jnp.asarray(reward_std, dtype)
    L = config.episode_length
    cap = jnp.minimum(episode_cap(hparams.gamma), L)
    terminal = absorbing_states(mdp)
    everything = jnp.arange(mdp.n_states)
    theta = jnp.asarray(params0, dtype)
    pi, P_pi, r_pi = softmax_rows(mdp, theta, everything)
    eta, gamma = hparams.step_size, hparams.gamma
    k_u, k_z = jax.random.split(key)
    xs = (jax.random.uniform(k_u, (budget, 3), dtype), jax.random.normal(k_z, (budget,), dtype))

    def step(carry, x):
        (theta, pi, P_pi, r_pi, steps), (t, s, states, actions, rewards) = carry
        (u_start, u_action, u_next), z = x
        s = jnp.where(t == 0, draw(mdp.rho, u_start), s)
        a = draw(pi[s], u_action)
        s_next = draw(mdp.P[s, a], u_next)
        states, actions = states.at[t].set(s), actions.at[t].set(a)
        rewards = rewards.at[t].set(mdp.R[s, a] + std[s, a] * z)
        end = terminal[s_next] | (t + 1 >= cap)
        # the update of a finished episode (all-zero otherwise): L rows, duplicates added
        alive = (jnp.arange(L) <= t) & end
        weight = jnp.where(alive, returns_to_go(jnp.where(alive, rewards, 0), gamma), 0)
        if config.discount_steps:
            weight = weight * gamma ** jnp.arange(L, dtype=dtype)
        score = jax.nn.one_hot(actions, pi.shape[-1], dtype=dtype) - pi[states]
        theta = theta.at[states].add(eta * weight[:, None] * score)
        # rows recomputed from theta even when unchanged: repeated states get equal rows
        new_pi, new_P, new_r = softmax_rows(mdp, theta[states], states)
        pi, P_pi, r_pi = pi.at[states].set(new_pi), P_pi.at[states].set(new_P), \
            r_pi.at[states].set(new_r)
        steps = steps + end
        objective = (chain_objective(mdp.rho, P_pi, r_pi, gamma, config.evaluation_sweeps)
                     if config.evaluate else jnp.full((), jnp.nan, dtype))
        episode = (jnp.where(end, 0, t + 1), s_next, states, actions, rewards)
        return ((theta, pi, P_pi, r_pi, steps), episode), BudgetTrace(objective, steps)

    episode0 = (jnp.int32(0), jnp.int32(0), jnp.zeros(L, jnp.int32), jnp.zeros(L, jnp.int32),
                jnp.zeros(L, dtype))
    carry = ((theta, pi, P_pi, r_pi, jnp.int32(0)), episode0)
    (final, _), trace = lax.scan(step, carry, xs)
    return BudgetState(*final), trace


def _check_budget_config(config: Config, budget: int) -> None:
    if budget < 1:
        raise ValueError(f"budget = {budget} must be >= 1 interaction.")
    if (config.estimator != "reinforce" or config.optimizer is not optax.sgd
            or config.batch_size != 1 or config.policy is not None):
        raise ValueError("run_interactions runs sampled REINFORCE with one episode per step,"
                         " plain SGD and the tabular softmax: use estimator='reinforce',"
                         " optimizer=optax.sgd, batch_size=1, policy=None (or use run).")
