"""Reference implementations the benchmark jobs time dsorl against, in one place.

NumPy (float64, written independently of dsorl): the softmax policy, the marginal chain
`P_pi = sum_a pi P`, `r_pi = sum_a pi R`, and the value, gain and bias of a tabular
softmax policy with their logit gradients, single-instance or on stacks (a leading batch
axis); `numpy_case` builds the loop (one instance per Python iteration) and stacked (one
batched `np.linalg.solve` per linear system) codings that `core_eval` measures. pymdptoolbox:
value iteration with a fixed number of sweeps. JAX without dsorl's γ-sweep path: one LU per
discount factor. Not a job (the leading underscore keeps it out of `dsorl list`).
"""
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from dsorl.mdp import induced_chain

__all__ = ["NumpySolve", "ScipyLU", "np_policy", "np_chain", "np_centred", "np_gain_matrix",
           "np_value", "np_average", "numpy_case", "numbers_agree", "toolbox_value_iteration",
           "plain_values", "plain_discounted_return"]


class NumpySolve:
    """One `np.linalg.solve` per system (works on single matrices and on stacks)."""
    name = "solve"

    @staticmethod
    def factor(M):
        return M

    @staticmethod
    def solve(F, b):
        return np.linalg.solve(F, b[..., None])[..., 0]

    @staticmethod
    def solve_t(F, b):
        return np.linalg.solve(np.swapaxes(F, -1, -2), b[..., None])[..., 0]


class ScipyLU:
    """One LU per matrix, reused by every system with that matrix (single instances)."""
    name = "lu"

    @staticmethod
    def factor(M):
        return scipy.linalg.lu_factor(M, check_finite=False)

    @staticmethod
    def solve(F, b):
        return scipy.linalg.lu_solve(F, b, check_finite=False)

    @staticmethod
    def solve_t(F, b):
        return scipy.linalg.lu_solve(F, b, trans=1, check_finite=False)


def np_policy(theta, mask=None):
    """`pi[..., S, A] = softmax(theta)` over actions; actions outside `mask` get 0."""
    if mask is not None:
        theta = np.where(mask, theta, -np.inf)
    z = np.exp(theta - theta.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def np_chain(P, R, pi):
    """`(P_pi[..., S, S'], r_pi[..., S])`: `sum_a pi(a|s) P[s, a, s']`, `sum_a pi R`."""
    return np.einsum("...sa,sat->...st", pi, P), np.sum(pi * R, -1)


def np_centred(pi, G):
    """`pi * (G - sum_a pi G)`: the pull-back of `dJ/dpi = G` to the softmax logits."""
    return pi * (G - np.sum(pi * G, -1, keepdims=True))


def np_gain_matrix(P_pi):
    """`I - P_pi` with its last column set to ones (solves for `(h[:-1], g)`)."""
    B = np.eye(P_pi.shape[-1]) - P_pi
    B[..., :, -1] = 1
    return B


def np_value(solver, mdp, pi, gamma, P_pi=None, r_pi=None, *, grad):
    """`v = (I - gamma P_pi)^{-1} r_pi`, or with `grad` `d(rho . v)/d theta` by the
    policy-gradient theorem (Sutton et al. 2000): `m(s) pi (q - sum_a pi q)`."""
    P, R, rho = mdp
    if P_pi is None:
        P_pi, r_pi = np_chain(P, R, pi)
    gamma = np.asarray(gamma)[..., None, None] if np.ndim(gamma) else gamma
    F = solver.factor(np.eye(P_pi.shape[-1]) - gamma * P_pi)
    v = solver.solve(F, r_pi)
    if not grad:
        return v
    m = solver.solve_t(F, np.broadcast_to(rho, v.shape))  # occupancy, unnormalised
    q = R + gamma * np.einsum("sat,...t->...sa", P, v)
    return m[..., None] * np_centred(pi, q)


def np_average(solver, mdp, pi, quantity, *, grad):
    """Gain or bias (and gradients) from one factorisation of `I - P_pi` with its last
    column set to ones (the same algebra as dsorl.markov, written independently)."""
    P, R, _ = mdp
    P_pi, r_pi = np_chain(P, R, pi)
    S = P_pi.shape[-1]
    F = solver.factor(np_gain_matrix(P_pi))
    x = solver.solve(F, r_pi)
    e_last = np.broadcast_to(np.eye(S)[-1], x.shape)
    if quantity == "gain" and not grad:
        return x[..., -1]
    p = solver.solve_t(F, e_last)  # stationary law
    w = x.copy()
    w[..., -1] = 0  # relative values
    if quantity == "gain":
        return np_centred(pi, p[..., None] * (R + np.einsum("sat,...t->...sa", P, w)))
    h = w - np.sum(p * w, -1, keepdims=True)
    if not grad:
        return h
    # d h(s0) = y . (dr + dP h) - p . (dP z), y = row s0 of H, z = H h
    rhs = np.broadcast_to(np.eye(S)[0], p.shape) - p
    rhs[..., -1] = 0
    y = solver.solve_t(F, rhs)
    z = solver.solve(F, h)
    z[..., -1] = 0
    z -= np.sum(p * z, -1, keepdims=True)
    G = (y[..., None] * (R + np.einsum("sat,...t->...sa", P, h))
         - p[..., None] * np.einsum("sat,...t->...sa", P, z))
    return np_centred(pi, G)


def numpy_case(quantity, mode, kind, solver, mdp, theta, gamma, *, stacked):
    """A zero-argument callable computing a `core_eval` case with NumPy: `quantity` in
    value/gain/bias, `mode` forward/gradient, `kind` single/policy (theta[B, S, A])/gamma
    (gamma[B]); a Python loop over the batch, or `stacked` (one call on the stack)."""
    grad = mode == "gradient"
    P, R, _ = mdp

    def one(theta_i, gamma_i, chain=None):
        pi = np_policy(theta_i)
        if quantity == "value":
            P_pi, r_pi = chain if chain is not None else (None, None)
            return np_value(solver, mdp, pi, gamma_i, P_pi, r_pi, grad=grad)
        return np_average(solver, mdp, pi, quantity, grad=grad)

    if kind == "single" or stacked and kind == "policy":
        return lambda: one(theta, gamma)
    if kind == "policy":
        return lambda: np.stack([one(t, gamma) for t in theta])

    def gamma_sweep_np():  # one chain, many discount factors
        chain = np_chain(P, R, np_policy(theta))
        if stacked:
            return one(theta, gamma, chain)
        return np.stack([one(theta, g, chain) for g in gamma])

    return gamma_sweep_np


def numbers_agree(a, b, rtol=1e-8):
    """Same shape and `max |a - b| <= rtol max(max |b|, 1)`."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and np.max(np.abs(a - b)) <= rtol * max(np.max(np.abs(b)), 1.0)


def toolbox_value_iteration(P, R, gamma, *, sweeps=None, epsilon=0.01):
    """pymdptoolbox's `ValueIteration` on `P[S, A, S']`, `R[S, A]` (not yet run): exactly
    `sweeps` sweeps from v = 0 if given, else its own span stopping rule at `epsilon`."""
    import mdptoolbox.mdp

    P_toolbox = np.ascontiguousarray(np.transpose(P, (1, 0, 2)))  # its layout: [A, S, S']
    vi = mdptoolbox.mdp.ValueIteration(P_toolbox, R, gamma, epsilon=epsilon)
    if sweeps is not None:  # run exactly `sweeps` sweeps
        vi.max_iter, vi.thresh = sweeps, -1.0
    return vi


def plain_values(P, gammas, r):
    """One LU per gamma (the path without the sweep): vmapped `jnp.linalg.solve`."""
    return jax.vmap(lambda g: jnp.linalg.solve(jnp.eye(P.shape[-1]) - g * P, r))(gammas)


def plain_discounted_return(mdp, pi, gamma):
    """`rho . (I - gamma P_pi)^{-1} r_pi` by one `jnp.linalg.solve` (no γ-sweep path)."""
    chain = induced_chain(mdp, pi)
    return mdp.rho @ jnp.linalg.solve(jnp.eye(chain.P.shape[-1]) - gamma * chain.P, chain.r)
