"""MDPs and Markov chains, and the marginalisation that turns the one into the other.

Conventions (docs/design.md §2): `P[s, a, s']`, expected reward `R[s, a]`, initial law `rho[s]`,
policy `pi[s, a]`; a chain is `P[s, s']` with per-state reward `r[s]`. Rewards are
maximised. Batch axes come from the caller's `vmap`.
"""
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from dsorl import _checks
from dsorl._struct import pytree_dataclass, unchecked
from dsorl.markov import Chain, bias, discounted_value, gain
from dsorl.sparse import is_sparse, validate_sparse

__all__ = ["MDP", "validate_mdp", "validate_policy", "induced_chain", "entropy_regularised_chain",
           "reference_measure", "policy_kl", "action_values", "bias_action_values",
           "soft_action_values"]

Array = jax.Array


@pytree_dataclass
class MDP:
    """A finite MDP: `P[s, a, s']`, expected reward `R[s, a]`, initial law `rho[s]`.

    `P` is a dense `[S, A, S]` array or, for large MDPs, a `dsorl.sparse.SparseTransitions`
    `[S, A, K]` (K successors a pair); every function of dsorl takes either.

    `action_mask[s, a]` (optional, bool) marks the actions available in each state; every
    policy of `dsorl.policies` gives masked actions probability 0, and their rows of `P`
    and `R` are ignored (they may be zero but must be finite). Validated when built from
    concrete arrays (see `validate_mdp`); unchecked when built from tracers.
    """

    P: Array
    R: Array
    rho: Array
    action_mask: Optional[Array] = None

    def __post_init__(self):
        if is_sparse(self.P):
            dtype = _checks.float_dtype(self.P.probs, self.R, self.rho)
            P = self.P.astype(dtype)
            R, rho = (jnp.asarray(x, dtype) for x in (self.R, self.rho))
        else:
            dtype = _checks.float_dtype(self.P, self.R, self.rho)
            P, R, rho = (jnp.asarray(x, dtype) for x in (self.P, self.R, self.rho))
        mask = None if self.action_mask is None else jnp.asarray(self.action_mask, bool)
        if _checks.is_concrete(P, R, rho, mask):
            validate_mdp(P, R, rho, mask)
        for name, value in (("P", P), ("R", R), ("rho", rho), ("action_mask", mask)):
            object.__setattr__(self, name, value)

    @property
    def n_states(self) -> int:
        return self.P.shape[-3]

    @property
    def n_actions(self) -> int:
        return self.P.shape[-2]

    @property
    def allowed(self) -> Array:
        """Boolean `[S, A]` of available actions (all True without a mask)."""
        if self.action_mask is None:
            return jnp.ones(self.R.shape, bool)
        return self.action_mask


def validate_mdp(P, R, rho, action_mask=None) -> None:
    """Raise `ValueError` naming the offending state/action unless the arrays form an MDP."""
    sparse = is_sparse(P)
    if sparse and P.successors.ndim != 3:
        raise ValueError(f"a sparse MDP kernel must be [S, A, K], got {P.successors.shape}.")
    if not sparse:
        P = np.asarray(P)
    R, rho = np.asarray(R), np.asarray(rho)
    if P.ndim != 3 or P.shape[0] != P.shape[2]:
        raise ValueError(f"P must have shape [S, A, S], got {P.shape}.")
    S, A = P.shape[:2]
    _checks.check_shape("R", R, (S, A), "[S, A]")
    _checks.check_shape("rho", rho, (S,), "[S]")
    if action_mask is not None:
        _checks.check_shape("action_mask", action_mask, (S, A), "[S, A]")
        mask = np.asarray(action_mask, bool)
        _checks.check_actions_available(mask)
    else:
        mask = np.ones((S, A), bool)
    for name, x in (("R", R), ("rho", rho)) + ((() if sparse else (("P", P),))):
        _checks.check_finite(name, x)
    if sparse:
        validate_sparse(P.successors, P.probs, mask, name="P.probs")
    else:
        _checks.check_nonnegative("P", np.where(mask[..., None], P, 0))
        _checks.check_rows_sum_to_one("P", P, mask, what="transition row")
    _checks.check_nonnegative("rho", rho)
    _checks.check_rows_sum_to_one("rho", rho[None], what="initial distribution")


def validate_policy(mdp: MDP, pi) -> None:
    """Raise `ValueError` unless `pi[s, a]` is a policy of `mdp` (concrete values only)."""
    if not _checks.is_concrete(pi):
        return
    pi = np.asarray(pi)
    _checks.check_shape("pi", pi, (mdp.n_states, mdp.n_actions), "[S, A]")
    _checks.check_finite("pi", pi)
    _checks.check_nonnegative("pi", pi)
    _checks.check_rows_sum_to_one("pi", pi, what="policy row")
    if mdp.action_mask is not None:
        bad = np.argwhere((pi > 0) & ~np.asarray(mdp.action_mask))
        if bad.size:
            s, a = bad[0]
            raise ValueError(f"pi[{s}, {a}] = {pi[s, a]:.3g} > 0 on a masked action.")


def induced_chain(mdp: MDP, pi: Array) -> Chain:
    """The chain a stationary policy induces (DSO's marginalisation, Todorov eq. 12).

    `P_pi[s, s'] = sum_a pi[s, a] P[s, a, s']`, `r_pi[s] = sum_a pi[s, a] R[s, a]`.
    Shapes: `pi[S, A]` -> `Chain(P[S, S], r[S])`.
    """
    validate_policy(mdp, pi)
    if is_sparse(mdp.P):
        return _unchecked_chain(_masked(mdp, mdp.P).induced(pi),
                                jnp.sum(pi * _masked(mdp, mdp.R), axis=-1))
    # A broadcast product and a sum over actions, not an einsum: XLA:CPU runs this small-
    # contraction batched matvec as a dot about 2x slower (S = 1000, with or without vmap).
    P = jnp.sum(pi[:, :, None] * _masked(mdp, mdp.P), axis=1)
    r = jnp.sum(pi * _masked(mdp, mdp.R), axis=-1)
    return _unchecked_chain(P, r)


def entropy_regularised_chain(mdp: MDP, pi: Array, tau, mu: Optional[Array] = None) -> Chain:
    """The chain of `pi` with reward `r_pi[s] - tau * KL(pi(.|s) || mu(.|s))`.

    Its discounted value is the entropy-regularised value
    `V_tau^pi = E sum_t gamma^t [r(s_t, a_t) - tau log(pi(a_t|s_t) / mu(a_t|s_t))]`
    (Kerimkulov et al., ICML 2022, the regularised objective of their eq. (1)). `mu[S, A]`
    defaults to the uniform law on available actions; with it,
    `KL = log|A(s)| - entropy(pi(.|s))`.
    """
    _checks.check_positive("tau", tau, allow_zero=True)
    chain = induced_chain(mdp, pi)
    return _unchecked_chain(chain.P, chain.r - tau * policy_kl(mdp, pi, mu))


def reference_measure(mdp: MDP, mu: Optional[Array] = None) -> Array:
    """`mu[S, A]`: the given reference law (checked) or uniform over available actions."""
    if mu is None:
        allowed = mdp.allowed.astype(mdp.R.dtype)
        return allowed / allowed.sum(-1, keepdims=True)
    mu = jnp.asarray(mu, mdp.R.dtype)
    # the mask must be concrete too: `mdp.allowed` is staged (a tracer) under a jit trace
    if _checks.is_concrete(mu, mdp.action_mask):
        m = np.asarray(mu)
        _checks.check_shape("mu", m, (mdp.n_states, mdp.n_actions), "[S, A]")
        _checks.check_finite("mu", m)
        _checks.check_nonnegative("mu", m)
        _checks.check_rows_sum_to_one("mu", m, what="reference-measure row")
        allowed = np.ones(m.shape, bool) if mdp.action_mask is None else np.asarray(mdp.action_mask)
        bad = np.argwhere((m <= 0) & allowed)
        if bad.size:
            s, a = bad[0]
            raise ValueError(f"mu[{s}, {a}] = 0 on an available action: the reference measure"
                             " must charge every available action (KL would be infinite).")
    return mu


def policy_kl(mdp: MDP, pi: Array, mu: Optional[Array] = None) -> Array:
    """`KL(pi(.|s) || mu(.|s))` for every state, shape `[S]`; 0 log 0 = 0."""
    mu = reference_measure(mdp, mu)
    safe = pi > 0
    log_ratio = jnp.log(jnp.where(safe, pi, 1)) - jnp.log(jnp.where(safe, mu, 1))
    return jnp.sum(jnp.where(safe, pi * log_ratio, 0), axis=-1)


def action_values(mdp: MDP, pi: Array, gamma) -> Array:
    """Discounted action values `Q[s, a] = R[s, a] + gamma sum_s' P[s, a, s'] v_pi(s')`.

    Shapes: `pi[S, A]` -> `Q[S, A]`. Masked actions get the value their (ignored) rows give.
    """
    v = discounted_value(induced_chain(mdp, pi), gamma)
    return mdp.R + gamma * mdp.P @ v


def _masked(mdp: MDP, x: Array) -> Array:
    """Zero the entries of masked actions (their rows are ignored, possibly garbage)."""
    if mdp.action_mask is None:
        return x
    if is_sparse(x):
        return x.masked(mdp.action_mask)
    mask = mdp.action_mask.reshape(mdp.action_mask.shape + (1,) * (x.ndim - 2))
    return jnp.where(mask, x, 0)


def _unchecked_chain(P: Array, r: Array) -> Chain:
    """A `Chain` from arrays already known to be valid."""
    return unchecked(Chain, P=P, r=r)


def bias_action_values(mdp: MDP, pi: Array) -> Array:
    """Bias action values `q_b[s, a] = R[s, a] - g + sum_s' P[s, a, s'] h(s')`, `[S, A]`.

    `g`, `h` are the gain and bias of `pi`'s chain (unichain required; Dewanto & Gallagher,
    arXiv 2105.13609, §2, the relative action value of the bias).
    """
    chain = induced_chain(mdp, pi)
    return mdp.R - gain(chain) + mdp.P @ bias(chain)


def soft_action_values(mdp: MDP, pi: Array, gamma, tau, mu: Optional[Array] = None) -> Array:
    """Entropy-regularised action values `Q_tau[s, a] = R[s, a] + gamma P[s, a] . V_tau^pi`.

    `V_tau^pi` is the value of `entropy_regularised_chain(mdp, pi, tau, mu)`; then
    `V_tau^pi(s) = sum_a pi(a|s) [Q_tau(s, a) - tau log(pi(a|s) / mu(a|s))]`.
    """
    v = discounted_value(entropy_regularised_chain(mdp, pi, tau, mu), gamma)
    return mdp.R + gamma * mdp.P @ v
