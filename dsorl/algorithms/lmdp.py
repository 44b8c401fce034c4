"""LMDPs: desirability by a linear solve and by an eigenvector, the optimal chain,
Z-learning and off-chain (importance-weighted) Z-learning.

Todorov, "Linearly-solvable Markov decision problems" (NIPS 2006), "Efficient computation
of optimal actions" (PNAS 2009), and the LMDP section of "Dynamical System Optimization"
(arXiv 2506.08340). With passive dynamics `p`, state cost `q` and `G = diag(exp(-q)) p`,
the desirability `z = exp(-v)` (`v`: optimal cost-to-go) satisfies

- first exit: `z(x) = exp(-q(x)) sum_x' p(x'|x) z(x')` off the terminal set, `z = exp(-q)`
  on it: the linear system `(I - G~) z = exp(-q) 1_T` (`G~`: terminal rows zeroed);
- average cost: `lambda z = G z`, `z > 0`, the principal (Perron) eigenvector; the
  optimal average cost is `-log lambda`, i.e. the optimal gain (reward) is `log lambda`.

The optimal controlled chain is `u*(x'|x) = p(x'|x) z(x') / sum_y p(y|x) z(y)`. As
elsewhere in dsorl rewards are maximised: the DSO reward of a chain `u` is
`-q - KL(u || p)`, whose optimal value is `log z` (first exit) and whose optimal gain is
`log lambda` (`dsorl.chain_models.lmdp_chain`).

Z-learning (first exit) estimates `z` from sampled transitions by stochastic
approximation, `z(x) <- (1 - eta_k) z(x) + eta_k exp(-q(x)) w z(x')`, here synchronously:
each step draws one successor `x'` of every non-terminal state. On-chain the
successors come from `p` (`w = 1`); off-chain from a behaviour chain `b` with the
importance weight `w = p(x'|x) / b(x'|x)`, or (`greedy`) from the current estimate's
optimal chain `u(z_k)` (Todorov 2009, greedy Z-learning). Each update's mean is the exact
`z <- (1 - eta) z + eta (G~ z + exp(-q) 1_T)`, so all variants converge to the same `z`.
`z_learning` runs through `dsorl.algorithms.base` (record `Z_LEARNING`: problem = the
LMDP, params = `z`).
"""
import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dsorl import _checks
from dsorl._struct import unchecked
from dsorl.algorithms import base
from dsorl.lmdp import LMDP
from dsorl.markov import Chain, stationary_distribution, validate_chain
from dsorl.sampling import draw

__all__ = ["first_exit_desirability", "AverageCostSolution", "average_cost_desirability",
           "optimal_chain", "ZLearningHParams", "ZLearningConfig", "ZLearningState",
           "ZLearningTrace", "z_learning_validate", "z_learning_init", "z_learning_step",
           "Z_LEARNING", "z_learning"]

Array = jax.Array


def _terminal(lmdp: LMDP) -> Array:
    if lmdp.terminal is None:
        raise ValueError("this LMDP has no terminal set: it is average cost (use"
                         " average_cost_desirability); first-exit methods need one.")
    return lmdp.terminal


def first_exit_desirability(lmdp: LMDP) -> Array:
    """First-exit desirability `z[X]` by one linear solve: `(I - G~) z = exp(-q) 1_T`.

    `G~ = diag(exp(-q)) p` with terminal rows zeroed (Todorov 2009, eq. 4); `z = exp(-q)`
    on the terminal set and `-log z` is the optimal cost-to-go.
    """
    terminal = _terminal(lmdp)
    weight = jnp.exp(-lmdp.cost)
    G = jnp.where(terminal[:, None], 0, weight[:, None] * lmdp.passive)
    eye = jnp.eye(lmdp.n_states, dtype=G.dtype)
    return jnp.linalg.solve(eye - G, jnp.where(terminal, weight, 0))


class AverageCostSolution(NamedTuple):
    """`desirability[X]` (normalised so that `p* . log z = 0`, `p*` the stationary law of
    the optimal chain: `log z` is then the optimal chain's bias), `gain = log lambda`
    (the optimal average reward; the average cost is `-gain`), power-iteration count."""

    desirability: Array
    gain: Array
    iterations: Array


def average_cost_desirability(lmdp: LMDP, *, tol: Optional[float] = None,
                              max_iter: int = 100_000) -> AverageCostSolution:
    """Average-cost desirability: the principal eigenvector of `G = diag(exp(-q)) p`.

    Power iteration on `G + s I` with `s = max exp(-q)` (the shift makes the Perron root
    strictly dominant even for a periodic `p`; same eigenvector), from `z = 1`, until
    `max |z_{k+1} - z_k| <= tol max |z_k|` (default `tol = 1e3 eps`). The passive chain
    must be unichain (checked on concrete input), so that `z` is unique up to scale.
    Concrete input that does not converge within `max_iter` raises `ValueError`.
    """
    if lmdp.terminal is not None:
        raise ValueError("this LMDP has a terminal set: it is first exit (use"
                         " first_exit_desirability).")
    _checks.check_unichain(lmdp.passive, "the passive dynamics",
                           "the average-cost desirability is not unique (needs a unichain p)")
    dtype = lmdp.passive.dtype
    tol = 1e3 * float(jnp.finfo(dtype).eps) if tol is None else tol
    weight = jnp.exp(-lmdp.cost)
    G = weight[:, None] * lmdp.passive
    shift = jnp.max(weight)

    def step(carry):
        z, _, k = carry
        new = G @ z + shift * z
        new = new / jnp.max(new)
        return new, jnp.max(jnp.abs(new - z)), k + 1

    init = (jnp.ones(lmdp.n_states, dtype), jnp.asarray(jnp.inf, dtype), jnp.int32(0))
    z, change, k = lax.while_loop(lambda c: (c[1] > tol) & (c[2] < max_iter), step, init)
    if _checks.is_concrete(change) and float(change) > tol:
        raise ValueError(f"power iteration did not converge within {max_iter} iterations"
                         f" (last change {float(change):.2e} > tol {tol:.1e}).")
    log_lambda = jnp.log(jnp.sum(G @ z) / jnp.sum(z))
    u = optimal_chain(lmdp, z)
    p = stationary_distribution(unchecked(Chain, P=u, r=jnp.zeros_like(z)))
    log_z = jnp.log(z)
    return AverageCostSolution(jnp.exp(log_z - p @ log_z), log_lambda, k)


def optimal_chain(lmdp: LMDP, z: Array) -> Array:
    """`u*(x'|x) = p(x'|x) z(x') / sum_y p(y|x) z(y)`, `[X, X]` (Todorov 2009, eq. 5)."""
    u = lmdp.passive * z[None, :]
    return u / jnp.sum(u, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------------
# Z-learning (first exit)


class ZLearningHParams(NamedTuple):
    """Traced: `step_size` `c > 0`, the scale of the step sizes `eta_k = c / (c + k)` (k
    from 0); `behaviour[X, X]`: off-chain sampling chain (None: on-chain, from `p`; it
    must charge every transition of `p` from non-terminal states, checked on concrete
    input, else the weights `p / b` are biased)."""

    step_size: Array = 1.0
    behaviour: Optional[Array] = None


@dataclasses.dataclass(frozen=True)
class ZLearningConfig:
    """Static: `n_steps` synchronous updates (each draws one successor of every state and
    updates every non-terminal one); `greedy`: sample from the current estimate's optimal
    chain `u(z_k)` (off-chain, importance weighted) instead of `p` or the behaviour."""

    n_steps: int
    greedy: bool = False


class ZLearningState(NamedTuple):
    """`params`: the estimate `z_k[X]`; `count`: `k`; `exact`: `z` by the linear solve
    (the reference of the trace's error, solved once in `init`)."""

    params: Array
    count: Array
    exact: Array


class ZLearningTrace(NamedTuple):
    """Per step, after the update: `error` `max |z_{k+1} - z| / max z` (`z`: exact);
    `params`: `z_{k+1}` with `keep_params`."""

    error: Array
    params: Any = None


def z_learning_validate(lmdp: LMDP, hparams: ZLearningHParams, config: ZLearningConfig) -> None:
    """A first-exit LMDP, `step_size > 0`, a behaviour chain covering `p` (concrete input)."""
    del config
    terminal = _terminal(lmdp)
    _checks.check_positive("step_size", hparams.step_size)
    b = hparams.behaviour
    if b is not None and _checks.is_concrete(b):
        validate_chain(b)
        _checks.check_covers(lmdp.passive, b, skip_rows=terminal,
                             what="the behaviour chain does not cover the passive dynamics",
                             consequence="so the importance weights p/b miss that transition")


def z_learning_init(lmdp: LMDP, z0: Array, hparams, key, *, config) -> ZLearningState:
    """`z0 > 0` (checked when concrete) with the terminal entries set to their known
    value `exp(-q)`."""
    del hparams, key, config
    if _checks.is_concrete(z0) and not np.all(np.asarray(z0) > 0):
        raise ValueError("params0 (z0) must be > 0 (a desirability is exp(-cost-to-go)).")
    z = jnp.where(_terminal(lmdp), jnp.exp(-lmdp.cost), z0)
    return ZLearningState(z, jnp.zeros((), jnp.int32), first_exit_desirability(lmdp))


def z_learning_step(lmdp: LMDP, state: ZLearningState, hparams: ZLearningHParams, key: Array,
                    *, config: ZLearningConfig):
    """One synchronous update of every non-terminal state from one sampled successor
    each (inverse-CDF draws, `dsorl.sampling.draw`) -> `(state, ZLearningTrace row)`."""
    z, p = state.params, lmdp.passive
    if config.greedy:
        sampler = optimal_chain(lmdp, z)
    elif hparams.behaviour is None:
        sampler = p
    else:
        sampler = hparams.behaviour
    u = jax.random.uniform(key, (lmdp.n_states,), p.dtype)
    nxt = jax.vmap(draw)(sampler, u)
    rows = jnp.arange(lmdp.n_states)
    target = jnp.exp(-lmdp.cost) * p[rows, nxt] / sampler[rows, nxt] * z[nxt]
    c = hparams.step_size
    eta = c / (c + state.count.astype(p.dtype))
    z = jnp.where(lmdp.terminal, z, (1 - eta) * z + eta * target)
    error = jnp.max(jnp.abs(z - state.exact)) / jnp.max(state.exact)
    return ZLearningState(z, state.count + 1, state.exact), ZLearningTrace(error)


Z_LEARNING = base.Algorithm(
    "z_learning", HParams=ZLearningHParams, Config=ZLearningConfig, State=ZLearningState,
    Trace=ZLearningTrace, init=z_learning_init, step=z_learning_step,
    validate=z_learning_validate, expected_params=lambda lmdp, config: (lmdp.n_states,))


def z_learning(lmdp: LMDP, z0: Array, hparams: ZLearningHParams, key=None, *,
               config: ZLearningConfig, keep_params: bool = False):
    """Z-learning on a first-exit LMDP: `dsorl.algorithms.base.run(Z_LEARNING, ...)` ->
    `(ZLearningState, ZLearningTrace[n_steps])`.

    `z0[X] > 0`: the initial estimate (terminal entries are replaced by `exp(-q)`); with
    `keep_params`, `trace.params[k]` is `z_{k+1}`. Step `k` draws from
    `fold_in(key, k)`. Jittable; vmap over `z0`, `hparams`, `key` and the LMDP.
    """
    return Z_LEARNING.run(lmdp, z0, hparams, key, config=config, keep_params=keep_params)
