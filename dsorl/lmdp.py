"""Linearly-solvable MDPs (LMDPs): the container and its validation.

Todorov, "Linearly-solvable Markov decision problems" (NIPS 2006) and "Efficient
computation of optimal actions" (PNAS 2009); DSO's LMDP mapping (arXiv 2506.08340, 2.1).
An LMDP has passive dynamics `p(x'|x)`, a state cost `q(x)` and an initial law; the
controller picks any chain `u(.|x)` absolutely continuous w.r.t. `p(.|x)` and pays
`q(x) + KL(u(.|x) || p(.|x))` per step. As everywhere in dsorl rewards are maximised:
the DSO reward of a controlled chain is `-q - KL`. With a terminal set the problem is
first exit (a terminal state pays its `q` once and the episode ends); without one it is
average cost. Solvers: `dsorl.algorithms.lmdp`; instances: `dsorl.envs.lmdp`.
"""
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from dsorl import _checks
from dsorl._struct import pytree_dataclass
from dsorl.graph import reaches
from dsorl.markov import validate_chain

__all__ = ["LMDP", "validate_lmdp"]

Array = jax.Array


@pytree_dataclass
class LMDP:
    """Passive dynamics `passive[X, X]`, state cost `cost[X]` (a cost: it is subtracted),
    initial law `initial[X]`, optional boolean `terminal[X]` (first exit).

    Validated when built from concrete arrays: `passive` a stochastic matrix (terminal
    rows too, e.g. absorbing), `cost` finite, `initial` a distribution and, with a
    terminal set, every state reaching it under the passive dynamics (otherwise no
    controlled chain ever exits and the desirability is 0 there).
    """

    passive: Array
    cost: Array
    initial: Array
    terminal: Optional[Array] = None

    def __post_init__(self):
        dtype = _checks.float_dtype(self.passive, self.cost, self.initial)
        p, q, init = (jnp.asarray(x, dtype) for x in (self.passive, self.cost, self.initial))
        terminal = None if self.terminal is None else jnp.asarray(self.terminal, bool)
        if _checks.is_concrete(p, q, init, terminal):
            validate_lmdp(p, q, init, terminal)
        for name, value in (("passive", p), ("cost", q), ("initial", init),
                            ("terminal", terminal)):
            object.__setattr__(self, name, value)

    @property
    def n_states(self) -> int:
        return self.passive.shape[-1]


def validate_lmdp(passive, cost, initial, terminal=None) -> None:
    """Raise `ValueError` naming the offending entry unless the arrays form an LMDP."""
    p = np.asarray(passive)
    validate_chain(p, cost)
    _checks.check_shape("initial", initial, p.shape[:1], "[X]")
    _checks.check_finite("initial", initial)
    _checks.check_nonnegative("initial", initial)
    _checks.check_rows_sum_to_one("initial", np.asarray(initial)[None], what="initial law")
    if terminal is None:
        return
    _checks.check_shape("terminal", terminal, p.shape[:1], "[X]")
    terminal = np.asarray(terminal, bool)
    if not terminal.any():
        raise ValueError("the terminal set is empty: pass terminal=None for an average-cost"
                         " LMDP.")
    reach = reaches(p, terminal)
    if not reach.all():
        stuck = np.flatnonzero(~reach)
        raise ValueError(f"the terminal set is never reached from state {stuck[0]} under the"
                         f" passive dynamics ({stuck.size} such states): no controlled chain"
                         " (which must be absolutely continuous w.r.t. p) can exit there.")
