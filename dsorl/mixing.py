"""Differentiable mixing measures of a chain, and of the chain a policy induces.

Morimura, Osogami and Shirai ("Mixing-time regularized policy gradient", AAAI 2014) observe
that sampled average-reward gradients are only as good as the chain's mixing, and regularise
the policy gradient by a differentiable proxy of the mixing time. `dsorl.markov.mixing_time`
(the smallest t with `max |P^t - P*| <= eps`) is an integer, piecewise constant in the
policy; the measures here are smooth functions of `P` with implicit gradients (one LU of the
bordered `I - P`, `dsorl.markov`), all built on the deviation matrix
`H = (I - P + P*)^{-1} (I - P*) = sum_{t >= 0} (P^t - P*)` (aperiodic case) and the
fundamental matrix `Z = H + P*` (Kemeny & Snell 1960, Finite Markov Chains, §4.3-4.4):

* ``"kemeny"``: Kemeny's constant `K = tr(Z) = tr(H) + 1 = 1 + sum_{i >= 2} 1 / (1 - l_i)`
  over the eigenvalues `l_2, ..., l_S` of `P` other than the (simple) eigenvalue 1
  (`dsorl.markov.kemeny_constant`; our convention counts the `+ 1`, some authors omit it).
  `K = sum_j p*_j m_ij` for every start i (mean first-passage times `m_ij`, return time
  `m_ii = 1 / p*_i`): the expected time to reach a state drawn from `p*`.
* ``"hitting_time"``: the expected hitting time of a reference state j from stationarity,
  `E_{s_0 ~ p*}[min{t >= 1: s_t = j}] = sum_i p*_i m_ij = Z_jj / p*_j`
  (`dsorl.markov.hitting_times`). It needs j recurrent, and it is large when j is rarely
  visited as well as when the chain mixes slowly.
* ``"deviation_norm"``: the Frobenius norm `||H||_F = sqrt(sum_ij H_ij^2)`. Frobenius because
  it is smooth wherever `H != 0` (the induced infinity norm `max_i sum_j |H_ij|`, which
  bounds `sum_t ||P^t - P*||_inf` from below, has kinks); `||H||_inf <= sqrt(S) ||H||_F`.

Every measure grows as the second eigenvalue approaches 1. None of them sees periodicity:
the deterministic cycle has `K = (S + 1) / 2` but never mixes; `mixing_time` does see it.
How well each one ranks chains by `mixing_time` is measured in `dsorl.jobs.mixing_study`.
Dense unichain chains only (checked when concrete); batch with `jax.vmap`.
"""
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from dsorl import _checks
from dsorl.markov import (Chain, deviation_matrix, hitting_times, kemeny_constant,
                          stationary_distribution)
from dsorl.mdp import MDP, induced_chain

__all__ = ["MEASURES", "mixing_measure", "policy_mixing_measure", "deviation_norm",
           "stationary_hitting_time", "check_measure", "check_reference_recurrent"]

Array = jax.Array

MEASURES = ("kemeny", "hitting_time", "deviation_norm")


def deviation_norm(chain: Chain) -> Array:
    """Frobenius norm `||H||_F` of the deviation matrix `H` (a scalar; see module docstring).

    One LU (`dsorl.markov.deviation_matrix`), implicit gradients. Dense unichain chains.
    """
    return jnp.sqrt(jnp.sum(deviation_matrix(chain) ** 2))


def stationary_hitting_time(chain: Chain, state) -> Array:
    """`E_{s_0 ~ p*}[min{t >= 1: s_t = state}] = sum_i p*_i m_i,state = Z_jj / p*_j`, a scalar.

    `m = dsorl.markov.hitting_times(chain, state)` (mean first passage times, return time
    at `state`), averaged over the stationary law. `state` must be recurrent (checked when
    concrete by `hitting_times`).
    """
    return stationary_distribution(chain) @ hitting_times(chain, state)


def check_measure(measure: str, state=None, n_states: Optional[int] = None) -> None:
    """Raise `ValueError` unless `measure` is one of `MEASURES` and, for "hitting_time", a
    reference `state` in `[0, n_states)` is given."""
    if measure not in MEASURES:
        raise ValueError(f"mixing measure {measure!r} is unknown; choose one of {MEASURES}.")
    if measure == "hitting_time":
        if state is None:
            raise ValueError("the 'hitting_time' mixing measure needs a reference state.")
        if isinstance(state, bool) or int(state) != state or (
                n_states is not None and not 0 <= int(state) < n_states):
            raise ValueError(f"reference state = {state!r} is not a state"
                             f" (0 <= state < {n_states}).")


def mixing_measure(chain: Chain, measure: str = "kemeny", *, state=None) -> Array:
    """The mixing measure `measure` of `chain` (one of `MEASURES`), a scalar.

    "kemeny": `tr(H) + 1`; "hitting_time": `stationary_hitting_time(chain, state)`;
    "deviation_norm": `||H||_F`. Differentiable in `P` (implicitly, through one LU).
    """
    check_measure(measure, state, chain.n_states)
    if measure == "kemeny":
        return kemeny_constant(chain)
    if measure == "hitting_time":
        return stationary_hitting_time(chain, state)
    return deviation_norm(chain)


def policy_mixing_measure(mdp: MDP, pi: Array, measure: str = "kemeny", *,
                          state=None) -> Array:
    """`mixing_measure` of the chain `pi[S, A]` induces on `mdp` (DSO's marginalisation,
    `dsorl.induced_chain`); differentiable in `pi`."""
    return mixing_measure(induced_chain(mdp, pi), measure, state=state)


def _is_recurrent(P, state) -> bool:
    """Concrete `P`: is `state` in the closed class (positive stationary mass)?"""
    p = np.asarray(stationary_distribution(Chain(P, np.zeros(P.shape[-1], P.dtype))))
    return bool(p[int(state)] > np.sqrt(np.finfo(p.dtype).eps))


def check_reference_recurrent(mdp: MDP, state) -> None:
    """Raise `ValueError` unless `state` is recurrent under the policy that takes every
    available action with equal probability; every policy with full support (sigmoid,
    softmax) induces a chain with the same recurrent states. Skipped on traced MDPs."""
    if not _checks.is_concrete(mdp.P, mdp.action_mask):
        return
    P = np.asarray(mdp.P)
    mask = (np.ones(P.shape[:2]) if mdp.action_mask is None
            else np.asarray(mdp.action_mask, float))
    pi = mask / mask.sum(-1, keepdims=True)
    if not _is_recurrent(np.einsum("sa,sat->st", pi, P), state):
        raise ValueError(f"reference state {int(state)} is transient under full-support"
                         " policies: its hitting time from stationarity is infinite.")
