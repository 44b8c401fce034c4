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

`coupled_clusters` is a slowly mixing family for the average-reward criterion: two clusters
joined by a weak coupling, whose gain- and bias-optimal policy induces the slowly mixing
chain (for mixing-time regularisation, `dsorl.mixing`).
"""
import jax.numpy as jnp
import numpy as np

from dsorl.episodic import EpisodicMDP
from dsorl.mdp import MDP

__all__ = ["committal_chain", "committal_chain_optimum", "coupled_clusters"]

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


STAY, MIX = 0, 1


def coupled_clusters(n: int = 3, coupling=0.02, dtype=np.float64) -> MDP:
    """Two weakly coupled clusters: a slowly mixing average-reward MDP whose optimum mixes slowly.

    `S = 2n` states, cluster A = {0..n-1} (reward +1, the start state 0 and the choice),
    cluster B = {n..2n-1} (reward -1, no choice: both actions are "stay"). Two actions:
    stay (a = 0): the next state is uniform on the own cluster with probability
    `1 - coupling`, uniform on the other cluster with probability `coupling`; mix (a = 1,
    A only): uniform on all `2n` states. Staying everywhere is the unique gain- and
    bias-optimal deterministic policy: gain 0, second eigenvalue `1 - 2 coupling` (the
    relaxation time `1 / (2 coupling)` and Kemeny's constant grow like `1 / coupling`), and
    bias at state 0 `h(0) = 1 / (2 coupling)` (closed form: the cluster indicator
    difference decays by `1 - 2 coupling` a step). Mixing in A speeds mixing up and costs
    gain (it sends the chain to B, which only leaves at rate `coupling`): the trade-off of
    mixing-time regularisation. Every policy's chain is unichain and aperiodic (self-loops).
    `coupling` in (0, 1/2]; `rho = e_0`.
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n = {n!r} must be a positive integer.")
    if not 0 < float(coupling) <= 0.5:
        raise ValueError(f"coupling = {coupling!r} must lie in (0, 1/2].")
    n, S, c = int(n), 2 * int(n), float(coupling)
    cluster = np.arange(S) >= n
    same = (cluster[:, None] == cluster[None, :]) / n
    stay = (1 - c) * same + c * (1 - same * n) / n
    P = np.stack([stay, np.where(cluster[:, None], stay, 1 / S)], axis=1).astype(dtype)
    R = np.repeat(np.where(cluster, -1.0, 1.0)[:, None], 2, axis=1).astype(dtype)
    rho = np.zeros(S, dtype)
    rho[0] = 1
    return MDP(P, R, rho)
