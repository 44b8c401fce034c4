"""Gradient of the bias `h(s0)` of a parameterised policy: exact, and decomposed in time.

Dewanto & Gallagher, "A nearly Blackwell-optimal policy gradient method" (arXiv 2105.13609),
§3. Differentiating `h = r_pi - g 1 + P_pi h` gives `grad h = u - grad g 1 + P_pi grad h` with
`u(s) = sum_a pi(a|s) q_b(s, a) psi(s, a)` (`psi = grad log pi`, `q_b = R - g + P h`, the
bias action value). Unrolled T times from `s0` (their eqs. 11-14):

    grad h(s0) = sum_{t<T} (E_{s_t ~ P^t(s0, .)}[u(s_t)] - grad g) + sum_s P^T(s0, s) grad h(s).

When `P^T(s0, .) = p*` (T = the mixing time from s0) the last sum is `p* . grad h`, which
equals `E_{p*, pi}[grad q_b] + grad g` (Thm 3.1's post-mixing term) and also
`E_{p*, pi}[q_w psi]` with `q_w` the bias-offset action values (Thm 3.2's form, free of
derivatives of values; see `bias_offset_values`). Gradients are flat vectors `[d]` in the
`ravel_pytree` order of the parameters (the layout of `dsorl.fisher`).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from dsorl import _checks
from dsorl.fisher import score_table
from dsorl.markov import Chain, bias, gain, mixing_time, stationary_distribution
from dsorl.mdp import MDP, bias_action_values, induced_chain

Array = jax.Array


def bias_gradient(mdp: MDP, policy, params, state) -> Array:
    """Exact `grad_theta h_theta(state)`, `[d]`: autodiff through the bias's linear solve.

    `h = H r_pi` with the deviation matrix `H` (Dewanto & Gallagher eq. 3); the solve is
    differentiated implicitly (`dsorl.markov`). Unichain chains only.
    """
    _check_state(mdp, state)
    flat, unravel = ravel_pytree(params)
    return jax.grad(lambda th: bias(induced_chain(mdp, policy.probs(unravel(th))))[state])(flat)


def gain_gradient(mdp: MDP, policy, params) -> Array:
    """Exact `grad_theta g_theta`, `[d]`: autodiff through the stationary solve."""
    flat, unravel = ravel_pytree(params)
    return jax.grad(lambda th: gain(induced_chain(mdp, policy.probs(unravel(th)))))(flat)


def bias_offset_values(mdp: MDP, pi: Array):
    """Bias-offset values `w[S]` and action values `q_w[S, A]` of `pi` (unichain).

    `w = -H h` solves `w = -h + P_pi w` (the n = 1 term of the Laurent series of the
    discounted value, `-H^2 r`; Puterman 1994 §8.2 and §10.1), and
    `q_w(s, a) = -h(s) + sum_s' P(s'|s, a) w(s')`, so `sum_a pi(a|s) q_w(s, a) = w(s)`.
    Differentiating `(I - P_pi) w = -h` and weighting by `p*` gives
    `p* . grad h = E_{s ~ p*, a ~ pi}[q_w(s, a) psi(s, a)]`: Dewanto & Gallagher's Thm 3.2,
    the post-mixing part of the bias gradient without derivatives of values.
    """
    chain = induced_chain(mdp, pi)
    h = bias(chain)
    w = -bias(Chain(chain.P, h))
    return w, mdp.P @ w - h[:, None]


class BiasGradientDecomposition(NamedTuple):
    """Thm 3.1 of Dewanto & Gallagher, evaluated exactly.

    `pre_mixing_terms[t] = E_{s_t ~ P^t(s0, .), a_t ~ pi}[q_b psi] - grad g` for
    `t < mixing_time` (zero rows after), `post_mixing = E_{p*, pi}[grad q_b] + grad g`,
    `mixing_distance = max_s |P^T(s0, s) - p*(s)|` at `T = min(mixing_time, max_terms)`, and
    `error_bound = sum_s |P^T(s0, s) - p*(s)| ||grad h(s)||`, which bounds
    `||total - grad h(s0)||` (zero when `P^T(s0, .) = p*` exactly).
    """

    pre_mixing_terms: Array
    post_mixing: Array
    mixing_time: Array
    mixing_distance: Array
    error_bound: Array

    @property
    def pre_mixing(self) -> Array:
        """Sum of the pre-mixing terms, `[d]`."""
        return self.pre_mixing_terms.sum(axis=0)

    @property
    def total(self) -> Array:
        """Pre- plus post-mixing parts: `grad h(s0)` up to `error_bound`, `[d]`."""
        return self.pre_mixing + self.post_mixing


def bias_gradient_decomposition(mdp: MDP, policy, params, state, *, eps=1e-10,
                                max_terms: int = 1000) -> BiasGradientDecomposition:
    """Pre- and post-mixing parts of `grad h(state)` (Dewanto & Gallagher Thm 3.1, eq. 4).

    The mixing time from `state` is the first t with `max_s |P^t(state, s) - p*(s)| <= eps`
    (`dsorl.markov.mixing_time`); the pre-mixing terms are computed for `t < mixing_time`
    from the state laws `P^t(state, .)` and the policy-gradient-theorem gain gradient, the
    post-mixing term by Thm 3.2's score form `E_{p*, pi}[q_w psi]` (equal to
    `E_{p*, pi}[grad q_b] + grad g`). Neither uses autodiff of the bias, so `total` is an
    independent evaluation of the gradient; `error_bound` (which does use the Jacobian of
    `h`) bounds its distance to `bias_gradient`. `max_terms` (static) caps the number of
    terms: concrete input that does not mix within it raises `ValueError` (periodic chains
    never mix); traced input returns `mixing_time = max_terms + 1` and the bound of the
    truncated sum.
    """
    _check_state(mdp, state)
    _checks.check_positive("eps", eps)
    flat, unravel = ravel_pytree(params)
    pi = policy.probs(params)
    chain = induced_chain(mdp, pi)
    t_mix = mixing_time(chain, eps, state=state, max_steps=max_terms)
    p = stationary_distribution(chain)
    psi = score_table(policy, params)
    u = jnp.einsum("sa,sa,sad->sd", pi, bias_action_values(mdp, pi), psi)
    grad_g = p @ u  # policy-gradient theorem for the gain (Sutton et al. 2000)
    _, q_w = bias_offset_values(mdp, pi)
    post = jnp.einsum("s,sa,sa,sad->d", p, pi, q_w, psi)

    def step(carry, t):
        row, row_at_mix = carry
        term = jnp.where(t < t_mix, row @ u - grad_g, 0)
        row_at_mix = jnp.where(t <= t_mix, row, row_at_mix)
        return (row @ chain.P, row_at_mix), term

    row0 = jnp.zeros_like(p).at[state].set(1)
    (_, row_T), terms = lax.scan(step, (row0, row0), jnp.arange(max_terms + 1))
    jac_h = jax.jacrev(lambda th: bias(induced_chain(mdp, policy.probs(unravel(th)))))(flat)
    gap = jnp.abs(row_T - p)
    return BiasGradientDecomposition(terms[:max_terms], post, t_mix, jnp.max(gap),
                                     gap @ jnp.linalg.norm(jac_h, axis=-1))


def _check_state(mdp: MDP, state) -> None:
    if _checks.is_concrete(state) and not 0 <= int(state) < mdp.n_states:
        raise ValueError(f"state = {int(state)} is not a state index in [0, {mdp.n_states}).")


__all__ = ["bias_gradient", "gain_gradient", "bias_offset_values", "BiasGradientDecomposition",
           "bias_gradient_decomposition"]
