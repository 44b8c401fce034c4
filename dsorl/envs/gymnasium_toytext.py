"""Import Gymnasium toy-text environments (FrozenLake, CliffWalking, Taxi) from `P` tables.

Their `env.unwrapped.P[s][a]` lists `(probability, next_state, reward, terminated)`.
Termination is made explicit: terminated transitions go to one added absorbing state
(index S, reward 0), so the discounted value of the MDP equals the episodic return.
`R[s, a]` is the expected immediate reward. Needs the optional `gymnasium` extra only to
build the environment by name; `from_transition_table` works on any such table.
"""
import numpy as np

from dsorl.krylov import Krylov
from dsorl.mdp import MDP
from dsorl.sparse import SparseTransitions

__all__ = ["from_transition_table", "from_gymnasium"]


def from_transition_table(table, initial_distribution, *, dtype=np.float64, sparse: bool = False,
                          krylov: Krylov = Krylov()) -> MDP:
    """An MDP from a Gymnasium-style table `table[s][a] = [(p, s', r, terminated), ...]`.

    `initial_distribution[S]` is the law of the first state. One absorbing state is
    appended when any transition terminates. `sparse=True` builds the kernel directly as a
    `dsorl.sparse.SparseTransitions` `[S, A, K]` (`K`: the longest outcome list; no dense
    `[S, A, S]` array): row `(s, a)` lists the table's outcomes in order, a repeated next
    state appearing twice (its probabilities add, as in the dense kernel), padded with the
    own state at probability 0. `krylov`: the solve settings of a sparse kernel's chains.
    """
    states = sorted(table)
    if states != list(range(len(states))):
        raise ValueError("transition table states must be 0..S-1.")
    n_states = len(states)
    n_actions = max(len(table[s]) for s in states)
    listed = [(s, a) for s in states for a in table[s]]  # available actions
    # one flat record per outcome, in table order: (s, a, position in its list, ...)
    records = [(s, a, k, prob, nxt, reward, terminated) for s, a in listed
               for k, (prob, nxt, reward, terminated) in enumerate(table[s][a])]
    if not records:
        raise ValueError("the transition table lists no outcome.")
    src, act, pos, prob, nxt, reward, ends = (np.array(x) for x in zip(*records))
    src, act, pos, nxt = (x.astype(np.int64) for x in (src, act, pos, nxt))
    prob, reward, ends = prob.astype(np.float64), reward.astype(np.float64), ends.astype(bool)
    terminates = bool(ends.any())
    size = n_states + int(terminates)
    nxt = np.where(ends, n_states, nxt)
    R = np.zeros((size, n_actions))
    np.add.at(R, (src, act), prob * reward)  # sequential in table order, as a loop adds
    mask = np.zeros((size, n_actions), bool)
    mask[tuple(np.array(listed).T)] = True
    if terminates:
        mask[n_states] = True
    if sparse:
        K = int(pos.max()) + 1
        successors = np.repeat(np.arange(size, dtype=np.int32), n_actions * K).reshape(
            size, n_actions, K)  # padding: the own state, probability 0
        probs = np.zeros((size, n_actions, K))
        successors[src, act, pos] = nxt
        probs[src, act, pos] = prob
        if terminates:
            probs[n_states, :, 0] = 1.0  # the absorbing state (successor: itself)
        P = SparseTransitions(successors, probs.astype(dtype), krylov=krylov, dtype=dtype)
    else:
        P = np.zeros((size, n_actions, size))
        np.add.at(P, (src, act, nxt), prob)
        if terminates:
            P[n_states, :, n_states] = 1.0
        P = P.astype(dtype)
    rho = np.zeros(size)
    rho[:n_states] = np.asarray(initial_distribution, np.float64)
    return MDP(P, R.astype(dtype), rho.astype(dtype), None if mask.all() else mask)


def from_gymnasium(env_id: str, *, dtype=np.float64, sparse: bool = False,
                   krylov: Krylov = Krylov(), **make_kwargs) -> MDP:
    """Build `gymnasium.make(env_id, **make_kwargs)` and import its transition table.

    E.g. `from_gymnasium("FrozenLake-v1", is_slippery=True)`, `"CliffWalking-v1"`,
    `"Taxi-v4"`; `sparse=True` gives a sparse kernel (see `from_transition_table`).
    Requires `pip install dsorl[gymnasium]`.
    """
    try:
        import gymnasium
    except ImportError as err:  # optional extra
        raise ImportError("from_gymnasium needs gymnasium: pip install 'dsorl[gymnasium]'") from err
    env = gymnasium.make(env_id, **make_kwargs).unwrapped
    if not hasattr(env, "P"):
        raise ValueError(f"{env_id} has no transition table `P`: only toy-text envs import.")
    return from_transition_table(env.P, env.initial_state_distrib, dtype=dtype,
                                 sparse=sparse, krylov=krylov)
