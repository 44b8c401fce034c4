"""Random garnet MDPs (Archibald, McKinnon & Thomas 1995; Bhatnagar et al. 2009).

Each state-action pair moves to `branching` distinct next states chosen uniformly, with
probabilities given by the gaps of sorted uniform cut points; rewards are uniform on
[0, 1); the initial law is uniform. Pure and jittable: `vmap` over keys for a batch.
"""
import jax
import jax.numpy as jnp

from dsorl.mdp import MDP

__all__ = ["garnet"]


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
