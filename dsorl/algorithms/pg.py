"""Vanilla policy gradient: exact gradients or sampled REINFORCE, with any optax optimiser.

Maximises `J(theta) = rho . V^{pi_theta}` (discounted, rewards maximised) by
`theta <- theta + optimiser(g)` (`dsorl.optim.ascent`), where `g` is

- `estimator="exact"`: `jax.grad` of `dsorl.discounted_return` (the linear solve is
  differentiated implicitly). For the tabular softmax this is
  `dJ/dtheta[s, a] = m(s) pi(a|s) A(s, a)`, `m = rho^T (I - gamma P_pi)^{-1}`
  (Agarwal, Kakade, Lee, Mahajan 2021, Lemma C.1), the softmax PG of Mei et al. (2020)
  and Li et al. (arXiv 2102.11270);
- `estimator="natural"`: the exact natural gradient of the tabular softmax,
  `A_pi(s, a) / (1 - gamma)` (`dsorl.objectives.natural_policy_gradient`; one value solve,
  dense or sparse MDP);
- `estimator="reinforce"`: the mean over `batch_size` episodes of
  `sum_t w_t grad log pi(a_t|s_t) G_t` (`dsorl.estimators.reinforce`), episodes cut at
  `min(ceil(1 / (1 - gamma)), episode_length)` steps. With `w_t = 1` this is the baseline
  of Klein et al. (arXiv 2411.04913): loss `-sum_t log pi(a_t|s_t) G_t`, one episode
  per step, step size equal to DynPG's at horizon 6 (`dynpg_horizon_step_size`).

The algorithm contract of `dsorl.algorithms.base`: `run` is `base.run` on this module (one
`lax.scan` over `config.n_steps` steps, step `i` sampling with `fold_in(key, i)`),
vmappable over `params0`, `hparams`, `key` and the problem. `run_interactions` runs sampled
REINFORCE (tabular softmax, plain SGD) for a budget of environment interactions, one
interaction per scan step: the same algorithm, with work proportional to the interactions
(not to a padded episode length) and to a few policy rows (not the whole table) per step.

Problems: a `dsorl.MDP`, or a `dsorl.episodic.EpisodicMDP` whose `reward_std[S, A]` adds
Gaussian noise to the rewards of sampled episodes (the exact estimator and every traced
objective use the expected rewards `R`). Noise belongs to the environment, like DynPG's
problem (the same `EpisodicMDP` serves both), not to `HParams` (it is not a swept number)
nor to `Config` (an array would make the static config unhashable).
"""
import dataclasses
import sys
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax

from dsorl import _checks
from dsorl.algorithms import base
from dsorl.episodic import EpisodicMDP, check_reward_std, mdp_and_noise, problem_mdp
from dsorl.estimators.reinforce import (absorbing_states, interactions, reinforce_gradient,
                                        returns_to_go)
from dsorl.mdp import MDP
from dsorl.objectives import (chain_objective, discounted_return, natural_policy_gradient,
                              policy_objective, softmax_rows)
from dsorl.optim import ascent
from dsorl.policies import Policy, tabular_softmax
from dsorl.sampling import draw, sample_episode

__all__ = ["HParams", "Config", "State", "Trace", "episode_cap", "dynpg_horizon_step_size",
           "validate", "expected_params", "uses_key", "init", "step", "run", "BudgetState",
           "BudgetTrace", "run_interactions"]

Array = jax.Array


class HParams(NamedTuple):
    """Swept numbers (traced): discount `gamma` and the optimiser's `step_size`."""

    gamma: Array
    step_size: Array


@dataclasses.dataclass(frozen=True)
class Config:
    """Static choices. `n_steps`: gradient steps; `optimizer`: `step_size -> optax
    GradientTransformation` (wrapped in `dsorl.optim.ascent`, so it ascends); `estimator`:
    "exact", "natural" (the exact natural gradient of the default tabular softmax,
    `A_pi / (1 - gamma)`: `dsorl.objectives.natural_policy_gradient`, Kakade 2002; with SGD
    the NPG update of Agarwal et al. 2021, eq. 17) or "reinforce"; `policy`: a `dsorl.policies.Policy` (default: tabular softmax
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
    """`params`, the optimiser's state, environment `interactions` used so far (int32)."""

    params: Any
    opt_state: Any
    interactions: Array


class Trace(NamedTuple):
    """Per step, after the update: `objective` `rho . V^pi` of the new parameters (NaN unless
    `evaluate`), `interactions` used so far (this step's included), the norm of the
    gradient (estimate) applied, and `params` (with `run(..., keep_params=True)`)."""

    objective: Array
    interactions: Array
    grad_norm: Array
    params: Any = None


def episode_cap(gamma, xp=jnp):
    """`ceil(1 / (1 - gamma))`: the episode length of the authors' REINFORCE baseline."""
    return xp.ceil(1 / (1 - xp.asarray(gamma)) * (1 - 1e-12)).astype(xp.int32)


def dynpg_horizon_step_size(gamma, horizon: int = 6):
    """DynPG's step size at horizon `H`: `2 (1 - gamma) / (1 - gamma^H)` (Klein et al.'s
    baseline uses `H = 6`)."""
    return 2 * (1 - gamma) / (1 - gamma ** horizon)


def validate(problem, hparams: HParams, config: Config) -> None:
    """`ValueError` for gamma outside [0, 1), a non-positive step size, an action mask that
    leaves a state without actions, reward noise (`EpisodicMDP.reward_std`) not `[S, A]`,
    negative or non-finite, or bad static choices (concrete values only); `TypeError` for
    a problem that is neither an `MDP` nor an `EpisodicMDP`."""
    mdp = problem_mdp(problem)
    base.check_discount(hparams.gamma)
    base.check_positive("step_size", hparams.step_size)
    check_reward_std(problem)
    if config.estimator not in ("exact", "natural", "reinforce"):
        raise ValueError("estimator must be 'exact', 'natural' or 'reinforce', got"
                         f" {config.estimator!r}.")
    if config.estimator == "natural" and config.policy is not None:
        raise ValueError("the natural estimator is the closed form A / (1 - gamma) of the"
                         " tabular softmax: leave config.policy None (the default policy).")
    if config.estimator == "reinforce" and config.episode_length < 1:
        raise ValueError("REINFORCE needs a static episode_length >= 1 (the scan length;"
                         " the cap ceil(1/(1-gamma)) is applied within it).")
    if config.batch_size < 1:
        raise ValueError(f"batch_size = {config.batch_size} must be >= 1 episode.")
    if config.evaluation_sweeps is not None and config.evaluation_sweeps < 1:
        raise ValueError(f"evaluation_sweeps = {config.evaluation_sweeps} must be >= 1 (or"
                         " None: a linear solve).")
    _checks.check_actions_available(mdp.action_mask)


def expected_params(problem, config: Config):
    """Shape of `params0`: `(S, A)` for the default tabular softmax, else that of
    `config.policy.init()` (None when the policy has no `init`)."""
    if config.policy is None:
        return tuple(problem_mdp(problem).R.shape)
    init = getattr(config.policy, "init", None)
    if init is None:
        return None
    try:
        shapes = jax.eval_shape(init)
    except TypeError:  # an init that needs arguments: no statement
        return None
    return jax.tree_util.tree_map(lambda x: tuple(x.shape), shapes)


def uses_key(config: Config) -> bool:
    """Only sampled REINFORCE draws random numbers."""
    return config.estimator == "reinforce"


def _policy(mdp: MDP, config: Config) -> Policy:
    return config.policy or tabular_softmax(*mdp.R.shape, mdp.action_mask)


def _optimizer(hparams: HParams, config: Config):
    return ascent(config.optimizer(hparams.step_size))


def init(problem, params0, hparams: HParams, key: Array, *, config: Config) -> State:
    """The state before the first step (`key` unused: every step gets its own)."""
    del problem, key
    return State(params0, _optimizer(hparams, config).init(params0), jnp.int32(0))


def step(problem, state: State, hparams: HParams, key: Array, *, config: Config):
    """One gradient step -> `(State, Trace row)`; REINFORCE samples its episodes with `key`."""
    mdp = problem_mdp(problem)
    policy = _policy(mdp, config)
    gamma = hparams.gamma
    if config.estimator == "exact":
        grad = jax.grad(lambda p: discounted_return(mdp, policy.probs(p), gamma))(state.params)
        used = jnp.int32(0)
    elif config.estimator == "natural":
        grad = natural_policy_gradient(mdp, policy.probs(state.params), gamma)
        used = jnp.int32(0)
    else:
        pi = policy.probs(state.params)
        std = problem.reward_std if isinstance(problem, EpisodicMDP) else None
        length = jnp.minimum(episode_cap(gamma), config.episode_length)
        episodes = jax.vmap(lambda k: sample_episode(
            k, mdp, lambda t, s: pi[s], config.episode_length, reward_std=std)
        )(jax.random.split(key, config.batch_size))
        grads = jax.vmap(lambda ep: reinforce_gradient(
            policy.log_probs, state.params, ep, gamma, length=length,
            discount_steps=config.discount_steps))(episodes)
        grad = jax.tree_util.tree_map(lambda g: jnp.mean(g, axis=0), grads)
        terminal = absorbing_states(mdp)
        used = jnp.sum(jax.vmap(lambda ep: interactions(ep, terminal, length))(episodes),
                       dtype=jnp.int32)
    updates, opt_state = _optimizer(hparams, config).update(grad, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    objective = (policy_objective(mdp, policy.probs(params), gamma, config.evaluation_sweeps)
                 if config.evaluate else base.nan_like(mdp.R.dtype))
    new = State(params, opt_state, state.interactions + used)
    return new, Trace(objective, new.interactions, base.tree_norm(grad))


def run(problem, params0, hparams: HParams, key: Optional[Array] = None, *, config: Config,
        keep_params: bool = False):
    """`config.n_steps` steps of vanilla PG (`dsorl.algorithms.base.run`) -> `(State, Trace)`.

    `problem`: an `MDP` or `EpisodicMDP`; `params0`: initial parameters of `config.policy`
    (tabular softmax: `[S, A]`, zeros = uniform); `key`: a `jax.random` key (REINFORCE
    only; the exact gradient takes None).
    """
    return base.run(sys.modules[__name__], problem, params0, hparams, key, config=config,
                    keep_params=keep_params)


# ----------------------------------------------------------------------------------------
# Interaction-budgeted sampled REINFORCE (one interaction per scan step).


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


def run_interactions(problem, params0: Array, hparams: HParams, key: Array, *, budget: int,
                     config: Config):
    """Sampled REINFORCE for `budget` environment interactions, one per `lax.scan` step.

    The algorithm of `run` with `estimator="reinforce"`, `batch_size=1`, plain SGD
    (`optax.sgd`) and the tabular softmax (Williams 1992; the baseline of Klein et al.,
    arXiv 2411.04913): an episode (`s_0 ~ rho`, `a_t ~ pi`, at most
    `min(ceil(1/(1-gamma)), episode_length)` steps, ending in a terminal state) is played one
    interaction per scan step with `pi` fixed; when it ends,
    `theta[s_t] += step_size w_t G_t (e_{a_t} - pi(.|s_t))` for its steps (`G_t` the
    discounted return from `t`, `w_t = 1` or `gamma^t` if `discount_steps`, rewards with
    the noise of an `EpisodicMDP` problem), and `pi`, `P_pi`, `r_pi` are updated on those rows only. An
    episode cut by the budget makes no update.

    Why not `run`: its scan step is one gradient step, whose interactions vary (1 to
    `episode_length`), so the policy after each interaction (the x-axis of Klein et al.'s
    success curves) and an exact interaction budget need a scan over interactions;
    `config.n_steps` is ignored (`budget` counts the work). Validation is `validate`'s,
    plus `_check_budget_config`. Random numbers: `k_u, k_z = split(key)`, uniforms
    `u[budget, 3] = uniform(k_u)` (start state, action, next state, each by
    `dsorl.sampling.draw`), normals `z[budget] = normal(k_z)` (reward noise).
    Returns `(BudgetState, BudgetTrace)`; jittable, vmappable over `params0`, `hparams`,
    `key` and the MDP.
    """
    dtype = base.problem_dtype(problem, params0)
    hparams = base.coerce_hparams(hparams, dtype, HParams)
    theta = jnp.asarray(params0, dtype)
    base.check_params0(theta, expected_params(problem, config))
    validate(problem, hparams, config)
    _check_budget_config(config, budget)
    mdp, std = mdp_and_noise(problem)
    L = config.episode_length
    cap = jnp.minimum(episode_cap(hparams.gamma), L)
    terminal = absorbing_states(mdp)
    pi, P_pi, r_pi = softmax_rows(mdp, theta, jnp.arange(mdp.n_states))
    eta, gamma = hparams.step_size, hparams.gamma
    k_u, k_z = jax.random.split(key)
    xs = (jax.random.uniform(k_u, (budget, 3), dtype), jax.random.normal(k_z, (budget,), dtype))

    def interact(carry, x):
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
                     if config.evaluate else base.nan_like(dtype))
        episode = (jnp.where(end, 0, t + 1), s_next, states, actions, rewards)
        return ((theta, pi, P_pi, r_pi, steps), episode), BudgetTrace(objective, steps)

    episode0 = (jnp.int32(0), jnp.int32(0), jnp.zeros(L, jnp.int32), jnp.zeros(L, jnp.int32),
                jnp.zeros(L, dtype))
    carry = ((theta, pi, P_pi, r_pi, jnp.int32(0)), episode0)
    (final, _), trace = lax.scan(interact, carry, xs)
    return BudgetState(*final), trace


def _check_budget_config(config: Config, budget: int) -> None:
    """What `run_interactions` needs beyond `validate`: a budget and its fixed variant."""
    if budget < 1:
        raise ValueError(f"budget = {budget} must be >= 1 interaction.")
    if (config.estimator != "reinforce" or config.optimizer is not optax.sgd
            or config.batch_size != 1 or config.policy is not None):
        raise ValueError("run_interactions runs sampled REINFORCE with one episode per step,"
                         " plain SGD and the tabular softmax: use estimator='reinforce',"
                         " optimizer=optax.sgd, batch_size=1, policy=None (or use run).")
