"""Ground-truth planners: discounted, entropy-regularised and sensitive-discount optima.

The discounted and soft planners are jittable `lax.while_loop`s; their values are
differentiable by the implicit function theorem (`dsorl.fixed_point`). The n-discount,
Blackwell and nearly Blackwell planners run Veinott's lexicographic policy iteration on
the Laurent coefficients of unichain policies (host-side, exact up to a tie tolerance).
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
from dsorl.graph import closed_classes
from dsorl.markov import Chain, bias, discounted_value, laurent_coefficients
from dsorl.mdp import MDP, induced_chain, reference_measure
from dsorl.policies import deterministic
from dsorl.sparse import is_sparse

__all__ = ["Solution", "SoftSolution", "value_iteration", "policy_iteration",
           "soft_policy_iteration", "optimal_value", "soft_optimal_value",
           "NearlyBlackwellSolution", "deterministic_policies", "nearly_blackwell_optimal",
           "SensitiveSolution", "n_discount_optimal", "blackwell_optimal", "blackwell_threshold"]

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
# Sensitive discount optimality: Veinott's lexicographic policy iteration


class SensitiveSolution(NamedTuple):
    """An n-discount-optimal deterministic policy of a unichain MDP and its Laurent coefficients.

    `actions[S]` (action indices) and `policy[S, A]` (one-hot); `y[n + 2, S]`: the optimal
    Laurent coefficients `y*_{-1} = g* 1, y*_0 = h*, y*_1, ..., y*_n` (shared by every
    n-discount-optimal policy, `dsorl.markov.laurent_coefficients` for the convention);
    `conserving[S, A]`: the available actions whose advantage expansion vanishes through
    order n + 1 (`psi_k(s, a) = 0`, k <= n + 1): any policy choosing only them is
    n-discount optimal, and for `blackwell_optimal` they are exactly the Blackwell-optimal
    policies; `iterations`: improvement steps taken.
    """

    actions: np.ndarray
    policy: np.ndarray
    y: np.ndarray
    conserving: np.ndarray
    iterations: int


def n_discount_optimal(mdp: MDP, n: int, *, atol: Optional[float] = None,
                       max_iter: int = 1_000) -> SensitiveSolution:
    """An n-discount-optimal deterministic policy by Veinott's lexicographic policy iteration.

    A policy d is n-discount optimal (Veinott 1969; Puterman 1994, §10.1) when
    `liminf_{rho -> 0} rho^{-n} (v^d_gamma - v^e_gamma) >= 0` for every policy e,
    `rho = (1 - gamma) / gamma`: n = -1 is gain optimality, n = 0 bias (nearly Blackwell)
    optimality. With `v^d_gamma = (1 + rho) sum_k rho^k y_k` (`laurent_coefficients`) the
    one-step advantage of action a in state s over d expands as

        r(s, a) + gamma (P_a v^d)(s) - v^d(s) = sum_{k >= -1} rho^k psi_k(s, a),
        psi_0 = r_a + P_a y_0 - y_0 - y_{-1},   psi_k = P_a y_k - y_k - y_{k-1}  (k >= 1),

    and `psi_{-1} = P_a y_{-1} - y_{-1} = 0` for a unichain d (constant gain). Policy
    iteration on the truncation (psi_0, ..., psi_{n+1}) compared lexicographically
    (Puterman 1994, §10.3; Veinott 1969): evaluate d (one LU for all n + 3 coefficients),
    then in every state keep d(s) unless some action is lexicographically better, and
    switch to one of the lexicographically best (sequential argmax sets D_0, D_1, ...).
    On termination no action improves the truncated expansion, so `v^e - v^d =
    (I - gamma P_e)^{-1} A_e <= O(rho^{n+2}) / (1 - gamma) = O(rho^{n+1})` for every e:
    d is n-discount optimal. Each iteration costs O(n S^3 + n S^2 A); iterations are few
    in practice (finite, as for discounted policy iteration at a small fixed rho, but not
    proven polynomial).

    Unichain MDPs: every policy visited must induce a unichain chain, checked, else
    `ValueError` ("multichain not supported"). The certificate above only needs the final
    policy unichain, so other policies of the MDP may be multichain. `psi_k` within
    `atol * max(1, |y_k|, |y_{k-1}|)` of zero (inf-norms; `atol` defaults to `1e6 * eps`)
    counts as a tie. Dense MDPs, host-side (a Python loop over one jitted evaluation per
    iteration); not differentiable.
    """
    _check_order(n)
    if is_sparse(mdp.P):
        raise ValueError("n_discount_optimal takes dense MDPs only (it forms Laurent"
                         " coefficients by a dense LU per policy).")
    atol = 1e6 * float(jnp.finfo(mdp.R.dtype).eps) if atol is None else atol
    allowed = np.asarray(mdp.allowed)
    P = np.asarray(mdp.P)
    actions = np.asarray(jnp.argmax(masked_q(mdp, mdp.R), axis=-1))
    for iteration in range(max_iter + 1):
        _require_unichain_policy(P, actions, "n_discount_optimal")
        y, psi = (np.array(x) for x in _laurent_advantages(mdp, jnp.asarray(actions), n + 1))
        states = np.arange(len(actions))
        psi[:, states, actions] = 0  # d's own advantage, zero but for rounding
        best, conserving = _lexicographic_best(psi, y, allowed, atol)
        improved = ~best[states, actions]
        if not improved.any():
            policy = np.asarray(deterministic(actions, mdp.n_actions, mdp.R.dtype))
            return SensitiveSolution(actions, policy, y[:n + 2], conserving, iteration)
        actions = np.where(improved, np.argmax(best, axis=-1), actions).astype(actions.dtype)
    raise ValueError(f"n_discount_optimal did not terminate within max_iter = {max_iter}"
                     " iterations (a cycle through ties: raise atol or max_iter).")


def blackwell_optimal(mdp: MDP, *, atol: Optional[float] = None,
                      max_iter: int = 1_000) -> SensitiveSolution:
    """A Blackwell-optimal deterministic policy: gamma-discount optimal for all gamma near 1.

    Lexicographic policy iteration (`n_discount_optimal`) with `n = S - 2`, i.e. on
    `psi_0, ..., psi_{S-1}`, which decides Blackwell optimality (Veinott 1969; Puterman 1994,
    §10.1.2 and §10.3): for k >= 1, `psi_k(s, a) = u^T (-H)^{k-1} h` with
    `u^T = e_s^T (H - P_a H) - e_s^T` (`y_k = -H y_{k-1}`), a linear recurrence whose order
    is at most `dim span{h, H h, ...} <= S - 1` (`h` lies in the range of `I - P*`, which
    `H` maps into itself). If `psi_1, ..., psi_{S-1}` vanish, all later terms vanish, so the
    truncation compares lexicographically exactly as the whole series does, and a policy
    that no action improves on it has advantages `<= 0` for all gamma close enough to 1.
    `y` holds `y*_{-1}, ..., y*_{S-2}`; `conserving[S, A]` marks the actions of the
    Blackwell-optimal policies (the policies choosing only them, and no others).
    """
    return n_discount_optimal(mdp, mdp.n_states - 2, atol=atol, max_iter=max_iter)


def blackwell_threshold(mdp: MDP, *, atol: Optional[float] = None) -> float:
    """The smallest gamma* with every gamma-discount-optimal policy Blackwell optimal on (gamma*, 1).

    Let d be Blackwell optimal (`blackwell_optimal`). A Blackwell-optimal policy e has
    `v^e_gamma = v^d_gamma` near gamma = 1, hence for every gamma (both are rational in
    gamma); so every gamma-optimal policy is Blackwell optimal exactly when d is
    gamma-optimal and no other action ties with it: when every advantage
    `f_{s,a}(gamma) = r(s, a) + gamma (P_a v^d_gamma)(s) - v^d_gamma(s)` of an action outside
    `conserving` is < 0 (those inside have `f = 0` for all gamma). Each such f is negative
    near 1, so gamma* is the largest root in [0, 1) of any of them (0 if none).

    Exact method: with `rho = (1 - gamma) / gamma` and `Q = I - P_d`,
    `v^d = (1 + rho) (rho I + Q)^{-1} r_d`, so `F(rho) = det(rho I + Q) f(rho)
    = det(rho I + Q) [r(s, a) - r_d(s)] + ...` is a polynomial of degree <= S (Cramer's
    rule on the resolvent). Its coefficients are read off exactly, up to rounding, by the
    discrete Fourier transform of its values at `M = 4 (S + 1)` points `2.5 e^{2 pi i j / M}`
    (a circle enclosing every eigenvalue of `-Q`, where each value is a well-conditioned
    solve); the coefficients above degree S measure the rounding. `F` has a root of
    multiplicity `j + 1` at rho = 0, j the first nonzero term of the action's expansion
    (`psi_j`, see `n_discount_optimal`), which is divided out exactly by dropping the
    coefficients below `j + 1`; `numpy.polynomial.polynomial.polyroots` finds the rest.
    The smallest positive real root rho (imaginary part below `1e-6 max(1, |rho|)`: a
    double root where f touches 0 counts) gives gamma* = 1 / (1 + rho).
    """
    solution = blackwell_optimal(mdp, atol=atol)
    atol = 1e6 * float(jnp.finfo(mdp.R.dtype).eps) if atol is None else atol
    S = mdp.n_states
    P, R = np.asarray(mdp.P, np.float64), np.asarray(mdp.R, np.float64)
    allowed = np.asarray(mdp.allowed)
    states = np.arange(S)
    P_d, r_d = P[states, solution.actions], R[states, solution.actions]
    # the first nonzero order j of each deviation's expansion (the root's multiplicity - 1)
    y, psi = (np.asarray(x) for x in _laurent_advantages(mdp, jnp.asarray(solution.actions), S - 1))
    nonzero = np.abs(psi) > atol * _level_scales(y)[:, None, None]
    first = np.argmax(nonzero, axis=0)
    deviations = allowed & ~solution.conserving

    M, radius = 4 * (S + 1), 2.5
    rhos = radius * np.exp(2j * np.pi * np.arange(M) / M)
    systems = rhos[:, None, None] * np.eye(S) + (np.eye(S) - P_d)
    dets = np.linalg.det(systems)
    u = np.linalg.solve(systems, np.broadcast_to(r_d, (M, S))[..., None])[..., 0]   # [M, S]
    f = R[None] + np.einsum("sat,mt->msa", P, u) - (1 + rhos)[:, None, None] * u[:, :, None]
    coefficients = np.fft.fft(dets[:, None, None] * f, axis=0) / M
    coefficients /= radius ** np.arange(M)[:, None, None]
    # rounding of the values, seen in the coefficients above degree S (zero in exact arithmetic)
    powers = radius ** np.arange(M)[:, None, None]
    noise = np.maximum(np.abs(coefficients[S + 1:] * powers[S + 1:]).max(axis=0),
                       np.finfo(np.float64).eps * np.abs(dets[:, None, None] * f).max(axis=0))
    gamma_star = 0.0
    for s, a in zip(*np.nonzero(deviations)):
        c = np.real(coefficients[:S + 1, s, a])
        significant = np.flatnonzero(np.abs(c) * radius ** np.arange(S + 1) > 1e3 * noise[s, a])
        if significant.size == 0 or significant.max() <= first[s, a] + 1:
            continue  # a nonzero constant after dividing out rho^(j+1): no root
        roots = np.polynomial.polynomial.polyroots(c[first[s, a] + 1:significant.max() + 1])
        real = roots[(np.abs(roots.imag) <= 1e-6 * np.maximum(1, np.abs(roots)))
                     & (roots.real > 0)].real
        if real.size:
            gamma_star = max(gamma_star, 1 / (1 + real.min()))
    return gamma_star


@partial(jax.jit, static_argnums=2)
def _laurent_advantages(mdp: MDP, actions: Array, order: int):
    """`y[order + 2, S]` (y_{-1..order}) of the policy `actions` and the expansion terms
    `psi[order + 1, S, A]` (psi_0..psi_order) of every action's advantage over it."""
    chain = induced_chain(mdp, deterministic(actions, mdp.n_actions, mdp.R.dtype))
    y = laurent_coefficients(chain, order)
    psi = jnp.einsum("sat,kt->ksa", mdp.P, y[1:]) - y[1:, :, None] - y[:-1, :, None]
    return y, psi.at[0].add(mdp.R)


def _level_scales(y):
    """Tie tolerance scale of psi_k, k = 0..: `max(1, |y_k|, |y_{k-1}|)` (inf-norms)."""
    norms = np.abs(y).max(axis=1)
    return np.maximum(1, np.maximum(norms[1:], norms[:-1]))


def _lexicographic_best(psi, y, allowed, atol):
    """Per state, the actions lexicographically best on (psi_0, psi_1, ...) within ties, and
    those with every psi_k tied with zero."""
    tol = atol * _level_scales(y)
    best = allowed.copy()
    conserving = allowed.copy()
    for k in range(psi.shape[0]):
        top = np.max(np.where(best, psi[k], -np.inf), axis=-1, keepdims=True)
        best &= psi[k] >= top - tol[k]
        conserving &= np.abs(psi[k]) <= tol[k]
    return best, conserving


def _require_unichain_policy(P, actions, what: str) -> None:
    chain_P = P[np.arange(len(actions)), actions]
    classes = closed_classes(chain_P)
    if len(classes) != 1:
        raise ValueError(f"{what}: the deterministic policy {actions.tolist()} induces"
                         f" {len(classes)} closed recurrent classes"
                         f" ({'; '.join(str(c.tolist()) for c in classes[:4])}): multichain"
                         " not supported (the unichain optimality equations assume one"
                         " recurrent class per policy).")


def _check_order(n) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < -1:
        raise ValueError(f"the optimality order must be an integer n >= -1, got n = {n!r}.")


# ----------------------------------------------------------------------------------------
# Nearly Blackwell optimality


class NearlyBlackwellSolution(NamedTuple):
    """Gain- and bias-optimal deterministic policies of a unichain MDP.

    `gain`: optimal gain g*; `bias[S]`: the largest bias among gain-optimal policies, state
    by state (one policy attains it everywhere, Puterman 1994 §10.1); `nbw_optimal[K, S]`:
    action indices of every deterministic policy that is gain optimal with bias `bias` in
    every state, in lexicographic order.
    """

    gain: float
    bias: np.ndarray
    nbw_optimal: np.ndarray


def deterministic_policies(mdp: MDP, *, max_policies: int = 1 << 20) -> np.ndarray:
    """All deterministic policies of `mdp` as action indices, shape `[K, S]`."""
    return _policies_of(np.asarray(mdp.allowed), max_policies)


def _policies_of(choice_mask, max_policies: int) -> np.ndarray:
    """Every policy choosing, in each state s, an action with `choice_mask[s, a]`: `[K, S]`."""
    choices = [np.flatnonzero(row) for row in choice_mask]
    count = int(np.prod([len(c) for c in choices], dtype=float))
    if count > max_policies:
        raise ValueError(f"{count} deterministic policies exceed max_policies = {max_policies};"
                         " enumeration is for small MDPs.")
    grids = np.meshgrid(*choices, indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=-1).astype(np.int32)


def nearly_blackwell_optimal(mdp: MDP, *, atol: Optional[float] = None,
                             max_policies: int = 1 << 20) -> NearlyBlackwellSolution:
    """Gain-optimal, then bias-optimal (nearly Blackwell-optimal) deterministic policies.

    A policy is nBw-optimal if it is gain-optimal and its bias is maximal among
    gain-optimal policies (Dewanto & Gallagher, arXiv 2105.13609, Def. 1.1; Puterman 1994,
    §10.1: for unichain MDPs this is bias optimality, i.e. 0-discount optimality). `g*` and
    `h*` come from lexicographic policy iteration (`n_discount_optimal(mdp, 0)`), polynomial
    per iteration. Every bias-optimal d satisfies its bias equation with `h*`, so it chooses
    only actions of `D_0(s) = argmax_a r(s, a) + (P_a h*)(s)` (Puterman 1994, §10.2); the
    listed policies are those of the product of the D_0(s) whose bias is `h*` (each such
    policy is gain optimal, with bias `h* - (p*_d . h*) 1`). Only ties make that product
    large (`max_policies` caps it). Values within `atol` (default `1e6 * eps`, relative to
    `max(1, |h*|)`) tie. Policies visited must be unichain (else `ValueError`,
    "multichain not supported"). Host-side: the list's size depends on the data.
    """
    atol = 1e6 * float(jnp.finfo(mdp.R.dtype).eps) if atol is None else atol
    solution = n_discount_optimal(mdp, 0, atol=atol)
    g_star, h_star = float(solution.y[0, 0]), solution.y[1]
    _, psi = _laurent_advantages(mdp, jnp.asarray(solution.actions), 0)
    tol = atol * _level_scales(solution.y)[0]
    candidates = _policies_of(np.asarray(mdp.allowed) & (np.asarray(psi[0]) >= -tol),
                              max_policies)
    P = np.asarray(mdp.P)
    for actions in candidates:
        _require_unichain_policy(P, actions, "nearly_blackwell_optimal")
    dtype = mdp.R.dtype

    @jax.jit
    def evaluate(actions):
        return bias(induced_chain(mdp, deterministic(actions, mdp.n_actions, dtype)))

    biases = np.asarray(jax.lax.map(evaluate, jnp.asarray(candidates), batch_size=4096))
    is_nbw = np.all(biases >= h_star - atol * max(1.0, np.abs(h_star).max()), axis=1)
    return NearlyBlackwellSolution(g_star, h_star, candidates[is_nbw])
