"""Blackwell policy gradient: the gain-then-bias barrier method of nBw-PG extended to n levels,
`y_{-1}` (gain), then `y_0` (bias), then `y_1`, ..., `y_n` of the Laurent series, exact and sampled.

Dewanto & Gallagher (arXiv 2105.13609) maximise the gain, then the bias under a log-barrier
on the gain, and call this "a first step towards attaining n-discount optimality". Veinott's
n-discount optimality (Puterman 1994, §10.1) orders policies lexicographically by the
Laurent coefficients of the discounted value, `v_gamma = (1 + rho) sum_{k>=-1} rho^k y_k`,
`rho = (1 - gamma) / gamma` (`dsorl.markov.laurent_coefficients`); a policy maximising
`(y_{-1}, ..., y_{S-2})` lexicographically is Blackwell optimal (`dsorl.planning
.blackwell_optimal`). Here everything is at the start state s0 (`Config.state`): the method
maximises `y_{-1}(s0), y_0(s0), ..., y_n(s0)` lexicographically, `n = Config.order`
(`order = 0` is nBw-PG's criterion).

Level L = 0, 1, ..., n + 1 (coefficient `y_{L-1}`; L = 0 the gain) maximises

    B_L(theta) = y_{L-1}(s0) + beta sum_{j < L} log(y_{j-1}(s0) - yhat_j + delta)

where `yhat_j` is the value of `y_{j-1}(s0)` when level j ended. A level ends when
`||grad B_L|| < tolerance` (level 0: nBw's gain-phase test `||grad g|| < eps`); the next
starts with `beta = barrier_init`, divided by `barrier_divisor` after each outer block of
`Config.steps_per_outer` steps (None: never). The last level runs to the end. Steps: the
natural direction of the preconditioner (nBw's eq. 26 generalised: the Gauss-Newton form of
`-grad^2 B_L` with each `-grad^2 y` replaced by a Fisher)

    F_L + sum_{j < L} [(beta / Delta_j) F_j + (beta / Delta_j^2) grad y_{j-1} grad y_{j-1}^T],

`Delta_j = y_{j-1} - yhat_j + delta`, `F_0 = F_g` (gain Fisher) and `F_j = F_b` (the bias
Fisher of eq. 19) for j >= 1, then Armijo backtracking on `B_L` with exact values. The line
search never leaves the interior, so every earlier coefficient stays above `yhat_j - delta`.

**The slack is a tolerance on the earlier levels.** A later level trades earlier ones for
itself wherever it can: with `y_0` fixed near its maximum, `y_1 = -H h` often grows as the
bias falls (in `dsorl.envs.blackwell.blackwell_tie`, taking the bias trap raises `y_1(s0)` from
-1 to 1). The barrier holds `y_{j-1}` within `delta` of `yhat_j`, and its maximiser keeps
`y_{j-1} > yhat_j - delta + beta / rate` (rate: how fast the level gains by lowering
`y_{j-1}`); so `delta` must be small against the gaps between the earlier levels' values
and `beta` not too small (nBw's `delta = 1`, made for the gain, would let `y_1` buy bias
differences below 1). Defaults: `delta = 0.01`, `beta = 0.1`, no division (on
`blackwell_tie` from `theta = 0`, tabular softmax: `beta = 1` leaves `y_1(s0)` at -1.27 after
200 iterations, the large curvature terms `beta / Delta^2` shortening the steps; `beta =
0.1` reaches -1.005 in 80, the gain held at 0.998).

Two algorithms with the contract of `dsorl.algorithms.base`:

* `EXACT` / `run`: exact `y_k(s0)` and gradients (`jax.jacrev` through
  `laurent_coefficients`: one LU, implicit derivatives) and exact Fishers.
* `SAMPLED` / `run_sampled`: gradients and Fishers from `n_episodes` episodes of
  `episode_length` steps (`dsorl.estimators.laurent`: the n-level extension of the paper's
  Thm 3.1/3.2 estimators, derived there; the Fishers of nBw's sampled form,
  `dsorl.estimators.average_reward`), with the exact critic and exact objective values in
  the line search and the level tests (nBw's `line_search="critic"` setting, the paper's
  experiments). Sampled objective values for the line search are not implemented for any
  level here (nBw's coupled-episode values cover the gain and bias only; `y_1(s0) =
  -sum_t (t + 1) (E r_t - g)` would be estimated by sums with weights growing like `t^k`).

Reused from `dsorl.algorithms.nbw`: the natural-direction Armijo step and the policy checks.
"""
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from dsorl import _checks
from dsorl.algorithms import base
from dsorl.algorithms.nbw import (_check_config, _check_policy, _line_search,
                                  _natural_armijo_step, expected_params)
from dsorl.estimators.average_reward import check_mixing
from dsorl.estimators.laurent import laurent_critic, sample_laurent_gradients
from dsorl.fisher import bias_fisher, gain_fisher
from dsorl.markov import laurent_coefficients
from dsorl.mdp import MDP, induced_chain
from dsorl.optim import ArmijoState

Array = jax.Array

__all__ = ["HParams", "Config", "State", "Trace", "Evaluation", "EXACT", "SAMPLED", "run",
           "run_sampled", "validate", "validate_sampled", "expected_params", "outer_update",
           "level_of"]


class HParams(NamedTuple):
    """Traced numbers (sweepable with `vmap`): `barrier_init` beta0 > 0 (beta at the start of
    every level), `barrier_divisor` > 0 (beta /= it per outer block), `slack` delta > 0
    (module docstring: keep it below the gaps of the earlier levels), `tolerance` > 0 (a
    level ends when the norm of its objective's gradient falls below it)."""

    barrier_init: Any = 0.1
    barrier_divisor: Any = 10.0
    slack: Any = 0.01
    tolerance: Any = 1e-4


class Config(NamedTuple):
    """Static settings. `policy`: a `dsorl.policies.Policy`; `order` n >= 0, the last
    coefficient `y_n` maximised (0: nBw-PG's gain then bias); `n_steps` iterations in all,
    beta divided after every `steps_per_outer` (None: never); `state` s0;
    `absorption_time` tau of the bias Fisher (eq. 19); Armijo and natural-direction
    settings as `dsorl.algorithms.nbw.Config`; sampled form only: `episode_length` T and
    `n_episodes` per iteration."""

    policy: Any
    order: int = 1
    n_steps: int = 200
    steps_per_outer: Optional[int] = None
    state: int = 0
    absorption_time: int = 2
    max_backtracking: int = 100
    armijo_c: float = 1e-4
    armijo_shrink: float = 0.5
    damping: float = 0.0
    pseudo_inverse: bool = True
    rcond: Optional[float] = None
    score_clip: Optional[float] = None
    max_expansions: int = 10
    episode_length: int = 0
    n_episodes: int = 16


class Evaluation(NamedTuple):
    """At the state's parameters: `values[n + 2]` = exact `y_{-1..n}(s0)`, their gradients
    `grads[n + 2, d]` (exact or sampled), the Fishers `F_g`, `F_b` `[d, d]`."""

    values: Array
    grads: Array
    gain_fisher: Array
    bias_fisher: Array


class State(NamedTuple):
    """`params`; `level` L (int: coefficient `y_{L-1}` is being maximised); `refs[n + 2]`
    (`yhat_j` of the finished levels, NaN for the others); `beta`; the line search's last
    `ArmijoState`; the `Evaluation` of `params`."""

    params: Any
    level: Array
    refs: Array
    beta: Array
    line_search: ArmijoState
    evaluation: Evaluation


class Trace(NamedTuple):
    """Per iteration, after its step: the barrier objective `B_L` of the step's level at the
    new parameters, exact `values[n + 2]` = `y_{-1..n}(s0)` there, the norm of the gradient
    ascended, the accepted step length, the line search's objective evaluations, the level
    index k = L - 1 of the step (-1: gain); `params` if kept."""

    objective: Array
    values: Array
    grad_norm: Array
    step_size: Array
    evaluations: Array
    level: Array
    params: Any = None


def validate(mdp: MDP, hparams: HParams, config: Config) -> None:
    """Concrete checks: the MDP's randomised policies unichain (`check_mixing`, periodicity
    allowed: a multichain MDP has state-dependent gains and no `y_{-1}(s0)` ordering),
    `order >= 0`, the policy, `barrier_init`, `barrier_divisor`, `slack`, `tolerance` > 0,
    `absorption_time` and `score_clip`."""
    _check_policy(config)
    _check_order(config.order)
    check_mixing(mdp, aperiodic=False)
    for name in ("barrier_init", "barrier_divisor", "slack", "tolerance"):
        _checks.check_positive(name, getattr(hparams, name))
    _check_config(config)


def validate_sampled(mdp: MDP, hparams: HParams, config: Config) -> None:
    """`validate`'s checks, aperiodicity (the last state of an episode stands for a draw from
    `p*`), `n_episodes > 0` and `episode_length >= max(1, absorption_time)`."""
    validate(mdp, hparams, config)
    check_mixing(mdp)
    _checks.check_positive("n_episodes", config.n_episodes)
    if config.episode_length < max(config.absorption_time, 1):
        raise ValueError(f"episode_length = {config.episode_length} must be >= max(1,"
                         f" absorption_time = {config.absorption_time}).")


def init_exact(mdp: MDP, params0, hparams: HParams, key=None, *, config: Config) -> State:
    """Level 0 (the gain), no references, the exact evaluation of `params0`."""
    return _init(params0, hparams, _exact_evaluation(mdp, params0, config), config)


def init_sampled(mdp: MDP, params0, hparams: HParams, key, *, config: Config) -> State:
    """Level 0, the evaluation of `params0` with gradients and Fishers sampled from `key`."""
    return _init(params0, hparams, _sampled_evaluation(mdp, params0, key, config), config)


def step_exact(mdp: MDP, state: State, hparams: HParams, key=None, *, config: Config):
    """One iteration with exact gradients: `(State, Trace row)` (the key is unused)."""
    return _step(mdp, state, hparams, key, config, sampled=False)


def step_sampled(mdp: MDP, state: State, hparams: HParams, key, *, config: Config):
    """One iteration; the next evaluation's gradients and Fishers from `key`."""
    return _step(mdp, state, hparams, key, config, sampled=True)


def outer_update(mdp: MDP, state: State, hparams: HParams, *, config: Config) -> State:
    """After each outer block: `beta /= barrier_divisor` (levels above the gain)."""
    return state._replace(beta=jnp.where(state.level > 0, state.beta / hparams.barrier_divisor,
                                         state.beta))


EXACT = base.Algorithm("blackwell_exact", HParams=HParams, Config=Config, State=State,
                       Trace=Trace, init=init_exact, step=step_exact, validate=validate,
                       expected_params=expected_params, outer_update=outer_update,
                       uses_key=lambda config: False)
SAMPLED = base.Algorithm("blackwell_sampled", HParams=HParams, Config=Config, State=State,
                         Trace=Trace, init=init_sampled, step=step_sampled,
                         validate=validate_sampled, expected_params=expected_params,
                         outer_update=outer_update, uses_key=lambda config: True)


def run(mdp: MDP, params0, hparams: HParams, key=None, *, config: Config,
        keep_params: bool = False):
    """The n-level barrier method with exact gradients: `(final State, Trace[n_steps])`.

    `key` is unused (may be None). Concrete input is checked (`validate`).
    """
    return EXACT.run(mdp, params0, hparams, key, config=config, keep_params=keep_params)


def run_sampled(mdp: MDP, params0, hparams: HParams, key=None, *, config: Config,
                keep_params: bool = False):
    """The n-level barrier method with sampled gradients and Fishers (module docstring);
    iteration `i` samples from `fold_in(key, i)`, the start from `key`."""
    return SAMPLED.run(mdp, params0, hparams, key, config=config, keep_params=keep_params)


def level_of(state_or_trace) -> Array:
    """The coefficient index k = L - 1 of a `State` or a `Trace` (-1: gain, 0: bias, ...)."""
    if isinstance(state_or_trace, State):
        return state_or_trace.level - 1
    return state_or_trace.level


# ----------------------------------------------------------------------------------------


def _check_order(order) -> None:
    if isinstance(order, bool) or not isinstance(order, int) or order < 0:
        raise ValueError(f"config.order = {order!r} must be an integer >= 0 (0: gain then"
                         " bias, as nBw-PG; 1: then y_1; ...).")


def _init(params0, hparams, evaluation, config) -> State:
    dtype = evaluation.values.dtype
    n_levels = evaluation.values.shape[0]
    return State(params0, jnp.asarray(0, jnp.int32), jnp.full((n_levels,), jnp.nan, dtype),
                 jnp.asarray(hparams.barrier_init, dtype), _line_search(config).init(params0),
                 evaluation)


def _barrier_terms(values, level, refs, beta, slack):
    """Masks and gaps of the barriers of level L: `(active[n+2], gaps[n+2])`, inactive gaps 1."""
    active = jnp.arange(values.shape[0]) < level
    gaps = jnp.where(active, values - jnp.where(active, refs, 0) + slack, 1.0)
    return active, gaps


def _objective(values, level, refs, beta, slack):
    active, gaps = _barrier_terms(values, level, refs, beta, slack)
    return values[level] + beta * jnp.sum(jnp.where(active, jnp.log(gaps), 0))


def _direction_terms(ev, level, refs, beta, slack):
    """Gradient `[d]` and preconditioner `[d, d]` of `B_L` (module docstring)."""
    active, gaps = _barrier_terms(ev.values, level, refs, beta, slack)
    weights = jnp.where(active, beta / gaps, 0)
    grad = ev.grads[level] + weights @ ev.grads
    n_levels = ev.values.shape[0]
    fishers = jnp.where((jnp.arange(n_levels) == 0)[:, None, None], ev.gain_fisher[None],
                        ev.bias_fisher[None])                       # F_j of each level
    curvature = jnp.where(active, beta / gaps ** 2, 0)
    precond = (fishers[level] + jnp.einsum("j,jab->ab", weights, fishers)
               + jnp.einsum("j,ja,jb->ab", curvature, ev.grads, ev.grads))
    return grad, precond


def _step(mdp, state, hparams, key, config, *, sampled):
    flat, unravel = ravel_pytree(state.params)
    ev, last = state.evaluation, state.evaluation.values.shape[0] - 1
    grad_now, _ = _direction_terms(ev, state.level, state.refs, state.beta, hparams.slack)
    advance = (state.level < last) & (jnp.linalg.norm(grad_now) < hparams.tolerance)
    level = state.level + advance.astype(state.level.dtype)
    refs = jnp.where(advance & (jnp.arange(last + 1) == state.level), ev.values, state.refs)
    beta = jnp.where(advance, jnp.asarray(hparams.barrier_init, flat.dtype), state.beta)
    grad, precond = _direction_terms(ev, level, refs, beta, hparams.slack)
    objective = _objective(ev.values, level, refs, beta, hparams.slack)

    def value(theta):
        return _objective(_values(mdp, unravel, theta, config), level, refs, beta,
                          hparams.slack)

    update, line_search = _natural_armijo_step(flat, grad, precond, objective, value,
                                               state.line_search, config)
    params = unravel(flat + update)
    evaluation = (_sampled_evaluation(mdp, params, key, config) if sampled
                  else _exact_evaluation(mdp, params, config))
    new = State(params, level, refs, beta, line_search, evaluation)
    row = Trace(_objective(evaluation.values, level, refs, beta, hparams.slack),
                evaluation.values, jnp.linalg.norm(grad), line_search.step_size,
                line_search.evaluations, level - 1)
    return new, row


def _values(mdp, unravel, theta, config):
    chain = induced_chain(mdp, config.policy.probs(unravel(theta)))
    return laurent_coefficients(chain, config.order)[:, config.state]


def _fishers(mdp, params, config):
    return (gain_fisher(mdp, config.policy, params, score_clip=config.score_clip),
            bias_fisher(mdp, config.policy, params, config.state,
                        absorption_time=config.absorption_time, score_clip=config.score_clip))


def _exact_evaluation(mdp, params, config) -> Evaluation:
    flat, unravel = ravel_pytree(params)

    def values(theta):
        v = _values(mdp, unravel, theta, config)
        return v, v

    grads, v = jax.jacrev(values, has_aux=True)(flat)
    return Evaluation(v, grads, *_fishers(mdp, params, config))


def _sampled_evaluation(mdp, params, key, config) -> Evaluation:
    critic = laurent_critic(mdp, config.policy.probs(params), config.order)
    est = sample_laurent_gradients(
        key, mdp, config.policy, params, config.state, order=config.order,
        episode_length=config.episode_length, n_episodes=config.n_episodes, critic=critic,
        absorption_time=config.absorption_time, score_clip=config.score_clip)
    mean = jax.tree_util.tree_map(lambda x: x.mean(axis=0), est)
    return Evaluation(critic.y[:-1, config.state], mean.gradients, mean.gain_fisher,
                      mean.bias_fisher)
