"""Parameterised Markov chains: the objects of Dynamical System Optimization (DSO).

Todorov, "Dynamical System Optimization" (arXiv 2506.08340); docs/design.md §9.1. A DSO problem is
a chain `P(x'|x, theta)` with a reward `r(x, theta)` (the paper's step cost is
`L = -r`: rewards are maximised here, as everywhere in dsorl), an initial law
`P0(x | theta)` and optionally a terminal set `T`. Once a policy is fixed, actions are
marginalised away (the paper's eq. 12) and only the chain remains.

Criteria (`P~` is `P` with the rows of terminal states zeroed; `m` the occupancy):
- discounted, no terminal set, gamma in [0, 1):  `J = P0^T (I - gamma P)^{-1} r`;
- first exit, terminal set given, gamma in [0, 1]: `J = P0^T (I - gamma P~)^{-1} r`
  (at a terminal state the value is its reward `r(x)`, the final reward);
- average reward, no discount: `J = g = p* . r` (unichain), differential value `h`.

Exact derivatives (the paper's Thm 1 and its Hessian and Fisher analogues):
- gradient: `grad J = sum_x grad P0(x) v(x) + sum_x m(x) [grad r(x) + gamma sum_x'
  grad P(x'|x) v(x')]`; average reward: `grad g = sum_x p*(x) [grad r + sum_x' grad P h]`;
- Hessian, from the Bellman equation differentiated twice (`v = r + gamma P v`):
  `H = hess_theta S(theta, alpha)|_alpha + K + K^T`, `K_ij = d_i(P0^T + gamma m^T P~) dv/dtheta_j`,
  the value Jacobian solving `(I - gamma P~) dv = d(r + gamma P~ v)`; the surrogate
  Hessian alone is the paper's approximation, `K + K^T` the missing exact part;
- chain Fisher: `F = E_P0[grad log P0 grad log P0^T] + sum_x m(x) E_x'[grad log P grad log P^T]`
  (terminal rows excluded; weights `p*` for the average criterion);
- surrogate: `S(theta, alpha) = J(alpha) + (P0_theta - P0_alpha) . v_alpha
  + sum_x m_alpha(x) [r(x, theta) + gamma sum_x' P~(x'|x, theta) v_alpha(x') - v_alpha(x)]`,
  with `S(alpha, alpha) = J(alpha)` and `grad_theta S|_{theta=alpha} = grad J(alpha)`.

Mappings of an MDP or an LMDP to a chain (the paper's section 2.1): `marginal`,
`augmented` (`x = (s, a)`), `maximum_entropy`, `kl_regularised`, `lmdp_chain`.

Parameters `theta` are any pytree; Hessians and Fishers act on the flattened vector
`jax.flatten_util.ravel_pytree(theta)[0]`. Every function takes one model and one `theta`
(batch with `jax.vmap`); `gamma` may be traced. Bad concrete input raises `ValueError`
(`check_model`); under `jit`/`vmap` nothing is checked. dtype follows the inputs: float32
works (gradients within ~1e-6 relative of float64 at gamma = 0.9 on small chains; the
solves lose accuracy like 1/(1 - gamma), so use float64 near gamma = 1 and for gamma = 1).
"""
import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from dsorl import _checks, graph, markov
from dsorl._struct import unchecked
from dsorl.markov import Chain
from dsorl.mdp import MDP, entropy_regularised_chain, induced_chain
from dsorl.policies import Policy
from dsorl.sparse import is_sparse, merger

__all__ = ["ChainModel", "marginal", "augmented", "kl_regularised", "maximum_entropy",
           "lmdp_chain", "chain_at", "check_chain", "check_model", "evaluate", "not_terminal",
           "safe_log", "log_transition", "log_initial", "ChainSolution", "solve", "value",
           "occupancy", "objective", "gradient", "value_and_gradient", "hessian", "fisher",
           "SurrogateTerms", "surrogate_terms", "surrogate_at", "surrogate", "divergence_at",
           "solve_average", "gain", "gain_gradient", "gain_hessian", "gain_fisher"]

Array = jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class ChainModel:
    """A parameterised chain: `transition(theta) -> P[X, X]`, `reward(theta) -> r[X]`,
    `initial(theta) -> P0[X]`, optional boolean `terminal[X]`.

    `reward` and `initial` may also be arrays (they are then constant in `theta`).
    `log_transition(theta) -> log P[X, X]` (optional) is a numerically stable log (e.g. a
    log-softmax); by default `log P` is taken with `log 0 = -inf` and zero gradient there.
    `check(theta)` (optional) raises `ValueError` for model-specific bad input; it runs
    on concrete `theta` only (see `check_model`). Rows of `P` must be stochastic
    everywhere, terminal rows included (they are ignored by the criteria and by the
    sampled estimators, which stop at a terminal state).

    `params_shape` (optional): the shapes `theta` must have (a pytree of shape tuples,
    e.g. `(S, A)`), and `dtype` (optional): the chain's float dtype; the mappings set both
    when they know them, `dtype` defaults to that of a constant floating `reward` or
    `initial`. The DSO algorithms check `params0` against the first and run in the second
    (`dsorl.algorithms.base.problem_dtype` reads it).
    """

    transition: Callable
    reward: Callable
    initial: Callable
    terminal: Optional[Array] = None
    log_transition: Optional[Callable] = None
    check: Optional[Callable] = None
    params_shape: Any = None
    dtype: Any = None

    def __post_init__(self):
        for name in ("reward", "initial"):
            value = getattr(self, name)
            if not callable(value):
                value = jnp.asarray(value)
                if self.dtype is None and jnp.issubdtype(value.dtype, jnp.floating):
                    object.__setattr__(self, "dtype", value.dtype)
                object.__setattr__(self, name, _constant(value))
        if self.dtype is not None:
            object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
        if self.terminal is not None:
            object.__setattr__(self, "terminal", jnp.asarray(self.terminal, bool))


def _constant(value):
    return lambda theta: value


def _params_shape(policy):
    """The shapes of a `dsorl.policies.Policy`'s parameters (also of its bound `probs`),
    or None for any other callable."""
    owner = getattr(policy, "__self__", policy)
    if not isinstance(owner, Policy):
        return None
    return jax.tree_util.tree_map(lambda x: tuple(x.shape), jax.eval_shape(owner.init))


# ----------------------------------------------------------------------------------------
# Mappings (Todorov, arXiv 2506.08340, section 2.1)


def marginal(mdp: MDP, policy: Callable) -> ChainModel:
    """The chain of an MDP under a stochastic policy `policy(theta) -> pi[S, A]` (eq. 12).

    `P(s'|s, theta) = sum_a pi(a|s) P[s, a, s']`, `r(s, theta) = sum_a pi(a|s) R[s, a]`,
    `P0 = mdp.rho`; `X = S`. Its Thm-1 gradient is the policy-gradient theorem
    `sum_s m(s) sum_a grad pi(a|s) Q(s, a)`. A sparse MDP gives a sparse chain whose rows
    list each successor once (`dsorl.sparse.Merger`), so that `P log P` terms are the
    chain's.
    """
    if is_sparse(mdp.P):  # each successor once per row: the chain KL and Fisher need it
        S, A, K = mdp.P.successors.shape
        merge = merger(mdp.P.successors.reshape(S, A * K))
        transition = lambda th: merge(induced_chain(mdp, policy(th)).P)  # noqa: E731
    else:
        transition = lambda th: induced_chain(mdp, policy(th)).P  # noqa: E731
    return ChainModel(transition=transition,
                      reward=lambda th: induced_chain(mdp, policy(th)).r,
                      initial=mdp.rho, params_shape=_params_shape(policy), dtype=mdp.P.dtype)


def augmented(mdp: MDP, policy: Callable) -> ChainModel:
    """The chain on state-action pairs `x = (s, a)` (index `s * A + a`).

    `P((s', a')|(s, a), theta) = P[s, a, s'] pi(a'|s')`, `r((s, a)) = R[s, a]` (constant),
    `P0((s, a) | theta) = rho(s) pi(a|s)`; masked pairs are unreachable self-loops. Its
    value is `Q(s, a)` and its Thm-1 gradient is REINFORCE's
    `E sum_t gamma^t grad log pi(a_t|s_t) Q(s_t, a_t)`, the same number as `marginal`'s.
    A `dsorl.policies.Policy` lends its `log_probs` for a stable `log P`.
    """
    S, A = mdp.n_states, mdp.n_actions
    allowed = mdp.allowed.reshape(S * A)
    P_sa = mdp.P.reshape(S * A, S)
    log_P_sa = safe_log(P_sa)  # masked rows are replaced below
    reward = jnp.where(allowed, mdp.R.reshape(S * A), 0)
    self_loop = jnp.eye(S * A, dtype=mdp.P.dtype)
    log_pi = _log_policy(policy)

    def transition(theta):
        P = (P_sa[:, :, None] * jnp.exp(log_pi(theta))[None]).reshape(S * A, S * A)
        return jnp.where(allowed[:, None], P, self_loop)

    def log_transition(theta):
        log_P = (log_P_sa[:, :, None] + log_pi(theta)[None]).reshape(S * A, S * A)
        return jnp.where(allowed[:, None], log_P, safe_log(self_loop))

    return ChainModel(transition=transition, reward=reward,
                      initial=lambda th: (mdp.rho[:, None] * jnp.exp(log_pi(th))).reshape(S * A),
                      log_transition=log_transition, params_shape=_params_shape(policy),
                      dtype=mdp.P.dtype)


def kl_regularised(mdp: MDP, policy: Callable, tau, reference: Optional[Array] = None
                   ) -> ChainModel:
    """The marginal chain with reward `sum_a pi (R - tau log(pi / mu))`: a KL penalty to
    the reference policy `mu[S, A]` (uniform on available actions by default), tau >= 0.

    The paper's proximal/KL-regularised MDP; `dsorl.entropy_regularised_chain` builds it.
    """
    _checks.check_positive("tau", tau, allow_zero=True)
    return ChainModel(
        transition=lambda th: induced_chain(mdp, policy(th)).P,
        reward=lambda th: entropy_regularised_chain(mdp, policy(th), tau, reference).r,
        initial=mdp.rho, params_shape=_params_shape(policy), dtype=mdp.P.dtype)


def maximum_entropy(mdp: MDP, policy: Callable, tau) -> ChainModel:
    """The marginal chain with the entropy bonus: `r(s) = sum_a pi (R - tau log pi)`.

    The paper's maximum-entropy MDP (cost `L = sum_a pi (l + tau log pi)`); it equals
    `kl_regularised` with the uniform reference plus the constant `tau log |A(s)|`.
    """
    n_available = jnp.sum(mdp.allowed, axis=-1).astype(mdp.R.dtype)
    inner = kl_regularised(mdp, policy, tau)
    return dataclasses.replace(inner,
                               reward=lambda th: inner.reward(th) + tau * jnp.log(n_available))


def lmdp_chain(lmdp, controls="desirability") -> ChainModel:
    """A linearly-solvable MDP as a chain: `P = u_theta`, `r = -q - KL(u_theta(.|x) || p(.|x))`.

    `lmdp` is a `dsorl.lmdp.LMDP` (passive dynamics `p`, state cost `q`, initial law,
    optional terminal set: first exit, where a terminal state pays only `q`). `controls`:
    - `"desirability"`: `u_theta(x'|x) ∝ p(x'|x) exp(theta[x'])`, `theta[X]`; the optimum
      `u*(x'|x) ∝ p(x'|x) z(x')` is `theta = log z` (Todorov 2006, 2009);
    - `"tabular"`: `u_theta(x'|x) ∝ p(x'|x) exp(theta[x, x'])`, `theta[X, X]` (each row
      free: the surrogate separates by state, so Chain Iteration is policy iteration);
    - a function `theta -> u[X, X]`: then every `x -> x'` with `u > 0` must have `p > 0`
      (else `KL = inf`), checked on concrete `theta` (`ValueError`).
    """
    p = lmdp.passive
    log_p = safe_log(p)
    continues = _continues(lmdp.terminal, p.shape[0], p.dtype)
    check, params_shape = None, None
    if callable(controls):
        transition, log_transition = controls, None

        def check(theta):
            _checks.check_covers(controls(theta), p, symbols=("u", "p"),
                                 what="the passive dynamics do not cover the controlled chain",
                                 consequence="so KL(u || p) is infinite")
    elif controls in ("desirability", "tabular"):
        shape = (None, slice(None)) if controls == "desirability" else (Ellipsis,)
        params_shape = p.shape[-1:] if controls == "desirability" else p.shape[-2:]

        def log_transition(theta):
            logits = log_p + theta[shape]
            return logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)

        transition = lambda th: jnp.exp(log_transition(th))
    else:
        raise ValueError(f"controls must be 'desirability', 'tabular' or a function,"
                         f" got {controls!r}.")

    def reward(theta):
        u, log_u = transition(theta), _log(log_transition, transition, theta)
        kl = jnp.sum(_weighted_log(u, log_u) - _weighted_log(u, log_p), axis=-1)
        return -lmdp.cost - continues * kl

    return ChainModel(transition=transition, reward=reward, initial=lmdp.initial,
                      terminal=lmdp.terminal, log_transition=log_transition, check=check,
                      params_shape=None if params_shape is None else tuple(params_shape),
                      dtype=p.dtype)


def _log_policy(policy):
    if hasattr(policy, "log_probs"):
        return policy.log_probs
    return lambda theta: safe_log(policy(theta))


# ----------------------------------------------------------------------------------------
# Evaluation and validation


def chain_at(model: ChainModel, theta) -> Chain:
    """The `dsorl.Chain(P(theta), r(theta))` of the model (terminal rows as given)."""
    P, r, _ = evaluate(model, theta)
    return unchecked(Chain, P=P, r=r)


def check_chain(model: ChainModel, theta) -> None:
    """Raise `ValueError` unless the model at a concrete `theta` is a chain: `P` square,
    finite, >= 0, rows summing to 1; the model's own `check`; `r` finite and `P0` a
    distribution, both `[X]`; `terminal` `[X]`. Traced `theta` passes unchecked."""
    if not _checks.is_concrete(theta):
        return
    values = evaluate(model, theta)
    if not _checks.is_concrete(values):  # inside a trace (jit, vmap) even constants are traced
        return
    P, r, P0 = values
    # a wider chain than theta (a float64 MDP under float32 theta) carries theta's rounding
    markov.validate_chain(P.astype(_narrowest(theta, P)))
    r, P0 = np.asarray(r), np.asarray(P0)
    if model.check is not None:
        model.check(theta)
    _checks.check_shape("r", r, P.shape[:1], "[X]")
    _checks.check_finite("r", r)
    _checks.check_shape("P0", P0, r.shape, "[X]")
    _checks.check_finite("P0", P0)
    _checks.check_nonnegative("P0", P0)
    _checks.check_rows_sum_to_one("P0", P0[None], what="initial law")
    if model.terminal is not None:
        _checks.check_shape("terminal", model.terminal, r.shape, "[X]")


def _narrowest(*trees):
    """The float dtype of the least precise floating leaf of `trees`."""
    dtypes = [np.dtype(x.dtype) for x in jax.tree_util.tree_leaves(trees)
              if hasattr(x, "dtype") and np.issubdtype(x.dtype, np.floating)]
    return min(dtypes, key=lambda d: np.finfo(d).bits) if dtypes else np.dtype(float)


def check_model(model: ChainModel, theta, gamma=None, *, average: bool = False) -> None:
    """Raise `ValueError` unless the model at a concrete `theta` is a valid DSO problem.

    `check_chain`, then the criterion. Discounted (`average=False`): without a terminal
    set gamma in [0, 1); with one gamma in [0, 1], and for gamma = 1 every state must
    reach the terminal set (else `I - P~` is singular: the episode never ends). Average
    reward (no gamma, no terminal set): the chain must be unichain (one closed class),
    else the gain depends on the initial state. Traced values pass unchecked.
    """
    if average:
        if gamma is not None:
            raise ValueError("the average-reward criterion takes no discount factor.")
        if model.terminal is not None:
            raise ValueError("a terminal set defines the first-exit criterion; the"
                             " average-reward criterion needs a model without one.")
    elif gamma is None:
        raise ValueError("the discounted and first-exit criteria need a discount factor gamma.")
    else:
        _checks.check_discount(gamma, allow_one=model.terminal is not None)
    check_chain(model, theta)
    P = model.transition(theta) if _checks.is_concrete(theta) else None
    if P is None or not _checks.is_concrete(P):
        return
    P = np.asarray(P)
    if not average and model.terminal is not None and _checks.is_concrete(gamma) \
            and float(gamma) == 1.0:
        _require_exit(P, np.asarray(model.terminal))
    if average:
        _checks.check_unichain(P, "the average-reward criterion needs a unichain chain, but"
                               " P(theta)", "its gain depends on the initial state")


def _require_exit(P, terminal) -> None:
    reach = graph.reaches(P, terminal)
    if not reach.all():
        stuck = np.flatnonzero(~reach)
        raise ValueError(f"the terminal set is never reached from state {stuck[0]}"
                         f" ({stuck.size} such states): with gamma = 1 the first-exit value"
                         " is undefined. Use gamma < 1 or make the terminal set reachable.")


def evaluate(model: ChainModel, theta):
    """`(P[X, X], r[X], P0[X])` of the model at `theta`."""
    return model.transition(theta), model.reward(theta), model.initial(theta)


def _continues(terminal, n: int, dtype) -> Array:
    """`1 - terminal` as floats (ones without a terminal set)."""
    if terminal is None:
        return jnp.ones(n, dtype)
    return 1 - terminal.astype(dtype)


def not_terminal(model: ChainModel, n: int, dtype) -> Array:
    """`1 - terminal[X]` as floats (ones without a terminal set)."""
    return _continues(model.terminal, n, dtype)


def _absorbed(model: ChainModel, P: Array) -> Array:
    """`P~`: the rows of terminal states zeroed (the episode stops there)."""
    if model.terminal is None:
        return P
    return _continues(model.terminal, P.shape[0], P.dtype)[:, None] * P


def safe_log(x: Array) -> Array:
    """`log x` with `log 0 = -inf` and a zero (not NaN) gradient at 0; of a sparse kernel,
    the log of its entries `[X, K]`."""
    x = _entries(x)
    positive = x > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, x, 1)), -jnp.inf)


def _log(log_fn, fn, theta):
    return log_fn(theta) if log_fn is not None else safe_log(fn(theta))


def log_transition(model: ChainModel, theta) -> Array:
    """`log P(x'|x, theta)`, `[X, X]` (`-inf` where `P = 0`, with zero gradient there)."""
    return _log(model.log_transition, model.transition, theta)


def log_initial(model: ChainModel, theta) -> Array:
    """`log P0(x | theta)`, `[X]` (`-inf` where `P0 = 0`)."""
    return safe_log(model.initial(theta))


# ----------------------------------------------------------------------------------------
# Discounted and first-exit criteria


class ChainSolution(NamedTuple):
    """Exact first-order quantities at one `theta`: objective `J`, values `v[X]`,
    occupancy `m[X]` (discounted) or stationary law `p*[X]` (average), and the
    discount `gamma` (1 for the average criterion) of the Thm-1 transition term."""

    objective: Array
    value: Array
    weight: Array
    gamma: Array


def _discounted_solution(model: ChainModel, P, r, P0, gamma) -> ChainSolution:
    """`v = (I - gamma P~)^{-1} r` and `m^T = P0^T (I - gamma P~)^{-1}`.

    Without a terminal set these are the core's `discounted_value` and `occupancy`; with
    one, `P~` is substochastic and gamma may be 1, which the core (built for stochastic
    chains with gamma < 1) rejects, so the two solves are done here.
    """
    if model.terminal is None:
        chain = unchecked(Chain, P=P, r=r)
        v = markov.discounted_value(chain, gamma)
        m = markov.occupancy(chain, P0, gamma)
    else:
        A = jnp.eye(P.shape[0], dtype=P.dtype) - gamma * _absorbed(model, P)
        v = jnp.linalg.solve(A, r)
        m = jnp.linalg.solve(A.T, P0)
    return ChainSolution(P0 @ v, v, m, jnp.asarray(gamma, v.dtype))


def solve(model: ChainModel, theta, gamma) -> ChainSolution:
    """`ChainSolution(J, v, m, gamma)` of the discounted / first-exit criterion at `theta`."""
    check_model(model, theta, gamma)
    return _discounted_solution(model, *evaluate(model, theta), gamma)


def value(model: ChainModel, theta, gamma) -> Array:
    """Value `v[X] = (I - gamma P~)^{-1} r`: expected discounted reward until exit."""
    return solve(model, theta, gamma).value


def occupancy(model: ChainModel, theta, gamma) -> Array:
    """Discounted occupancy `m[X]`, `m^T = P0^T (I - gamma P~)^{-1}` (the paper's
    discounted density; sums to 1/(1 - gamma) without a terminal set)."""
    return solve(model, theta, gamma).weight


def objective(model: ChainModel, theta, gamma) -> Array:
    """`J(theta) = P0^T (I - gamma P~)^{-1} r`, the expected discounted (first-exit) reward.

    Differentiable by `jax.grad` (implicitly through the linear solve): the reference the
    Thm-1 `gradient` is tested against.
    """
    return solve(model, theta, gamma).objective


def _thm1(model: ChainModel, theta, sol: ChainSolution, *, initial: bool = True):
    """Thm 1 as one pullback through `theta -> (P, r, P0)` with cotangents
    `(gamma m v^T (non-terminal rows), m, v)` (`P0`'s is 0 when `initial` is False)."""
    X = sol.value.shape[0]
    rows = sol.weight * _continues(model.terminal, X, sol.value.dtype)
    start = sol.value if initial else jnp.zeros_like(sol.value)

    # the gradient of P0 . v + m . r + gamma rows . (P v) with m, v frozen: one pullback,
    # written through the products so that a sparse P never becomes a dense cotangent
    def frozen(th):
        P, r, P0 = evaluate(model, th)
        return P0 @ start + sol.weight @ r + sol.gamma * (rows @ (P @ sol.value))

    return jax.grad(frozen)(theta)


def gradient(model: ChainModel, theta, gamma):
    """The exact gradient in the paper's Thm 1 form (a pytree like `theta`):

    `grad J = sum_x grad P0(x) v(x) + sum_x m(x) [grad r(x) + gamma sum_x' grad P~(x'|x) v(x')]`.

    Only `P`, `r` and `P0` are differentiated (one vector-Jacobian product); `v` and `m`
    come from the two linear solves. Equal to `jax.grad(objective)`.
    """
    sol = jax.lax.stop_gradient(solve(model, theta, gamma))
    return _thm1(model, theta, sol)


def value_and_gradient(model: ChainModel, theta, gamma):
    """`(J(theta), grad J(theta))` from one pair of solves (see `gradient`)."""
    sol = jax.lax.stop_gradient(solve(model, theta, gamma))
    return sol.objective, _thm1(model, theta, sol)


def hessian(model: ChainModel, theta, gamma) -> Array:
    """Exact Hessian `[d, d]` of `J` from the Bellman equation differentiated twice.

    With `v = r + gamma P~ v` and `J = P0 . v`:
    `H = hess S + K + K^T`, where `hess S` is the Hessian of the surrogate at `alpha = theta`
    (`m`, `v` frozen) and `K_ij = d_i [P0 + gamma P~^T m](theta) . dv/dtheta_j`, with the
    value Jacobian `dv = (I - gamma P~)^{-1} d(r + gamma P~ v)` (`v` frozen inside `d`).
    Equal to `jax.hessian(objective)` on the flattened parameters.
    """
    sol = jax.lax.stop_gradient(solve(model, theta, gamma))
    P = jax.lax.stop_gradient(model.transition(theta))
    A = jnp.eye(P.shape[0], dtype=P.dtype) - sol.gamma * _absorbed(model, P)
    return _hessian(model, theta, sol, lambda U: jnp.linalg.solve(A, U), initial=True)


def _hessian(model, theta, sol: ChainSolution, value_jacobian, *, initial: bool) -> Array:
    flat, unravel = ravel_pytree(theta)

    def parts(f):
        P, r, P0 = evaluate(model, unravel(f))
        return _absorbed(model, P), r, P0

    def backup(f):  # r + gamma P~ v with v frozen: its Jacobian drives dv
        P, r, _ = parts(f)
        return r + sol.gamma * P @ sol.value

    def frozen(f):  # the surrogate up to constants
        P, r, P0 = parts(f)
        start = P0 @ sol.value if initial else 0.0
        return start + sol.weight @ (r + sol.gamma * P @ sol.value)

    dv = value_jacobian(jax.jacfwd(backup)(flat))  # [X, d]

    def coupling(f):
        P, _, P0 = parts(f)
        row = sol.gamma * (sol.weight @ P) + (P0 if initial else 0.0)
        return row @ dv

    K = jax.jacfwd(coupling)(flat)  # K[j, i] = d_i (row . dv_j)
    return jax.hessian(frozen)(flat) + K + K.T


def fisher(model: ChainModel, theta, gamma) -> Array:
    """Chain Fisher `[d, d]` on the flattened parameters (discounted / first exit):

    `F = sum_x P0(x) s0 s0^T + sum_{x not terminal} m(x) sum_x' P(x'|x) s s^T`,
    `s = grad log P(x'|x, theta)`, `s0 = grad log P0(x | theta)`; the Hessian at
    `theta' = theta` of the weighted divergence `KL(P0_theta || P0_theta') +
    sum_x m(x) KL(P(.|x, theta) || P(.|x, theta'))`. Precondition with
    `dsorl.optim.natural_direction` (`fisher=F`).
    """
    sol = jax.lax.stop_gradient(solve(model, theta, gamma))
    X = sol.value.shape[0]
    rows = sol.weight * _continues(model.terminal, X, sol.value.dtype)
    return _fisher(model, theta, rows, initial=True)


def _fisher(model, theta, rows, *, initial: bool) -> Array:
    flat, unravel = ravel_pytree(theta)
    P, _, P0 = jax.lax.stop_gradient(evaluate(model, theta))

    def cross_entropy(f):
        th = unravel(f)
        total = -jnp.sum(rows[:, None] * _weighted_log(P, log_transition(model, th)))
        if initial:
            total = total - jnp.sum(_weighted_log(P0, log_initial(model, th)))
        return total

    return jax.hessian(cross_entropy)(flat)


def _weighted_log(p, log_q):
    """`p log q` with `0 log q = 0` (also where `q = 0`); a sparse `p` by its entries, with
    `log_q` of the same structure (`safe_log` of a kernel of the same model)."""
    p = _entries(p)
    return jnp.where(p > 0, p * jnp.where(p > 0, log_q, 0), 0)


def _entries(P):
    """A dense kernel as it is; a sparse one's entries `probs[X, K]` (row by row, as `log`
    and `p log q` need them)."""
    return P.probs if is_sparse(P) else P


# ----------------------------------------------------------------------------------------
# Surrogate (Chain Iteration)


class SurrogateTerms(NamedTuple):
    """Everything `S(., alpha)` needs from `alpha`: `J(alpha)`, `v_alpha`, `m_alpha`,
    `P_alpha`, `P0_alpha` and the discount."""

    objective: Array
    value: Array
    weight: Array
    transition: Array
    initial: Array
    gamma: Array


def surrogate_terms(model: ChainModel, alpha, gamma) -> SurrogateTerms:
    """Solve once at `alpha` for repeated evaluations of `S(theta, alpha)`."""
    check_model(model, alpha, gamma)
    P, r, P0 = evaluate(model, alpha)
    sol = _discounted_solution(model, P, r, P0, gamma)
    return SurrogateTerms(sol.objective, sol.value, sol.weight, P, P0, sol.gamma)


def surrogate_at(model: ChainModel, theta, terms: SurrogateTerms) -> Array:
    """`S(theta, alpha)` from `surrogate_terms(model, alpha, gamma)` (see `surrogate`)."""
    P, r, P0 = evaluate(model, theta)
    advantage = r + terms.gamma * _absorbed(model, P) @ terms.value - terms.value
    return terms.objective + (P0 - terms.initial) @ terms.value + terms.weight @ advantage


def surrogate(model: ChainModel, theta, alpha, gamma) -> Array:
    """The DSO surrogate `S(theta, alpha)` (performance-difference form):

    `J(alpha) + (P0_theta - P0_alpha) . v_alpha + sum_x m_alpha(x) [r(x, theta)
    + gamma sum_x' P~(x'|x, theta) v_alpha(x') - v_alpha(x)]`.

    `S(alpha, alpha) = J(alpha)` and `grad_theta S|_{theta = alpha} = grad J(alpha)`
    (the paper's Lemma 2). `theta` only perturbs `P`, `r`, `P0`; `m`, `v` stay at `alpha`.
    """
    return surrogate_at(model, theta, surrogate_terms(model, alpha, gamma))


def divergence_at(model: ChainModel, theta, terms: SurrogateTerms) -> Array:
    """`KL(P0_alpha || P0_theta) + sum_{x not terminal} m_alpha(x) KL(P(.|x, alpha) || P(.|x, theta))`.

    The proximal term of Chain Iteration; its Hessian at `theta = alpha` is the chain Fisher.
    """
    X = terms.value.shape[0]
    rows = terms.weight * _continues(model.terminal, X, terms.value.dtype)
    log_P, log_P0 = log_transition(model, theta), log_initial(model, theta)
    own = _weighted_log(terms.transition, safe_log(terms.transition))
    own0 = _weighted_log(terms.initial, safe_log(terms.initial))
    return (jnp.sum(own0 - _weighted_log(terms.initial, log_P0))
            + jnp.sum(rows[:, None] * (own - _weighted_log(terms.transition, log_P))))


# ----------------------------------------------------------------------------------------
# Average-reward criterion


def solve_average(model: ChainModel, theta) -> ChainSolution:
    """`ChainSolution(g, h, p*, 1)`: gain, differential value (bias, `p* . h = 0`) and
    stationary law of the unichain chain at `theta` (core `dsorl.markov` solves)."""
    check_model(model, theta, average=True)
    chain = chain_at(model, theta)
    p = markov.stationary_distribution(chain)
    return ChainSolution(p @ chain.r, markov.bias(chain), p, jnp.ones((), p.dtype))


def gain(model: ChainModel, theta) -> Array:
    """Gain `g(theta) = p* . r`, the long-run average reward (the paper's average cost is `-g`)."""
    check_model(model, theta, average=True)
    return markov.gain(chain_at(model, theta))


def gain_gradient(model: ChainModel, theta):
    """Thm 1, average form: `grad g = sum_x p*(x) [grad r(x) + sum_x' grad P(x'|x) h(x')]`."""
    sol = jax.lax.stop_gradient(solve_average(model, theta))
    return _thm1(model, theta, sol, initial=False)


def gain_hessian(model: ChainModel, theta) -> Array:
    """Exact Hessian of the gain from the differentiated average-reward Bellman equation
    `g + h = r + P h`: `hess_theta [p* . (r + P h)] + K + K^T` (`p*`, `h` frozen),
    `K_ij = d_i (p*^T P) dh_j`, with `dh = D d(r + P h)` (`D`: deviation matrix)."""
    sol = jax.lax.stop_gradient(solve_average(model, theta))
    D = jax.lax.stop_gradient(markov.deviation_matrix(chain_at(model, theta)))
    return _hessian(model, theta, sol, lambda U: D @ U, initial=False)


def gain_fisher(model: ChainModel, theta) -> Array:
    """Chain Fisher with stationary weights: `sum_x p*(x) sum_x' P(x'|x) s s^T`, `[d, d]`."""
    sol = jax.lax.stop_gradient(solve_average(model, theta))
    return _fisher(model, theta, sol.weight, initial=False)
