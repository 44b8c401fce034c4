"""Nearly Blackwell-optimal policy gradient: the gain-then-bias barrier method, exact and sampled,
and the natural discounted-reward policy gradient it is compared with.

Dewanto & Gallagher, "A nearly Blackwell-optimal policy gradient method" (arXiv 2105.13609),
§5 (Algorithms 1 and 2) and §6.4. One iteration at parameters theta:

* gain phase: ascend the gain g with the natural gradient `F_g^+ grad g` until
  `||grad g|| < eps`; then record `g_ref = g(theta)` and switch, with `beta = beta0`;
* barrier phase: ascend `B(theta) = h(s0) + beta log(g - g_ref + delta)` (eq. 23) preconditioned
  by eq. 26, `F_b + (beta / Delta) F_g + (beta / Delta^2) grad g grad g^T`, `Delta = g - g_ref +
  delta`; `beta` is divided by `barrier_divisor` after each outer iteration.

The step length is Armijo backtracking (Boyd & Vandenberghe 2004, Alg. 9.2: alpha0 = 1,
c = 1e-4, halving, at most 100 tries, 0 if none is accepted; `armijo_backtracking`, an optax
transformation that also stops once the first-order increase is below the objective's
rounding level); the direction by `dsorl.optim.natural_direction` (pseudo-inverse by
default, as the authors' code). Differences from the authors' code: the
iteration that ends the gain phase also takes the first barrier step (theirs skips it), and
`F_b` is always eq. 19 with `tau = 2`.

`run` (Algorithm 1) uses exact gradients and Fishers. `run_sampled` (Algorithm 2) estimates
every gradient and Fisher from `n_episodes` episodes in **both** phases (the authors' code used
exact ones in the gain phase and in the line search), including the gain-phase stopping test
and the slope `c alpha grad.d` of the Armijo test. The critic (`q_b`, `q_w` of the gradient
estimators) is exact, as in the paper's sampled experiments ("all policy evaluations are
exact", §6.3). The objective values are estimated from samples too (`line_search="sampled"`,
the default); the line search of one iteration is done as follows.

1. Draw one array of uniforms `[line_search_episodes, T + M, 2]` (a key independent of the
   gradient's) and run episodes from s0 on it at the current parameters and at every trial
   point, each draw the inverse cumulative law of its uniform (common random numbers,
   `dsorl.estimators.average_reward.coupled_episodes`).
2. Each episode gives `g_hat = mean_{T<=t<T+M} r_t` and `h_hat = sum_{t<T} r_t - T g_hat`
   (`value_samples`: truncation bias `O(||P^T(s0, .) - p*||_1)`, variance dominated by
   `T^2 Var g_hat`); their means give the gain objective or the barrier
   `h_hat + beta log(g_hat - g_ref + delta)`.
3. Armijo compares the paired difference `f_hat(x + alpha d) - f_hat(x)` with
   `c alpha grad_hat.d + z SE`, SE the standard error of the paired difference (per-episode
   terms by the delta method) and z = `hparams.confidence` (default 2). Coupled episodes
   coincide until a uniform falls between the two policies' cumulative laws (probability
   O(alpha)), so the paired variance vanishes with the step, while independent estimates
   keep `2 Var f_hat`; the z SE margin keeps noise from passing for an increase (Env A3,
   6 x 6 start grid, 2 seeds: mean bias error 1.19 with z = 0, 0.12 with z = 2).
4. The coupled estimate is piecewise constant in alpha: a trial whose episodes all draw as
   at `x`, or whose increase is positive but not significant, is "unresolved". The search
   starts at alpha = 1 and halves after a resolved rejection; it stops (step 0) at an
   unresolved trial, except that while every trial so far was unresolved (a nearly
   deterministic policy that alpha = 1 barely moves) it doubles the step instead, at most
   `max_expansions` times (`armijo_backtracking`).

The same estimates give the barrier gap, `g_ref` at the switch, and the traced `objective`;
when the sampled gap is <= 0 (outside the barrier's domain) the iteration takes a gain step
instead. The price: the line search runs `line_search_episodes` episodes of `T + M` steps
per trial (the critic's costs one linear solve), and increases smaller than z standard
errors of `line_search_episodes` episodes are invisible to it. `line_search="critic"` keeps
the paper's exact objective values for comparison. `discounted_run` is the baseline: natural
gradient ascent on `(1 - gamma) v_gamma(s0)` with the discounted Fisher (eq. 33).

Each `run` is one `lax.scan` (outer iterations of inner iterations), jittable end to end and
`vmap`pable over `params0`, `hparams`, `key` and over MDPs of equal size.
"""
from functools import partial
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from dsorl import _checks
from dsorl.envs.nbw import PAPER_SETTINGS
from dsorl.estimators.average_reward import (check_mixing, common_uniforms, coupled_episodes,
                                             mean_estimates, oracle_critic, sample_estimates,
                                             value_samples)
from dsorl.fisher import barrier_preconditioner, bias_fisher, discounted_fisher, gain_fisher
from dsorl.markov import bias, discounted_value, gain
from dsorl.mdp import MDP, induced_chain
from dsorl.optim import natural_direction

Array = jax.Array


class BarrierHyperparams(NamedTuple):
    """Traced numbers of Algorithm 1 (sweepable with `vmap`).

    `barrier_init` beta0 > 0, `barrier_divisor` > 0 (beta /= it per outer iteration),
    `slack` delta > 0, `gain_tolerance` eps > 0 (the gain phase ends when `||grad g|| < eps`).
    `confidence` z >= 0, `run_sampled`'s sampled line search only: a trial must beat the
    Armijo bound by z standard errors of the sampled increase.
    """

    barrier_init: Any = 100.0
    barrier_divisor: Any = 10.0
    slack: Any = 1.0
    gain_tolerance: Any = 1e-4
    confidence: Any = 2.0


class BarrierConfig(NamedTuple):
    """Static settings of Algorithms 1 and 2 (sizes, counts and choices of method).

    `inner_iterations` x `outer_iterations` steps in all (the authors ran 100 x 1);
    `state` s0, the state whose bias is maximised; `absorption_time` tau of eq. 19;
    Armijo settings; the natural direction's `damping`, `pseudo_inverse` and `rcond`;
    `keep_params` adds the parameters to the trace. Algorithm 2 only: `episode_length` T,
    `n_episodes` N per iteration, `baseline` and `post_mixing` of the gradient estimators;
    `line_search` "sampled" (objective values from coupled episodes, `run_sampled`) or
    "critic" (from the exact critic, as the paper's experiments); for "sampled",
    `line_search_episodes` episodes of `T + gain_window` steps (`gain_window` None: T) and at
    most `max_expansions` doublings of the step while the estimate is unresolved.
    """

    inner_iterations: int = 100
    outer_iterations: int = 1
    state: int = 0
    absorption_time: int = 2
    max_backtracking: int = 100
    armijo_c: float = 1e-4
    armijo_shrink: float = 0.5
    damping: float = 0.0
    pseudo_inverse: bool = True
    rcond: Optional[float] = None
    keep_params: bool = False
    episode_length: int = 0
    n_episodes: int = 16
    baseline: bool = True
    post_mixing: str = "score"
    line_search: str = "sampled"
    line_search_episodes: int = 16
    max_expansions: int = 10
    gain_window: Optional[int] = None


class BarrierState(NamedTuple):
    """`params` (pytree like `params0`), phase flag, `gain_ref` (g_hat*), `beta`, and the
    line search's optax state."""

    params: Any
    in_barrier: Array
    gain_ref: Array
    beta: Array
    line_search: Any


class Trace(NamedTuple):
    """Per iteration, before its step: objective (as the algorithm estimates it: sampled in
    `run_sampled`'s sampled line search), exact gain and bias at s0, norm of the (sampled)
    gradient of the objective, accepted step length, number of objective evaluations of
    the line search, phase; `params` if kept."""

    objective: Array
    gain: Array
    bias: Array
    grad_norm: Array
    step_size: Array
    evaluations: Array
    in_barrier: Array
    params: Any = None


LINE_SEARCHES = ("sampled", "critic")


class _Evaluation(NamedTuple):
    gain: Array
    bias: Array
    grad_gain: Array
    grad_bias: Array
    gain_fisher: Array
    bias_fisher: Array


def paper_hyperparams(env_name: str) -> BarrierHyperparams:
    """Algorithm 1's settings in the paper's experiments (§6.3) for env `A1`..`B3`."""
    kind = env_name.removeprefix("Env-")[0]
    return BarrierHyperparams(PAPER_SETTINGS["barrier_init"][kind],
                              PAPER_SETTINGS["barrier_divisor"], PAPER_SETTINGS["barrier_slack"],
                              PAPER_SETTINGS["gain_phase_tolerance"])  # confidence: ours


def init(mdp: MDP, params0, hparams: BarrierHyperparams, *, policy, config: BarrierConfig,
         gain_reference=None) -> BarrierState:
    """Initial state: gain phase, or the barrier phase at once if `gain_reference` is given.

    With `gain_reference` (a known or previously reached g_hat*), the barrier method needs a
    strictly feasible start, `g(params0) - gain_reference + slack > 0`; concrete input that
    has none (the environment has no reachable gain-optimal interior from here) raises
    `ValueError`.
    """
    _validate(mdp, hparams, config)
    dtype = ravel_pytree(params0)[0].dtype
    if gain_reference is None:
        in_barrier, gain_ref, beta = False, jnp.zeros((), dtype), jnp.zeros((), dtype)
    else:
        in_barrier, gain_ref = True, jnp.asarray(gain_reference, dtype)
        beta = jnp.asarray(hparams.barrier_init, dtype)
        gap = gain(induced_chain(mdp, policy.probs(params0))) - gain_ref + hparams.slack
        if _checks.is_concrete(gap) and not float(gap) > 0:
            raise ValueError(f"no strictly feasible start for the barrier: g(params0) -"
                             f" gain_reference + slack = {float(gap):.6g} <= 0 (the"
                             " constraint set g >= gain_reference - slack has no interior"
                             " point here).")
    return BarrierState(params0, jnp.asarray(in_barrier), gain_ref, beta,
                        _line_search(config).init(ravel_pytree(params0)[0]))


def step(mdp: MDP, state: BarrierState, hparams: BarrierHyperparams, key, *, policy,
         config: BarrierConfig, sampled: bool = False):
    """One iteration of Algorithm 1 (`sampled=False`) or 2: returns `(state, Trace row)`.

    With `sampled` and `config.line_search == "sampled"`, the gain and bias values the
    iteration uses (objective, barrier gap, `g_ref` at the switch, Armijo test) are the
    coupled-episode estimates of `_sampled_values` (see `run_sampled`).
    """
    flat, unravel = ravel_pytree(state.params)
    s0 = config.state
    if sampled:
        _check_line_search(config)
        ev = _sampled_evaluation(mdp, policy, state.params, key, config)
    else:
        ev = _exact_evaluation(mdp, policy, state.params, s0, config.absorption_time)
    from_samples = sampled and config.line_search == "sampled"
    if from_samples:
        base, trial = _sampled_values(mdp, policy, unravel, flat, jax.random.fold_in(key, 1),
                                      config)
        g_now, h_now = base.gain.mean(), base.bias.mean()
    else:
        g_now, h_now = ev.gain, ev.bias
    switch = ~state.in_barrier & (jnp.linalg.norm(ev.grad_gain) < hparams.gain_tolerance)
    in_barrier = state.in_barrier | switch
    gain_ref = jnp.where(switch, g_now, state.gain_ref)
    beta = jnp.where(switch, jnp.asarray(hparams.barrier_init, flat.dtype), state.beta)
    gap = g_now - gain_ref + hparams.slack
    # A barrier step needs a feasible point, gap > 0: always so with exact values (the line
    # search never leaves the interior); a sampled gap can be <= 0, and then the iteration
    # ascends the gain instead (a feasibility step), as in the gain phase.
    barrier_step = in_barrier & (gap > 0)

    # Otherwise the barrier quantities are unused; keep them valid (beta = gap = 1).
    safe_gap = jnp.where(barrier_step, gap, 1.0)
    safe_beta = jnp.where(barrier_step, beta, 1.0)
    grad = jnp.where(barrier_step, ev.grad_bias + beta / safe_gap * ev.grad_gain,
                     ev.grad_gain)
    precond = jnp.where(barrier_step,
                        barrier_preconditioner(ev.bias_fisher, ev.gain_fisher, ev.grad_gain,
                                               safe_beta, safe_gap),
                        ev.gain_fisher)
    objective = jnp.where(barrier_step, h_now + beta * jnp.log(safe_gap), g_now)

    def objective_at(g, h):
        return jnp.where(barrier_step, h + beta * jnp.log(g - gain_ref + hparams.slack), g)

    def exact_value(theta):
        chain = induced_chain(mdp, policy.probs(unravel(theta)))
        return objective_at(gain(chain), bias(chain)[s0])

    def sampled_value(theta):
        # The estimate at theta minus `confidence` standard errors of the paired difference
        # from the current point, so Armijo accepts only increases that the samples resolve.
        # Per-episode terms of the difference by the delta method (first order in the means).
        samples, changed = trial(theta)
        g, h = samples.gain.mean(), samples.bias.mean()

        def influence(v, g_mean):
            return jnp.where(barrier_step, v.bias + beta * v.gain / (g_mean - gain_ref
                                                                   + hparams.slack), v.gain)

        paired = influence(samples, g) - influence(base, g_now)
        se = jnp.std(paired, ddof=1) / jnp.sqrt(paired.shape[0])
        f = objective_at(g, h)
        # unresolved: no episode changed, or a positive increase not yet significant
        resolved = changed & ~((f > objective) & (f - hparams.confidence * se < objective))
        return f - hparams.confidence * se, resolved

    value = sampled_value if from_samples else exact_value
    update, line_search, step_size = _natural_armijo_step(
        flat, grad, precond, objective, value, state.line_search, config)
    new = BarrierState(unravel(flat + update), in_barrier, gain_ref, beta, line_search)
    row = Trace(objective, ev.gain, ev.bias, jnp.linalg.norm(grad), step_size,
                line_search.evaluations, in_barrier,
                state.params if config.keep_params else None)
    return new, row


def run(mdp: MDP, params0, hparams: BarrierHyperparams, key=None, *, policy,
        config: BarrierConfig = BarrierConfig(), gain_reference=None):
    """Algorithm 1 with exact gradients and Fishers: `(final BarrierState, Trace[iterations])`.

    `key` is unused (kept for the common `run` signature). Concrete input is checked: the
    MDP's randomised policies unichain (`check_mixing`, periodicity allowed), `beta0`,
    `slack`, `gain_tolerance`, `barrier_divisor` > 0.
    """
    return _run(mdp, params0, hparams, key, policy, config, gain_reference, sampled=False)


def run_sampled(mdp: MDP, params0, hparams: BarrierHyperparams, key, *, policy,
                config: BarrierConfig, gain_reference=None):
    """Algorithm 2: Algorithm 1 with gradients, Fishers and objective values from episodes.

    Each iteration `k` uses the key `fold_in(key, k)`. Gradients and Fishers: the means of
    `dsorl.estimators.average_reward.sample_estimates` over `config.n_episodes` episodes of
    `config.episode_length` steps from `config.state`, with the exact critic.
    Line search (`config.line_search="sampled"`, the default; steps 1-4 of the module
    docstring): from a second key (`fold_in(key_k, 1)`), one array of uniforms
    `[line_search_episodes, T + M, 2]` (`M = gain_window`, default T) drives coupled episodes
    at the current parameters and at every trial point; the gain and the bias at s0 are the
    episode means of `g_hat` (rewards of steps T..T+M-1) and `h_hat = sum_{t<T} r_t - T g_hat`
    (truncation bias and variance: `value_samples`). Armijo backtracking (alpha0 = 1,
    halving) accepts the first trial whose sampled objective exceeds that at the current
    point by `c alpha grad_hat.d` plus `hparams.confidence` standard errors of the paired
    difference; it doubles the step (at most `max_expansions` times) while the trials are
    unresolved from the start, and stops with step 0 at an unresolved trial otherwise. The
    barrier gap `g_hat - g_ref + delta`, `g_ref` (g_hat at the switch) and the traced
    `objective` are these estimates; a sampled gap <= 0 gives a gain step. The gain-phase
    test `||grad_hat g|| < eps` uses the sampled gain gradient. The traced `gain` and `bias`
    are the iterates' exact values (diagnostics; the algorithm does not use them).
    `line_search="critic"`: objective values from the exact critic (the paper's setting).
    Concrete input is also checked for aperiodicity, `n_episodes > 0`,
    `episode_length >= absorption_time`, `line_search`, `line_search_episodes > 0` and
    `gain_window >= 1`.
    """
    return _run(mdp, params0, hparams, key, policy, config, gain_reference, sampled=True)


def _run(mdp, params0, hparams, key, policy, config, gain_reference, *, sampled):
    if sampled:
        _validate_sampling(mdp, hparams, config)
    state = init(mdp, params0, hparams, policy=policy, config=config,
                 gain_reference=gain_reference)
    key = jax.random.key(0) if key is None else key
    one_step = partial(step, mdp, hparams=hparams, policy=policy, config=config,
                       sampled=sampled)

    def inner(state, k):
        return one_step(state, key=jax.random.fold_in(key, k))

    def outer(state, ks):
        state, rows = lax.scan(inner, state, ks)
        beta = jnp.where(state.in_barrier, state.beta / hparams.barrier_divisor, state.beta)
        return state._replace(beta=beta), rows

    ks = jnp.arange(config.outer_iterations * config.inner_iterations).reshape(
        config.outer_iterations, config.inner_iterations)
    state, rows = lax.scan(outer, state, ks)
    return state, jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), rows)


# ----------------------------------------------------------------------------------------
# Baseline: natural discounted-reward policy gradient (§6.4)


class DiscountedHyperparams(NamedTuple):
    """`gamma` in [0, 1); `tolerance`: stop at a local maximum, `||grad|| <= tolerance` with
    a negative semi-definite Hessian (the authors' rule)."""

    gamma: Any = 0.99
    tolerance: Any = 1e-4


class DiscountedState(NamedTuple):
    params: Any
    stopped: Array
    line_search: Any


def discounted_run(mdp: MDP, params0, hparams: DiscountedHyperparams, key=None, *, policy,
                   config: BarrierConfig = BarrierConfig()):
    """Natural discounted PG maximising `(1 - gamma) v_gamma(s0)`: `(final state, Trace)`.

    `v_gamma(s0) = rho . (I - gamma P_pi)^{-1} r_pi` (`mdp.rho`), gradient by autodiff,
    preconditioner the discounted Fisher `sum_s d_gamma(s) F(s)` (eq. 33), Armijo steps as in
    `run`; `config.inner_iterations x outer_iterations` iterations. The trace's `bias` and
    `gain` are those of the current policy (`in_barrier` is always False). The Hessian of
    the stopping rule costs `d` gradient evaluations. `key` is unused.
    """
    _checks.check_discount(hparams.gamma)
    _checks.check_positive("tolerance", hparams.tolerance, allow_zero=True)
    flat0, unravel = ravel_pytree(params0)
    s0, gamma = config.state, hparams.gamma

    def objective(theta):
        chain = induced_chain(mdp, policy.probs(unravel(theta)))
        return (1 - gamma) * (mdp.rho @ discounted_value(chain, gamma))

    def one_step(state, _):
        flat = ravel_pytree(state.params)[0]
        f, grad = jax.value_and_grad(objective)(flat)
        curvature = jnp.linalg.eigvalsh(jax.hessian(objective)(flat))
        stopped = state.stopped | ((jnp.linalg.norm(grad) <= hparams.tolerance)
                                   & jnp.all(curvature <= 0))
        precond = discounted_fisher(mdp, policy, unravel(flat), gamma)
        update, line_search, step_size = _natural_armijo_step(
            flat, grad, precond, f, objective, state.line_search, config)
        update, step_size = jnp.where(stopped, 0, update), jnp.where(stopped, 0, step_size)
        chain = induced_chain(mdp, policy.probs(state.params))
        row = Trace(f, gain(chain), bias(chain)[s0], jnp.linalg.norm(grad), step_size,
                    line_search.evaluations, jnp.asarray(False),
                    state.params if config.keep_params else None)
        return DiscountedState(unravel(flat + update), stopped, line_search), row

    state = DiscountedState(params0, jnp.asarray(False), _line_search(config).init(flat0))
    n = config.outer_iterations * config.inner_iterations
    return lax.scan(one_step, state, None, length=n)


# ----------------------------------------------------------------------------------------
# Shared pieces


def _exact_evaluation(mdp, policy, params, s0, absorption_time) -> _Evaluation:
    flat, unravel = ravel_pytree(params)

    def values(theta):
        chain = induced_chain(mdp, policy.probs(unravel(theta)))
        v = jnp.stack([gain(chain), bias(chain)[s0]])
        return v, v

    jac, (g, h) = jax.jacrev(values, has_aux=True)(flat)
    return _Evaluation(g, h, jac[0], jac[1], gain_fisher(mdp, policy, params),
                       bias_fisher(mdp, policy, params, s0, absorption_time=absorption_time))


def _sampled_evaluation(mdp, policy, params, key, config) -> _Evaluation:
    critic = oracle_critic(mdp, policy, params)
    est = mean_estimates(sample_estimates(
        key, mdp, policy, params, config.state, episode_length=config.episode_length,
        n_episodes=config.n_episodes, critic=critic, absorption_time=config.absorption_time,
        baseline=config.baseline, post_mixing=config.post_mixing))
    return _Evaluation(critic.gain, critic.bias[config.state], est.gain_gradient,
                       est.bias_gradient, est.gain_fisher, est.bias_fisher)


def _sampled_values(mdp, policy, unravel, flat, key, config):
    """Per-episode gain and bias estimates at s0 from `line_search_episodes` coupled episodes.

    Returns `(base, trial)`: the `ValueSamples` at `flat`, and `trial(theta) ->
    (ValueSamples, changed)` on the same uniforms (common random numbers), `changed`
    telling whether any episode draws differently from those at `flat`.
    """
    T = config.episode_length
    window = T if config.gain_window is None else config.gain_window
    uniforms = common_uniforms(key, T + window, config.line_search_episodes, flat.dtype)

    def episodes(theta):
        return coupled_episodes(mdp, policy.probs(unravel(theta)), config.state, uniforms)

    base = episodes(flat)

    def trial(theta):
        eps = episodes(theta)
        return value_samples(eps, episode_length=T), jnp.any(eps.actions != base.actions)

    return value_samples(base, episode_length=T), trial


def armijo_backtracking(*, alpha0=1.0, c=1e-4, shrink=0.5, max_tries: int = 100,
                        max_expansions: int = 0) -> optax.GradientTransformationExtraArgs:
    """Armijo backtracking for maximisation, as an optax transformation.

    `update(direction, state, params, value=f(x), grad=g, value_fn=f)` returns
    `alpha * direction` for the first `alpha = alpha0 shrink^k`, `k < max_tries`, with
    `f(x + alpha d) >= f(x) + c alpha g.d` and a finite `f(x + alpha d)` (Boyd & Vandenberghe
    2004, Alg. 9.2; Dewanto & Gallagher §6.3), and 0 when none qualifies or `g.d <= 0`
    (a non-ascent direction, possible with sampled gradients). The search also gives up
    (step 0) once the first-order increase `alpha g.d` falls below the rounding level of
    `f`, `4 eps max(1, |f|)`: past it the test compares rounding errors (at a converged point it
    would otherwise always run `max_tries` evaluations, and a `vmap` of the search runs as
    long as its slowest member). `g` and `d` are flat vectors; `value_fn` is any jittable
    scalar function of the flat parameters.

    For objectives estimated from coupled samples (`run_sampled`), piecewise constant in the
    step, `value_fn` may return `(f, resolved)`: `resolved` False says the trial's samples
    cannot decide it (they draw as at `x`, or show an increase too small to be significant)
    and that a shorter step would decide even less. The search stops (step 0) at an
    unresolved rejected trial, except that while every trial so far was unresolved it
    lengthens the step instead (`alpha / shrink`, at most `max_expansions` times); after an
    expansion, the first resolved trial decides (accepted, or step 0). Without `resolved`,
    `max_expansions` has no effect.

    The state keeps the last `step_size` and the number of `evaluations`. The numbers may be
    traced. (`optax.scale_by_backtracking_linesearch` minimises, returns its last tiny trial
    instead of 0 on failure, and has no rounding-level stop, which is what keeps a vmapped
    grid of searches short.)
    """

    def init(params):
        dtype = ravel_pytree(params)[0].dtype
        return ArmijoState(jnp.zeros((), dtype), jnp.zeros((), jnp.int32))

    def update(updates, state, params, *, value, grad, value_fn, **extra):
        del state, extra
        x, d = ravel_pytree(params)[0], ravel_pytree(updates)[0]
        slope = jnp.vdot(ravel_pytree(grad)[0], d)
        resolution = 4 * jnp.finfo(x.dtype).eps * jnp.maximum(1, jnp.abs(value))

        def searching(carry):
            k, alpha, _, done, _ = carry
            return ~done & (k < max_tries) & (alpha * slope > resolution)

        def trial(carry):
            k, alpha, _, _, grown = carry
            out = value_fn(x + alpha * d)
            f, resolved = out if isinstance(out, tuple) else (out, True)
            resolved = jnp.asarray(resolved, bool)
            accepted = jnp.isfinite(f) & (f >= value + c * alpha * slope)
            # expand only while every trial so far has expanded (grown == k)
            expand = ~accepted & ~resolved & (grown == k) & (grown < max_expansions)
            done = accepted | (~resolved & ~expand) | (resolved & (grown > 0))
            alpha = jnp.where(accepted, alpha, jnp.where(expand, alpha / shrink,
                                                         alpha * shrink))
            return k + 1, alpha, accepted, done, grown + expand

        start = (jnp.int32(0), jnp.asarray(alpha0, x.dtype), jnp.asarray(False),
                 jnp.asarray(False), jnp.int32(0))
        k, alpha, accepted, _, _ = lax.while_loop(searching, trial, start)
        alpha = jnp.where(accepted, alpha, 0)
        return ravel_pytree(updates)[1](alpha * d), ArmijoState(alpha, k)

    return optax.GradientTransformationExtraArgs(init, update)


class ArmijoState(NamedTuple):
    step_size: Array
    evaluations: Array


def _line_search(config):
    return armijo_backtracking(c=config.armijo_c, shrink=config.armijo_shrink,
                               max_tries=config.max_backtracking,
                               max_expansions=config.max_expansions)


def _natural_armijo_step(flat, grad, precond, value, value_fn, ls_state, config):
    """Natural direction `precond^+ grad` (or damped solve), then Armijo backtracking."""
    nd = natural_direction(config.damping, pseudo_inverse=config.pseudo_inverse,
                           rcond=config.rcond)
    direction, _ = nd.update(grad, nd.init(flat), flat, fisher=precond)
    update, ls_state = _line_search(config).update(direction, ls_state, flat, value=value,
                                                   grad=grad, value_fn=value_fn)
    return update, ls_state, ls_state.step_size


def _validate(mdp, hparams, config) -> None:
    check_mixing(mdp, aperiodic=False)
    for name in ("barrier_init", "barrier_divisor", "slack", "gain_tolerance"):
        _checks.check_positive(name, getattr(hparams, name))
    if config.inner_iterations < 1 or config.outer_iterations < 1:
        raise ValueError("inner_iterations and outer_iterations must be >= 1.")


def _validate_sampling(mdp, hparams, config) -> None:
    check_mixing(mdp)
    _checks.check_positive("n_episodes", config.n_episodes)
    if config.episode_length < max(config.absorption_time, 1):
        raise ValueError(f"episode_length = {config.episode_length} must be >= max(1,"
                         f" absorption_time = {config.absorption_time}).")
    _check_line_search(config)
    if config.line_search == "sampled":
        _checks.check_positive("confidence", hparams.confidence, allow_zero=True)
        if config.line_search_episodes < 2:  # a standard error needs two episodes
            raise ValueError(f"line_search_episodes = {config.line_search_episodes} must be"
                             " >= 2.")
        if config.gain_window is not None and config.gain_window < 1:
            raise ValueError(f"gain_window = {config.gain_window} must be >= 1 (or None: the"
                             " episode length).")


def _check_line_search(config) -> None:
    if config.line_search not in LINE_SEARCHES:
        raise ValueError(f"line_search = {config.line_search!r}; choose one of"
                         f" {LINE_SEARCHES}.")


__all__ = ["BarrierHyperparams", "BarrierConfig", "BarrierState", "Trace", "LINE_SEARCHES",
           "paper_hyperparams", "init", "step", "run", "run_sampled", "armijo_backtracking",
           "ArmijoState", "DiscountedHyperparams", "DiscountedState", "discounted_run"]
