"""Random garnet MDPs (Archibald, McKinnon & Thomas 1995; Bhatnagar et al. 2009).

Each state-action pair moves to `branching` distinct next states chosen uniformly, with
probabilities uniform on the simplex (the gaps of sorted uniform cut points); rewards are
uniform on [0, 1); the initial law is uniform. Pure and jittable: `vmap` over keys for a
batch.

`garnet` builds the dense kernel `[S, A, S]` (its draw is an `[S A, S]` permutation, so it
is for small `S`); `sparse_garnet` draws the same law directly in the sparse form
`[S, A, K]` (`dsorl.sparse.SparseTransitions`), with `O(S A K)` memory, up to `S = 10^6`.
"""
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from dsorl.krylov import Krylov
from dsorl.mdp import MDP
from dsorl.sparse import SparseTransitions

__all__ = ["garnet", "sparse_garnet"]


def garnet(key: jax.Array, n_states: int, n_actions: int, branching: int,
           dtype=None) -> MDP:
    """A garnet MDP with `n_states` states, `n_actions` actions and `branching` successors."""
    if not 1 <= branching <= n_states:
        raise ValueError(f"branching = {branching} must lie in [1, n_states = {n_states}].")
    if n_states < 1 or n_actions < 1:
        raise ValueError(f"need n_states >= 1 and n_actions >= 1, got {n_states}, {n_actions}.")
    dtype = dtype or jnp.result_type(float)
    k_next, k_prob, k_reward = jax.random.split(key, 3)
    pairs = n_states * n_actions
    # `branching` distinct successors per pair: the first columns of a random permutation
    order = jnp.argsort(jax.random.uniform(k_next, (pairs, n_states)), axis=-1)
    successors = order[:, :branching]
    cuts = jnp.sort(jax.random.uniform(k_prob, (pairs, branching - 1), dtype), axis=-1)
    edges = jnp.concatenate([jnp.zeros((pairs, 1), dtype), cuts, jnp.ones((pairs, 1), dtype)], -1)
    probs = jnp.diff(edges, axis=-1)
    P = jnp.einsum("pb,pbs->ps", probs, jax.nn.one_hot(successors, n_states, dtype=dtype))
    R = jax.random.uniform(k_reward, (n_states, n_actions), dtype)
    rho = jnp.full(n_states, 1 / n_states, dtype)
    return MDP(P.reshape(n_states, n_actions, n_states), R, rho)


def sparse_garnet(key: jax.Array, n_states: int, n_actions: int, branching: int, *,
                  dtype=None, krylov: Krylov = Krylov()) -> MDP:
    """A garnet MDP with a sparse kernel `[S, A, K]`, `K = branching` (Archibald, McKinnon &
    Thomas 1995, "On the generation of Markov decision processes", J. Oper. Res. Soc. 46).

    The law of `garnet`, drawn without any `[S, S]` array:
    - successors: for each pair `(s, a)` a uniformly random set of `K` distinct states, by
      Floyd's algorithm (Bentley & Floyd 1987, "A sample of brilliance", CACM 30(9)): for
      `j = S - K, ..., S - 1` draw `t` uniform on `{0, ..., j}` and keep `t`, or `j` if `t`
      is already kept. `K` vectorised steps over all pairs, `O(S A K^2)` comparisons. The
      set is uniform; the order within a row is not, which does not matter since the
      probabilities below are exchangeable.
    - probabilities: uniform on the simplex (Dirichlet(1, ..., 1)), as `garnet`'s gaps of
      sorted uniforms, drawn as normalised exponentials `E_k / sum_j E_j` (the same law,
      Devroye 1986, "Non-Uniform Random Variate Generation", §V.2; no sort).
    - rewards `R[s, a]` uniform on [0, 1); `rho` uniform.

    The key determines the MDP (the same key in another program gives the same arrays);
    `sparse_garnet(key, ...).P.to_dense()` is a garnet of the same law as
    `garnet(key, ...)`, not the same draw. Pure and jittable (sizes static), `vmap` over
    keys for a batch; validated when called outside `jit`. Memory: the arrays themselves
    (`S A K` int32 successors and `S A K` probabilities: 160 MB + 320 MB in float64 at
    `S = 10^6, A = 4, K = 10`), filled in place block by block (2^16 states a block, each
    from its own `fold_in` of the key), so the draw's temporaries stay small. Measured on
    the 2-core CPU at `S = 10^6, A = 4, K = 10`: the draw 1.9-3 s, with the validation
    about 4.5 s; at `S = 10^5` 0.5 s (plus one compilation per size, 2-5 s).
    `krylov`: the solve settings of the chains it induces.
    """
    for name, value in (("n_states", n_states), ("n_actions", n_actions),
                        ("branching", branching)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} = {value!r} must be an integer >= 1.")
    if branching > n_states:
        raise ValueError(f"branching = {branching} must lie in [1, n_states = {n_states}]:"
                         " the successors of a pair are distinct.")
    if n_states > jnp.iinfo(jnp.int32).max:
        raise ValueError(f"n_states = {n_states} exceeds the int32 successor indices.")
    dtype = dtype or jnp.result_type(float)
    successors, probs, R = _sparse_garnet_arrays(key, n_states, n_actions, branching, dtype)
    rho = jnp.full(n_states, 1 / n_states, dtype)
    return MDP(SparseTransitions(successors, probs, krylov=krylov, dtype=dtype), R, rho)


# States drawn per block: the temporaries of a block (random bits, the exponentials, the
# Floyd buffer) stay near 20 MB at A = 4, K = 10 while the output fills in place; fixed, so
# that a key gives the same MDP whatever the machine.
_BLOCK_STATES = 1 << 16


@partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _sparse_garnet_arrays(key, n_states, n_actions, branching, dtype):
    k_next, k_prob, k_reward = jax.random.split(key, 3)
    block = min(n_states, _BLOCK_STATES)
    shape = (block, n_actions, branching)

    def draw_block(i, arrays):
        # the last block starts at S - block (it redraws some rows of the one before: every
        # row is still one independent draw, the last one written)
        start = jnp.minimum(i * block, n_states - block)
        successors = _floyd(jax.random.fold_in(k_next, i), n_states, shape)
        if branching == 1:  # E / E would be 0/0 for a zero draw
            probs = jnp.ones(shape, dtype)
        else:
            weights = jax.random.exponential(jax.random.fold_in(k_prob, i), shape, dtype)
            probs = weights / jnp.sum(weights, axis=-1, keepdims=True)
        return tuple(lax.dynamic_update_slice(full, part, (start, 0, 0))
                     for full, part in zip(arrays, (successors, probs)))

    empty = (jnp.zeros((n_states, n_actions, branching), jnp.int32),
             jnp.zeros((n_states, n_actions, branching), dtype))
    successors, probs = lax.fori_loop(0, -(-n_states // block), draw_block, empty)
    R = jax.random.uniform(k_reward, (n_states, n_actions), dtype)
    return successors, probs, R


def _floyd(key, n_states, shape):
    """`shape[-1]` distinct states uniform on `{0, ..., n_states - 1}` for every row of
    `shape[:-1]` (Floyd's algorithm, see `sparse_garnet`)."""
    K = shape[-1]
    rows = shape[:-1]
    step_keys = jax.random.split(key, K)

    def step(i, kept):  # kept[..., i'] for i' < i are drawn; -1 elsewhere never matches
        j = n_states - K + i
        t = jax.random.randint(step_keys[i], rows, 0, j + 1, dtype=jnp.int32)
        seen = jnp.any(kept == t[..., None], axis=-1)
        return kept.at[..., i].set(jnp.where(seen, j, t))

    return lax.fori_loop(0, K, step, jnp.full(shape, -1, jnp.int32))
