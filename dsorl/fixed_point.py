"""Differentiable fixed points of nonlinear Bellman operators (docs/design.md §5).

`v* = T(v*, params)` is found forward by any solver, and differentiated by the implicit
function theorem: `dv* = (I - dT/dv)^{-1} dT/dparams . dparams`, one linear solve at the
solution, never backpropagation through the iterations. For the optimality operator
`dT/dv = gamma P_{pi*}` (greedy pi*); for the soft operator `dT/dv = gamma P_{pi*_tau}`.
"""
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dsorl import krylov
from dsorl.mdp import MDP
from dsorl.sparse import is_sparse

__all__ = ["implicit_fixed_point", "bellman_optimality_operator", "soft_bellman_operator",
           "masked_q"]

Array = jax.Array


@partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def implicit_fixed_point(operator: Callable, solver: Callable, params):
    """The fixed point of `v -> operator(v, params)` with implicit derivatives.

    `solver(params) -> (v*, aux)` finds it (aux: e.g. an iteration count, not
    differentiated). Tangents: `(I - J)^{-1} (dT/dparams . dparams)` with
    `J = d operator / dv` at `v*` (a dense `[S, S]` Jacobian by forward mode; when
    `params` hold a sparse kernel, matrix-free: BiCGSTAB on `x -> x - J x` by `jax.jvp`,
    `J^T` by `jax.vjp`, with the kernel's Krylov settings). Both forward and reverse mode
    work, and so do higher derivatives where `operator` is smooth. Returns `(v*, aux)`.
    """
    return solver(params)


@implicit_fixed_point.defjvp
def _implicit_fixed_point_jvp(operator, solver, primals, tangents):
    (params,), (dparams,) = primals, tangents
    v, aux = implicit_fixed_point(operator, solver, params)
    _, dT = jax.jvp(lambda p: operator(v, p), (params,), (dparams,))
    kernels = [x for x in jax.tree_util.tree_leaves(params, is_leaf=is_sparse) if is_sparse(x)]
    if kernels:
        def at_v(x):
            return operator(x, params)

        _, vjp = jax.vjp(at_v, v)
        dv, _ = krylov.solve(lambda x: x - jax.jvp(at_v, (v,), (x,))[1],
                             lambda y: y - vjp(y)[0], dT, options=kernels[0].krylov)
    else:
        J = jax.jacfwd(operator)(v, params)
        dv = jnp.linalg.solve(jnp.eye(v.shape[-1], dtype=v.dtype) - J, dT)
    return (v, aux), (dv, jax.tree_util.tree_map(_zero_tangent, aux))


def bellman_optimality_operator(v: Array, params) -> Array:
    """`(T v)(s) = max_{a available} R[s, a] + gamma P[s, a] . v`; params `(mdp, gamma)`."""
    mdp, gamma = params
    return jnp.max(masked_q(mdp, mdp.R + gamma * mdp.P @ v), axis=-1)


def soft_bellman_operator(v: Array, params) -> Array:
    """`(T v)(s) = tau log sum_a mu(a|s) exp(Q(s, a) / tau)`, `Q = R + gamma P v`.

    params `(mdp, gamma, tau, mu)` with `mu[S, A]` the reference measure (zero on masked
    actions). Its fixed point is the soft-optimal value `V*_tau`, and
    `pi*_tau(a|s) = mu(a|s) exp((Q*_tau(s, a) - V*_tau(s)) / tau)` (Kerimkulov et al.,
    ICML 2022; Haarnoja et al. 2017).
    """
    mdp, gamma, tau, mu = params
    q = masked_q(mdp, mdp.R + gamma * mdp.P @ v)
    return tau * jax.nn.logsumexp(q / tau, axis=-1, b=mu)


def masked_q(mdp: MDP, q: Array) -> Array:
    """`q[S, A]` with `-inf` on masked actions (so `max`/`argmax` over actions ignore them)."""
    if mdp.action_mask is None:
        return q
    return jnp.where(mdp.action_mask, q, -jnp.inf)


def _zero_tangent(x):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, jax.dtypes.float0)
