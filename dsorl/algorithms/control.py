"""Policy gradients on sampled episodes of JAX control environments, with neural policies:
REINFORCE with a baseline, DSO's Algorithm 1 and Proximal Chain Optimisation (PCO).

Todorov, "Dynamical System Optimization" (arXiv 2506.08340); docs/design.md §9.1. The
problem is a `dsorl.rollouts.ControlProblem` (a gymnax-style environment:
`dsorl.envs.gymnax_control.make("CartPole-v1")`), the policy a `dsorl.networks` policy and
the baseline a `dsorl.networks.ValueMLP` (or None: no baseline), all in the static
`Config`. Each step collects one batch, `config.n_envs` copies of the environment for
`config.n_rollout` steps (the copies run on across batches, `dsorl.rollouts.collect`), and
accumulates returns backwards, `G_t = r_t + gamma (1 - done_t) G_{t+1}`, bootstrapped
with the fitted value `v_hat` at the cut.

**The marginal mapping.** DSO treats the closed loop as a chain `P_theta(x'|x)`. Take as
chain state the pair `x_t = (s_t, a_t)`: then `P_theta(x_{t+1}|x_t) = P(s_{t+1}|s_t, a_t)
pi_theta(a_{t+1}|s_{t+1})`, so `grad log P_theta(x_{t+1}|x_t) = grad log pi_theta(a_{t+1}|
s_{t+1})` and the chain-transition ratio of a step is the policy ratio
`pi_theta(a|s) / pi_alpha(a|s)`; rewards `r(s, a)` and the initial law do not depend on
`theta` (their terms of Algorithm 1 vanish except the first action's, which is the `t = 0`
score term). Algorithm 1 is then

    g = (1/N) sum_n sum_t gamma^t grad log pi_theta(a_t|s_t) (G_t - v_hat(s_t)),

unbiased for the gradient of `J = E sum_t gamma^t r_t` for every `v_hat` (up to the
bootstrap at the cut, exact when `v_hat = v`); `v_hat` is refitted on each batch after
the policy step (`config.value_epochs` optimiser steps on the squared error to `G_t`), so
the baseline of batch `k` was fitted on batches before it.

- `DSO` (`dso`): one optimiser step along Algorithm 1 per batch (`gamma^t` weights).
- `REINFORCE` (`reinforce`): the plain reference, the same estimator with the weights
  `gamma^t` dropped (`discount_weights=False`, the common practice: its expectation is
  not the gradient of `J`, Nota & Thomas 2020, but it weighs late steps like early ones).
- `NATURAL_DSO` (`natural_dso`): one step along the natural gradient `(F + lambda I)^{-1}
  g`, `g` Algorithm 1's estimate and `F` the chain Fisher estimated from the same batch.
  Under the marginal mapping the chain Fisher (`dsorl.chain_models.fisher`)
  `F = E_P0[grad log P0 grad log P0^T] + sum_x m(x) E_{x'|x}[grad log P grad log P^T]`,
  `m` the discounted occupancy of the non-terminal chain states, weighs the score
  outer product `psi_t psi_t^T` (`psi_t = grad log pi(a_t|s_t)`) of step `t` by `1` at
  `t = 0` and by `gamma^{t-1}` after (the transition into `x_t` leaves `x_{t-1}`, whose
  occupancy weight is `gamma^{t-1}`): `F_hat = (1/N) sum_{n,t} c_t psi_t psi_t^T`
  (`fisher_weights`). `F_hat` is never formed: `config.cg_iters` conjugate-gradient
  iterations solve the damped system (`hparams.damping` = lambda > 0) with
  Fisher-vector products `F_hat v = (1/N) sum c_t psi_t (psi_t . v)`, one `jvp` and one
  `vjp` of the batch's log-probabilities (`fisher_vector_product`). The solve of the
  sampled system is consistent, not unbiased (a ratio of estimates); the default
  optimiser is plain SGD along the direction.
- `PCO` (`pco`): `config.epochs` passes over the batch in `config.n_minibatches`
  minibatches, each an optimiser step on the clipped surrogate
  `(1/N) sum w_t min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)`, `rho_t` the policy
  ratio to the anchor `alpha = theta_k` that sampled the batch, `A_t = G_t - v_hat(s_t)`,
  `w_t = gamma^t`. At `theta = alpha` (no clip active) its gradient is Algorithm 1's.
  This is on-chain PCO (`config.n_behaviour = 1`, the default).
- Off-chain PCO (`PCO` with `config.n_behaviour = M > 1`): the surrogate `S(theta, alpha)`
  estimated from samples of chains other than the anchor's, in the form of GePPO
  (Queeney, Paschalidis & Cassandras, "Generalized Proximal Policy Optimization with
  Sample Reuse", NeurIPS 2021). The state keeps a replay of the last `M` batches, batch
  `i` (`i` steps old) sampled by the behaviour `beta_i = theta_{k-i}` and stored with its
  log-probabilities (`Replay`). Each step optimises, over all of them (uniform weights; at
  the start only the batches collected so far),

      (1/(M N)) sum_i sum_t w_t min(r_t A_t, clip(r_t, c_t - eps, c_t + eps) A_t),
      r_t = pi_theta(a_t|s_t) / beta_i(a_t|s_t),   c_t = pi_alpha(a_t|s_t) / beta_i(a_t|s_t),

  (`offchain_surrogate`): the ratio to the behaviour is clipped around the anchor's, so the
  surrogate gives no incentive to move `pi_theta / beta_i` more than `eps` away from
  `pi_alpha / beta_i` (with `beta = alpha`: on-chain PCO's clip). The anchor's advantages
  come from the behaviour's data by V-trace (Espeholt et al. 2018) with truncated
  importance weights `c_t = min(c_bar, pi_alpha / beta)` (`hparams.trace_clip` = `c_bar`,
  1 by default as in GePPO; `inf`: untruncated):
  `A_t = delta_t + gamma (1 - done_t) c_{t+1} A_{t+1}`, `delta_t = r_t + gamma (1 -
  done_t) v_hat(s_{t+1}) - v_hat(s_t)`, the value refitted to the V-trace targets `v_hat(s_t)
  + c_t A_t` of the whole replay (`prepare_offchain`). With `beta = alpha` both reduce to
  on-chain PCO's `G_t - v_hat(s_t)` and `G_t`. **What it estimates, and its bias**: at
  `theta = alpha` the gradient's expectation is `sum_t w_t sum_s d^beta_t(s) sum_a grad
  pi_alpha(a|s) A_bar_t(s, a)`: the actions are reweighted to the anchor exactly, but the
  states come from the behaviour's occupancy `d^beta_t`, not the anchor's (GePPO's
  choice: correcting it needs products of ratios along whole episodes, whose variance
  grows with their length; GePPO's generalised policy improvement lower bound charges the
  mismatch to the total variation to each behaviour, which the clip keeps small), and
  `A_bar_t = E[A_t | s_t, a_t]` is the anchor's advantage `Q^alpha_t - v_hat` only when
  `c_bar = inf` (truncation trades that for variance: V-trace's fixed point is the value
  of a policy between behaviour and anchor). tests/test_control.py checks this expectation
  exactly on a finite MDP. GePPO's code also scales `eps` down from PPO's and adapts the
  step size to the measured ratio spread; here both are plain hyperparameters.

An optax optimiser (`config.optimizer(step_size)`, default Adam, with global-norm clipping
at `config.max_grad_norm`) drives the policy and another (`config.value_optimizer`) the
value; both states are carried across batches. Everything is one `lax.scan`
(`dsorl.algorithms.base.run`), `jit`table end to end and `vmap`pable over `params0`,
`hparams` (gamma, step sizes, clip) and keys: 16 seeds are one `vmap` over keys.

Trace rows (after each batch): `episode_return` (mean undiscounted return of the training
episodes that ended in the batch, NaN if none), `interactions` (environment steps so
far), `grad_norm` (of the step's direction: Algorithm 1's estimate, the natural direction, or
PCO's first minibatch gradient), `value_loss` (before the refit), `clip_fraction` (PCO: share of the
batch whose ratio left `[1 - eps, 1 + eps]` after the epochs, off-chain the replay's share
with `|r - c| > eps`; NaN otherwise), `params`. Off-chain, `episode_return` and `value_loss`
are the newest batch's.
"""
import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from dsorl import _checks
from dsorl.algorithms import base
from dsorl.optim import ascent
from dsorl.rollouts import (ControlProblem, RolloutState, Transitions, collect,
                            discounted_returns, episode_weights, start)

Array = jax.Array

__all__ = ["HParams", "NaturalHParams", "PCOHParams", "Config", "ReinforceConfig",
           "NaturalConfig", "PCOConfig", "State", "Trace", "Batch", "prepare",
           "policy_gradient", "fisher_weights", "fisher_vector_product", "natural_gradient",
           "clipped_surrogate", "prepare_offchain", "offchain_surrogate", "Replay",
           "offchain_pco_step", "REINFORCE", "DSO", "NATURAL_DSO", "PCO", "reinforce", "dso",
           "natural_dso", "pco"]


class HParams(NamedTuple):
    """Traced: discount `gamma`, policy `step_size`, `value_step_size`."""

    gamma: Array
    step_size: Array
    value_step_size: Array = 1e-3


class NaturalHParams(NamedTuple):
    """Traced: as `HParams`, and the Fisher `damping` lambda (> 0)."""

    gamma: Array
    step_size: Array
    value_step_size: Array = 1e-3
    damping: Array = 0.1


class PCOHParams(NamedTuple):
    """Traced: as `HParams`, the ratio `clip` epsilon (`inf`: unclipped) and, off-chain,
    V-trace's importance-weight truncation `trace_clip` (`c_bar` > 0, `inf`: none)."""

    gamma: Array
    step_size: Array
    value_step_size: Array = 1e-3
    clip: Array = 0.2
    trace_clip: Array = 1.0


@dataclasses.dataclass(frozen=True)
class Config:
    """Static: `n_steps` batches; `policy` (`dsorl.networks`) and `value` (a `ValueMLP`,
    or None for no baseline); `n_envs` copies x `n_rollout` steps per batch; `optimizer`
    and `value_optimizer` (`step_size -> optax transformation`); `max_grad_norm` (global
    norm clipping of the policy gradient, `inf`: none); `value_epochs` (value fit steps per
    batch); `discount_weights`: weigh step `t` by `gamma^t` (Algorithm 1)."""

    n_steps: int
    policy: Any
    value: Any = None
    n_envs: int = 8
    n_rollout: int = 128
    optimizer: Callable = optax.adam
    value_optimizer: Callable = optax.adam
    max_grad_norm: float = math.inf
    value_epochs: int = 10
    discount_weights: bool = True


@dataclasses.dataclass(frozen=True)
class ReinforceConfig(Config):
    """`Config` with the plain reference's undiscounted weights by default."""

    discount_weights: bool = False


@dataclasses.dataclass(frozen=True)
class NaturalConfig(Config):
    """`Config` with `cg_iters` conjugate-gradient iterations per natural direction and
    plain SGD along it by default."""

    optimizer: Callable = optax.sgd
    cg_iters: int = 10


@dataclasses.dataclass(frozen=True)
class PCOConfig(Config):
    """`Config` and `epochs` passes over each batch in `n_minibatches` minibatches
    (`n_envs * n_rollout` must divide by it); `n_behaviour`: 1 for on-chain PCO, `M > 1`
    for off-chain PCO on a replay of the last `M` batches (then the minibatches split the
    whole replay, `M * n_envs * n_rollout`, and the value is fitted on all of it)."""

    epochs: int = 4
    n_minibatches: int = 4
    n_behaviour: int = 1


class Replay(NamedTuple):
    """Off-chain PCO's last `M` batches: `transitions` with a leading axis `[M, T, N, ...]`
    (slot `i` collected `i` steps ago, `log_prob` its behaviour's) and `filled[M]` (bool:
    the slot holds a batch; the first `M - 1` steps have fewer)."""

    transitions: Transitions
    filled: Array


class State(NamedTuple):
    """`params` (policy), `value_params` (None without a baseline), both optimiser states,
    the running environment copies, the `interactions` so far (int32) and off-chain PCO's
    `replay` (None otherwise)."""

    params: Any
    value_params: Any
    opt_state: Any
    value_opt_state: Any
    rollout: RolloutState
    interactions: Array
    replay: Any = None


class Trace(NamedTuple):
    """Per batch, after its update (see the module docstring)."""

    episode_return: Array
    interactions: Array
    grad_norm: Array
    value_loss: Array
    clip_fraction: Array
    params: Any = None


class Batch(NamedTuple):
    """A collected batch prepared for the estimators: `transitions` (`[T, N, ...]`),
    returns `G[T, N]`, `advantage = G - v_hat(s)`, weights `w[T, N]`."""

    transitions: Transitions
    returns: Array
    advantage: Array
    weight: Array


# ----------------------------------------------------------------------------------------
# Estimators (pure functions of a batch)


def _value(config: Config, value_params, obs, batch_shape, dtype) -> Array:
    if config.value is None:
        return jnp.zeros(batch_shape, dtype)
    return config.value(value_params, obs).astype(dtype)


def prepare(transitions: Transitions, v: Array, v_last: Array, gamma, discount: bool) -> Batch:
    """Backward accumulation of `transitions` with the baseline values `v[T, N]` at the
    visited observations and `v_last[N]` at the cut (the bootstrap)."""
    G = discounted_returns(transitions.reward, transitions.done, v_last, gamma)
    return Batch(transitions, G, G - v, episode_weights(transitions.time, gamma, discount))


def policy_gradient(policy, params, batch: Batch):
    """Algorithm 1 under the marginal mapping (or REINFORCE, by the batch's weights):
    `(1/N) sum_{n,t} w_t grad log pi(a_t|s_t) A_t`, a pytree like `params`."""
    tr = batch.transitions
    coef = lax.stop_gradient(batch.weight * batch.advantage)
    n = tr.reward.shape[1]
    return jax.grad(lambda th: jnp.sum(coef * policy.log_prob(th, tr.obs, tr.action)) / n)(params)


def fisher_weights(time: Array, gamma) -> Array:
    """The chain Fisher's weight of step `t`'s score outer product under the marginal
    mapping: `1` at `t = 0` (the initial law), `gamma^{t-1}` after."""
    gamma = jnp.asarray(gamma)
    t = time.astype(gamma.dtype)
    return jnp.where(time == 0, jnp.ones_like(t), gamma ** jnp.maximum(t - 1, 0))


def fisher_vector_product(policy, params, transitions: Transitions, weight: Array, v):
    """`F_hat v = (1/N) sum_{n,t} weight_t psi_t (psi_t . v)`, `psi_t = grad log
    pi(a_t|s_t)` over the batch's `transitions` (`[T, N]`), `v` a pytree like `params`:
    one `jvp` (the projections `psi . v`) and one `vjp`, no Fisher matrix."""
    log_pi = lambda th: policy.log_prob(th, transitions.obs, transitions.action)
    _, proj = jax.jvp(log_pi, (params,), (v,))
    _, back = jax.vjp(log_pi, params)
    n = transitions.reward.shape[1]
    return back((lax.stop_gradient(weight) * proj / n).astype(proj.dtype))[0]


def natural_gradient(policy, params, batch: Batch, fisher_weight: Array, damping,
                     cg_iters: int):
    """`(F_hat + damping I)^{-1} g` by `cg_iters` conjugate-gradient iterations (from 0),
    `g = policy_gradient(policy, params, batch)` and `F_hat` the sampled chain Fisher
    with per-step weights `fisher_weight[T, N]` (`fisher_weights`)."""
    g = policy_gradient(policy, params, batch)
    matvec = lambda v: jax.tree_util.tree_map(
        lambda f, x: f + damping * x,
        fisher_vector_product(policy, params, batch.transitions, fisher_weight, v), v)
    x, _ = jax.scipy.sparse.linalg.cg(matvec, g, tol=0.0, atol=0.0, maxiter=cg_iters)
    return x


def _pessimistic(log_ratio, coef, clip):
    ratio = jnp.exp(log_ratio)
    return jnp.minimum(ratio * coef, jnp.clip(ratio, 1 - clip, 1 + clip) * coef)


def clipped_surrogate(policy, params, obs, action, log_prob_old, coef, clip, scale) -> Array:
    """`scale * sum min(rho coef, clip(rho, 1 - eps, 1 + eps) coef)`, `rho = pi_theta(a|s) /
    pi_alpha(a|s)` from the anchor's `log_prob_old`, `coef = w A` (`w >= 0`), `eps = clip`."""
    log_ratio = policy.log_prob(params, obs, action) - log_prob_old
    return scale * jnp.sum(_pessimistic(log_ratio, coef, clip))


def prepare_offchain(transitions: Transitions, v: Array, v_last: Array,
                     log_prob_anchor: Array, gamma, trace_clip, discount: bool) -> Batch:
    """A batch of a behaviour `beta` (`transitions.log_prob`) prepared for the anchor
    `alpha` (`log_prob_anchor[T, N]`, `log pi_alpha(a_t|s_t)`) by V-trace with truncated
    weights `c_t = min(trace_clip, pi_alpha / beta)`: `advantage` `A_t = delta_t + gamma
    (1 - done_t) c_{t+1} A_{t+1}` (`A` after the cut is 0: the bootstrap `v_last` ends it),
    `returns` the value targets `v_t + c_t A_t`, `weight` as in `prepare`."""
    c = jnp.minimum(trace_clip, jnp.exp(log_prob_anchor - transitions.log_prob))
    gamma = jnp.asarray(gamma, v.dtype)
    live = gamma * (1 - transitions.done.astype(v.dtype))
    v_next = jnp.concatenate([v[1:], v_last[None]])
    delta = transitions.reward + live * v_next - v
    c_next = jnp.concatenate([c[1:], jnp.zeros_like(c[:1])])

    def back(A_next, inputs):
        d, l, cn = inputs
        A = d + l * cn * A_next
        return A, A

    _, A = lax.scan(back, jnp.zeros_like(v_last), (delta, live, c_next), reverse=True)
    return Batch(transitions, v + c * A, A,
                 episode_weights(transitions.time, gamma, discount))


def offchain_surrogate(policy, params, obs, action, log_prob_behaviour, log_prob_anchor,
                       coef, clip, scale) -> Array:
    """GePPO's surrogate `scale * sum min(r coef, clip(r, c - eps, c + eps) coef)`, `r =
    pi_theta(a|s) / beta(a|s)` and `c = pi_alpha(a|s) / beta(a|s)` from the behaviour's
    `log_prob_behaviour` and the anchor's `log_prob_anchor`; `eps = clip`. With `beta =
    alpha` it is `clipped_surrogate`."""
    ratio = jnp.exp(policy.log_prob(params, obs, action) - log_prob_behaviour)
    centre = jnp.exp(log_prob_anchor - log_prob_behaviour)
    return scale * jnp.sum(jnp.minimum(
        ratio * coef, jnp.clip(ratio, centre - clip, centre + clip) * coef))


# ----------------------------------------------------------------------------------------
# The contract


def _counts(config: Config, **extra) -> None:
    for name in ("n_envs", "n_rollout", "value_epochs") + tuple(extra):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"config.{name} = {value!r} must be an int >= 1.")


def validate(problem, hparams, config: Config) -> None:
    """`ValueError` naming the offending argument: a problem that is not a
    `ControlProblem`, a policy that cannot act in its action space (a categorical policy on
    real actions) or reads other observations, gamma outside [0, 1), non-positive step
    sizes, clip, counts, `max_grad_norm`; PCO's batch (off-chain: replay) not divisible
    into minibatches, `n_behaviour` < 1, `trace_clip` <= 0."""
    if not isinstance(problem, ControlProblem):
        raise ValueError(f"problem must be a dsorl.rollouts.ControlProblem (e.g."
                         f" dsorl.envs.gymnax_control.make('CartPole-v1')), got"
                         f" {type(problem).__name__}.")
    policy = config.policy
    if not callable(getattr(policy, "check_space", None)):
        raise ValueError(f"config.policy must be a dsorl.networks policy, got {policy!r}.")
    policy.check_space(problem.action_space)
    for what, net in (("policy", policy), ("value", config.value)):
        if net is not None and tuple(net.observation_shape) != problem.observation_shape:
            raise ValueError(f"config.{what} reads observations of shape"
                             f" {tuple(net.observation_shape)}, {problem.name} has"
                             f" {problem.observation_shape}.")
    base.check_discount(hparams.gamma)
    base.check_positive("step_size", hparams.step_size)
    base.check_positive("value_step_size", hparams.value_step_size)
    if not config.max_grad_norm > 0:
        raise ValueError(f"config.max_grad_norm = {config.max_grad_norm!r} must be > 0"
                         " (inf: no clipping).")
    if isinstance(config, NaturalConfig):
        _counts(config, cg_iters=None)
        if _checks.is_concrete(hparams.damping) and not np.all(np.asarray(hparams.damping) > 0):
            raise ValueError(f"damping = {hparams.damping} must be > 0 (the sampled Fisher"
                             " is singular whenever the batch has fewer steps than parameters).")
    elif isinstance(config, PCOConfig):
        _counts(config, epochs=None, n_minibatches=None, n_behaviour=None)
        size, what = config.n_envs * config.n_rollout, "batch n_envs * n_rollout"
        if config.n_behaviour > 1:
            size, what = config.n_behaviour * size, "replay n_behaviour * n_envs * n_rollout"
        if size % config.n_minibatches:
            raise ValueError(f"config.n_minibatches = {config.n_minibatches} must divide the"
                             f" {what} = {size}.")
        if _checks.is_concrete(hparams.clip) and not np.all(np.asarray(hparams.clip) > 0):
            raise ValueError(f"clip = {hparams.clip} must be > 0 (inf: no clipping).")
        if (_checks.is_concrete(hparams.trace_clip)
                and not np.all(np.asarray(hparams.trace_clip) > 0)):
            raise ValueError(f"trace_clip = {hparams.trace_clip} must be > 0 (V-trace's"
                             " truncation of the importance weights; inf: none).")
    else:
        _counts(config)


def expected_params(problem, config: Config):
    """The shapes of `config.policy.init(key)`."""
    shapes = jax.eval_shape(lambda: config.policy.init(jax.random.key(0)))
    return jax.tree_util.tree_map(lambda x: tuple(x.shape), shapes)


def _policy_tx(hparams, config: Config):
    tx = config.optimizer(hparams.step_size)
    if math.isfinite(config.max_grad_norm):
        tx = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), tx)
    return ascent(tx)


def _value_tx(hparams, config: Config):
    return config.value_optimizer(hparams.value_step_size)


def init(problem, params0, hparams, key, *, config: Config, policy_tx=None) -> State:
    """Value parameters from `fold_in(key, 0)`, the environment copies from
    `fold_in(key, 1)`; optimiser states. `policy_tx`: the policy's optax transformation
    (default `config.optimizer(hparams.step_size)` with the gradient clipping; the
    mean-field method passes its Langevin step)."""
    dtype = base.problem_dtype(None, params0)
    value_params = (None if config.value is None
                    else config.value.init(jax.random.fold_in(key, 0), dtype))
    value_opt = None if value_params is None else _value_tx(hparams, config).init(value_params)
    rollout = start(problem, jax.random.fold_in(key, 1), config.n_envs, dtype)
    replay = None
    if getattr(config, "n_behaviour", 1) > 1:
        replay = _empty_replay(problem, params0, rollout, config)
    policy_tx = _policy_tx(hparams, config) if policy_tx is None else policy_tx
    return State(params0, value_params, policy_tx.init(params0), value_opt, rollout,
                 jnp.int32(0), replay)


def _empty_replay(problem, params0, rollout: RolloutState, config: PCOConfig) -> Replay:
    """`n_behaviour` zero slots shaped like one batch of `collect`, none filled."""
    shapes = jax.eval_shape(lambda: collect(
        problem, lambda obs, k: config.policy.sample(params0, obs, k), rollout,
        jax.random.key(0), config.n_rollout)[1])
    m = config.n_behaviour
    return Replay(jax.tree_util.tree_map(lambda s: jnp.zeros((m,) + s.shape, s.dtype), shapes),
                  jnp.zeros(m, bool))


def _push(replay: Replay, tr: Transitions) -> Replay:
    """The newest batch into slot 0, every other one slot older; the oldest drops out."""
    shift = lambda buf, new: jnp.concatenate([new[None].astype(buf.dtype), buf[:-1]])
    return Replay(jax.tree_util.tree_map(shift, replay.transitions, tr),
                  jnp.concatenate([jnp.ones(1, bool), replay.filled[:-1]]))


def _collect(problem, state: State, hparams, key, config: Config):
    """One batch from the current policy, with its baseline values and returns."""
    policy, params = config.policy, lax.stop_gradient(state.params)
    dtype = state.rollout.episode_return.dtype
    rollout, tr = collect(problem, lambda obs, k: policy.sample(params, obs, k),
                          state.rollout, key, config.n_rollout)
    v = _value(config, state.value_params, tr.obs, tr.reward.shape, dtype)
    v_last = _value(config, state.value_params, tr.last_obs, tr.reward.shape[1:], dtype)
    return rollout, prepare(tr, v, v_last, hparams.gamma, config.discount_weights), v


def _fit_value(state: State, batch: Batch, hparams, config: Config, mask=None):
    """`value_epochs` full-batch steps on `mean (v(s_t) - G_t)^2` (over the entries where
    `mask`, if given); `(params, opt_state)`."""
    if config.value is None:
        return None, None
    obs, target = batch.transitions.obs, lax.stop_gradient(batch.returns)
    tx = _value_tx(hparams, config)
    if mask is None:
        loss = lambda phi: jnp.mean((config.value(phi, obs) - target) ** 2)
    else:
        loss = lambda phi: (jnp.sum(jnp.where(mask, (config.value(phi, obs) - target) ** 2, 0))
                            / jnp.sum(mask))

    def one(carry, _):
        phi, opt = carry
        updates, opt = tx.update(jax.grad(loss)(phi), opt, phi)
        return (optax.apply_updates(phi, updates), opt), None

    (phi, opt), _ = lax.scan(one, (state.value_params, state.value_opt_state), None,
                             length=config.value_epochs)
    return phi, opt


def _episode_return(tr: Transitions) -> Array:
    count = jnp.sum(tr.done)
    total = jnp.sum(tr.finished_return)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)


def _finish(problem, state, params, opt_state, rollout, batch, v, hparams, config,
            grad_norm, clip_fraction, fit=None, replay=None):
    """The new state and trace row; `fit`: the refitted `(value params, opt state)`
    (default: fitted on `batch`), `replay`: off-chain PCO's."""
    value_loss = jnp.mean((v - batch.returns) ** 2)
    phi, value_opt = _fit_value(state, batch, hparams, config) if fit is None else fit
    used = state.interactions + config.n_envs * config.n_rollout
    new = State(params, phi, opt_state, value_opt, rollout, jnp.asarray(used, jnp.int32),
                replay)
    dtype = batch.returns.dtype
    return new, Trace(_episode_return(batch.transitions).astype(dtype), new.interactions,
                      grad_norm.astype(dtype), value_loss, clip_fraction.astype(dtype))


def gradient_step(problem, state: State, hparams, key, *, config: Config):
    """One batch, one optimiser step along `policy_gradient` (DSO / REINFORCE)."""
    rollout, batch, v = _collect(problem, state, hparams, key, config)
    grad = policy_gradient(config.policy, state.params, batch)
    updates, opt_state = _policy_tx(hparams, config).update(grad, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return _finish(problem, state, params, opt_state, rollout, batch, v, hparams, config,
                   base.tree_norm(grad), base.nan_like(batch.returns.dtype))


def natural_step(problem, state: State, hparams: NaturalHParams, key, *,
                 config: NaturalConfig):
    """One batch, one optimiser step along `natural_gradient` (natural DSO)."""
    rollout, batch, v = _collect(problem, state, hparams, key, config)
    weight = fisher_weights(batch.transitions.time, hparams.gamma)
    direction = natural_gradient(config.policy, state.params, batch, weight, hparams.damping,
                                 config.cg_iters)
    updates, opt_state = _policy_tx(hparams, config).update(direction, state.opt_state,
                                                            state.params)
    params = optax.apply_updates(state.params, updates)
    return _finish(problem, state, params, opt_state, rollout, batch, v, hparams, config,
                   base.tree_norm(direction), base.nan_like(batch.returns.dtype))


def pco_step(problem, state: State, hparams: PCOHParams, key, *, config: PCOConfig):
    """One batch from the anchor `alpha = theta_k`, then `epochs` x `n_minibatches`
    optimiser steps on the clipped surrogate (permutations from the second half of
    `split(key)`); off-chain (`n_behaviour > 1`): `offchain_pco_step`."""
    if config.n_behaviour > 1:
        return offchain_pco_step(problem, state, hparams, key, config=config)
    k_collect, k_perm = jax.random.split(key)
    rollout, batch, v = _collect(problem, state, hparams, k_collect, config)
    tr = batch.transitions
    T, N = tr.reward.shape
    size, m = T * N, config.n_minibatches
    flat = lambda x: x.reshape((size,) + x.shape[2:])
    obs, action, logp_old = flat(tr.obs), flat(tr.action), flat(tr.log_prob)
    coef = flat(lax.stop_gradient(batch.weight * batch.advantage))
    scale = m / N  # a minibatch's sum, scaled to estimate (1/N) sum over the whole batch
    surrogate_grad = lambda theta, idx: jax.grad(clipped_surrogate, argnums=1)(
        config.policy, theta, obs[idx], action[idx], logp_old[idx], coef[idx], hparams.clip,
        scale)
    params, opt_state, grad_norm = _minibatch_epochs(surrogate_grad, state, hparams, k_perm,
                                                     size, config)
    log_ratio = config.policy.log_prob(params, obs, action) - logp_old
    clip_fraction = jnp.mean(jnp.abs(jnp.exp(log_ratio) - 1) > hparams.clip)
    return _finish(problem, state, params, opt_state, rollout, batch, v, hparams, config,
                   grad_norm, clip_fraction)


def _minibatch_epochs(surrogate_grad, state: State, hparams, k_perm, size: int,
                      config: PCOConfig):
    """PCO's inner loop, on- and off-chain: `config.epochs` passes, each over a fresh
    permutation (from `k_perm`) of the `size` samples in `config.n_minibatches` minibatches,
    one optimiser step along `surrogate_grad(theta, indices)` per minibatch, from the
    state's parameters and optimiser state. Returns `(params, opt_state, norm of the first
    minibatch's gradient)`."""
    m, tx = config.n_minibatches, _policy_tx(hparams, config)

    def minibatch(carry, idx):
        theta, opt = carry
        grad = surrogate_grad(theta, idx)
        updates, opt = tx.update(grad, opt, theta)
        return (optax.apply_updates(theta, updates), opt), base.tree_norm(grad)

    def epoch(carry, k):
        order = jax.random.permutation(k, size).reshape(m, size // m)
        return lax.scan(minibatch, carry, order)

    (params, opt_state), norms = lax.scan(epoch, (state.params, state.opt_state),
                                          jax.random.split(k_perm, config.epochs))
    return params, opt_state, norms[0, 0]


def offchain_pco_step(problem, state: State, hparams: PCOHParams, key, *,
                      config: PCOConfig):
    """Off-chain PCO: one batch from the anchor `alpha = theta_k` joins the replay, every
    filled slot is prepared for `alpha` (`prepare_offchain`, value `v_hat` of the previous
    fit), then `epochs` x `n_minibatches` optimiser steps on `offchain_surrogate` over the
    whole replay and the value fit to its V-trace targets. The trace's `episode_return`
    and `value_loss` are the newest batch's, `clip_fraction` the replay's share with
    `|r - c| > eps` after the epochs."""
    k_collect, k_perm = jax.random.split(key)
    rollout, newest, v_newest = _collect(problem, state, hparams, k_collect, config)
    replay = _push(state.replay, newest.transitions)
    tr, policy = replay.transitions, config.policy
    M, T, N = tr.reward.shape
    dtype = newest.returns.dtype
    log_anchor = policy.log_prob(lax.stop_gradient(state.params), tr.obs, tr.action)
    v = _value(config, state.value_params, tr.obs, (M, T, N), dtype)
    v_last = _value(config, state.value_params, tr.last_obs, (M, N), dtype)
    batch = jax.vmap(prepare_offchain, in_axes=(0, 0, 0, 0, None, None, None))(
        tr, v, v_last, log_anchor, hparams.gamma, hparams.trace_clip, config.discount_weights)
    mask = jnp.broadcast_to(replay.filled[:, None, None], (M, T, N))
    size, m = M * T * N, config.n_minibatches
    flat = lambda x: x.reshape((size,) + x.shape[3:])
    obs, action, log_beta, log_alpha = (flat(tr.obs), flat(tr.action), flat(tr.log_prob),
                                        flat(log_anchor))
    coef = flat(jnp.where(mask, lax.stop_gradient(batch.weight * batch.advantage), 0))
    # a minibatch's sum, scaled to estimate the mean over the filled slots' episodes
    scale = m / (jnp.sum(replay.filled).astype(dtype) * N)
    surrogate_grad = lambda theta, idx: jax.grad(offchain_surrogate, argnums=1)(
        policy, theta, obs[idx], action[idx], log_beta[idx], log_alpha[idx], coef[idx],
        hparams.clip, scale)
    params, opt_state, grad_norm = _minibatch_epochs(surrogate_grad, state, hparams, k_perm,
                                                     size, config)
    spread = jnp.abs(jnp.exp(policy.log_prob(params, obs, action) - log_beta)
                     - jnp.exp(log_alpha - log_beta))
    valid = flat(mask)
    clip_fraction = jnp.sum(valid & (spread > hparams.clip)) / jnp.sum(valid)
    fit = _fit_value(state, batch, hparams, config, mask)
    return _finish(problem, state, params, opt_state, rollout, newest, v_newest, hparams,
                   config, grad_norm, clip_fraction, fit=fit, replay=replay)


REINFORCE = base.Algorithm(
    "reinforce", HParams=HParams, Config=ReinforceConfig, State=State, Trace=Trace,
    init=init, step=gradient_step, validate=validate, expected_params=expected_params)
DSO = base.Algorithm(
    "dso", HParams=HParams, Config=Config, State=State, Trace=Trace, init=init,
    step=gradient_step, validate=validate, expected_params=expected_params)
NATURAL_DSO = base.Algorithm(
    "natural_dso", HParams=NaturalHParams, Config=NaturalConfig, State=State, Trace=Trace,
    init=init, step=natural_step, validate=validate, expected_params=expected_params)
PCO = base.Algorithm(
    "pco", HParams=PCOHParams, Config=PCOConfig, State=State, Trace=Trace, init=init,
    step=pco_step, validate=validate, expected_params=expected_params)


def reinforce(problem, params0, hparams: HParams, key, *, config: ReinforceConfig,
              keep_params: bool = False):
    """REINFORCE with a baseline: `base.run(REINFORCE, ...)` -> `(State, Trace[n_steps])`."""
    return REINFORCE.run(problem, params0, hparams, key, config=config, keep_params=keep_params)


def dso(problem, params0, hparams: HParams, key, *, config: Config, keep_params: bool = False):
    """DSO Algorithm 1 with a fitted value baseline: `base.run(DSO, ...)`."""
    return DSO.run(problem, params0, hparams, key, config=config, keep_params=keep_params)


def natural_dso(problem, params0, hparams: NaturalHParams, key, *, config: NaturalConfig,
                keep_params: bool = False):
    """Natural DSO: Algorithm 1 preconditioned by the sampled chain Fisher,
    `base.run(NATURAL_DSO, ...)`."""
    return NATURAL_DSO.run(problem, params0, hparams, key, config=config,
                           keep_params=keep_params)


def pco(problem, params0, hparams: PCOHParams, key, *, config: PCOConfig,
        keep_params: bool = False):
    """Proximal Chain Optimisation on sampled episodes: `base.run(PCO, ...)`."""
    return PCO.run(problem, params0, hparams, key, config=config, keep_params=keep_params)
