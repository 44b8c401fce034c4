"""Criteria of a policy, as differentiable functions of `pi[S, A]`.

Compose them with a parameterisation to get an objective of parameters:
`jax.grad(lambda th: discounted_return(mdp, policy.probs(th), gamma))(theta)`.
Gradients flow through the linear solves of `dsorl.markov` implicitly. The
policy-gradient-theorem forms below are independent cross-checks of those gradients.
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from dsorl._struct import unchecked
from dsorl.markov import (Chain, bias, discounted_value, gain, occupancy,
                          stationary_distribution)
from dsorl.mdp import (MDP, action_values, bias_action_values, entropy_regularised_chain,
                       induced_chain)

__all__ = ["discounted_return", "entropy_regularised_return", "policy_gain", "policy_bias",
           "discounted_policy_gradient", "gain_policy_gradient", "natural_policy_gradient",
           "policy_objective",
           "chain_objective", "softmax_rows"]

Array = jax.Array


def discounted_return(mdp: MDP, pi: Array, gamma) -> Array:
    """`J(pi) = rho . v_pi`, the expected discounted return from `s_0 ~ rho` (scalar)."""
    return mdp.rho @ discounted_value(induced_chain(mdp, pi), gamma)


def entropy_regularised_return(mdp: MDP, pi: Array, gamma, tau,
                               mu: Optional[Array] = None) -> Array:
    """`rho . V_tau^pi` with `V_tau^pi = E sum_t gamma^t [r - tau log(pi / mu)]` (scalar).

    Kerimkulov, Leahy, Šiška, Szpruch (ICML 2022, arXiv 2201.07296), the regularised
    value; `mu[S, A]` defaults to the uniform law on available actions.
    """
    return mdp.rho @ discounted_value(entropy_regularised_chain(mdp, pi, tau, mu), gamma)


def policy_gain(mdp: MDP, pi: Array) -> Array:
    """Gain (average reward) of `pi`'s chain, a scalar (unichain required)."""
    return gain(induced_chain(mdp, pi))


def policy_bias(mdp: MDP, pi: Array) -> Array:
    """Bias `h[S]` of `pi`'s chain (unichain required); `policy_bias(mdp, pi)[s0]` is the
    nearly-Blackwell objective of Dewanto & Gallagher (arXiv 2105.13609)."""
    return bias(induced_chain(mdp, pi))


def discounted_policy_gradient(mdp: MDP, policy: Callable, params, gamma):
    """Policy-gradient theorem (Sutton et al. 2000, Thm 1), discounted form.

    `grad J = sum_s m(s) sum_a grad pi(a|s) Q(s, a)` with `m = rho^T (I - gamma P_pi)^{-1}`
    the unnormalised occupancy; `policy(params) -> pi[S, A]`. Returns a pytree like `params`.
    Equal to `jax.grad` of `discounted_return(mdp, policy(params), gamma)`.
    """
    pi, pullback = jax.vjp(policy, params)
    pi, m, Q = jax.lax.stop_gradient((pi, occupancy(induced_chain(mdp, pi), mdp.rho, gamma),
                                      action_values(mdp, pi, gamma)))
    (grad,) = pullback(m[:, None] * Q)
    return grad


def gain_policy_gradient(mdp: MDP, policy: Callable, params):
    """Policy-gradient theorem, average-reward form (Sutton et al. 2000, Thm 1).

    `grad g = sum_s p*(s) sum_a grad pi(a|s) q_b(s, a)` with `q_b = R - g + P h`.
    Returns a pytree like `params`; equal to `jax.grad` of `policy_gain`.
    """
    pi, pullback = jax.vjp(policy, params)
    pi = jax.lax.stop_gradient(pi)
    p, q = jax.lax.stop_gradient((stationary_distribution(induced_chain(mdp, pi)),
                                  bias_action_values(mdp, pi)))
    (grad,) = pullback(p[:, None] * q)
    return grad


def natural_policy_gradient(mdp: MDP, pi: Array, gamma) -> Array:
    """Natural policy gradient of tabular softmax logits: `A_pi[S, A] / (1 - gamma)`.

    For `pi = softmax(theta)` the Fisher-preconditioned gradient `F(theta)^+ grad J(theta)`
    (Kakade 2002, with `F = sum_s d(s) F_pi(s)`, `d` the normalised discounted occupancy)
    equals the advantage `A_pi(s, a) = Q_pi(s, a) - V_pi(s)` over `1 - gamma`, up to a
    constant per state (the Fisher's null space), and the occupancy cancels (Agarwal,
    Kakade, Lee, Mahajan, JMLR 2021, Lemma 15 and the NPG update eq. 17). So an NPG step
    `theta + eta A / (1 - gamma)` costs one value solve, on a dense or a sparse MDP.
    Masked actions get 0.
    """
    Q = action_values(mdp, pi, gamma)
    advantage = Q - jnp.sum(pi * jnp.where(mdp.allowed, Q, 0), axis=-1, keepdims=True)
    return jnp.where(mdp.allowed, advantage, 0) / (1 - gamma)


def policy_objective(mdp: MDP, pi: Array, gamma, sweeps: Optional[int] = None) -> Array:
    """`rho . V^pi`, by a linear solve or by `sweeps` Bellman sweeps `v <- r_pi + gamma P_pi v`
    from `v = 0` (exact when every episode ends within `sweeps` steps). Scalar."""
    chain = induced_chain(mdp, pi)
    return chain_objective(mdp.rho, chain.P, chain.r, gamma, sweeps)


def chain_objective(rho: Array, P_pi: Array, r_pi: Array, gamma,
                    sweeps: Optional[int] = None) -> Array:
    """`rho . v` for the chain `(P_pi[S, S], r_pi[S])`: see `policy_objective`."""
    if sweeps is None:
        return rho @ discounted_value(unchecked(Chain, P=P_pi, r=r_pi), gamma)
    # products and sums, not dots: XLA:CPU runs small batched dots one tiny GEMM at a time
    v = lax.fori_loop(0, sweeps, lambda _, v: r_pi + gamma * jnp.sum(P_pi * v, axis=-1),
                      jnp.zeros_like(r_pi), unroll=min(sweeps, 8))
    return jnp.sum(rho * v)


_DENSE_CHAIN_STATES = 16  # up to this many states, `softmax_rows` computes all S chain rows


def softmax_rows(mdp: MDP, theta_rows: Array, states: Array):
    """Masked softmax rows `pi[states]` of the logits `theta_rows[K, A]` and the induced
    chain's rows: `(pi_rows[K, A], P_pi rows[K, S], r_pi rows[K])`,
    `P_pi[s] = sum_a pi(a|s) P[s, a]`, `r_pi[s] = sum_a pi(a|s) R[s, a]`. Keeping a tabular
    policy and its chain row by row lets a sampled step touch only the rows it changed."""
    allowed = mdp.allowed[states]
    low = jnp.finfo(theta_rows.dtype).min / 2
    pi = jax.nn.softmax(jnp.where(allowed, theta_rows, low), axis=-1)
    # [S, A, S + 1]: transitions and (masked) rewards side by side
    table = jnp.concatenate([mdp.P, jnp.where(mdp.allowed, mdp.R, 0)[..., None]], axis=-1)
    if mdp.n_states <= _DENSE_CHAIN_STATES:
        # the rows of every state, then the wanted one: one GEMM in a vmap, where gathering
        # `table[states]` ([K, A, S + 1] per run) is memory-bound and several times slower
        rows = jnp.einsum("ka,sat->kst", pi, table)
        rows = jnp.take_along_axis(rows, states[:, None, None], axis=1)[:, 0]
    else:
        rows = jnp.sum(pi[..., None] * table[states], axis=-2)
    return pi, rows[:, :-1], rows[:, -1]
