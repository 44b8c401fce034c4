"""Fisher matrices of a parameterised policy, and the nBw barrier preconditioner.

Dewanto & Gallagher, "A nearly Blackwell-optimal policy gradient method" (arXiv 2105.13609),
§4-5. Every matrix is a state-weighted sum of the policy Fisher
`F(s) = sum_a pi(a|s) psi(s, a) psi(s, a)^T`, `psi = grad_theta log pi(a|s)`: the weights are
the stationary law (gain), the normalised discounted occupancy (discounted criterion), or
the transient and stationary laws seen from the initial state (bias).

All gradients and matrices act on the flattened parameter vector
`theta = jax.flatten_util.ravel_pytree(params)[0]` (shape `[d]`); natural directions come
from `dsorl.optim.natural_direction`.
"""
import numbers

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from dsorl import _checks
from dsorl.markov import occupancy, stationary_distribution
from dsorl.mdp import MDP, induced_chain

Array = jax.Array


def score_table(policy, params, *, score_clip=None) -> Array:
    """Scores `psi[s, a] = grad_theta log pi(a|s)` for every state and action, `[S, A, d]`.

    Masked actions have a constant log-probability, hence a zero score. `score_clip` c
    (static, in (0, 1/2)): the scores of `log clip(pi, c, 1 - c)` instead, zero wherever
    the clip binds. This is what `torch.distributions.Categorical(probs=pi).log_prob`
    differentiates (its `probs_to_logits` takes `log(clamp_probs(pi))`, and `clamp_probs`
    clamps to `[eps, 1 - eps]` with `eps = torch.finfo(pi.dtype).eps`: pytorch
    `torch/distributions/utils.py`), so `c = 2.22e-16` (float64 eps) emulates code built on it:
    a sigmoid state whose logit exceeds about 36 in magnitude gets a zero Fisher.
    """
    flat, unravel = ravel_pytree(params)
    if score_clip is None:
        log_pi = lambda th: policy.log_probs(unravel(th))
    else:
        _check_score_clip(score_clip)
        log_pi = lambda th: jnp.log(jnp.clip(policy.probs(unravel(th)), score_clip,
                                             1 - score_clip))
    return jax.jacfwd(log_pi)(flat)


def policy_fisher(policy, params, *, score_clip=None) -> Array:
    """Policy (action) Fisher `F(s) = sum_a pi(a|s) psi psi^T` of every state, `[S, d, d]`.

    Kakade (2002), the metric of a natural policy gradient; Dewanto & Gallagher eq. 15.
    `score_clip`: scores of the clipped probabilities (`score_table`); the weights are `pi`.
    """
    psi = score_table(policy, params, score_clip=score_clip)
    return jnp.einsum("sa,sai,saj->sij", policy.probs(params), psi, psi)


def gain_fisher(mdp: MDP, policy, params, *, score_clip=None) -> Array:
    """Gain Fisher `F_g = sum_s p*(s) F(s)`, `[d, d]` (unichain; Dewanto & Gallagher eq. 15).

    `score_clip`: see `score_table` (likewise for every Fisher below).
    """
    chain = induced_chain(mdp, policy.probs(params))
    return _weighted(stationary_distribution(chain),
                     policy_fisher(policy, params, score_clip=score_clip))


def discounted_fisher(mdp: MDP, policy, params, gamma, *, score_clip=None) -> Array:
    """Discounted Fisher `F_gamma = sum_s d_gamma(s) F(s)`, `[d, d]`.

    `d_gamma = (1 - gamma) rho^T (I - gamma P_pi)^{-1}` is the normalised discounted state
    distribution from `mdp.rho` (Bagnell & Schneider 2003; Peters et al. 2003;
    Dewanto & Gallagher eq. 33, the preconditioner of `(1 - gamma) v_gamma`).
    """
    chain = induced_chain(mdp, policy.probs(params))
    d = occupancy(chain, mdp.rho, gamma, normalised=True)
    return _weighted(d, policy_fisher(policy, params, score_clip=score_clip))


def bias_fisher(mdp: MDP, policy, params, state, *, absorption_time: int = 2,
                score_clip=None) -> Array:
    """Sampling-enabler bias Fisher (Dewanto & Gallagher eq. 19), `[d, d]`.

    `F_b = sum_{t < tau} sum_s P^t(state, s) F(s) + tau sum_s p*(s) F(s)`: the pre-absorption
    terms of the analytic form (eq. 18) kept exactly, the terms from absorption to mixing
    dropped. `tau = absorption_time` (static) is the estimate of the minimum absorption
    time; the paper recommends 2 (§4.2): a one-step trajectory Fisher plus twice the gain
    Fisher.
    """
    if absorption_time < 0:
        raise ValueError(f"absorption_time = {absorption_time} must be >= 0.")
    chain = induced_chain(mdp, policy.probs(params))
    row = _unit(mdp.n_states, state, chain.P.dtype)
    transient = jnp.zeros_like(row)
    for _ in range(absorption_time):  # tau is a small static count
        transient, row = transient + row, row @ chain.P
    weights = transient + absorption_time * stationary_distribution(chain)
    return _weighted(weights, policy_fisher(policy, params, score_clip=score_clip))


def analytic_bias_fisher(mdp: MDP, policy, params, state, *, tol=1e-12,
                         max_steps: int = 100_000, score_clip=None) -> Array:
    """Analytic bias Fisher (Dewanto & Gallagher eq. 18), `[d, d]`.

    `F_b = sum_{t >= 0} sum_s |P^t(state, s) - p*(s)| F(s)`: the deviation matrix's series
    `H = sum_t (P^t - P*)` with the absolute value taken per time step (eq. 17), so the
    weights are non-negative and `F_b` is positive semi-definite. The series converges
    for aperiodic chains only (periodic ones never mix); it is summed until
    `max_s |P^t(state, s) - p*(s)| <= tol`. Concrete input that does not get there within
    `max_steps` raises `ValueError`.
    """
    _checks.check_positive("tol", tol)
    chain = induced_chain(mdp, policy.probs(params))
    p = stationary_distribution(chain)

    def not_mixed(carry):
        t, row, _ = carry
        return (jnp.max(jnp.abs(row - p)) > tol) & (t < max_steps)

    def step(carry):
        t, row, weights = carry
        return t + 1, row @ chain.P, weights + jnp.abs(row - p)

    row0 = _unit(mdp.n_states, state, p.dtype)
    t, _, weights = lax.while_loop(not_mixed, step, (jnp.int32(0), row0, jnp.zeros_like(p)))
    if _checks.is_concrete(t) and int(t) >= max_steps:
        raise ValueError(f"the analytic bias Fisher is undefined or truncated here: P^t(state, .)"
                         f" did not come within tol = {tol} of p* in {max_steps} steps"
                         " (periodic or slowly mixing chain).")
    return _weighted(weights, policy_fisher(policy, params, score_clip=score_clip))


def barrier_preconditioner(bias_fisher_matrix, gain_fisher_matrix, gain_gradient, beta,
                           gap) -> Array:
    """Preconditioner of the bias barrier (Dewanto & Gallagher eq. 26), `[d, d]`.

    `F_b + (beta / gap) F_g + (beta / gap^2) grad_g grad_g^T` with `gap = g - g_hat* + delta`
    the barrier's argument: the Hessian of `beta log(gap)` (eq. 25) with its sign-indefinite
    term made positive semi-definite and the second derivative of the gain replaced by
    its Fisher. `beta > 0` and `gap > 0` (a strictly feasible point) are checked when
    concrete.
    """
    _checks.check_positive("barrier weight beta", beta)
    _checks.check_positive("barrier gap g - g_ref + slack", gap)
    return (bias_fisher_matrix + (beta / gap) * gain_fisher_matrix
            + (beta / gap ** 2) * jnp.outer(gain_gradient, gain_gradient))


def _check_score_clip(score_clip) -> None:
    if isinstance(score_clip, bool) or not isinstance(score_clip, numbers.Real) or not (
            0 < score_clip < 0.5):
        raise ValueError(f"score_clip = {score_clip!r} must be None or a number in (0, 1/2).")


def _weighted(weights: Array, fishers: Array) -> Array:
    return jnp.einsum("s,sij->ij", weights, fishers)


def _unit(n: int, state, dtype) -> Array:
    if _checks.is_concrete(state) and not 0 <= int(state) < n:
        raise ValueError(f"state = {int(state)} is not a state index in [0, {n}).")
    return jnp.zeros(n, dtype).at[state].set(1)


__all__ = ["score_table", "policy_fisher", "gain_fisher", "discounted_fisher", "bias_fisher",
           "analytic_bias_fisher", "barrier_preconditioner"]
