"""Ground-truth planners: discounted, entropy-regularised and nearly Blackwell optima.

The discounted and soft planners are jittable `lax.while_loop`s; their values are
differentiable by the implicit function theorem (`dsorl.fixed_point`). The gain- and
bias-optimal planner enumerates deterministic policies (small MDPs, host-side).
"""
from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dsorl import _checks
from dsorl.fixed_point import (bellman_optimality_operator, implicit_fixed_point, masked_q,
                               soft_bellman_operator)
from dsorl._struct import unchecked
from dsorl.markov import Chain, bias, discounted_value, gain, is_unichain
from dsorl.mdp import MDP, induced_chain, reference_measure
from dsorl.policies import deterministic

__all__ = ["Solution", "SoftSolution", "value_iteration", "policy_iteration",
           "soft_policy_iteration", "optimal_value", "soft_optimal_value",
           "NearlyBlackwellSolution", "deterministic_policies", "nearly_blackwell_optimal"]

Array = jax.Array


class Solution(NamedTuple):
    """A planner's answer: `value[S]`, greedy `actions[S]`, one-hot `policy[S, A]`."""

    value: Array
    actions: Array
    policy: Array
    iterations: Array


class SoftSolution(NamedTuple):
    """Soft optimum: `value[S]` = V*_tau, `q[S, A]` = Q*_tau, `policy[S, A]` = pi*_tau."""

    value: Array
    q: Array
    policy: Array
    iterations: Array


def value_iteration(mdp: MDP, gamma, *, tol: Optional[float] = None,
                    max_iter: int = 100_000) -> Solution:
    """Value iteration `v <- max_a R + gamma P v` from `v = 0` (Bellman 1957).

    Stops when `gamma / (1 - gamma) * ||v_{k+1} - v_k||_inf <= tol * max(1, ||v||_inf)`,
    which bounds `||v_{k+1} - v*||_inf` by the same amount. `tol` defaults to
    `1e3 * eps` of the dtype (float32 cannot reach tight absolute tolerances near gamma = 1).
    The value is differentiable implicitly (its derivative is taken at the returned iterate).
    """
    _checks.check_discount(gamma)
    solver = partial(_value_iteration_solver, tol=tol, max_iter=max_iter)
    v, iterations = implicit_fixed_point(bellman_optimality_operator, solver, (mdp, gamma))
    return _greedy_solution(mdp, gamma, v, iterations)


def policy_iteration(mdp: MDP, gamma, *, max_iter: int = 1_000) -> Solution:
    """Howard's policy iteration: exact optimal value and a deterministic optimal policy.

    Evaluation by one linear solve per iteration; improvement switches an action only on a
    strict gain above `1e3 * eps * max(1, |v|)` (no cycling on ties). Terminates in
    finitely many iterations (Puterman 1994, Thm 6.4.2). Value differentiable implicitly.
    """
    _checks.check_discount(gamma)
    solver = partial(_policy_iteration_solver, max_iter=max_iter)
    v, iterations = implicit_fixed_point(bellman_optimality_operator, solver, (mdp, gamma))
    return _greedy_solution(mdp, gamma, v, iterations)


def soft_policy_iteration(mdp: MDP, gamma, tau, mu: Optional[Array] = None, *,
                          tol: Optional[float] = None, max_iter: int = 1_000) -> SoftSolution:
    """Entropy-regularised optimum: `V*_tau`, `Q*_tau` and `pi*_tau ∝ mu exp(Q*_tau / tau)`.

    Maximises `E sum_t gamma^t [r - tau log(pi / mu)]` with reference `mu[S, A]` (uniform on
    available actions by default). The soft Bellman fixed point is found by soft policy
    iteration (Newton's method: evaluate the current softmax policy exactly, then improve),
    which converges in a few iterations even for gamma near 1; stops when successive
    values differ by at most `tol * max(1, ||v||)`. Differentiable in all inputs
    (implicit function theorem).
    """
    _checks.check_discount(gamma)
    _checks.check_positive("tau", tau)
    mu = reference_measure(mdp, mu)
    solver = partial(_soft_policy_iteration_solver, tol=tol, max_iter=max_iter)
    v, iterations = implicit_fixed_point(soft_bellman_operator, solver, (mdp, gamma, tau, mu))
    q = mdp.R + gamma * mdp.P @ v
    return SoftSolution(v, q, _soft_policy(q, v, tau, mu), iterations)


def optimal_value(mdp: MDP, gamma, *, max_iter: int = 1_000) -> Array:
    """Optimal discounted value `v*[S]`, differentiable by the implicit function theorem.

    Forward: policy iteration (exact after finitely many steps). Derivative: at a state
    where several actions tie, `jnp.max` splits the derivative evenly among them.
    """
    _checks.check_discount(gamma)
    v, _ = implicit_fixed_point(bellman_optimality_operator,
                                partial(_policy_iteration_solver, max_iter=max_iter),
                                (mdp, gamma))
    return v


def soft_optimal_value(mdp: MDP, gamma, tau, mu: Optional[Array] = None, *,
                       tol: Optional[float] = None, max_iter: int = 1_000) -> Array:
    """Soft-optimal (entropy-regularised) value `V*_tau[S]`, differentiable implicitly.

    Maximises `E sum_t gamma^t [r - tau log(pi / mu)]`; `mu` defaults to the uniform law
    on available actions. Forward: soft policy iteration (Newton's method on the soft
    Bellman equation). Differentiable in `mdp`, `gamma`, `tau` and `mu`.
    """
    _checks.check_discount(gamma)
    _checks.check_positive("tau", tau)
    mu = reference_measure(mdp, mu)
    v, _ = implicit_fixed_point(soft_bellman_operator,
                                partial(_soft_policy_iteration_solver, tol=tol,
                                        max_iter=max_iter),
                                (mdp, gamma, tau, mu))
    return v


# ----------------------------------------------------------------------------------------
# Forward solvers: `params -> (v, iterations)`, used under `implicit_fixed_point`.


def _policy_iteration_solver(params, *, max_iter: int):
    mdp, gamma = params
    A = mdp.n_actions
    dtype = mdp.R.dtype
    slack = 1e3 * jnp.finfo(dtype).eps

    def evaluate(actions):
        return discounted_value(induced_chain(mdp, deterministic(actions, A, dtype)), gamma)

    def improve(carry):
        actions, v, k, _ = carry
        q = masked_q(mdp, mdp.R + gamma * mdp.P @ v)
        best = jnp.argmax(q, axis=-1)
        current = jnp.take_along_axis(q, actions[:, None], axis=-1)[:, 0]
        gainful = jnp.max(q, axis=-1) > current + slack * jnp.maximum(1, jnp.abs(v))
        new = jnp.where(gainful, best, actions)
        return new, evaluate(new), k + 1, jnp.any(gainful)

    first = jnp.argmax(masked_q(mdp, mdp.R), axis=-1)
    init = (first, evaluate(first), jnp.int32(0), jnp.bool_(True))
    _, v, k, _ = lax.while_loop(lambda c: c[3] & (c[2] < max_iter), improve, init)
    return v, k


def _value_iteration_solver(params, *, tol, max_iter: int):
    mdp, gamma = params
    tol = _default_tol(mdp.R.dtype, tol)

    def not_done(carry):
        _, k, err = carry
        return (err > 0) & (k < max_iter)

    def sweep(carry):
        v, k, _ = carry
        new = bellman_optimality_operator(v, params)
        change = jnp.max(jnp.abs(new - v))
        err = gamma / (1 - gamma) * change - tol * jnp.maximum(1, jnp.max(jnp.abs(new)))
        return new, k + 1, err

    v0 = jnp.zeros(mdp.n_states, mdp.R.dtype)
    v, k, _ = lax.while_loop(not_done, sweep, (v0, jnp.int32(0), jnp.asarray(1, mdp.R.dtype)))
    return v, k


def _soft_policy_iteration_solver(params, *, tol, max_iter: int):
    mdp, gamma, tau, mu = params
    tol = _default_tol(mdp.R.dtype, tol)

    def evaluate(q, v):
        pi = _soft_policy(q, v, tau, mu)
        # V_tau^pi: reward r_pi - tau KL(pi || mu); KL computed stably from q, v
        log_ratio = (q - v[:, None]) / tau
        reward = jnp.sum(jnp.where(pi > 0, pi * (mdp.R - tau * log_ratio), 0), axis=-1)
        return discounted_value(unchecked(Chain, P=induced_chain(mdp, pi).P, r=reward), gamma)

    def step(carry):
        v, k, _ = carry
        q = masked_q(mdp, mdp.R + gamma * mdp.P @ v)
        new = evaluate(q, soft_bellman_operator(v, params))
        change = jnp.max(jnp.abs(new - v)) - tol * jnp.maximum(1, jnp.max(jnp.abs(new)))
        return new, k + 1, change

    v0 = jnp.zeros(mdp.n_states, mdp.R.dtype)
    init = (v0, jnp.int32(0), jnp.asarray(1, mdp.R.dtype))
    v, k, _ = lax.while_loop(lambda c: (c[2] > 0) & (c[1] < max_iter), step, init)
    return v, k


def _soft_policy(q, v, tau, mu):
    """`pi(a|s) = mu(a|s) exp((q(s, a) - v(s)) / tau)`, normalised (exactly, not just at v*)."""
    logits = jnp.where(mu > 0, q / tau + jnp.log(jnp.where(mu > 0, mu, 1)), -jnp.inf)
    return jax.nn.softmax(logits, axis=-1)


def _greedy_solution(mdp, gamma, v, iterations) -> Solution:
    actions = jnp.argmax(masked_q(mdp, mdp.R + gamma * mdp.P @ v), axis=-1)
    return Solution(v, actions, deterministic(actions, mdp.n_actions, v.dtype), iterations)


def _default_tol(dtype, tol):
    return 1e3 * float(jnp.finfo(dtype).eps) if tol is None else tol


# ----------------------------------------------------------------------------------------
# Nearly Blackwell optimality by enumeration


class NearlyBlackwellSolution(NamedTuple):
    """Gain- and bias-optimal deterministic policies of a small unichain MDP.

    `gain`: optimal gain g*; `bias[S]`: the largest bias among gain-optimal policies, state
    by state (one policy attains it everywhere, Puterman 1994 §10.1); `gain_optimal[K1, S]`
    and `nbw_optimal[K2, S]`: action indices of the gain-optimal policies and of those
    among them whose bias equals `bias` in every state.
    """

    gain: float
    bias: np.ndarray
    gain_optimal: np.ndarray
    nbw_optimal: np.ndarray


def deterministic_policies(mdp: MDP, *, max_policies: int = 1 << 20) -> np.ndarray:
    """All deterministic policies of `mdp` as action indices, shape `[K, S]`."""
    allowed = np.asarray(mdp.allowed)
    choices = [np.flatnonzero(row) for row in allowed]
    count = int(np.prod([len(c) for c in choices], dtype=float))
    if count > max_policies:
        raise ValueError(f"{count} deterministic policies exceed max_policies = {max_policies};"
                         " enumeration is for small MDPs.")
    grids = np.meshgrid(*choices, indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=-1).astype(np.int32)


def nearly_blackwell_optimal(mdp: MDP, *, atol: Optional[float] = None,
                             max_policies: int = 1 << 20) -> NearlyBlackwellSolution:
    """Gain-optimal, then bias-optimal (nearly Blackwell-optimal) policies by enumeration.

    A policy is nBw-optimal if it is gain-optimal and its bias is maximal among
    gain-optimal policies (Dewanto & Gallagher, arXiv 2105.13609, Def. 1.1; Puterman 1994,
    §10.1: for unichain MDPs this is bias optimality). Every deterministic policy must
    induce a unichain chain (checked). Values within `atol` (default `1e6 * eps`) tie.
    Host-side: it returns arrays whose size depends on the data, so it does not jit.
    """
    policies = deterministic_policies(mdp, max_policies=max_policies)
    dtype = mdp.R.dtype
    atol = 1e6 * float(jnp.finfo(dtype).eps) if atol is None else atol

    @jax.jit
    def evaluate(actions):
        chain = induced_chain(mdp, deterministic(actions, mdp.n_actions, dtype))
        return is_unichain(chain), gain(chain), bias(chain)

    unichain, gains, biases = (np.asarray(x) for x in jax.lax.map(evaluate, jnp.asarray(policies),
                                                                   batch_size=4096))
    if not unichain.all():
        bad = policies[np.flatnonzero(~unichain)[0]]
        raise ValueError(f"the deterministic policy {bad.tolist()} induces a multichain chain:"
                         " gain- and bias-optimality by enumeration need a unichain MDP.")
    g_star = gains.max()
    is_gain_opt = gains >= g_star - atol * max(1.0, abs(g_star))
    h_star = biases[is_gain_opt].max(axis=0)
    is_nbw = is_gain_opt & np.all(biases >= h_star - atol * max(1.0, np.abs(h_star).max()),
                                  axis=1)
    return NearlyBlackwellSolution(float(g_star), h_star, policies[is_gain_opt],
                                   policies[is_nbw])
