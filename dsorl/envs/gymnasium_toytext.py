"""Import Gymnasium toy-text environments (FrozenLake, CliffWalking, Taxi) from `P` tables.

Their `env.unwrapped.P[s][a]` lists `(probability, next_state, reward, terminated)`.
Termination is made explicit: terminated transitions go to one added absorbing state
(index S, reward 0), so the discounted value of the MDP equals the episodic return.
`R[s, a]` is the expected immediate reward. Needs the optional `gymnasium` extra only to
build the environment by name; `from_transition_table` works on any such table.
"""
import numpy as np

from dsorl.mdp import MDP

__all__ = ["from_transition_table", "from_gymnasium"]


def from_transition_table(table, initial_distribution, *, dtype=np.float64) -> MDP:
    """An MDP from a Gymnasium-style table `table[s][a] = [(p, s', r, terminated), ...]`.

    `initial_distribution[S]` is the law of the first state. One absorbing state is
    appended when any transition terminates.
    """
    states = sorted(table)
    if states != list(range(len(states))):
        raise ValueError("transition table states must be 0..S-1.")
    n_states = len(states)
    n_actions = max(len(table[s]) for s in states)
    terminates = any(t[3] for s in states for a in table[s] for t in table[s][a])
    size = n_states + int(terminates)
    P = np.zeros((size, n_actions, size))
    R = np.zeros((size, n_actions))
    mask = np.zeros((size, n_actions), bool)
    for s in states:
        for a, outcomes in table[s].items():
            mask[s, a] = True
            for prob, nxt, reward, terminated in outcomes:
                P[s, a, n_states if terminated else nxt] += prob
                R[s, a] += prob * reward
    if terminates:
        P[n_states, :, n_states] = 1.0
        mask[n_states] = True
    rho = np.zeros(size)
    rho[:n_states] = np.asarray(initial_distribution, np.float64)
    return MDP(P.astype(dtype), R.astype(dtype), rho.astype(dtype),
               None if mask.all() else mask)


def from_gymnasium(env_id: str, *, dtype=np.float64, **make_kwargs) -> MDP:
    """Build `gymnasium.make(env_id, **make_kwargs)` and import its transition table.

    E.g. `from_gymnasium("FrozenLake-v1", is_slippery=True)`, `"CliffWalking-v1"`,
    `"Taxi-v4"`. Requires `pip install dsorl[gymnasium]`.
    """
    try:
        import gymnasium
    except ImportError as err:  # optional extra
        raise ImportError("from_gymnasium needs gymnasium: pip install 'dsorl[gymnasium]'") from err
    env = gymnasium.make(env_id, **make_kwargs).unwrapped
    if not hasattr(env, "P"):
        raise ValueError(f"{env_id} has no transition table `P`: only toy-text envs import.")
    return from_transition_table(env.P, env.initial_state_distrib, dtype=dtype)
