"""Dynamic policy gradient (DynPG): dynamic programming over horizons, policy gradient inside.

Klein, Zhang, Başar, Weissmann, Döring, "Structure Matters: Dynamic Policy Gradient"
(arXiv 2411.04913); docs/design.md §9.3. Epoch `h = 0, 1, ...` lengthens the horizon to `h + 1`:
a fresh tabular softmax policy `pi_theta` acts at `t = 0`, the policies learned earlier
act at `t = 1..h` (the newest first) and stay frozen. Epoch `h` solves the contextual bandit

    J_h(theta) = sum_s mu(s) sum_a pi_theta(a|s) Q_h(s, a),   Q_h = R + gamma P V_h,

with `V_0 = 0` and, after the epoch, `V_{h+1}(s) = sum_a pi_h(a|s) Q_h(s, a)` (`pi_h`: the
policy the epoch ends with). The context law `mu` is the MDP's initial law `rho` and must
charge every non-terminal state. The output is the newest policy, used stationarily.

The algorithm contract (`dsorl.algorithms.base`): **one step of the driver is one epoch**
and `Config.n_steps` counts epochs (the horizon of the output policy). An epoch is the
unit DynPG is defined by: it solves one contextual bandit and freezes its policy, and the
number of gradient steps inside it, `N_h`, is data-dependent (traced: it depends on the
swept `gamma` and `steps_coefficient` through the authors' schedule), so it cannot be a
static count of driver steps. `State.params0` holds the logits every epoch restarts from.

Schedule (the authors' code; `schedule="adaptive"`, the default): `theta` restarts at
`params0` (zeros: uniform) each epoch, step size `eta_h = 2 s / c_h` and
`N_h = ceil(k (1 - gamma^(h+1)) / (1 - gamma))` steps, `c_h = (1 - gamma^(h+1)) / (1 - gamma)`
(the bandit's reward scale), with `s = step_size = 1` (`HParams.step_size` multiplies the
schedule's step size) and `k = steps_coefficient = 45` (the ceiling is of the exact
number: rounding errors of 1e-12 relative are shaved off).
`schedule="constant"`: `eta_h = step_size`, `N_h = ceil(steps_coefficient)`.
`schedule="fixed_steps"`: the authors' step size with the same count in every epoch,
`N_h = ceil(steps_coefficient)` (the horizon-adjustment study of `dsorl.jobs.dynpg_scaling`:
it separates the step count, which the authors grow with `c_h`, from the step size).

Blocks (`Config.horizon_block = m > 1`; the study's "several horizon steps at once"): an
epoch lengthens the horizon by `m` instead of one. Epoch `h` learns `m` fresh policies
`pi_0..pi_{m-1}` (acting at `t = 0..m-1`, each restarting at `params0`) together, by
gradient ascent on the finite-horizon objective

    J_h(theta_0..theta_{m-1}) = mu . V_0,   V_j = sum_a pi_j(a|.) (R + gamma P V_{j+1}),
    V_m = V_{hm} (the frozen tail),

then freezes all of them; `pi_0` is the newest policy (the output).
The schedule is evaluated at the block's longest horizon, index `(h + 1) m - 1` (so
`eta` is set by the return scale of the whole block). `m = 1` is DynPG itself (same code
path, same numbers). The exact gradient is `jax.grad` of `J_h`; the sampled one is
REINFORCE with reward-to-go, `sum_j grad log pi_j(a_j|s_j) sum_{j<=t<(h+1)m} gamma^t r_t`
(`sampled_block_gradient`). `n_steps` still counts epochs: the output's horizon is
`m n_steps`. The greedy solver and `run_interactions` take `m = 1` only.

Error bounds checked by the tests (approximate dynamic programming, e.g. Bertsekas &
Tsitsiklis 1996, §6.2, the error propagation behind Klein et al.'s analysis): with the
bandit gaps `delta_h(s) = max_a Q_h(s, a) - V_{h+1}(s) >= 0` and `V*` the optimal value,
    ||V* - V_{h+1}||_inf <= gamma ||V* - V_h||_inf + ||delta_h||_inf,
    ||V* - V^{pi_h}||_inf <= (2 gamma ||V* - V_h||_inf + ||delta_h||_inf) / (1 - gamma).

Problems: a `dsorl.MDP`, or a `dsorl.episodic.EpisodicMDP` whose `reward_std[S, A]` adds
Gaussian noise to sampled rewards. Gradients: `estimator="exact"` uses the closed form of
`softmax_bandit_gradient` (deterministic; `key` may be None);
`estimator="reinforce"` samples `batch_size` episodes per step (`s_0 ~ mu`,
`a_0 ~ pi_theta`, later actions from the frozen policies) and uses
`grad log pi_theta(a_0|s_0) sum_{t<=h} gamma^t r_t`, counting environment interactions
exactly (steps taken from non-terminal states). Keys: epoch `h` gets `fold_in(key, h)`
(the driver's), its gradient step `k` `fold_in(fold_in(key, h), k)`.

`run_interactions` runs sampled DynPG (one episode per step, plain SGD) for a budget of
environment interactions as one scan with one interaction per step: the same algorithm
as `run` with `estimator="reinforce"`, with work proportional to the interactions used
and one policy row per update (`run` pads every epoch to `max_steps_per_epoch` steps and
every episode to `episode_length` steps).
"""
import dataclasses
import sys
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from dsorl import _checks
from dsorl.algorithms import base
from dsorl.episodic import check_reward_std, mdp_and_noise, problem_mdp
from dsorl.estimators.reinforce import absorbing_states, interactions
from dsorl.mdp import MDP
from dsorl.sparse import self_loops
from dsorl.objectives import chain_objective, policy_objective, softmax_rows
from dsorl.optim import ascent
from dsorl.policies import tabular_softmax
from dsorl.sampling import draw, sample_episode

__all__ = ["HParams", "Config", "State", "InnerTrace", "Trace", "epoch_schedule",
           "softmax_bandit_gradient", "uses_key", "expected_params", "validate", "init", "step",
           "run", "sampled_bandit_gradient", "block_objective", "block_gradient",
           "sampled_block_gradient", "BudgetState", "BudgetTrace", "run_interactions", "SCHEDULES"]

Array = jax.Array


class HParams(NamedTuple):
    """Swept numbers (traced): discount `gamma`; `step_size` `s`, the factor of the
    schedule's step size (`eta_h = 2 s / c_h` adaptive, `eta_h = s` constant); the
    `steps_coefficient` `k` of its step counts (see the module docstring)."""

    gamma: Array
    step_size: Array = 1.0
    steps_coefficient: Array = 45.0


@dataclasses.dataclass(frozen=True)
class Config:
    """Static choices. `n_steps`: number of epochs (one driver step is one epoch, see the
    module docstring; the horizon of the output policy); `schedule`: "adaptive" (authors)
    or "constant"; `optimizer`: `lr -> optax GradientTransformation` (fed the gradient via
    `dsorl.optim.ascent`, so it ascends), or None for plain gradient ascent
    `theta += eta g` (the authors'; in sampled runs it updates only the sampled rows, with
    the same numbers as `optax.sgd`);
    `estimator`: "exact" or "reinforce"; `solver`: "gradient" or "greedy" (each bandit
    solved exactly by argmax: DynPG is then backward induction); `evaluate`: trace the
    exact stationary value of the newest policy. Sampled runs only: `batch_size`
    episodes per step, `max_steps_per_epoch` (static scan length; steps past `N_h` are
    masked; must be >= every `N_h`), `episode_length` (static rollout length, default
    `n_steps`; an episodic MDP needs no more than its longest episode).
    `evaluation_sweeps`: evaluate by that many Bellman sweeps instead of a solve (exact
    when every episode ends within that many steps; much cheaper in large vmaps).
    `horizon_block`: horizon steps an epoch adds (1: DynPG; see the module docstring),
    `episode_length` then defaults to `horizon_block n_steps`."""

    n_steps: int
    schedule: str = "adaptive"
    optimizer: Optional[Callable] = None
    estimator: str = "exact"
    solver: str = "gradient"
    evaluate: bool = True
    batch_size: int = 1
    max_steps_per_epoch: int = 0
    episode_length: Optional[int] = None
    evaluation_sweeps: Optional[int] = None
    horizon_block: int = 1


class State(NamedTuple):
    """After `epoch` epochs: `params[S, A]` the newest policy's logits (the output; for
    `solver="greedy"` the greedy logits, 0 on the argmax and a very negative number
    elsewhere), `params0[S, A]` the logits every epoch restarts from, `tail_value[S]`
    `V_epoch`, `log_tail[horizon_block n_steps, S, A]` (log-policies of the frozen horizon
    steps, oldest first, i.e. the policy acting last first; rows not reached hold the
    uniform policy), gradient `steps` and environment
    `interactions` so far."""

    epoch: Array
    params: Array
    params0: Array
    tail_value: Array
    log_tail: Array
    steps: Array
    interactions: Array


class InnerTrace(NamedTuple):
    """Sampled runs, one row per gradient step of an epoch (`[max_steps_per_epoch]` per
    epoch): `valid` (step taken), `interactions` used before the step, and the `objective`
    of `pi_theta` (stationary) before the step (NaN unless `evaluate`); the policy after
    an epoch's last step is in the `Trace` row."""

    valid: Array
    interactions: Array
    objective: Array


class Trace(NamedTuple):
    """One row per epoch `h`, after it: cumulative gradient `steps` and `interactions`,
    the `step_size` `eta_h` and step count `inner_steps` `N_h` it used, `objective`
    `mu . V^{pi_h}` (the newest policy used stationarily; NaN unless `evaluate`),
    `grad_norm` `||grad J_h||` of the exact bandit gradient at `pi_h` (how well the
    bandit was solved), `bandit_gap[S]` `delta_h`, `tail_value[S]` `V_{h+1}`; `inner`: the
    `InnerTrace[max_steps_per_epoch]` of sampled runs (None for exact ones)."""

    steps: Array
    interactions: Array
    step_size: Array
    inner_steps: Array
    objective: Array
    grad_norm: Array
    bandit_gap: Array
    tail_value: Array
    inner: Any = None
    params: Any = None


SCHEDULES = ("adaptive", "constant", "fixed_steps")


def epoch_schedule(epoch, hparams: HParams, kind: str = "adaptive", xp=jnp):
    """`(eta_h, N_h)` of epoch `h` (0-based; with blocks, pass the horizon index
    `(h + 1) m - 1`). Adaptive (Klein et al.'s code):
    `eta_h = 2 s (1 - gamma) / (1 - gamma^(h+1))`, `N_h = ceil(k (1 - gamma^(h+1)) / (1 - gamma))`;
    constant: `(s, ceil(k))`; fixed_steps: `(adaptive eta_h, ceil(k))`; `s = step_size`,
    `k = steps_coefficient`. `xp=numpy` evaluates it on the host (for validation)."""
    gamma = xp.asarray(hparams.gamma)
    if kind == "constant":
        steps = xp.ceil(xp.asarray(hparams.steps_coefficient, gamma.dtype))
        return xp.asarray(hparams.step_size, gamma.dtype) + 0 * epoch, steps.astype(xp.int32)
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}.")
    span = 1 - gamma ** (epoch + 1)
    eta = 2 * hparams.step_size * (1 - gamma) / span
    if kind == "fixed_steps":
        steps = xp.ceil(xp.asarray(hparams.steps_coefficient, gamma.dtype) + 0 * epoch)
        return eta, steps.astype(xp.int32)
    # ceil of the exact number: shave the rounding error of the division (45 (1 - g) / (1 - g)
    # evaluates to 45.00000000000001 for g = 0.99)
    n = xp.ceil(hparams.steps_coefficient * span / (1 - gamma) * (1 - 1e-12))
    return eta, n.astype(xp.int32)


def softmax_bandit_gradient(theta: Array, q: Array, mu: Array, mask: Optional[Array] = None):
    """Exact gradient of `J(theta) = sum_s mu(s) sum_a pi_theta(a|s) q(s, a)` for the
    tabular softmax: `dJ/dtheta[s, a] = mu(s) pi(a|s) (q(s, a) - sum_b pi(b|s) q(s, b))`
    (Klein et al., arXiv 2411.04913; Mei et al. 2020, Lemma 1, bandit case). `[S, A]`."""
    return _bandit_gradient(tabular_softmax(*theta.shape, mask).probs(theta), q, mu)


def _bandit_gradient(pi, q, mu):
    """`softmax_bandit_gradient` from the policy `pi[S, A]` instead of its logits."""
    q = jnp.where(pi > 0, q, 0)
    v = jnp.sum(pi * q, axis=-1, keepdims=True)
    return mu[:, None] * pi * (q - v)


def uses_key(config: Config) -> bool:
    """Only sampled runs draw random numbers."""
    return config.estimator != "exact"


def expected_params(problem, config: Config):
    """`params0` is a logit table `[S, A]`."""
    return tuple(problem_mdp(problem).R.shape)


def validate(problem, hparams: HParams, config: Config) -> None:
    """Raise `ValueError` for bad concrete inputs: gamma outside [0, 1), a non-positive
    `step_size` or `steps_coefficient`, a context law (`mdp.rho`) without full support on
    the non-terminal states, an action mask that leaves a state without actions, negative
    reward noise, bad static choices, and (sampled runs) a `max_steps_per_epoch` below the
    schedule's longest epoch. Traced problems and hparams pass unchecked."""
    _validate(problem, hparams, config)
    if config.estimator != "reinforce" or not _checks.is_concrete(hparams):
        return
    # sampled epochs are scans of max_steps_per_epoch steps: that must cover every N_h
    epochs = _schedule_index(np.arange(config.n_steps), config)[:, None]
    batch = HParams(*(np.ravel(np.asarray(x))[None, :] for x in hparams))
    need = int(np.max(epoch_schedule(epochs, batch, config.schedule, xp=np)[1]))
    if config.max_steps_per_epoch < need:
        raise ValueError(f"max_steps_per_epoch = {config.max_steps_per_epoch} is below"
                         f" the schedule's largest epoch ({need} steps).")


def _validate(problem, hparams: HParams, config: Config) -> None:
    """`validate` without the epoch-length check (shared with `run_interactions`)."""
    mdp = problem_mdp(problem)
    base.check_discount(hparams.gamma)
    base.check_positive("step_size", hparams.step_size)
    base.check_positive("steps_coefficient", hparams.steps_coefficient)
    n = config.n_steps
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"config.n_steps = {n!r} must be an int >= 1 (the number of epochs).")
    m = config.horizon_block
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"config.horizon_block = {m!r} must be an int >= 1 (horizon steps"
                         " per epoch).")
    if m > 1 and config.solver == "greedy":
        raise ValueError(f"config.horizon_block = {m} needs solver='gradient' (greedy"
                         " epochs are backward induction one step at a time already).")
    for name, value, allowed in (("schedule", config.schedule, SCHEDULES),
                                 ("estimator", config.estimator, ("exact", "reinforce")),
                                 ("solver", config.solver, ("gradient", "greedy"))):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
    check_reward_std(problem)
    _checks.check_actions_available(mdp.action_mask)
    if not base.is_concrete(mdp):
        return
    # host arrays only (`mdp.allowed` would build a traced array inside jit)
    allowed = (np.ones(np.shape(mdp.R), bool) if mdp.action_mask is None
               else np.asarray(mdp.action_mask, bool))
    R = np.asarray(mdp.R)
    stay = np.asarray(self_loops(mdp.P))
    terminal = np.all(((stay == 1) & (R == 0)) | ~allowed, axis=-1)  # as absorbing_states
    rho = np.asarray(mdp.rho)
    uncovered = np.flatnonzero((rho <= 0) & ~terminal)
    if uncovered.size:
        raise ValueError(f"the context law mu = mdp.rho gives non-terminal state"
                         f" {uncovered[0]} probability {rho[uncovered[0]]}: DynPG needs"
                         " full support on the non-terminal states.")


def init(problem, params0: Array, hparams: HParams, key: Array, *, config: Config) -> State:
    """The state before epoch 0: `V_0 = 0`, no step taken, `params = params0`."""
    del hparams, key
    mdp = problem_mdp(problem)
    S, A = mdp.R.shape
    dtype = mdp.R.dtype
    params0 = jnp.asarray(params0, dtype)
    uniform = tabular_softmax(S, A, mdp.action_mask).log_probs(jnp.zeros((S, A), dtype))
    return State(epoch=jnp.int32(0), params=params0, params0=params0,
                 tail_value=jnp.zeros(S, dtype),
                 log_tail=jnp.broadcast_to(uniform,
                                           (config.n_steps * config.horizon_block, S, A)),
                 steps=jnp.int32(0), interactions=jnp.int32(0))


def step(problem, state: State, hparams: HParams, key: Array, *, config: Config):
    """One epoch (the horizon grows by one) -> `(State, Trace row)`; see `run`."""
    mdp, std = mdp_and_noise(problem)
    if config.horizon_block > 1:
        return _block_epoch(mdp, std, state, hparams, key, config)
    if config.estimator == "exact":
        return _exact_epoch(mdp, state, hparams, config)
    return _sampled_epoch(mdp, std, state, hparams, key, config)


def _schedule_index(epoch, config: Config):
    """The index the schedule is evaluated at: the epoch's longest horizon minus one."""
    return (epoch + 1) * config.horizon_block - 1


def run(problem, params0: Array, hparams: HParams, key: Optional[Array] = None, *,
        config: Config, keep_params: bool = False):
    """A whole DynPG run: `config.n_steps` epochs as one `lax.scan` -> `(State, Trace)`.

    `problem`: an `MDP` or an `EpisodicMDP` (Gaussian reward noise of sampled episodes);
    `params0[S, A]`: the logits each epoch restarts from (zeros in the paper); `key`:
    None for exact runs. `Trace` rows are epochs (`trace.inner`: the gradient steps of
    sampled runs). `dsorl.algorithms.base.run` on this module: jittable; vmap over the
    problem, `params0`, `hparams`, `key`.
    """
    return base.run(sys.modules[__name__], problem, params0, hparams, key, config=config,
                    keep_params=keep_params)


def _bandit_q(mdp: MDP, gamma, tail_value):
    return jnp.where(mdp.allowed, mdp.R + gamma * mdp.P @ tail_value, 0)


def _finish_epoch(mdp, hparams, config, state, theta, q, eta, n_steps, interactions_,
                  inner=None):
    """Freeze `pi_theta`, update `V`, and write the epoch's trace row."""
    policy = tabular_softmax(*mdp.R.shape, mdp.action_mask)
    if config.solver == "greedy":
        best = jnp.argmax(jnp.where(mdp.allowed, q, -jnp.inf), axis=-1)
        log_pi = jnp.where(jax.nn.one_hot(best, q.shape[-1], dtype=q.dtype) > 0, 0,
                           jnp.finfo(q.dtype).min / 2)
        theta = log_pi  # logits of the greedy policy
    else:
        log_pi = policy.log_probs(theta)
    pi = jnp.exp(log_pi)
    value = jnp.sum(pi * q, axis=-1)
    gap = jnp.max(jnp.where(mdp.allowed, q, -jnp.inf), axis=-1) - value
    objective = _objective(mdp, pi, hparams.gamma, config)
    new = state._replace(epoch=state.epoch + 1, params=theta, tail_value=value,
                         log_tail=state.log_tail.at[state.epoch].set(log_pi),
                         steps=state.steps + n_steps, interactions=interactions_)
    row = Trace(new.steps, new.interactions, eta, n_steps, objective,
                base.tree_norm(_bandit_gradient(pi, q, mdp.rho)), gap, value, inner)
    return new, row


def _exact_epoch(mdp, state, hparams, config):
    """The bandit solved by `N_h` exact gradient steps: a `fori_loop`, not
    `dsorl.optim.maximise`, because `N_h` is traced and the gradient is in closed form."""
    q = _bandit_q(mdp, hparams.gamma, state.tail_value)
    eta, n_steps = epoch_schedule(state.epoch, hparams, config.schedule)
    if config.solver == "greedy":
        n_steps = jnp.int32(0)
    tx = ascent((config.optimizer or optax.sgd)(eta))
    theta = state.params0

    def body(_, carry):
        theta, opt_state = carry
        grad = softmax_bandit_gradient(theta, q, mdp.rho, mdp.action_mask)
        updates, opt_state = tx.update(grad, opt_state, theta)
        return optax.apply_updates(theta, updates), opt_state

    theta, _ = lax.fori_loop(0, n_steps, body, (theta, tx.init(theta)))
    return _finish_epoch(mdp, hparams, config, state, theta, q, eta, n_steps,
                         state.interactions)


def sampled_bandit_gradient(key: Array, mdp: MDP, theta: Array, log_tail: Array, epoch,
                            gamma, *, batch_size: int, episode_length: int,
                            reward_std: Optional[Array] = None):
    """DynPG's REINFORCE estimate of `grad J_h(theta)` at epoch `h = epoch` (0-based).

    Mean over `batch_size` episodes (`s_0 ~ rho`, `a_0 ~ pi_theta`, the action at
    `t >= 1` from the policy frozen at epoch `h - t`, i.e. `exp(log_tail[h - t])`) of
    `grad log pi_theta(a_0|s_0) sum_{t<=h} gamma^t r_t` (`estimators.reinforce.bandit_gradient`,
    in closed form for the tabular softmax: `grad log pi(a|s) = e_s (e_a - pi(.|s))`).
    Returns `(grad[S, A], interactions used)`; unbiased for `softmax_bandit_gradient`.
    """
    pi = tabular_softmax(*mdp.R.shape, mdp.action_mask).probs(theta)
    s0, rows, used = _bandit_rows(key, mdp, pi, jnp.exp(log_tail), epoch, gamma,
                                  batch_size, episode_length, reward_std)
    return jnp.zeros_like(theta).at[s0].add(rows) / batch_size, used


def _bandit_rows(key, mdp, pi, tail, epoch, gamma, batch_size, length, reward_std):
    """Episodes of epoch `epoch` -> `(s_0[B], rows[B, A], interactions)`, the gradient
    estimate being `sum_b e_{s_0^b} rows[b] / B`."""
    def policy_at(t, s):  # pi_theta at t = 0, then the frozen policies, newest first
        return jnp.where(t == 0, pi[s], tail[jnp.maximum(epoch - t, 0), s])

    episodes = jax.vmap(lambda k: sample_episode(k, mdp, policy_at, length,
                                                 reward_std=reward_std)
                        )(jax.random.split(key, batch_size))
    alive = jnp.arange(length) < epoch + 1
    discounts = gamma ** jnp.arange(length, dtype=pi.dtype)
    returns = jnp.sum(jnp.where(alive, discounts * episodes.rewards, 0), axis=-1)
    s0, a0 = episodes.states[:, 0], episodes.actions[:, 0]
    rows = returns[:, None] * (jax.nn.one_hot(a0, pi.shape[-1], dtype=pi.dtype) - pi[s0])
    terminal = absorbing_states(mdp)
    used = jnp.sum(jax.vmap(lambda ep: interactions(ep, terminal, epoch + 1))(episodes),
                   dtype=jnp.int32)
    return s0, rows, used


def _sampled_epoch(mdp, std, state, hparams, key, config):
    """`max_steps_per_epoch` sampled steps as one scan (those past `N_h` masked); step `k`
    draws its episodes with `fold_in(key, k)`."""
    q = _bandit_q(mdp, hparams.gamma, state.tail_value)
    eta, n_steps = epoch_schedule(state.epoch, hparams, config.schedule)
    policy = tabular_softmax(*mdp.R.shape, mdp.action_mask)
    tail = jnp.exp(state.log_tail)
    length = config.episode_length or config.n_steps
    theta = state.params0

    def episodes(pi, k):
        return _bandit_rows(jax.random.fold_in(key, k), mdp, pi, tail, state.epoch,
                            hparams.gamma, config.batch_size, length, std)

    if config.optimizer is None:
        body, carry = _sparse_sgd_step(mdp, hparams, config, state, episodes, eta, n_steps,
                                       theta)
    else:
        tx = ascent(config.optimizer(eta))

        def body(carry, k):
            theta, opt_state, count = carry
            pi = policy.probs(theta)
            s0, rows, used = episodes(pi, k)
            grad = jnp.zeros_like(theta).at[s0].add(rows) / config.batch_size
            live = k < n_steps
            row = InnerTrace(live, count, _objective(mdp, pi, hparams.gamma, config))
            updates, new_opt = tx.update(grad, opt_state, theta)
            theta = jnp.where(live, optax.apply_updates(theta, updates), theta)
            opt_state = jax.tree_util.tree_map(lambda a, b: jnp.where(live, a, b), new_opt,
                                               opt_state)
            return (theta, opt_state, count + jnp.where(live, used, 0)), row

        carry = (theta, tx.init(theta), state.interactions)
    carry, inner = lax.scan(body, carry, jnp.arange(config.max_steps_per_epoch))
    theta, count = carry[0], carry[-1]
    return _finish_epoch(mdp, hparams, config, state, theta, q, eta, n_steps, count, inner)


def _sparse_sgd_step(mdp, hparams, config, state, episodes, eta, n_steps, theta):
    """Plain SGD touching only the rows of the sampled contexts: the same numbers as
    `optax.sgd`, but `pi` and the chain `(P_pi, r_pi)` are updated row by row instead of
    recomputed, which keeps a step's memory traffic to a few rows (large vmaps are
    memory-bound)."""
    def body(carry, k):
        theta, pi, P_pi, r_pi, count = carry
        s0, rows, used = episodes(pi, k)
        live = k < n_steps
        value = _chain_objective(mdp, P_pi, r_pi, hparams.gamma, config)
        theta = theta.at[s0].add(jnp.where(live, eta / config.batch_size, 0) * rows)
        new_pi, new_P, new_r = softmax_rows(mdp, theta[s0], s0)
        carry = (theta, pi.at[s0].set(new_pi), P_pi.at[s0].set(new_P), r_pi.at[s0].set(new_r),
                 count + jnp.where(live, used, 0))
        return carry, InnerTrace(live, count, value)

    pi, P_pi, r_pi = softmax_rows(mdp, theta, jnp.arange(mdp.n_states))
    return body, (theta, pi, P_pi, r_pi, state.interactions)


def _chain_objective(mdp, P_pi, r_pi, gamma, config):
    if not config.evaluate:
        return base.nan_like(r_pi.dtype)
    return chain_objective(mdp.rho, P_pi, r_pi, gamma, config.evaluation_sweeps)


def _objective(mdp, pi, gamma, config):
    if not config.evaluate:
        return base.nan_like(pi.dtype)
    return policy_objective(mdp, pi, gamma, config.evaluation_sweeps)


# ----------------------------------------------------------------------------------------
# Blocks: epochs of several horizon steps at once (`Config.horizon_block > 1`).


def _block_values(mdp: MDP, thetas: Array, tail_value: Array, gamma):
    """Backward pass of a block: `(V_0[S], Q_0[S, A], V_1[S])` for the logits
    `thetas[m, S, A]` (policy `j` acts at `t = j`) over the frozen tail value `V_m`."""
    policy = tabular_softmax(*mdp.R.shape, mdp.action_mask)

    def back(v_next, theta):
        q = _bandit_q(mdp, gamma, v_next)
        v = jnp.sum(policy.probs(theta) * q, axis=-1)
        return v, (q, v_next)

    v0, (qs, nexts) = lax.scan(back, tail_value, thetas, reverse=True)
    return v0, qs[0], nexts[0]


def block_objective(mdp: MDP, thetas: Array, tail_value: Array, gamma) -> Array:
    """`J(theta_0..theta_{m-1}) = mu . V_0` of a block (module docstring), `mu = mdp.rho`."""
    return mdp.rho @ _block_values(mdp, thetas, tail_value, gamma)[0]


def block_gradient(mdp: MDP, thetas: Array, tail_value: Array, gamma) -> Array:
    """Exact gradient of `block_objective` in `thetas[m, S, A]` (reverse-mode autodiff of
    the backward pass; equal to `gamma^j d_j(s) pi_j(a|s) (Q_j(s, a) - V_j(s))`, `d_j` the
    law of `s_j` from `mu`, which the tests check)."""
    return jax.grad(block_objective, argnums=1)(mdp, thetas, tail_value, gamma)


def sampled_block_gradient(key: Array, mdp: MDP, thetas: Array, log_tail: Array, frozen,
                           gamma, *, batch_size: int, episode_length: int,
                           reward_std: Optional[Array] = None):
    """REINFORCE estimate of `block_gradient`: the mean over `batch_size` episodes
    (`s_0 ~ rho`, `a_j ~ pi_j` for `j < m`, then the frozen policies newest first,
    `exp(log_tail[frozen - 1 - (t - m)])`, for a horizon of `frozen + m` steps) of
    `sum_j e_{s_j} (e_{a_j} - pi_j(.|s_j)) sum_{j<=t<frozen+m} gamma^t r_t` in layer `j`
    (reward-to-go: earlier rewards do not depend on `pi_j`). Returns
    `(grad[m, S, A], interactions used)`; unbiased for `block_gradient`."""
    pis = jax.vmap(tabular_softmax(*mdp.R.shape, mdp.action_mask).probs)(thetas)
    m = thetas.shape[0]
    tail = jnp.exp(log_tail)

    def policy_at(t, s):
        return jnp.where(t < m, pis[jnp.minimum(t, m - 1), s],
                         tail[jnp.clip(frozen - 1 - (t - m), 0, tail.shape[0] - 1), s])

    episodes = jax.vmap(lambda k: sample_episode(k, mdp, policy_at, episode_length,
                                                 reward_std=reward_std)
                        )(jax.random.split(key, batch_size))
    horizon = frozen + m
    alive = jnp.arange(episode_length) < horizon
    discounted = jnp.where(alive, gamma ** jnp.arange(episode_length, dtype=pis.dtype)
                           * episodes.rewards, 0)
    to_go = jnp.cumsum(discounted[:, ::-1], axis=-1)[:, ::-1]  # [B, T]: sum_{t'>=t}
    s, a = episodes.states[:, :m], episodes.actions[:, :m]  # [B, m]
    layers = jnp.broadcast_to(jnp.arange(m), s.shape)
    score = jax.nn.one_hot(a, pis.shape[-1], dtype=pis.dtype) - pis[layers, s]
    rows = to_go[:, :m, None] * score
    grad = jnp.zeros_like(thetas).at[layers, s].add(rows) / batch_size
    terminal = absorbing_states(mdp)
    used = jnp.sum(jax.vmap(lambda ep: interactions(ep, terminal, horizon))(episodes),
                   dtype=jnp.int32)
    return grad, used


def _block_epoch(mdp, std, state, hparams, key, config):
    """One epoch of `m = horizon_block` horizon steps: `N` (sampled: `max_steps_per_epoch`,
    those past `N` masked) gradient steps on all `m` fresh policies together, then all
    frozen. The trace row's `bandit_gap` and `tail_value` are those of the newest policy
    (`Q_0` given the block's later policies) and `grad_norm` is the block gradient's."""
    m, gamma = config.horizon_block, hparams.gamma
    eta, n_steps = epoch_schedule(_schedule_index(state.epoch, config), hparams,
                                  config.schedule)
    policy = tabular_softmax(*mdp.R.shape, mdp.action_mask)
    thetas = jnp.broadcast_to(state.params0, (m,) + state.params0.shape)
    tx = ascent((config.optimizer or optax.sgd)(eta))
    frozen = state.epoch * m

    def update(thetas, opt_state, grad, live):
        updates, new_opt = tx.update(grad, opt_state, thetas)
        thetas = jnp.where(live, optax.apply_updates(thetas, updates), thetas)
        opt_state = jax.tree_util.tree_map(lambda a, b: jnp.where(live, a, b), new_opt,
                                           opt_state)
        return thetas, opt_state

    if config.estimator == "exact":
        def body(_, carry):
            grad = block_gradient(mdp, carry[0], state.tail_value, gamma)
            return update(*carry, grad, True)

        thetas, _ = lax.fori_loop(0, n_steps, body, (thetas, tx.init(thetas)))
        count, inner = state.interactions, None
    else:
        length = config.episode_length or config.n_steps * m

        def body(carry, k):
            thetas, opt_state, count = carry
            grad, used = sampled_block_gradient(
                jax.random.fold_in(key, k), mdp, thetas, state.log_tail, frozen, gamma,
                batch_size=config.batch_size, episode_length=length, reward_std=std)
            live = k < n_steps
            row = InnerTrace(live, count, _objective(mdp, policy.probs(thetas[0]), gamma,
                                                     config))
            thetas, opt_state = update(thetas, opt_state, grad, live)
            return (thetas, opt_state, count + jnp.where(live, used, 0)), row

        (thetas, _, count), inner = lax.scan(body, (thetas, tx.init(thetas), state.interactions),
                                             jnp.arange(config.max_steps_per_epoch))
    log_pis = jax.vmap(policy.log_probs)(thetas)
    v0, q0, _ = _block_values(mdp, thetas, state.tail_value, gamma)
    gap = jnp.max(jnp.where(mdp.allowed, q0, -jnp.inf), axis=-1) - v0
    grad_norm = base.tree_norm(block_gradient(mdp, thetas, state.tail_value, gamma))
    # oldest first: the policy acting last (j = m - 1) goes to row `frozen`
    zero = jnp.zeros((), jnp.int32)
    log_tail = lax.dynamic_update_slice(state.log_tail, log_pis[::-1],
                                        (jnp.asarray(frozen, jnp.int32), zero, zero))
    new = state._replace(epoch=state.epoch + 1, params=thetas[0], tail_value=v0,
                         log_tail=log_tail, steps=state.steps + n_steps, interactions=count)
    row = Trace(new.steps, new.interactions, eta, n_steps,
                _objective(mdp, jnp.exp(log_pis[0]), gamma, config), grad_norm, gap, v0,
                inner)
    return new, row


# ----------------------------------------------------------------------------------------
# Sampled DynPG for a budget of interactions, one interaction per scan step.


class BudgetState(NamedTuple):
    """`run_interactions` after the budget: `epoch` (epochs completed), gradient `steps`,
    `params[S, A]` the logits of the newest policy the last trace row evaluated (the
    output), `epoch_params[n_steps, S, A]` (row `h`: the logits epoch `h` ended with, or
    `params0` if not reached) and `policies[n_steps, S, A]` (their softmax policies)."""

    epoch: Array
    steps: Array
    params: Array
    epoch_params: Array
    policies: Array


class BudgetTrace(NamedTuple):
    """One row per interaction `i`: `objective` `mu . V^pi` of the newest policy after
    `i + 1` interactions (after that interaction's update, before an epoch's restart;
    NaN unless `evaluate`), the `epoch` and the gradient `steps` completed by then;
    `params` (with `keep_params`): that policy's logits."""

    objective: Array
    epoch: Array
    steps: Array
    params: Any = None


def run_interactions(problem, params0: Array, hparams: HParams, key: Array, *, budget: int,
                     config: Config, keep_params: bool = False):
    """Sampled DynPG for `budget` environment interactions, one per `lax.scan` step.

    The algorithm of `run` with `estimator="reinforce"`, `batch_size=1` and plain SGD
    (Klein et al., arXiv 2411.04913; docs/design.md §9.3): in epoch `h` each step plays one episode
    (`s_0 ~ mu`, `a_0 ~ pi_theta`, `a_t ~ pi_{h-t}` for `t = 1..h`, at most
    `min(h + 1, episode_length)` steps, ending in a terminal state), one interaction per
    scan step, then `theta[s_0] += eta_h G (e_{a_0} - pi_theta(.|s_0))`,
    `G = sum_t gamma^t r_t`; after `N_h` steps the epoch's policy is frozen and `theta`
    restarts at `params0`. Only the updated row of the policy and of its chain
    `(P_pi, r_pi)` is recomputed. After `config.n_steps` epochs the run stops learning
    (its last policy stays the output); an episode cut by the budget makes no update.
    Why not `base.run` (one driver step per epoch): the experiment's unit is the
    interaction (success against interactions used, Klein et al.'s figure), and epochs
    and episodes vary in length, so a per-epoch scan would pad every epoch to its longest
    and every episode to `episode_length`; here the work is exactly `budget` steps.
    `problem`: an `MDP` or an `EpisodicMDP` (reward noise); `params0`, `hparams` cast
    to its float dtype and validated as by `run` (`max_steps_per_epoch` is unused).
    Random numbers: `k_u, k_z = jax.random.split(key)`, uniforms `[budget, 3]` from `k_u`
    (start state, action, next state) and normals `[budget]` from `k_z` (reward noise).
    Returns `(BudgetState, BudgetTrace)`; jittable, vmappable over the problem, `params0`,
    `hparams`, `key`.
    """
    dtype = base.problem_dtype(problem, params0)
    hparams = base.coerce_hparams(hparams, dtype, HParams)
    params0 = jnp.asarray(params0, dtype)
    base.check_params0(params0, expected_params(problem, config))
    _validate(problem, hparams, config)
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"budget = {budget!r} must be an int >= 1 interaction.")
    if (config.estimator != "reinforce" or config.optimizer is not None
            or config.batch_size != 1 or config.solver != "gradient"
            or config.horizon_block != 1):
        raise ValueError("run_interactions runs sampled DynPG with one episode per step and"
                         " plain SGD: use estimator='reinforce', optimizer=None,"
                         " batch_size=1, solver='gradient', horizon_block=1 (or use run).")
    if key is None:
        raise ValueError("run_interactions draws random numbers: pass an explicit key"
                         " (jax.random.key(seed)).")
    mdp, std = mdp_and_noise(problem)
    E, L = config.n_steps, config.episode_length or config.n_steps
    terminal = absorbing_states(mdp)
    theta0 = params0
    pi0, P0, r0 = softmax_rows(mdp, theta0, jnp.arange(mdp.n_states))
    gamma = hparams.gamma
    k_u, k_z = jax.random.split(key)
    xs = (jax.random.uniform(k_u, (budget, 3), dtype), jax.random.normal(k_z, (budget,), dtype))

    def body(carry, x):
        (h, k, steps, thetas, policies, P_pi, r_pi, _), (t, s, s0, a0, ret, disc) = carry
        (u_start, u_action, u_next), z = x
        live = h < E
        h = jnp.minimum(h, E - 1)
        s = jnp.where(t == 0, draw(mdp.rho, u_start), s)
        # pi_theta at t = 0, then the frozen policies, newest first
        a = draw(policies[h - t, s], u_action)
        s_next = draw(mdp.P[s, a], u_next)
        s0, a0 = jnp.where(t == 0, s, s0), jnp.where(t == 0, a, a0)
        disc = jnp.where(t == 0, 1, disc)
        ret = jnp.where(t == 0, 0, ret) + disc * (mdp.R[s, a] + std[s, a] * z)
        end = terminal[s_next] | (t + 1 >= jnp.minimum(h + 1, L))
        update = end & live
        eta, n_steps = epoch_schedule(h, hparams, config.schedule)
        # the row s0 of epoch h, recomputed from theta (unchanged unless `update`)
        score = jax.nn.one_hot(a0, mdp.n_actions, dtype=dtype) - policies[h, s0]
        row = thetas[h, s0] + jnp.where(update, eta * ret, 0) * score
        pi_row, P_row, r_row = (x[0] for x in softmax_rows(mdp, row[None], s0[None]))
        thetas, policies = thetas.at[h, s0].set(row), policies.at[h, s0].set(pi_row)
        P_pi, r_pi = P_pi.at[s0].set(P_row), r_pi.at[s0].set(r_row)
        objective = _chain_objective(mdp, P_pi, r_pi, gamma, config)
        evaluated = h  # the epoch whose policy `objective` describes
        k, steps = k + update, steps + update
        finished = update & (k >= n_steps)
        restart = finished & (h + 1 < E)  # the next epoch starts from params0
        P_pi, r_pi = jnp.where(restart, P0, P_pi), jnp.where(restart, r0, r_pi)
        h = jnp.where(live, h + finished, E)
        k = jnp.where(finished, 0, k)
        episode = (jnp.where(end, 0, t + 1), s_next, s0, a0, ret, disc * gamma)
        row = BudgetTrace(objective, h, steps, thetas[evaluated] if keep_params else None)
        return ((h, k, steps, thetas, policies, P_pi, r_pi, evaluated), episode), row

    zero = jnp.int32(0)
    learner = (zero, zero, zero, jnp.broadcast_to(theta0, (E,) + theta0.shape),
               jnp.broadcast_to(pi0, (E,) + pi0.shape), P0, r0, zero)
    episode = (zero, zero, zero, zero, jnp.zeros((), dtype), jnp.ones((), dtype))
    ((h, _, steps, thetas, policies, _, _, last), _), trace = lax.scan(body, (learner, episode),
                                                                       xs)
    return BudgetState(h, steps, thetas[last], thetas, policies), trace
