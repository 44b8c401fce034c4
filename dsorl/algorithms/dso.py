"""DSO optimisers of a parameterised chain: gradient ascent, natural gradient, Chain
Iteration (first- and second-order) and Proximal Chain Optimisation (PCO).

Todorov, "Dynamical System Optimization" (arXiv 2506.08340); docs/design.md §9.1. Each algorithm
is a `dsorl.algorithms.base.Algorithm` record (`GRADIENT_ASCENT`, `CHAIN_ITERATION`,
`PCO`, `NEWTON_CHAIN_ITERATION`: its `HParams`, `Config`, `State`, `Trace`, `init`,
`step`, `validate`) run by `dsorl.algorithms.base.run`, with the public
`run(model, params0, hparams, key=None, *, config, keep_params=False) -> (state, trace)`
(`gradient_ascent`, `chain_iteration`, `pco`, `newton_chain_iteration`): one `lax.scan` over `config.n_steps`
steps, jittable end to end (close over the `ChainModel`) and vmappable over `params0`,
`hparams` and `key`. The problem is a `dsorl.chain_models.ChainModel`; `params0` is cast
to its `dtype` and checked against its `params_shape` when the model knows them. Every
trace row records `objective` `J(theta_{k+1})`, the value **after** the step (carried in
the state: no extra solve). Rewards are maximised (the paper's cost is `L = -r`); the
optimisers are fed ascent directions through `dsorl.optim.ascent`.

- `gradient_ascent`: `theta <- theta + step(grad J)` with the exact Thm-1 gradient;
  `config.natural=True` preconditions it with the chain Fisher
  (`dsorl.optim.natural_direction`, damping `hparams.damping`): the natural gradient.
- `chain_iteration`: `theta_{k+1} = argmax_theta S(theta, theta_k) - beta D(theta; theta_k)`
  with the exact surrogate `S`, the proximal weight `beta = hparams.proximal >= 0` and
  `D` the occupancy-weighted chain KL (`dsorl.chain_models.divergence_at`); the argmax
  is approximated by `config.inner_steps` steps of an optax optimiser
  (`dsorl.optim.maximise`), started from `theta_k` (`warm_start=True`) or from `params0`
  each time. For a tabular policy and `beta = 0` the maximiser of `S` is the greedy
  policy of `Q_{theta_k}` in every state: Chain Iteration is policy iteration, up to how
  near the inner loop gets to that (infinite-logit) argmax; warm starts keep sharpening
  it (tests: monotone, and the greedy policy is optimal after as many iterations as
  Howard's from the same start).
- `pco`: sampled, clipped surrogate (PPO's analogue) over `config.epochs` optimiser
  steps per batch of `config.n_episodes` episodes, on-chain (episodes of `theta_k`) or
  off-chain (episodes of a fixed `hparams.behaviour` chain, importance-weighted); the
  value baseline is refitted on each batch and used on the next. Batch `k` is sampled
  from `fold_in(key, k)`.
- `newton_chain_iteration` (second-order Chain Iteration): at `alpha = theta_k` the
  surrogate's quadratic model `S(alpha + delta, alpha) ~ J(alpha) + g . delta +
  delta^T H_S delta / 2`, `g = grad J(alpha)` (Lemma 2), `H_S = hess_theta S(theta,
  alpha)|_alpha` (`surrogate_hessian`: `m_alpha`, `v_alpha` frozen, so the curvature of
  `J` through the value Jacobian, `K + K^T` in `dsorl.chain_models.hessian`, is left out:
  the paper's open question of how good that surrogate Hessian is), maximised within a
  trust region `||delta|| <= Delta_k` (`trust_region_step`: a damped/shifted Newton step
  `(lambda I - H_S)^{-1} g`, so indefinite and singular Hessians are handled), the step
  kept and `Delta` adapted by the ratio of the actual to the predicted increase of `J`
  (Nocedal & Wright, Alg. 4.1). One Newton step on `S(., theta_k)` per outer iteration:
  an inexact Chain Iteration, i.e. a quasi-Newton method on `J` with Hessian
  approximation `H_S`. `config.hessian="exact"` uses `hess J` (`objective_hessian`,
  `jax.hessian` of the exact objective) instead: trust-region Newton on `J`, which
  converges quadratically near a nondegenerate maximum, the comparison.

Key: used by `pco` only; the exact methods take `key=None` (or any key, ignored).
"""
import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from dsorl import _checks
from dsorl import chain_models as cm
from dsorl.algorithms import base
from dsorl.estimators import dso as est
from dsorl.markov import validate_chain
from dsorl.optim import ascent, maximise, natural_direction

Array = jax.Array

__all__ = ["AscentHParams", "AscentConfig", "AscentState", "AscentTrace", "GRADIENT_ASCENT",
           "gradient_ascent", "INNER_ADAM", "ChainIterationHParams", "ChainIterationConfig",
           "ChainIterationState", "ChainIterationTrace", "CHAIN_ITERATION", "chain_iteration",
           "PCOHParams", "PCOConfig", "PCOState", "PCOTrace", "PCO", "pco",
           "surrogate_hessian", "objective_hessian", "trust_region_step", "NEWTON_HESSIANS",
           "NewtonHParams", "NewtonConfig", "NewtonState", "NewtonTrace",
           "NEWTON_CHAIN_ITERATION", "newton_chain_iteration"]


def _exact(config) -> bool:
    """`uses_key` of the exact methods: they draw nothing."""
    return False


def _params_shape(model, config):
    """`expected_params`: the model's `params_shape` (None when the model does not know it)."""
    return getattr(model, "params_shape", None)


def _validate(model, hparams, **counts) -> None:
    """gamma for the model's criterion, `step_size > 0`, and every count >= 1."""
    _checks.check_discount(hparams.gamma, allow_one=model.terminal is not None)
    _checks.check_positive("step_size", hparams.step_size)
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"config.{name} = {value!r} must be an int >= 1.")


# ----------------------------------------------------------------------------------------
# Gradient ascent and natural gradient (exact)


class AscentHParams(NamedTuple):
    """Traced: discount `gamma`, `step_size`, Fisher `damping` (natural gradient only)."""

    gamma: Array
    step_size: Array
    damping: Array = 0.0


@dataclasses.dataclass(frozen=True)
class AscentConfig:
    """Static: `n_steps`; `optimizer`: `step_size -> optax transformation` (default plain
    SGD); `natural`: precondition by the chain Fisher; `pseudo_inverse`: natural
    direction by SVD pseudo-inverse (the Fisher of a softmax is singular)."""

    n_steps: int
    optimizer: Callable = optax.sgd
    natural: bool = False
    pseudo_inverse: bool = True


class AscentState(NamedTuple):
    """`params` `theta_k`, optimiser state, and `J(theta_k)`, `grad J(theta_k)` (one pair of
    solves per step, reused by the next step)."""

    params: Any
    opt_state: Any
    objective: Array
    grad: Any


class AscentTrace(NamedTuple):
    """Per step `k`: `objective` `J(theta_{k+1})` and `grad_norm` `||grad J(theta_k)||`
    (the gradient the step followed)."""

    objective: Array
    grad_norm: Array
    params: Any = None


def _ascent_transform(hparams: AscentHParams, config: AscentConfig):
    tx = config.optimizer(hparams.step_size)
    if config.natural:
        tx = optax.chain(natural_direction(hparams.damping,
                                           pseudo_inverse=config.pseudo_inverse), tx)
    return ascent(tx)


def gradient_ascent_validate(model, hparams: AscentHParams, config: AscentConfig) -> None:
    """gamma, `step_size > 0`, `damping >= 0` (concrete values only)."""
    _validate(model, hparams)
    _checks.check_positive("damping", hparams.damping, allow_zero=True)


def gradient_ascent_init(model, params0, hparams: AscentHParams, key=None, *,
                         config: AscentConfig) -> AscentState:
    """The state before the first step: the optimiser's, and `(J, grad J)` at `params0`
    (which also checks the model there)."""
    J, grad = cm.value_and_gradient(model, params0, hparams.gamma)
    return AscentState(params0, _ascent_transform(hparams, config).init(params0), J, grad)


def gradient_ascent_step(model, state: AscentState, hparams: AscentHParams, key=None, *,
                         config: AscentConfig):
    """One step along the exact gradient (or natural gradient) -> `(state, AscentTrace row)`."""
    extra = {"fisher": cm.fisher(model, state.params, hparams.gamma)} if config.natural else {}
    updates, opt_state = _ascent_transform(hparams, config).update(
        state.grad, state.opt_state, state.params, **extra)
    params = optax.apply_updates(state.params, updates)
    J, grad = cm.value_and_gradient(model, params, hparams.gamma)
    return (AscentState(params, opt_state, J, grad),
            AscentTrace(J, base.tree_norm(state.grad)))


GRADIENT_ASCENT = base.Algorithm(
    "gradient_ascent", HParams=AscentHParams, Config=AscentConfig, State=AscentState,
    Trace=AscentTrace, init=gradient_ascent_init, step=gradient_ascent_step,
    validate=gradient_ascent_validate, expected_params=_params_shape, uses_key=_exact)


def gradient_ascent(model, params0, hparams: AscentHParams, key=None, *,
                    config: AscentConfig, keep_params: bool = False):
    """Exact DSO gradient ascent (natural gradient with `config.natural`):
    `base.run(GRADIENT_ASCENT, ...)` -> `(AscentState, AscentTrace[n_steps])`."""
    return GRADIENT_ASCENT.run(model, params0, hparams, key, config=config,
                               keep_params=keep_params)


# ----------------------------------------------------------------------------------------
# Chain Iteration (exact surrogate)


class ChainIterationHParams(NamedTuple):
    """Traced: discount `gamma`, inner `step_size`, proximal weight `proximal >= 0`."""

    gamma: Array
    step_size: Array
    proximal: Array = 0.0


# Adam with a tiny epsilon: the surrogate's gradient on a saturated softmax logit is about
# the probability of the action it would switch to (far below Adam's default eps = 1e-8),
# and the default eps then freezes Chain Iteration on a slightly suboptimal policy (6 of 64
# garnets stalled at gaps 1e-6..1e-4 in the benchmark; with eps = 1e-20, none).
INNER_ADAM = functools.partial(optax.adam, eps=1e-20)


@dataclasses.dataclass(frozen=True)
class ChainIterationConfig:
    """Static: `n_steps` outer iterations, `inner_steps` per outer iteration, the inner
    `optimizer` (`step_size -> optax transformation`, default `INNER_ADAM`: Adam with
    eps = 1e-20, re-initialised every outer iteration), `warm_start` (inner loop from
    `theta_k`; else from `params0`)."""

    n_steps: int
    inner_steps: int
    optimizer: Callable = INNER_ADAM
    warm_start: bool = True


class ChainIterationState(NamedTuple):
    """`params` `theta_k`, `anchor` (`params0`, the cold-start point) and the surrogate
    terms solved at `theta_k` (`terms.objective = J(theta_k)`)."""

    params: Any
    anchor: Any
    terms: cm.SurrogateTerms


class ChainIterationTrace(NamedTuple):
    """Per outer iteration `k`: `objective` `J(theta_{k+1})`; `surrogate_gain`
    `S(theta_{k+1}, theta_k) - J(theta_k)`; `divergence` `D(theta_{k+1}; theta_k)`."""

    objective: Array
    surrogate_gain: Array
    divergence: Array
    params: Any = None


def chain_iteration_validate(model, hparams: ChainIterationHParams,
                             config: ChainIterationConfig) -> None:
    """gamma, `step_size > 0`, `proximal >= 0`, `inner_steps >= 1`."""
    _validate(model, hparams, inner_steps=config.inner_steps)
    _checks.check_positive("proximal", hparams.proximal, allow_zero=True)


def chain_iteration_init(model, params0, hparams: ChainIterationHParams, key=None, *,
                         config: ChainIterationConfig) -> ChainIterationState:
    """The state before the first outer iteration: the solve at `params0` (which also
    checks the model there)."""
    terms = lax.stop_gradient(cm.surrogate_terms(model, params0, hparams.gamma))
    return ChainIterationState(params0, params0, terms)


def chain_iteration_step(model, state: ChainIterationState, hparams: ChainIterationHParams,
                         key=None, *, config: ChainIterationConfig):
    """One outer iteration: `inner_steps` optimiser steps on
    `S(theta, theta_k) - proximal D(theta; theta_k)`, then the solve at `theta_{k+1}`."""
    terms = state.terms

    def objective(theta):
        return (cm.surrogate_at(model, theta, terms)
                - hparams.proximal * cm.divergence_at(model, theta, terms))

    start = state.params if config.warm_start else state.anchor
    theta = maximise(objective, start, config.optimizer(hparams.step_size), config.inner_steps)
    new = lax.stop_gradient(cm.surrogate_terms(model, theta, hparams.gamma))
    row = ChainIterationTrace(new.objective,
                              cm.surrogate_at(model, theta, terms) - terms.objective,
                              cm.divergence_at(model, theta, terms))
    return ChainIterationState(theta, state.anchor, new), row


CHAIN_ITERATION = base.Algorithm(
    "chain_iteration", HParams=ChainIterationHParams, Config=ChainIterationConfig,
    State=ChainIterationState, Trace=ChainIterationTrace, init=chain_iteration_init,
    step=chain_iteration_step, validate=chain_iteration_validate,
    expected_params=_params_shape, uses_key=_exact)


def chain_iteration(model, params0, hparams: ChainIterationHParams, key=None, *,
                    config: ChainIterationConfig, keep_params: bool = False):
    """Chain Iteration: `base.run(CHAIN_ITERATION, ...)` ->
    `(ChainIterationState, ChainIterationTrace[n_steps])`."""
    return CHAIN_ITERATION.run(model, params0, hparams, key, config=config,
                               keep_params=keep_params)


# ----------------------------------------------------------------------------------------
# Proximal Chain Optimisation (sampled)


class PCOHParams(NamedTuple):
    """Traced: discount `gamma`, optimiser `step_size`, ratio clip `clip` (epsilon;
    `inf` disables clipping: then one epoch is Algorithm 1 plus the optimiser);
    `behaviour[X, X]`: off-chain data from this fixed chain (first states from
    `P0(theta_k)`), reweighted per decision; it must charge every transition the model's
    chain can take (checked at `params0` on concrete input). None: on-chain."""

    gamma: Array
    step_size: Array
    clip: Array = 0.2
    behaviour: Optional[Array] = None


@dataclasses.dataclass(frozen=True)
class PCOConfig:
    """Static: `n_steps` batches, `n_episodes` per batch, `horizon` T of each episode,
    `epochs` optimiser steps per batch (full batch), the `optimizer`
    (`step_size -> optax transformation`, default Adam, state kept across batches),
    `track_objective`: trace the exact `J(theta_{k+1})` (one solve per batch; NaN if off)."""

    n_steps: int
    n_episodes: int
    horizon: int
    epochs: int = 4
    optimizer: Callable = optax.adam
    track_objective: bool = True


class PCOState(NamedTuple):
    """`params`, optimiser state, and the value baseline `v_hat[X]` fitted on the last batch."""

    params: Any
    opt_state: Any
    v_hat: Array


class PCOTrace(NamedTuple):
    """Per batch `k` (collected at `alpha = theta_k`): exact `objective` `J(theta_{k+1})`
    after the batch's epochs (if tracked), `estimate` of `J(theta_k)` (mean `G_0` of the
    batch), `surrogate_gain` (sampled clipped surrogate at `theta_{k+1}` minus
    `estimate`), `clip_fraction` (share of live transitions whose ratio left
    `[1 - eps, 1 + eps]` at `theta_{k+1}`)."""

    objective: Array
    estimate: Array
    surrogate_gain: Array
    clip_fraction: Array
    params: Any = None


def pco_validate(model, hparams: PCOHParams, config: PCOConfig) -> None:
    """gamma, `step_size > 0`, `clip > 0`, a stochastic `behaviour`, counts >= 1."""
    _validate(model, hparams, n_episodes=config.n_episodes, horizon=config.horizon,
              epochs=config.epochs)
    if _checks.is_concrete(hparams.clip) and not np.all(np.asarray(hparams.clip) > 0):
        raise ValueError(f"clip = {hparams.clip} must be > 0 (inf: no clipping).")
    if hparams.behaviour is not None and _checks.is_concrete(hparams.behaviour):
        validate_chain(hparams.behaviour)


def pco_init(model, params0, hparams: PCOHParams, key=None, *, config: PCOConfig) -> PCOState:
    """Start with `v_hat = 0` (the first batch has no previous one to fit on); checks the
    model (and the behaviour chain's coverage) at `params0`."""
    cm.check_model(model, params0, hparams.gamma)
    if hparams.behaviour is not None:
        _check_behaviour(model, params0, hparams.behaviour)
    r = cm.evaluate(model, params0)[1]
    tx = config.optimizer(hparams.step_size)
    return PCOState(params0, tx.init(params0), jnp.zeros_like(r))


def pco_step(model, state: PCOState, hparams: PCOHParams, key, *, config: PCOConfig):
    """One batch: sample at `alpha = theta_k` (or from `behaviour`), `epochs` steps on the
    clipped surrogate (optimiser state carried across batches), refit `v_hat`."""
    alpha, behaviour = state.params, hparams.behaviour
    if behaviour is None:
        states = est.sample_episodes(key, model, alpha, config.horizon, config.n_episodes)
    else:
        states = est.sample_chain(key, behaviour, model.initial(alpha), config.horizon,
                                  config.n_episodes)
    batch = est.prepare_batch(model, alpha, hparams.gamma, states, state.v_hat,
                              behaviour=behaviour)
    surrogate = lambda th: est.surrogate_estimate(model, th, batch, hparams.clip)
    tx = ascent(config.optimizer(hparams.step_size))

    def epoch(carry, _):  # dsorl.optim.maximise, but resuming the optimiser's state
        theta, opt_state = carry
        updates, opt_state = tx.update(jax.grad(surrogate)(theta), opt_state, theta)
        return (optax.apply_updates(theta, updates), opt_state), None

    (theta, opt_state), _ = lax.scan(epoch, (alpha, state.opt_state), None,
                                     length=config.epochs)
    estimate = jnp.mean(batch.returns[:, 0])
    objective = (cm.objective(model, theta, hparams.gamma) if config.track_objective
                 else base.nan_like(estimate.dtype))
    row = PCOTrace(objective, estimate, surrogate(theta) - estimate,
                   _clip_fraction(model, theta, batch, hparams.clip))
    return PCOState(theta, opt_state, est.fit_value(batch, state.v_hat)), row


def _clip_fraction(model, theta, batch: est.Batch, clip) -> Array:
    x, x_next = batch.states[:, :-1], batch.states[:, 1:]
    live = batch.ratio_weight > 0
    log_ratio = cm.log_transition(model, theta)[x, x_next] - jnp.where(live, batch.log_p, 0)
    outside = live & (jnp.abs(jnp.exp(jnp.where(live, log_ratio, 0)) - 1) > clip)
    return jnp.sum(outside) / jnp.maximum(jnp.sum(live), 1)


def _check_behaviour(model, params0, behaviour) -> None:
    P = model.transition(params0) if _checks.is_concrete(params0) else None
    if P is not None:
        _checks.check_covers(P, behaviour, symbols=("P", "B"),
                             what="the behaviour chain does not cover the model's chain",
                             consequence="so that transition is never sampled and the"
                                         " importance weights are biased")


PCO = base.Algorithm(
    "pco", HParams=PCOHParams, Config=PCOConfig, State=PCOState, Trace=PCOTrace,
    init=pco_init, step=pco_step, validate=pco_validate, expected_params=_params_shape)


def pco(model, params0, hparams: PCOHParams, key=None, *, config: PCOConfig,
        keep_params: bool = False):
    """Proximal Chain Optimisation: `base.run(PCO, ...)` -> `(PCOState, PCOTrace[n_steps])`.

    On-chain, or off-chain with `hparams.behaviour`; batch `k` draws from `fold_in(key, k)`.
    """
    return PCO.run(model, params0, hparams, key, config=config, keep_params=keep_params)


# ----------------------------------------------------------------------------------------
# Second-order Chain Iteration (exact surrogate Hessian, trust region)


def _flat_hessian(fn, theta) -> Array:
    """`jax.hessian` of `fn(theta) -> scalar` on the flattened parameters, `[d, d]`."""
    flat, unravel = ravel_pytree(theta)
    return jax.hessian(lambda f: fn(unravel(f)))(flat)


def surrogate_hessian(model, alpha, gamma) -> Array:
    """The surrogate Hessian `hess_theta S(theta, alpha)` at `theta = alpha`, `[d, d]`.

    `S(theta, alpha) = J(alpha) + (P0_theta - P0_alpha) . v_alpha + sum_x m_alpha(x)
    [r(x, theta) + gamma sum_x' P~(x'|x, theta) v_alpha(x') - v_alpha(x)]` with `m_alpha`,
    `v_alpha` frozen (Todorov, arXiv 2506.08340, the Chain Iteration surrogate); `jax.hessian`
    of that frozen function on the flattened parameters. It shares value and gradient with
    `J` at `alpha` (Lemma 2) but not curvature: `hess J = hess S + K + K^T`, `K` the
    coupling through the value Jacobian (`dsorl.chain_models.hessian`); how far apart the
    two are is the paper's open question (`dsorl.jobs.chain_newton` measures it).
    """
    terms = lax.stop_gradient(cm.surrogate_terms(model, alpha, gamma))
    return _flat_hessian(lambda th: cm.surrogate_at(model, th, terms), alpha)


def objective_hessian(model, theta, gamma) -> Array:
    """The exact Hessian `hess J(theta)`, `[d, d]`: `jax.hessian` of the exact objective
    `J = P0^T (I - gamma P~)^{-1} r` (differentiated implicitly through the solve) on the
    flattened parameters. Equal to `dsorl.chain_models.hessian` (the Bellman-equation form)."""
    return _flat_hessian(lambda th: cm.objective(model, th, gamma), theta)


class NewtonHParams(NamedTuple):
    """Traced: discount `gamma`; initial trust-region `radius` `Delta_0 > 0`;
    `max_radius` `Delta_max >= radius` (inf: unbounded growth); `damping` `lambda_min >= 0`
    (a Levenberg-Marquardt floor on the shift, 0: pure Newton inside the region); `accept`
    `eta` in `[0, 1/4)`: a step is taken when `actual / predicted increase >= eta`."""

    gamma: Array
    radius: Array
    max_radius: Array = float("inf")
    damping: Array = 0.0
    accept: Array = 0.1


NEWTON_HESSIANS = ("surrogate", "exact")


@dataclasses.dataclass(frozen=True)
class NewtonConfig:
    """Static: `n_steps` outer iterations; `hessian`: `"surrogate"` (Newton on S:
    `surrogate_hessian`, the second-order Chain Iteration) or `"exact"` (Newton on J:
    `objective_hessian`, the comparison); `bisection_steps` of the search for the shift
    `lambda` on the trust-region boundary; `rcond`: eigenvalues of `lambda I - H` at most
    `rcond * max|eig H|` are treated as zero (the null directions of a softmax's shift
    invariance; None: `1e3 eps` of the dtype)."""

    n_steps: int
    hessian: str = "surrogate"
    bisection_steps: int = 60
    rcond: Optional[float] = None


class NewtonState(NamedTuple):
    """`params` `theta_k`, the surrogate terms solved there (`terms.objective = J(theta_k)`)
    and the current trust `radius`."""

    params: Any
    terms: cm.SurrogateTerms
    radius: Array


class NewtonTrace(NamedTuple):
    """Per outer iteration `k`: `objective` `J(theta_{k+1})` (unchanged if the step was
    rejected); `grad_norm` `||grad J(theta_k)||`; `step_norm` `||delta||` of the proposed
    step; `shift` `lambda` of `(lambda I - H) delta = g`; `ratio` `rho` (actual / predicted
    increase); `accepted`; `radius` after the update."""

    objective: Array
    grad_norm: Array
    step_norm: Array
    shift: Array
    ratio: Array
    accepted: Array
    radius: Array
    params: Any = None


def trust_region_step(grad: Array, hess: Array, radius, damping=0.0, *,
                      bisection_steps: int = 60, rcond: Optional[float] = None):
    """The maximiser of the quadratic model `g . delta + delta^T H delta / 2` over
    `||delta|| <= radius`: `(delta[d], lambda)`.

    Moré & Sorensen (1983); Nocedal & Wright, Numerical Optimization, Thm 4.1 (written for
    maximisation): `delta = (lambda I - H)^{-1} g` with `lambda I - H` positive
    semidefinite, `lambda >= max(damping, 0)` and `lambda (radius - ||delta||) = 0`. In the
    eigenbasis `H = U diag(mu) U^T`, `||delta(lambda)||^2 = sum_i (u_i . g)^2 /
    (lambda - mu_i)^2` decreases in `lambda > max mu`. `lambda_0 = max(damping, max mu, 0)`
    is taken when `lambda_0 I - H` is invertible up to the cut and its step lies inside
    the region (pure Newton if `H` is negative semidefinite and `damping = 0`); else
    bisection on `(lambda_0, lambda_0 + ||g|| / radius]` (the right end is always
    feasible; the returned `lambda` is the feasible end of the last bracket). Directions
    with `lambda - mu_i <= rcond max|mu|` are dropped (a pseudo-inverse: the exact null
    directions of a softmax's shift invariance, where `g` has no component). The hard
    case (`H` indefinite, `g` without a component along the top eigenvector `u_1`, so the
    step stays inside) sets the `u_1` component to reach the boundary, its sign that of
    `u_1 . g` (the model only grows there). Indefinite and singular Hessians are thus
    handled; jittable, for small `d` (one `eigh`).
    """
    dtype = grad.dtype
    mu, U = jnp.linalg.eigh(hess)
    c = U.T @ grad
    cut = (1e3 * jnp.finfo(dtype).eps if rcond is None else rcond) * jnp.max(jnp.abs(mu))
    cut = jnp.maximum(cut, jnp.finfo(dtype).tiny)

    def coefficients(lam):
        denom = lam - mu
        keep = denom > cut
        return jnp.where(keep, c / jnp.where(keep, denom, 1), 0)

    floor = jnp.maximum(jnp.maximum(damping, 0), mu[-1])
    # lambda = floor is a solution only if lambda I - H is (pseudo-)invertible there: H
    # negative semidefinite up to the cut, or the damping above the top eigenvalue
    interior = coefficients(floor)
    interior_ok = ((mu[-1] <= cut) | (floor - mu[-1] > cut)) & \
        (jnp.linalg.norm(interior) <= radius)
    hi0 = floor + jnp.linalg.norm(grad) / radius + cut

    def bisect(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        too_long = jnp.linalg.norm(coefficients(mid)) > radius
        return jnp.where(too_long, mid, lo), jnp.where(too_long, hi, mid)

    _, lam_b = lax.fori_loop(0, bisection_steps, bisect, (floor, hi0))
    boundary = coefficients(lam_b)
    # hard case: the step stays inside although H has positive curvature along u_1 (g has
    # no component there); walk along u_1 to the edge, where the model only grows
    t = jnp.sqrt(jnp.maximum(radius ** 2 - jnp.sum(boundary[:-1] ** 2), 0))
    hard = (mu[-1] > cut) & (jnp.linalg.norm(boundary) < 0.99 * radius)
    boundary = jnp.where(hard, boundary.at[-1].set(jnp.where(c[-1] < 0, -t, t)), boundary)
    coef = jnp.where(interior_ok, interior, boundary)
    return U @ coef, jnp.where(interior_ok, floor, lam_b)


def newton_validate(model, hparams: NewtonHParams, config: NewtonConfig) -> None:
    """gamma, `radius > 0`, `max_radius >= radius`, `damping >= 0`, `accept` in
    `[0, 1/4)`, `hessian` one of `NEWTON_HESSIANS`, `bisection_steps >= 1`, `rcond > 0`."""
    _checks.check_discount(hparams.gamma, allow_one=model.terminal is not None)
    _checks.check_positive("radius", hparams.radius)
    if _checks.is_concrete(hparams.max_radius, hparams.radius) and not np.all(
            np.asarray(hparams.max_radius) >= np.asarray(hparams.radius)):
        raise ValueError(f"max_radius = {hparams.max_radius} must be >= radius ="
                         f" {hparams.radius}.")
    _checks.check_positive("damping", hparams.damping, allow_zero=True)
    if _checks.is_concrete(hparams.accept):
        eta = np.asarray(hparams.accept)
        if not np.all((eta >= 0) & (eta < 0.25)):
            raise ValueError(f"accept = {eta} must lie in [0, 0.25) (the acceptance"
                             " threshold eta of the trust-region ratio).")
    if config.hessian not in NEWTON_HESSIANS:
        raise ValueError(f"config.hessian = {config.hessian!r} must be one of"
                         f" {', '.join(map(repr, NEWTON_HESSIANS))}.")
    _validate_count("bisection_steps", config.bisection_steps)
    if config.rcond is not None and not (np.isfinite(config.rcond) and config.rcond > 0):
        raise ValueError(f"config.rcond = {config.rcond!r} must be finite and > 0 (or None).")


def _validate_count(name, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"config.{name} = {value!r} must be an int >= 1.")


def newton_init(model, params0, hparams: NewtonHParams, key=None, *,
                config: NewtonConfig) -> NewtonState:
    """The solve at `params0` (which also checks the model there) and `radius`."""
    terms = lax.stop_gradient(cm.surrogate_terms(model, params0, hparams.gamma))
    return NewtonState(params0, terms, jnp.asarray(hparams.radius, terms.objective.dtype))


def newton_step(model, state: NewtonState, hparams: NewtonHParams, key=None, *,
                config: NewtonConfig):
    """One trust-region Newton iteration at `alpha = theta_k` (Nocedal & Wright, Alg. 4.1):
    gradient `g = grad_theta S(alpha, alpha) = grad J(alpha)`, Hessian `H` (surrogate or
    exact), `delta` from `trust_region_step`, then the solve at `alpha + delta`; the step is
    kept if `rho = (J(alpha + delta) - J(alpha)) / (g . delta + delta^T H delta / 2) >=
    accept`; the radius is quartered if `rho < 1/4`, doubled (up to `max_radius`) if
    `rho > 3/4` and the step reached the boundary."""
    terms = state.terms
    flat, unravel = ravel_pytree(state.params)
    surrogate = lambda f: cm.surrogate_at(model, unravel(f), terms)  # noqa: E731
    g = jax.grad(surrogate)(flat)
    if config.hessian == "surrogate":
        H = jax.hessian(surrogate)(flat)
    else:
        H = jax.hessian(lambda f: cm.objective(model, unravel(f), terms.gamma))(flat)
    delta, shift = trust_region_step(g, H, state.radius, hparams.damping,
                                     bisection_steps=config.bisection_steps,
                                     rcond=config.rcond)
    predicted = g @ delta + 0.5 * delta @ H @ delta
    candidate = unravel(flat + delta)
    new = lax.stop_gradient(cm.surrogate_terms(model, candidate, terms.gamma))
    actual = new.objective - terms.objective
    # g = 0 gives delta = 0 and nothing to predict: a (null) step that is taken
    ratio = jnp.where(predicted > 0, actual / jnp.where(predicted > 0, predicted, 1), 1.0)
    accepted = (ratio >= hparams.accept) & jnp.isfinite(new.objective)
    step_norm = jnp.linalg.norm(delta)
    at_edge = step_norm >= 0.99 * state.radius
    radius = jnp.where(ratio < 0.25, state.radius / 4,
                       jnp.where((ratio > 0.75) & at_edge,
                                 jnp.minimum(2 * state.radius, hparams.max_radius),
                                 state.radius))
    keep = lambda a, b: jax.tree_util.tree_map(  # noqa: E731
        lambda x, y: jnp.where(accepted, x, y), a, b)
    params, terms = keep(candidate, state.params), keep(new, terms)
    row = NewtonTrace(terms.objective, jnp.linalg.norm(g), step_norm, shift, ratio,
                      accepted, radius)
    return NewtonState(params, terms, radius), row


NEWTON_CHAIN_ITERATION = base.Algorithm(
    "newton_chain_iteration", HParams=NewtonHParams, Config=NewtonConfig, State=NewtonState,
    Trace=NewtonTrace, init=newton_init, step=newton_step, validate=newton_validate,
    expected_params=_params_shape, uses_key=_exact)


def newton_chain_iteration(model, params0, hparams: NewtonHParams, key=None, *,
                           config: NewtonConfig, keep_params: bool = False):
    """Second-order Chain Iteration (`config.hessian="surrogate"`) or trust-region Newton on
    `J` (`"exact"`): `base.run(NEWTON_CHAIN_ITERATION, ...)` ->
    `(NewtonState, NewtonTrace[n_steps])`."""
    return NEWTON_CHAIN_ITERATION.run(model, params0, hparams, key, config=config,
                                      keep_params=keep_params)
