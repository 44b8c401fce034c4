"""DSO optimisers of a parameterised chain: gradient ascent, natural gradient, Chain
Iteration and Proximal Chain Optimisation (PCO).

Todorov, "Dynamical System Optimization" (arXiv 2506.08340); DESIGN 5.4. Each algorithm
is `*_init` / `*_step` pure functions and a run
`run(model, params0, hparams, key, *, config) -> (final_state, trace)`, one `lax.scan`
over iterations: jittable end to end (close over the `ChainModel`) and vmappable over
`params0`, `hparams` and `key`. Rewards are maximised (the paper's cost is `L = -r`);
optax minimises, so every optimiser is fed the negated ascent direction.

- `gradient_ascent`: `theta <- theta + step(grad J)` with the exact Thm-1 gradient;
  `config.natural=True` preconditions it with the chain Fisher
  (`dsorl.optim.natural_direction`, damping `hparams.damping`): the natural gradient.
- `chain_iteration`: `theta_{k+1} = argmax_theta S(theta, theta_k) - beta D(theta; theta_k)`
  with the exact surrogate `S`, the proximal weight `beta = hparams.proximal >= 0` and
  `D` the occupancy-weighted chain KL (`dsorl.chain_models.divergence_at`); the argmax
  is approximated by `config.inner_steps` steps of an optax optimiser, started from
  `theta_k` (`warm_start=True`) or from `params0` each time. For a tabular policy and
  `beta = 0` the maximiser of `S` is the greedy policy of `Q_{theta_k}` in every state:
  Chain Iteration is policy iteration, up to how near the inner loop gets to that
  (infinite-logit) argmax; warm starts keep sharpening it (tests: monotone, and the
  greedy policy is optimal after as many iterations as Howard's from the same start).
- `pco`: sampled, clipped surrogate (PPO's analogue) over `config.epochs` optimiser
  steps per batch of `config.n_episodes` episodes, on-chain (episodes of `theta_k`) or
  off-chain (episodes of a fixed `behaviour` chain, importance-weighted); the value
  baseline is refitted on each batch and used on the next.

Key argument: used by `pco` only; the exact methods accept it (and ignore it) so that
every DSO run has the signature of DESIGN 4 and plugs into `dsorl.sweep`.
"""
import dataclasses
import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from dsorl import _checks
from dsorl import chain_models as cm
from dsorl.estimators import dso as est
from dsorl.markov import validate_chain
from dsorl.optim import natural_direction

Array = jax.Array


def _tree_norm(tree) -> Array:
    return jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(tree)))


def _negate(tree):
    return jax.tree_util.tree_map(jnp.negative, tree)


def _check_steps(**counts) -> None:
    for name, value in counts.items():
        if int(value) < 1:
            raise ValueError(f"{name} = {value} must be >= 1.")


# ----------------------------------------------------------------------------------------
# Gradient ascent and natural gradient (exact)


class AscentHParams(NamedTuple):
    """Traced: discount `gamma`, `learning_rate`, Fisher `damping` (natural gradient only)."""

    gamma: Array
    learning_rate: Array
    damping: Array = 0.0


@dataclasses.dataclass(frozen=True)
class AscentConfig:
    """Static: `iterations`; `optimizer`: `learning_rate -> optax transformation`
    (default plain SGD); `natural`: precondition by the chain Fisher; `pseudo_inverse`:
    natural direction by SVD pseudo-inverse (the Fisher of a softmax is singular)."""

    iterations: int
    optimizer: Callable = optax.sgd
    natural: bool = False
    pseudo_inverse: bool = True


class AscentState(NamedTuple):
    params: object
    opt_state: object


class AscentTrace(NamedTuple):
    """Per iteration `k`: `objective` `J(theta_k)` and `gradient_norm` `||grad J(theta_k)||`."""

    objective: Array
    gradient_norm: Array


def _ascent_transform(hparams: AscentHParams, config: AscentConfig):
    tx = config.optimizer(hparams.learning_rate)
    if config.natural:
        return optax.chain(natural_direction(hparams.damping,
                                             pseudo_inverse=config.pseudo_inverse), tx)
    return tx


def gradient_ascent_init(model, params0, hparams: AscentHParams, *, config: AscentConfig
                         ) -> AscentState:
    """The state before the first step."""
    del model
    return AscentState(params0, _ascent_transform(hparams, config).init(params0))


def gradient_ascent_step(model, state: AscentState, hparams: AscentHParams, *,
                         config: AscentConfig):
    """One step along the exact gradient (or natural gradient) -> `(state, AscentTrace row)`."""
    J, grad = cm.value_and_gradient(model, state.params, hparams.gamma)
    extra = {"fisher": cm.fisher(model, state.params, hparams.gamma)} if config.natural else {}
    updates, opt_state = _ascent_transform(hparams, config).update(
        _negate(grad), state.opt_state, state.params, **extra)
    return (AscentState(optax.apply_updates(state.params, updates), opt_state),
            AscentTrace(J, _tree_norm(grad)))


def gradient_ascent(model, params0, hparams: AscentHParams, key=None, *,
                    config: AscentConfig):
    """Exact DSO gradient ascent (natural gradient with `config.natural`), one `lax.scan`.

    `key` is unused (exact method). Returns `(AscentState, AscentTrace)`, the trace
    holding `J(theta_k)` for `k = 0 .. iterations - 1`.
    """
    _check_steps(iterations=config.iterations)
    _checks.check_positive("learning_rate", hparams.learning_rate)
    _checks.check_positive("damping", hparams.damping, allow_zero=True)
    cm.check_model(model, params0, hparams.gamma)
    del key
    state = gradient_ascent_init(model, params0, hparams, config=config)
    step = lambda s, _: gradient_ascent_step(model, s, hparams, config=config)
    return lax.scan(step, state, None, length=config.iterations)


# ----------------------------------------------------------------------------------------
# Chain Iteration (exact surrogate)


class ChainIterationHParams(NamedTuple):
    """Traced: discount `gamma`, inner `learning_rate`, proximal weight `proximal >= 0`."""

    gamma: Array
    learning_rate: Array
    proximal: Array = 0.0


# Adam with a tiny epsilon: the surrogate's gradient on a saturated softmax logit is about
# the probability of the action it would switch to (far below Adam's default eps = 1e-8),
# and the default eps then freezes Chain Iteration on a slightly suboptimal policy (6 of 64
# garnets stalled at gaps 1e-6..1e-4 in the benchmark; with eps = 1e-20, none).
INNER_ADAM = functools.partial(optax.adam, eps=1e-20)


@dataclasses.dataclass(frozen=True)
class ChainIterationConfig:
    """Static: outer `iterations`, `inner_steps` per outer iteration, the inner
    `optimizer` (`learning_rate -> optax transformation`, default `INNER_ADAM`: Adam with
    eps = 1e-20, re-initialised every outer iteration), `warm_start` (inner loop from
    `theta_k`; else from `params0`)."""

    iterations: int
    inner_steps: int
    optimizer: Callable = INNER_ADAM
    warm_start: bool = True


class ChainIterationState(NamedTuple):
    params: object
    anchor: object


class ChainIterationTrace(NamedTuple):
    """Per outer iteration `k`: `objective` `J(theta_k)`; `surrogate_gain`
    `S(theta_{k+1}, theta_k) - J(theta_k)`; `divergence` `D(theta_{k+1}; theta_k)`."""

    objective: Array
    surrogate_gain: Array
    divergence: Array


def chain_iteration_init(model, params0, hparams, *, config) -> ChainIterationState:
    """The state before the first outer iteration (`anchor`: the restart point)."""
    del model, hparams, config
    return ChainIterationState(params0, params0)


def chain_iteration_step(model, state: ChainIterationState, hparams: ChainIterationHParams,
                         *, config: ChainIterationConfig):
    """One outer iteration: solve at `theta_k`, then `inner_steps` optimiser steps on
    `-(S(theta, theta_k) - proximal D(theta; theta_k))`."""
    terms = jax.lax.stop_gradient(cm.surrogate_terms(model, state.params, hparams.gamma))

    def loss(theta):
        return -(cm.surrogate_at(model, theta, terms)
                 - hparams.proximal * cm.divergence_at(model, theta, terms))

    tx = config.optimizer(hparams.learning_rate)
    start = state.params if config.warm_start else state.anchor

    def inner(carry, _):
        theta, opt_state = carry
        updates, opt_state = tx.update(jax.grad(loss)(theta), opt_state, theta)
        return (optax.apply_updates(theta, updates), opt_state), None

    (theta, _), _ = lax.scan(inner, (start, tx.init(start)), None, length=config.inner_steps)
    row = ChainIterationTrace(terms.objective, cm.surrogate_at(model, theta, terms) - terms.objective,
                              cm.divergence_at(model, theta, terms))
    return ChainIterationState(theta, state.anchor), row


def chain_iteration(model, params0, hparams: ChainIterationHParams, key=None, *,
                    config: ChainIterationConfig):
    """Chain Iteration, one `lax.scan` over outer iterations -> `(state, ChainIterationTrace)`.

    `key` is unused (exact method).
    """
    _check_steps(iterations=config.iterations, inner_steps=config.inner_steps)
    _checks.check_positive("learning_rate", hparams.learning_rate)
    _checks.check_positive("proximal", hparams.proximal, allow_zero=True)
    cm.check_model(model, params0, hparams.gamma)
    del key
    state = chain_iteration_init(model, params0, hparams, config=config)
    step = lambda s, _: chain_iteration_step(model, s, hparams, config=config)
    return lax.scan(step, state, None, length=config.iterations)


# ----------------------------------------------------------------------------------------
# Proximal Chain Optimisation (sampled)


class PCOHParams(NamedTuple):
    """Traced: discount `gamma`, optimiser `learning_rate`, ratio clip `clip` (epsilon;
    `inf` disables clipping: then one epoch is Algorithm 1 plus the optimiser)."""

    gamma: Array
    learning_rate: Array
    clip: Array = 0.2


@dataclasses.dataclass(frozen=True)
class PCOConfig:
    """Static: `iterations` (batches), `n_episodes` per batch, `horizon` T of each
    episode, `epochs` optimiser steps per batch (full batch), the `optimizer`
    (`learning_rate -> optax transformation`, default Adam, state kept across batches),
    `track_objective`: trace the exact `J(theta_k)` (one solve per batch; NaN if off)."""

    iterations: int
    n_episodes: int
    horizon: int
    epochs: int = 4
    optimizer: Callable = optax.adam
    track_objective: bool = True


class PCOState(NamedTuple):
    """`params`, optimiser state, and the value baseline `v_hat[X]` fitted on the last batch."""

    params: object
    opt_state: object
    v_hat: Array


class PCOTrace(NamedTuple):
    """Per batch `k` (collected at `alpha = theta_k`): exact `objective` `J(theta_k)`
    (if tracked), `estimate` of it (mean `G_0`), `surrogate_gain` (sampled clipped
    surrogate at `theta_{k+1}` minus `estimate`), `clip_fraction` (share of live
    transitions whose ratio left `[1 - eps, 1 + eps]` at `theta_{k+1}`)."""

    objective: Array
    estimate: Array
    surrogate_gain: Array
    clip_fraction: Array


def pco_init(model, params0, hparams: PCOHParams, *, config: PCOConfig) -> PCOState:
    """Start with `v_hat = 0` (the first batch has no previous one to fit on)."""
    r = cm.evaluate(model, params0)[1]
    tx = config.optimizer(hparams.learning_rate)
    return PCOState(params0, tx.init(params0), jnp.zeros_like(r))


def pco_step(model, state: PCOState, hparams: PCOHParams, key, *, config: PCOConfig,
             behaviour: Optional[Array] = None):
    """One batch: sample at `alpha = theta_k` (or from `behaviour`), `epochs` steps on the
    negated clipped surrogate, refit `v_hat`."""
    alpha = state.params
    if behaviour is None:
        states = est.sample_episodes(key, model, alpha, config.horizon, config.n_episodes)
    else:
        P0 = model.initial(alpha)
        states = est.sample_chain(key, jnp.asarray(behaviour, P0.dtype), P0, config.horizon,
                                  config.n_episodes)
    batch = est.prepare_batch(model, alpha, hparams.gamma, states, state.v_hat,
                              behaviour=behaviour)
    loss = lambda th: -est.surrogate_estimate(model, th, batch, hparams.clip)
    tx = config.optimizer(hparams.learning_rate)

    def epoch(carry, _):
        theta, opt_state = carry
        updates, opt_state = tx.update(jax.grad(loss)(theta), opt_state, theta)
        return (optax.apply_updates(theta, updates), opt_state), None

    (theta, opt_state), _ = lax.scan(epoch, (alpha, state.opt_state), None,
                                     length=config.epochs)
    estimate = jnp.mean(batch.returns[:, 0])
    objective = (cm.solve(model, alpha, hparams.gamma).objective if config.track_objective
                 else jnp.nan * estimate)
    row = PCOTrace(objective, estimate, -loss(theta) - estimate,
                   _clip_fraction(model, theta, batch, hparams.clip))
    return PCOState(theta, opt_state, est.fit_value(batch, state.v_hat)), row


def _clip_fraction(model, theta, batch: est.Batch, clip) -> Array:
    x, x_next = batch.states[:, :-1], batch.states[:, 1:]
    live = batch.ratio_weight > 0
    log_ratio = cm.log_transition(model, theta)[x, x_next] - jnp.where(live, batch.log_p, 0)
    outside = live & (jnp.abs(jnp.exp(jnp.where(live, log_ratio, 0)) - 1) > clip)
    return jnp.sum(outside) / jnp.maximum(jnp.sum(live), 1)


def pco(model, params0, hparams: PCOHParams, key, *, config: PCOConfig,
        behaviour: Optional[Array] = None):
    """Proximal Chain Optimisation, one `lax.scan` over batches -> `(PCOState, PCOTrace)`.

    `behaviour[X, X]`: off-chain data from this fixed chain (first states from
    `P0(theta_k)`), reweighted per decision; it must charge every transition the
    model's chain can take (checked on concrete input). Default: on-chain.
    """
    _check_steps(iterations=config.iterations, n_episodes=config.n_episodes,
                 horizon=config.horizon, epochs=config.epochs)
    _checks.check_positive("learning_rate", hparams.learning_rate)
    if _checks.is_concrete(hparams.clip) and not np.all(np.asarray(hparams.clip) > 0):
        raise ValueError(f"clip = {hparams.clip} must be > 0 (inf: no clipping).")
    cm.check_model(model, params0, hparams.gamma)
    if behaviour is not None:
        _check_behaviour(model, params0, behaviour)
    state = pco_init(model, params0, hparams, config=config)
    step = lambda s, k: pco_step(model, s, hparams, k, config=config, behaviour=behaviour)
    return lax.scan(step, state, jax.random.split(key, config.iterations))


def _check_behaviour(model, params0, behaviour) -> None:
    P = model.transition(params0) if _checks.is_concrete(params0) else None
    if P is None or not _checks.is_concrete(P, behaviour):
        return
    B, P = np.asarray(behaviour), np.asarray(P)
    validate_chain(B)
    bad = np.argwhere((P > 0) & (B <= 0))
    if bad.size:
        x, y = bad[0]
        raise ValueError(f"the behaviour chain does not cover the model's chain: B({y}|{x}) = 0"
                         f" but P({y}|{x}, theta) = {P[x, y]:.3g} > 0, so that transition is"
                         " never sampled and the importance weights are biased.")
