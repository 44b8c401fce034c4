"""Independent references and checks shared by the tests (NumPy only, float64)."""
import jax
import numpy as np

import dsorl


def random_mdp(seed: int, n_states: int, n_actions: int, *, density: float = 1.0) -> dsorl.MDP:
    """A random MDP from a NumPy seed (dense rows unless `density` < 1; always unichain
    when dense: every transition has positive probability)."""
    rng = np.random.default_rng(seed)
    P = rng.random((n_states, n_actions, n_states)) + 0.05
    if density < 1:
        P *= rng.random(P.shape) < density
        P[..., 0] += 0.05  # keep state 0 reachable from everywhere: unichain
    P /= P.sum(-1, keepdims=True)
    R = rng.normal(size=(n_states, n_actions))
    rho = rng.random(n_states)
    return dsorl.MDP(P, R, rho / rho.sum())


def random_chain(seed: int, n: int, *, density: float = 1.0) -> dsorl.Chain:
    """A random chain `Chain(P[n, n], r[n])`; with `density < 1` sparse, state 0 reachable
    from every state (unichain)."""
    rng = np.random.default_rng(seed)
    P = rng.random((n, n)) + 0.01
    if density < 1:
        P *= rng.random((n, n)) < density
        P[:, 0] += 0.05  # state 0 reachable from everywhere: unichain
    P /= P.sum(1, keepdims=True)
    return dsorl.Chain(P, rng.normal(size=n))


def random_policy(seed: int, n_states: int, n_actions: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pi = rng.random((n_states, n_actions)) + 0.05
    return pi / pi.sum(-1, keepdims=True)


def np_laurent(P, r, K):
    """y_{-1..K} of one dense chain (NumPy reference of
    dsorl.markov.laurent_coefficients): H = (I - P + P*)^{-1} - P*, p* by an SVD null vector."""
    S = len(P)
    p = np.linalg.svd(np.eye(S) - P.T)[2][-1]
    p /= p.sum()
    Pstar = np.outer(np.ones(S), p)
    H = np.linalg.inv(np.eye(S) - P + Pstar) - Pstar
    ys = [Pstar @ r, H @ r]
    for _ in range(K):
        ys.append(-H @ ys[-1])
    return np.array(ys)


def central_difference(f, x, eps: float = 1e-4) -> np.ndarray:
    """Gradient of scalar `f` at array `x` by the five-point central stencil (float64).

    Truncation error O(eps^4 f^(5)), rounding error ~ (rounding of f) / eps: with eps = 1e-4
    a forward pass carrying 1e-13 of rounding costs ~1e-9, where the three-point stencil at
    eps = 1e-6 (truncation O(eps^2 f^(3))) amplifies the same rounding to ~1e-7.
    """
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = eps
        grad[idx] = (8 * (float(f(x + e)) - float(f(x - e)))
                     - (float(f(x + 2 * e)) - float(f(x - 2 * e)))) / (12 * eps)
    return grad


def check_variants(fn, args, batched_args, in_axes, *, rtol=1e-10, atol=1e-12):
    """`fn` un-jitted, jitted, and vmapped over `batched_args` agree with a Python loop."""
    eager = fn(*args)
    jitted = jax.jit(fn)(*args)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol),
                           eager, jitted)
    batched = jax.vmap(fn, in_axes=in_axes)(*batched_args)
    size = jax.tree_util.tree_leaves(
        [a for a, ax in zip(batched_args, in_axes) if ax is not None])[0].shape[0]
    for i in range(size):
        args_i = [jax.tree_util.tree_map(lambda x: x[i], a) if ax is not None else a
                  for a, ax in zip(batched_args, in_axes)]
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a[i], b, rtol=rtol, atol=atol),
            batched, fn(*args_i))


def check_compiled_variants(fn, batched_args, *, eager=True, rtol=1e-10, atol=1e-12):
    """`fn` un-jitted == jitted on the first batch member, and `jit(vmap(fn))` over the
    leading axis of every argument == the jitted single calls.

    The same three variants as `check_variants` with two compiled programs: no re-jit, and
    no un-jitted `vmap` (which runs op by op and is slow for large graphs such as Hessians
    or whole optimiser runs). `eager=False` skips the un-jitted call (whose first run
    compiles every primitive on its own) when another test covers it.
    """
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    single = jax.jit(fn)
    first = [jax.tree_util.tree_map(lambda x: x[0], a) for a in batched_args]
    if eager:
        jax.tree_util.tree_map(close, fn(*first), single(*first))
    batched = jax.jit(jax.vmap(fn))(*batched_args)
    size = jax.tree_util.tree_leaves(batched_args)[0].shape[0]
    for i in range(size):
        args_i = [jax.tree_util.tree_map(lambda x: x[i], a) for a in batched_args]
        jax.tree_util.tree_map(lambda b, s: close(b[i], s), batched, single(*args_i))
