"""A family of chain MDPs on which vanilla softmax policy gradient is slow ("committal chains").

Li, Wei, Chi, Chen ("Softmax policy gradient methods can take exponential time to
converge", arXiv 2102.11270) prove an exponential lower bound on a chain MDP with three
actions; their exact construction could not be established from the sources available
to this project, so this family is our own design, built on the same mechanism
(committal behaviour of softmax PG, docs/design.md §9.3):

    states 1..n in a line, terminal state 0 (absorbing, reward 0), two actions:
    advance (a = 1): s -> s - 1 with reward 0; from state 1 it ends the episode with reward 1;
    exit    (a = 0): s -> 0 with reward x_s gamma^(s-1),  x_s = 1 - 1 / (s + 1).

Advancing is optimal everywhere (`V*(s) = gamma^(s-1)`, action gap
`gamma^(s-1) / (s + 1)`). The exit rewards grow along the chain faster than discounting
(`x_s` increases), so while the states below `s` still exit often, exiting at `s` looks
better than advancing (under the uniform policy, in every state `s >= 3`): softmax PG first drives `pi(advance|s)` down and must later climb
back from a small probability, and each state waits for the one below it. Backward
induction (and DynPG) needs `n` epochs. The initial law is uniform on 1..n.
"""
import jax.numpy as jnp
import numpy as np

from dsorl.episodic import EpisodicMDP
from dsorl.mdp import MDP

__all__ = ["committal_chain", "committal_chain_optimum"]

EXIT, ADVANCE = 0, 1


def committal_chain(n: int, gamma, dtype=np.float64) -> EpisodicMDP:
    """The committal chain with `n` states besides the terminal state 0 (see module doc).

    Rewards depend on `gamma` (which may be traced, e.g. under `vmap`): build the MDP for
    the discount it will be solved with. `S = n + 1`, `A = 2`, `rho` uniform on 1..n.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n = {n} must be a positive integer.")
    S = n + 1
    s = np.arange(S)
    P = np.zeros((S, 2, S), dtype)
    P[0, :, 0] = 1
    P[s[1:], EXIT, 0] = 1
    P[s[1:], ADVANCE, s[1:] - 1] = 1
    gamma = jnp.asarray(gamma, dtype)
    exit_reward = (1 - 1 / (s + 1)) * gamma ** jnp.maximum(s - 1, 0)
    R = jnp.zeros((S, 2), dtype).at[1:, EXIT].set(exit_reward[1:]).at[1, ADVANCE].set(1)
    rho = np.full(S, 1 / n, dtype)
    rho[0] = 0
    mask = np.ones((S, 2), bool)
    mask[0, 1] = False  # the terminal state keeps one absorbing action
    terminal = np.zeros(S, bool)
    terminal[0] = True
    return EpisodicMDP(MDP(P, R, rho, action_mask=mask), np.zeros((S, 2), dtype), terminal, n)


def committal_chain_optimum(n: int, gamma) -> tuple:
    """`(V*[S], smallest action gap)` of `committal_chain(n, gamma)` in closed form."""
    s = np.arange(1, n + 1)
    v = np.concatenate([[0.0], gamma ** (s - 1.0)])
    return v, float(np.min(gamma ** (s - 1.0) / (s + 1)))
