"""Nearly Blackwell-optimal policy gradient: the gain-then-bias barrier method, exact and sampled,
and the natural discounted-reward policy gradient it is compared with.

Dewanto & Gallagher, "A nearly Blackwell-optimal policy gradient method" (arXiv 2105.13609),
§5 (Algorithms 1 and 2) and §6.4. One iteration at parameters theta:

* gain phase: ascend the gain g with the natural gradient `F_g^+ grad g` until
  `||grad g|| < eps`; then record `g_ref = g(theta)` and switch, with `beta = beta0`;
* barrier phase: ascend `B(theta) = h(s0) + beta log(g - g_ref + delta)` (eq. 23) preconditioned
  by eq. 26, `F_b + (beta / Delta) F_g + (beta / Delta^2) grad g grad g^T`, `Delta = g - g_ref +
  delta`; `beta` is divided by `barrier_divisor` after each outer block of
  `config.steps_per_outer` steps (`outer_update`; None: one block, as the authors' 100 x 1).

The step length is Armijo backtracking (Boyd & Vandenberghe 2004, Alg. 9.2: alpha0 = 1,
c = 1e-4, halving, at most 100 tries, 0 if none is accepted;
`dsorl.optim.armijo_backtracking`, which also stops once the first-order increase is below
the objective's rounding level); the direction by `dsorl.optim.natural_direction`
(pseudo-inverse by default, as the authors' code). Differences from the authors' code: the
iteration that ends the gain phase also takes the first barrier step (theirs skips it), and
`F_b` is always eq. 19 with `tau = 2`. Their scores come from
`torch.distributions.Categorical(probs).log_prob`, which clips the probabilities to
`[eps, 1 - eps]`; `Config.score_clip` emulates it (`dsorl.fisher.score_table`; default: the
exact score). Fig. 6's mean bias errors on the 41 x 41 grid: exact score B2 0.644, B3 0.323;
`score_clip = 2.2e-16` B2 0.644, B3 0.761; the authors' B2 0.634, B3 0.751 (A1-B1 agree to
the digits given in every case). The residual is not the switch iteration (skipping that
step leaves all 1681 final errors unchanged): B2 and B3 outcomes turn on line-search trials
accepted or rejected at rounding level, so matching every start would mean copying torch's
floating-point arithmetic (e.g. without our rounding-level stop B3 moves from 0.761 to 0.412).

Three algorithms with the contract of `dsorl.algorithms.base` (`HParams`, `Config`, `State`,
`Trace` shared; the discounted baseline has its own hyperparameters and state):

* `EXACT` / `run` (Algorithm 1): exact gradients and Fishers.
* `SAMPLED` / `run_sampled` (Algorithm 2): every gradient and Fisher from `n_episodes` episodes
  in **both** phases (the authors' code used exact ones in the gain phase and in the line
  search), including the gain-phase stopping test and the slope `c alpha grad.d` of the
  Armijo test. The critic (`q_b`, `q_w` of the gradient estimators) is exact, as in the
  paper's sampled experiments ("all policy evaluations are exact", §6.3). The objective
  values are estimated from samples too (`line_search="sampled"`, the default); the line
  search of one iteration is done as follows.

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
  errors of `line_search_episodes` episodes are invisible to it. `line_search="critic"`
  keeps the paper's exact objective values for comparison.
* `DISCOUNTED` / `discounted_run`: the baseline, natural gradient ascent on
  `(1 - gamma) v_gamma(s0)` with the discounted Fisher (eq. 33).

Mixing-time regularisation (Morimura, Osogami & Shirai, AAAI 2014; issue 14 item 4), in
Algorithms 1 and 2: with `config.mixing_measure` set (one of `dsorl.mixing.MEASURES`:
Kemeny's constant, the stationary hitting time of `config.mixing_state`, or `||H||_F`) and
`hparams.mixing_weight` lambda >= 0, every phase's objective loses `lambda M(theta)`, `M`
the measure of the induced chain: the gain phase ascends `g - lambda M` (and ends when
`||grad (g - lambda M)|| < eps`), the barrier phase `B(theta) - lambda M`. The
preconditioners are unchanged. `config.mixing_gradient = "exact"` (default): `M` and its
gradient are exact (implicit, one LU) in both algorithms, so Algorithm 2 samples only the
gain and bias terms and the penalty enters its sampled line search as an exact,
deterministic term. `"sampled"` (Algorithm 2 with Kemeny's constant only; other measures
have no sampled estimator here): `grad K` is the mean of
`dsorl.estimators.mixing.kemeny_gradient_samples` over `n_episodes` bundles of episodes of
T_K steps (`config.mixing_episode_length`, default T), one from every state (the bias
gradient of the reward `1{state = s}` at start s, summed over s: `grad K = sum_s grad
H_ss`), from `fold_in(key, 2)`; with `line_search="sampled"` the value `K` in the line
search, the paired standard error and the traced objective is `kemeny_value_samples` on
coupled episodes from every state (`line_search_episodes` per state, `T_K + M` steps, their
own uniforms), so the method is sampled end to end; with `line_search="critic"` the line
search keeps the exact `K`, as it keeps the exact gain and bias. Both Kemeny estimators are
unbiased when `P^T_K = P*` (every start, not only s0, must have mixed), and biased by
`O(T_K max_s ||P^T_K(s, .) - p*||_1)` otherwise, so a slowly mixing chain needs `T_K > T`.
Measured (T = 4, 16 episodes, 30 steps, 4 starts x 2 seeds, lambda = 0.3,
`line_search="critic"`; mean final K and exact h(s0)): A3: exact gradient 4.83, 0.17;
sampled 4.62, 0.38. `coupled_clusters(3, 0.02)`: unregularised 30.0, 25.0; exact gradient
6.92, 3.70; sampled 13.5, 10.4 (at T = 4 the expectation of the `grad K` estimate is off by
22% of `||grad K||` along the paths regularised with the exact gradient, 33-84% along the
sampled ones, 180% along the unregularised ones, medians); sampled with
`mixing_episode_length = 16` 7.05, 4.1. With `line_search="sampled"`
the noisy K estimates undo the regulariser in both environments at these sizes.
The point of the regulariser is the estimator of `grad h(s0)`:
at a fixed episode length its bias shrinks with `||P^T(s0, .) - p*||`, i.e. with mixing
(`dsorl.jobs.mixing_study`). `config.mixing_measure = None` (default) leaves the code path
of the unregularised method untouched; a measure with lambda = 0 gives the same iterates bit
for bit (with either `mixing_gradient`).

Every trace row records the values **after** its step. Cost per step as before: the state
carries the evaluation of its parameters (exact: gain, bias, gradients and Fishers; sampled:
the exact critic; discounted: value, gradient, Hessian test and Fisher), computed in `init`
and at the end of each step, and the next step reuses it. Each `run` is one `lax.scan`
(`dsorl.algorithms.base.run`), jittable end to end and `vmap`pable over `params0`, `hparams`,
`key` and over MDPs of equal size.
"""
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from dsorl import _checks
from dsorl.algorithms import base
from dsorl.estimators.average_reward import (check_mixing, common_uniforms, coupled_episodes,
                                             mean_estimates, oracle_critic, sample_estimates,
                                             value_samples)
from dsorl.estimators.mixing import (kemeny_episodes, kemeny_gradient_samples,
                                     kemeny_value_samples)
from dsorl.fisher import barrier_preconditioner, bias_fisher, discounted_fisher, gain_fisher
from dsorl.markov import bias, discounted_value, gain
from dsorl.mdp import MDP, induced_chain
from dsorl.mixing import (MEASURES, check_measure, check_reference_recurrent,
                          policy_mixing_measure)
from dsorl.optim import ArmijoState, armijo_backtracking, natural_direction

Array = jax.Array

LINE_SEARCHES = ("sampled", "critic")
MIXING_GRADIENTS = ("exact", "sampled")


class HParams(NamedTuple):
    """Traced numbers of Algorithms 1 and 2 (sweepable with `vmap`).

    `barrier_init` beta0 > 0, `barrier_divisor` > 0 (beta /= it per outer block),
    `slack` delta > 0, `gain_tolerance` eps > 0 (the gain phase ends when `||grad g|| < eps`).
    `confidence` z >= 0, `run_sampled`'s sampled line search only: a trial must beat the
    Armijo bound by z standard errors of the sampled increase. `gain_reference` g_hat*: NaN
    (default) starts in the gain phase; a number (known or previously reached optimal gain)
    starts in the barrier phase at once, and then needs a strictly feasible start,
    `g(params0) - gain_reference + slack > 0` (concrete input without one: `ValueError`).
    The paper's settings: `HParams(**dsorl.envs.nbw.paper_hyperparams(name))`.
    `mixing_weight` lambda >= 0: the weight of the mixing measure `config.mixing_measure`
    subtracted from every phase's objective (module docstring; nonzero needs a measure).
    """

    barrier_init: Any = 100.0
    barrier_divisor: Any = 10.0
    slack: Any = 1.0
    gain_tolerance: Any = 1e-4
    confidence: Any = 2.0
    gain_reference: Any = math.nan
    mixing_weight: Any = 0.0


class Config(NamedTuple):
    """Static settings of all three algorithms (sizes, counts and choices of method).

    `policy`: a `dsorl.policies.Policy` (e.g. `policies.sigmoid(S)`). `n_steps` iterations in
    all (the authors ran 100), beta divided after every `steps_per_outer` (None: once, at
    the end; `n_steps` must be a multiple); `state` s0, the state whose bias is maximised;
    `absorption_time` tau of eq. 19; Armijo settings; the natural direction's `damping`,
    `pseudo_inverse` and `rcond`; `score_clip` c: scores of `log clip(pi, c, 1 - c)` in
    every Fisher and score (None: exact; 2.22e-16 emulates the authors' torch code, see
    `dsorl.fisher.score_table`). Algorithm 2 only: `episode_length` T, `n_episodes` N per
    iteration, `baseline` and `post_mixing` of the gradient estimators; `line_search`
    "sampled" (objective values from coupled episodes) or "critic" (from the exact critic,
    as the paper's experiments); for "sampled", `line_search_episodes` episodes of
    `T + gain_window` steps (`gain_window` None: T) and at most `max_expansions` doublings
    of the step while the estimate is unresolved. `mixing_measure`: None (no regulariser)
    or one of `dsorl.mixing.MEASURES`, weighted by `hparams.mixing_weight`; `mixing_state`:
    the reference state of "hitting_time" (recurrent under full-support policies);
    `mixing_gradient`: "exact" (the measure's exact value and gradient) or "sampled"
    (Algorithm 2 with "kemeny" only: Kemeny's constant and its gradient from episodes;
    module docstring), whose episodes have `mixing_episode_length` T_K steps (None: T; in
    the sampled line search `T_K + gain_window`, `gain_window` None: T_K).
    """

    policy: Any
    n_steps: int = 100
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
    episode_length: int = 0
    n_episodes: int = 16
    baseline: bool = True
    post_mixing: str = "score"
    line_search: str = "sampled"
    line_search_episodes: int = 16
    max_expansions: int = 10
    gain_window: Optional[int] = None
    mixing_measure: Optional[str] = None
    mixing_state: Optional[int] = None
    mixing_gradient: str = "exact"
    mixing_episode_length: Optional[int] = None


class Evaluation(NamedTuple):
    """Exact gain, bias at s0, their gradients `[d]` and the Fishers `F_g`, `F_b` `[d, d]`."""

    gain: Array
    bias: Array
    grad_gain: Array
    grad_bias: Array
    gain_fisher: Array
    bias_fisher: Array


class State(NamedTuple):
    """`params` (pytree like `params0`), phase flag, `gain_ref` (g_hat*), `beta`, the line
    search's last `ArmijoState`, and `evaluation` of `params`: an `Evaluation` (Algorithm 1)
    or the exact `Critic` the estimators use (Algorithm 2)."""

    params: Any
    in_barrier: Array
    gain_ref: Array
    beta: Array
    line_search: ArmijoState
    evaluation: Any


class Trace(NamedTuple):
    """Per iteration, after its step: the step's objective at the new parameters (as the
    algorithm estimates it: sampled in `run_sampled`'s sampled line search; the criterion,
    beta and `g_ref` of the step), exact gain and bias at s0 of the new parameters, norm of
    the (sampled) gradient the step ascended, accepted step length, number of objective
    evaluations of the line search, phase of the step; `params` if kept."""

    objective: Array
    gain: Array
    bias: Array
    grad_norm: Array
    step_size: Array
    evaluations: Array
    in_barrier: Array
    params: Any = None


def expected_params(mdp: MDP, config: Config):
    """Shapes of the policy's parameters (`config.policy.init`)."""
    _check_policy(config)
    return jax.tree_util.tree_map(lambda x: tuple(x.shape), jax.eval_shape(config.policy.init))


def validate(mdp: MDP, hparams: HParams, config: Config) -> None:
    """Algorithm 1's checks on concrete input: the MDP's randomised policies unichain
    (`check_mixing`, periodicity allowed), `barrier_init`, `barrier_divisor`, `slack`,
    `gain_tolerance` > 0, a finite or NaN `gain_reference`, the policy and `score_clip`,
    and the mixing regulariser: `mixing_weight` finite and >= 0, nonzero only with a
    `mixing_measure`, which must be known (with a recurrent `mixing_state` for
    "hitting_time"); `mixing_gradient` "exact" (Algorithm 1 has no sampled form)."""
    _validate(mdp, hparams, config, sampled=False)


def _validate(mdp, hparams, config, *, sampled) -> None:
    _check_policy(config)
    check_mixing(mdp, aperiodic=False)
    for name in ("barrier_init", "barrier_divisor", "slack", "gain_tolerance"):
        _checks.check_positive(name, getattr(hparams, name))
    if _checks.is_concrete(hparams.gain_reference):
        ref = jnp.asarray(hparams.gain_reference)
        if bool(jnp.any(jnp.isinf(ref))):
            raise ValueError(f"gain_reference = {ref} must be finite (or NaN: none).")
    _check_config(config)
    _check_mixing_regulariser(mdp, hparams, config, sampled=sampled)


def validate_sampled(mdp: MDP, hparams: HParams, config: Config) -> None:
    """Algorithm 2's checks: those of `validate`, aperiodicity, `n_episodes > 0`,
    `episode_length >= max(1, absorption_time)`, `line_search`, and for the sampled line
    search `confidence >= 0`, `line_search_episodes >= 2` and `gain_window >= 1`;
    `mixing_gradient` "exact", or "sampled" with `mixing_measure="kemeny"` (and then
    `mixing_episode_length` None or >= 1; it must be None otherwise)."""
    _validate(mdp, hparams, config, sampled=True)
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


def init_exact(mdp: MDP, params0, hparams: HParams, key=None, *, config: Config) -> State:
    """Algorithm 1's initial state: the phase of `gain_reference`, the exact evaluation."""
    return _init(mdp, params0, hparams, _exact_evaluation(mdp, params0, config), config)


def init_sampled(mdp: MDP, params0, hparams: HParams, key=None, *, config: Config) -> State:
    """Algorithm 2's initial state: the phase of `gain_reference`, the exact critic."""
    return _init(mdp, params0, hparams, _critic(mdp, params0, config), config)


def step_exact(mdp: MDP, state: State, hparams: HParams, key=None, *, config: Config):
    """One iteration of Algorithm 1: `(State, Trace row)` (the key is unused)."""
    return _barrier_step(mdp, state, hparams, key, config, sampled=False)


def step_sampled(mdp: MDP, state: State, hparams: HParams, key, *, config: Config):
    """One iteration of Algorithm 2 with the key of the iteration: `(State, Trace row)`.

    Gradients and Fishers from `key`, the sampled line search's uniforms from
    `fold_in(key, 1)`; the gain and bias values the iteration uses (objective, barrier gap,
    `g_ref` at the switch, Armijo test) are then the coupled-episode estimates.
    """
    _check_line_search(config)
    return _barrier_step(mdp, state, hparams, key, config, sampled=True)


def outer_update(mdp: MDP, state: State, hparams: HParams, *, config: Config) -> State:
    """After each outer block: `beta /= barrier_divisor` in the barrier phase."""
    return state._replace(beta=jnp.where(state.in_barrier,
                                         state.beta / hparams.barrier_divisor, state.beta))


EXACT = base.Algorithm("nbw_exact", HParams=HParams, Config=Config, State=State, Trace=Trace,
                       init=init_exact, step=step_exact, validate=validate,
                       expected_params=expected_params, outer_update=outer_update,
                       uses_key=lambda config: False)
SAMPLED = base.Algorithm("nbw_sampled", HParams=HParams, Config=Config, State=State,
                         Trace=Trace, init=init_sampled, step=step_sampled,
                         validate=validate_sampled, expected_params=expected_params,
                         outer_update=outer_update, uses_key=lambda config: True)


def run(mdp: MDP, params0, hparams: HParams, key=None, *, config: Config,
        keep_params: bool = False):
    """Algorithm 1 with exact gradients and Fishers: `(final State, Trace[n_steps])`.

    `key` is unused (may be None). Concrete input is checked (`validate`).
    """
    return EXACT.run(mdp, params0, hparams, key, config=config, keep_params=keep_params)


def run_sampled(mdp: MDP, params0, hparams: HParams, key=None, *, config: Config,
                keep_params: bool = False):
    """Algorithm 2: Algorithm 1 with gradients, Fishers and objective values from episodes.

    Iteration `k` uses the key `fold_in(key, k)`. Gradients and Fishers: the means of
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
    `objective` (the estimate at the new parameters on the same uniforms) are these
    estimates; a sampled gap <= 0 gives a gain step. The gain-phase test
    `||grad_hat g|| < eps` uses the sampled gain gradient. The traced `gain` and `bias` are
    the iterates' exact values (from the critic the next iteration uses; the algorithm does
    not use them). `line_search="critic"`: objective values from the exact critic (the
    paper's setting). A mixing regulariser (`config.mixing_measure`, `hparams.mixing_weight`)
    enters with its exact value and exact gradient (`config.mixing_gradient="exact"`), or,
    for Kemeny's constant with `mixing_gradient="sampled"`, with its gradient from episodes
    from every state (`dsorl.estimators.mixing`, key `fold_in(key_k, 2)`) and, in the
    sampled line search, its value from coupled episodes from every state (module
    docstring). Concrete input is checked (`validate_sampled`).
    """
    return SAMPLED.run(mdp, params0, hparams, key, config=config, keep_params=keep_params)


def _init(mdp, params0, hparams, evaluation, config) -> State:
    dtype = ravel_pytree(params0)[0].dtype
    ref = jnp.asarray(hparams.gain_reference, dtype)
    in_barrier = ~jnp.isnan(ref)
    gain_ref = jnp.where(in_barrier, ref, 0)
    beta = jnp.where(in_barrier, jnp.asarray(hparams.barrier_init, dtype), 0)
    gap = evaluation.gain - gain_ref + hparams.slack
    bad = in_barrier & ~(gap > 0)
    if _checks.is_concrete(bad) and bool(jnp.any(bad)):
        raise ValueError(f"no strictly feasible start for the barrier: g(params0) -"
                         f" gain_reference + slack = {gap} <= 0 (the constraint set"
                         " g >= gain_reference - slack has no interior point here).")
    return State(params0, in_barrier, gain_ref, beta, _line_search(config).init(params0),
                 evaluation)


def _barrier_step(mdp, state, hparams, key, config, *, sampled):
    flat, unravel = ravel_pytree(state.params)
    s0 = config.state
    ev = (_sampled_evaluation(mdp, state.params, state.evaluation, key, config) if sampled
          else state.evaluation)
    from_samples = sampled and config.line_search == "sampled"
    penalty = _mixing_penalty(mdp, unravel, hparams, config)
    sampled_measure = penalty is not None and _sampled_measure(config, sampled)
    base_measure = None  # per-episode Kemeny estimates at flat (sampled line search only)
    if from_samples:
        base_values, base_measure, trial = _sampled_values(
            mdp, unravel, flat, jax.random.fold_in(key, 1), hparams, config, sampled_measure)
        g_now, h_now = base_values.gain.mean(), base_values.bias.mean()
    else:
        g_now, h_now = ev.gain, ev.bias
    weight = getattr(hparams, "mixing_weight", 0.0)
    if penalty is None:
        gain_ascent = ev.grad_gain
    else:
        if sampled_measure:  # grad K from episodes; K sampled in a sampled line search
            grad_penalty = weight * kemeny_gradient_samples(
                jax.random.fold_in(key, 2), mdp, config.policy, state.params,
                episode_length=_mixing_episode_length(config), n_episodes=config.n_episodes,
                baseline=config.baseline, post_mixing=config.post_mixing,
                score_clip=config.score_clip).mean(axis=0)
            penalty_now = (weight * base_measure.mean() if from_samples else penalty(flat))
        else:  # exact lambda M and its gradient (implicit, one LU)
            penalty_now, grad_penalty = jax.value_and_grad(penalty)(flat)
        gain_ascent = ev.grad_gain - grad_penalty
    switch = ~state.in_barrier & (jnp.linalg.norm(gain_ascent) < hparams.gain_tolerance)
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
    if penalty is not None:
        grad = grad - grad_penalty
        objective = objective - penalty_now

    def objective_at(g, h, theta, measure=None):
        # measure: per-episode Kemeny estimates at theta, or None for the exact penalty
        f = jnp.where(barrier_step, h + beta * jnp.log(g - gain_ref + hparams.slack), g)
        if penalty is None:
            return f
        return f - (penalty(theta) if measure is None else weight * measure.mean())

    def exact_value(theta):
        chain = induced_chain(mdp, config.policy.probs(unravel(theta)))
        return objective_at(gain(chain), bias(chain)[s0], theta)

    def sampled_value(theta):
        # The estimate at theta minus `confidence` standard errors of the paired difference
        # from the current point, so Armijo accepts only increases that the samples resolve.
        # Per-episode terms of the difference by the delta method (first order in the means).
        samples, measure, changed = trial(theta)
        g, h = samples.gain.mean(), samples.bias.mean()

        def influence(v, m, g_mean):
            i = jnp.where(barrier_step, v.bias + beta * v.gain / (g_mean - gain_ref
                                                                + hparams.slack), v.gain)
            return i if m is None else i - weight * m

        paired = (influence(samples, measure, g)
                  - influence(base_values, base_measure, g_now))
        se = jnp.std(paired, ddof=1) / jnp.sqrt(paired.shape[0])
        f = objective_at(g, h, theta, measure)
        # unresolved: no episode changed, or a positive increase not yet significant
        resolved = changed & ~((f > objective) & (f - hparams.confidence * se < objective))
        return f - hparams.confidence * se, resolved

    value = sampled_value if from_samples else exact_value
    update, line_search = _natural_armijo_step(flat, grad, precond, objective, value,
                                               state.line_search, config)
    new_flat = flat + update
    params = unravel(new_flat)
    if sampled:
        evaluation = _critic(mdp, params, config)
        g_new, h_new = evaluation.gain, evaluation.bias[s0]
    else:
        evaluation = _exact_evaluation(mdp, params, config)
        g_new, h_new = evaluation.gain, evaluation.bias
    if from_samples:  # the estimate at the new parameters, on the line search's uniforms
        samples, measure, _ = trial(new_flat)
        objective_new = objective_at(samples.gain.mean(), samples.bias.mean(), new_flat,
                                     measure)
    else:
        objective_new = objective_at(g_new, h_new, new_flat)
    new = State(params, in_barrier, gain_ref, beta, line_search, evaluation)
    row = Trace(objective_new, g_new, h_new, jnp.linalg.norm(grad), line_search.step_size,
                line_search.evaluations, in_barrier)
    return new, row


# ----------------------------------------------------------------------------------------
# Baseline: natural discounted-reward policy gradient (§6.4)


class DiscountedHParams(NamedTuple):
    """`gamma` in [0, 1); `tolerance`: stop at a local maximum, `||grad|| <= tolerance` with
    a negative semi-definite Hessian (the authors' rule)."""

    gamma: Any = 0.99
    tolerance: Any = 1e-4


class DiscountedEvaluation(NamedTuple):
    """At the state's parameters: `(1 - gamma) v_gamma(s0)`, its gradient `[d]`, whether the
    stopping rule holds there, the discounted Fisher `[d, d]`, exact gain and bias at s0."""

    value: Array
    grad: Array
    local_max: Array
    fisher: Array
    gain: Array
    bias: Array


class DiscountedState(NamedTuple):
    """`params`, `stopped` (the stopping rule held at an iterate), the line search's last
    `ArmijoState`, and the `DiscountedEvaluation` of `params`."""

    params: Any
    stopped: Array
    line_search: ArmijoState
    evaluation: DiscountedEvaluation


def validate_discounted(mdp: MDP, hparams: DiscountedHParams, config: Config) -> None:
    """`gamma` in [0, 1), `tolerance >= 0`, the policy and `score_clip` (concrete values)."""
    _check_policy(config)
    _checks.check_discount(hparams.gamma)
    _checks.check_positive("tolerance", hparams.tolerance, allow_zero=True)
    _check_config(config)


def init_discounted(mdp: MDP, params0, hparams: DiscountedHParams, key=None, *,
                    config: Config) -> DiscountedState:
    """Not stopped; the evaluation of `params0`."""
    return DiscountedState(params0, jnp.asarray(False), _line_search(config).init(params0),
                           _discounted_evaluation(mdp, params0, hparams, config))


def step_discounted(mdp: MDP, state: DiscountedState, hparams: DiscountedHParams, key=None,
                    *, config: Config):
    """One natural-gradient Armijo step on `(1 - gamma) v_gamma(s0)` (none once stopped)."""
    flat, unravel = ravel_pytree(state.params)
    ev = state.evaluation
    stopped = state.stopped | ev.local_max
    update, line_search = _natural_armijo_step(
        flat, ev.grad, ev.fisher, ev.value, _discounted_objective(mdp, unravel, hparams, config),
        state.line_search, config)
    update = jnp.where(stopped, 0, update)
    line_search = line_search._replace(step_size=jnp.where(stopped, 0, line_search.step_size))
    params = unravel(flat + update)
    new_ev = _discounted_evaluation(mdp, params, hparams, config)
    row = Trace(new_ev.value, new_ev.gain, new_ev.bias, jnp.linalg.norm(ev.grad),
                line_search.step_size, line_search.evaluations, jnp.asarray(False))
    return DiscountedState(params, stopped, line_search, new_ev), row


DISCOUNTED = base.Algorithm("nbw_discounted", HParams=DiscountedHParams, Config=Config,
                            State=DiscountedState, Trace=Trace, init=init_discounted,
                            step=step_discounted, validate=validate_discounted,
                            expected_params=expected_params, uses_key=lambda config: False)


def discounted_run(mdp: MDP, params0, hparams: DiscountedHParams, key=None, *,
                   config: Config, keep_params: bool = False):
    """Natural discounted PG maximising `(1 - gamma) v_gamma(s0)`: `(final state, Trace)`.

    `v_gamma(s0) = rho . (I - gamma P_pi)^{-1} r_pi` (`mdp.rho`), gradient by autodiff,
    preconditioner the discounted Fisher `sum_s d_gamma(s) F(s)` (eq. 33), Armijo steps as in
    `run`; `config.n_steps` iterations (`steps_per_outer` has no effect). The trace's
    `objective`, `gain` and `bias` are those of the new policy (`in_barrier` is always
    False). The Hessian of the stopping rule costs `d` gradient evaluations. `key` is unused.
    """
    return DISCOUNTED.run(mdp, params0, hparams, key, config=config, keep_params=keep_params)


def _discounted_objective(mdp, unravel, hparams, config):
    def objective(theta):
        chain = induced_chain(mdp, config.policy.probs(unravel(theta)))
        return (1 - hparams.gamma) * (mdp.rho @ discounted_value(chain, hparams.gamma))
    return objective


def _discounted_evaluation(mdp, params, hparams, config) -> DiscountedEvaluation:
    flat, unravel = ravel_pytree(params)
    objective = _discounted_objective(mdp, unravel, hparams, config)
    f, grad = jax.value_and_grad(objective)(flat)
    curvature = jnp.linalg.eigvalsh(jax.hessian(objective)(flat))
    local_max = (jnp.linalg.norm(grad) <= hparams.tolerance) & jnp.all(curvature <= 0)
    fisher = discounted_fisher(mdp, config.policy, params, hparams.gamma,
                               score_clip=config.score_clip)
    chain = induced_chain(mdp, config.policy.probs(params))
    return DiscountedEvaluation(f, grad, local_max, fisher, gain(chain),
                                bias(chain)[config.state])


# ----------------------------------------------------------------------------------------
# Shared pieces


def _exact_evaluation(mdp, params, config) -> Evaluation:
    flat, unravel = ravel_pytree(params)
    policy, s0 = config.policy, config.state

    def values(theta):
        chain = induced_chain(mdp, policy.probs(unravel(theta)))
        v = jnp.stack([gain(chain), bias(chain)[s0]])
        return v, v

    jac, (g, h) = jax.jacrev(values, has_aux=True)(flat)
    return Evaluation(g, h, jac[0], jac[1],
                      gain_fisher(mdp, policy, params, score_clip=config.score_clip),
                      bias_fisher(mdp, policy, params, s0,
                                  absorption_time=config.absorption_time,
                                  score_clip=config.score_clip))


def _critic(mdp, params, config):
    return oracle_critic(mdp, config.policy, params)


def _sampled_evaluation(mdp, params, critic, key, config) -> Evaluation:
    est = mean_estimates(sample_estimates(
        key, mdp, config.policy, params, config.state, episode_length=config.episode_length,
        n_episodes=config.n_episodes, critic=critic, absorption_time=config.absorption_time,
        baseline=config.baseline, post_mixing=config.post_mixing,
        score_clip=config.score_clip))
    return Evaluation(critic.gain, critic.bias[config.state], est.gain_gradient,
                      est.bias_gradient, est.gain_fisher, est.bias_fisher)


def _sampled_values(mdp, unravel, flat, key, hparams, config, sampled_measure):
    """Per-episode gain and bias estimates at s0 from `line_search_episodes` coupled episodes
    and, if `sampled_measure`, per-episode Kemeny estimates (`kemeny_value_samples`, the
    same number of coupled episodes from every state, uniforms from `fold_in(key, 1)`).

    Returns `(base, base_measure, trial)`: the `ValueSamples` and Kemeny samples (or None)
    at `flat`, and `trial(theta) -> (ValueSamples, measure, changed)` on the same uniforms
    (common random numbers), `changed` telling whether any episode draws differently from
    those at `flat` (the Kemeny episodes count only with a nonzero `mixing_weight`, so a
    zero weight leaves the search as without them).
    """
    T = config.episode_length
    window = T if config.gain_window is None else config.gain_window
    N = config.line_search_episodes
    uniforms = common_uniforms(key, T + window, N, flat.dtype)
    if sampled_measure:
        S, T_K = mdp.n_states, _mixing_episode_length(config)
        L_K = T_K + (T_K if config.gain_window is None else config.gain_window)
        kemeny_uniforms = common_uniforms(jax.random.fold_in(key, 1), L_K, S * N,
                                          flat.dtype).reshape(S, N, L_K, 2)

    def episodes(theta):
        pi = config.policy.probs(unravel(theta))
        return (coupled_episodes(mdp, pi, config.state, uniforms),
                kemeny_episodes(mdp, pi, kemeny_uniforms) if sampled_measure else None)

    def measure(kemeny):
        return (None if kemeny is None else
                kemeny_value_samples(kemeny, episode_length=T_K))

    base_episodes, base_kemeny = episodes(flat)

    def trial(theta):
        eps, kemeny = episodes(theta)
        changed = jnp.any(eps.actions != base_episodes.actions)
        if kemeny is not None:  # they move the objective only through a nonzero weight
            changed = changed | ((getattr(hparams, "mixing_weight", 0.0) != 0)
                                 & jnp.any(kemeny.actions != base_kemeny.actions))
        return value_samples(eps, episode_length=T), measure(kemeny), changed

    return value_samples(base_episodes, episode_length=T), measure(base_kemeny), trial


def _line_search(config):
    return armijo_backtracking(c=config.armijo_c, shrink=config.armijo_shrink,
                               max_tries=config.max_backtracking,
                               max_expansions=config.max_expansions)


def _natural_armijo_step(flat, grad, precond, value, value_fn, ls_state, config):
    """Natural direction `precond^+ grad` (or damped solve), then Armijo backtracking:
    `(update, ArmijoState)`."""
    nd = natural_direction(config.damping, pseudo_inverse=config.pseudo_inverse,
                           rcond=config.rcond)
    direction, _ = nd.update(grad, nd.init(flat), flat, fisher=precond)
    return _line_search(config).update(direction, ls_state, flat, value=value, grad=grad,
                                       value_fn=value_fn)


def _check_policy(config) -> None:
    policy = getattr(config, "policy", None)
    if not (callable(getattr(policy, "probs", None)) and callable(getattr(policy, "init", None))):
        raise TypeError(f"config.policy must be a dsorl.policies.Policy (e.g."
                        f" policies.sigmoid(n_states)), got {policy!r}.")


def _check_config(config) -> None:
    if config.score_clip is not None and (isinstance(config.score_clip, bool) or not (
            0 < config.score_clip < 0.5)):
        raise ValueError(f"config.score_clip = {config.score_clip!r} must be None or lie in"
                         " (0, 1/2).")
    if config.absorption_time < 0:
        raise ValueError(f"config.absorption_time = {config.absorption_time} must be >= 0.")


def _mixing_penalty(mdp, unravel, hparams, config):
    """`theta -> lambda M(theta)` (the regulariser of the module docstring), or None when
    `config.mixing_measure` is None. Read with defaults, so parameter records of other
    modules that reuse the barrier step without these fields keep working."""
    measure = getattr(config, "mixing_measure", None)
    if measure is None:
        return None
    weight = getattr(hparams, "mixing_weight", 0.0)

    def penalty(theta):
        pi = config.policy.probs(unravel(theta))
        return weight * policy_mixing_measure(mdp, pi, measure, state=config.mixing_state)
    return penalty


def _sampled_measure(config, sampled: bool) -> bool:
    """Static check of `config.mixing_gradient`; True when Kemeny's constant is sampled."""
    choice = getattr(config, "mixing_gradient", "exact")
    if choice not in MIXING_GRADIENTS:
        raise ValueError(f"mixing_gradient = {choice!r}; choose one of {MIXING_GRADIENTS}.")
    if choice == "exact":
        return False
    if not sampled:
        raise ValueError("mixing_gradient = 'sampled' needs the sampled Algorithm 2"
                         " (run_sampled); Algorithm 1 uses exact gradients.")
    measure = getattr(config, "mixing_measure", None)
    if measure != "kemeny":
        raise ValueError(f"mixing_gradient = 'sampled' has an estimator for"
                         f" mixing_measure = 'kemeny' only, not {measure!r}.")
    return True


def _mixing_episode_length(config) -> int:
    T_K = getattr(config, "mixing_episode_length", None)
    return config.episode_length if T_K is None else T_K


def _check_mixing_regulariser(mdp, hparams, config, *, sampled) -> None:
    weight = getattr(hparams, "mixing_weight", 0.0)
    _checks.check_positive("mixing_weight", weight, allow_zero=True)
    T_K = getattr(config, "mixing_episode_length", None)
    if not _sampled_measure(config, sampled):
        if T_K is not None:
            raise ValueError(f"mixing_episode_length = {T_K} is used by mixing_gradient ="
                             " 'sampled' only; leave it None.")
    elif T_K is not None and (isinstance(T_K, bool) or int(T_K) != T_K or T_K < 1):
        raise ValueError(f"mixing_episode_length = {T_K!r} must be an integer >= 1 (or None:"
                         " the episode length).")
    measure = getattr(config, "mixing_measure", None)
    if measure is None:
        if _checks.is_concrete(weight) and bool(jnp.any(jnp.asarray(weight) != 0)):
            raise ValueError(f"mixing_weight = {weight} needs config.mixing_measure (one of"
                             f" {MEASURES}); it is None.")
        return
    check_measure(measure, config.mixing_state, mdp.n_states)
    if measure == "hitting_time":
        check_reference_recurrent(mdp, config.mixing_state)


def _check_line_search(config) -> None:
    if config.line_search not in LINE_SEARCHES:
        raise ValueError(f"line_search = {config.line_search!r}; choose one of"
                         f" {LINE_SEARCHES}.")


__all__ = ["HParams", "Config", "State", "Trace", "Evaluation", "LINE_SEARCHES",
           "MIXING_GRADIENTS", "EXACT", "SAMPLED", "DISCOUNTED", "run", "run_sampled",
           "discounted_run", "validate",
           "validate_sampled", "expected_params", "outer_update", "DiscountedHParams",
           "DiscountedState", "DiscountedEvaluation"]
