"""Episodic MDPs with per-state action sets, and the Sutton-extended MDP of the DynPG paper.

An episodic MDP (`dsorl.episodic.EpisodicMDP`, re-exported here) is a `dsorl.MDP` whose
terminal states are absorbing with a single allowed zero-reward action (the MDP container
needs at least one action per state), plus the standard deviations `reward_std[S, A]` of
Gaussian reward noise that `dsorl.sampling` (`rollout`, `sample_episode`) adds to the rewards
`R[s, a]`; the algorithms take it as their problem.

Sutton-extended (Klein, Zhang, Başar, Weissmann, Döring, "Structure Matters: Dynamic
Policy Gradient", arXiv 2411.04913, the experiment of its public code) extends the
maximisation-bias example of Sutton & Barto (2018, Example 6.7):

    state 1: 300 actions, each -> terminal 0, reward ~ Normal(-0.75, 10)
    state 2: action 0 -> 1, action 1 -> terminal 3, action 2 -> 4, reward 0
    state 4: 5 actions, each -> 5, reward ~ Normal(1.25, 1.25)
    state 5: 5 actions, each -> terminal 6, reward ~ Normal(1.25, 1.25)

States 0, 3, 6 are terminal; episodes start uniformly in 1, 2, 4 or 5. The optimal policy
takes action 2 in state 2. Facts and reference values are carried here from the authors'
configuration (see `SUTTON_EXTENDED`).
"""
from typing import Mapping, Optional, Sequence

import numpy as np

from dsorl.episodic import EpisodicMDP  # the container (re-exported here)
from dsorl.mdp import MDP

__all__ = ["episodic_mdp", "longest_episode", "SUTTON_EXTENDED", "sutton_extended",
           "sutton_extended_reference"]


def episodic_mdp(actions_per_state: Sequence[int], terminal_states: Sequence[int],
                 successors: Mapping[int, Sequence[Mapping[int, float]]],
                 reward_mean: Mapping[int, Sequence[float]],
                 reward_std: Optional[Mapping[int, Sequence[float]]] = None,
                 initial_states: Optional[Sequence[int]] = None,
                 dtype=np.float64) -> EpisodicMDP:
    """Build an `EpisodicMDP` from per-state action lists.

    `actions_per_state[s]`: the number of available actions of state `s` (0 for terminal
    states, which get one absorbing zero-reward action); `successors[s][a]`: a mapping
    `next_state -> probability` for each available action of each non-terminal state;
    `reward_mean[s][a]`, `reward_std[s][a]` (default 0): the Gaussian reward of `(s, a)`.
    The initial law is uniform over `initial_states` (default: all non-terminal states).
    Raises `ValueError` when a non-terminal state has no action, a terminal state has
    actions, or a table does not match `actions_per_state`.
    """
    counts = np.asarray(actions_per_state, int)
    S = counts.size
    terminal = np.zeros(S, bool)
    terminal[list(terminal_states)] = True
    for s in range(S):
        if counts[s] < 0:
            raise ValueError(f"actions_per_state[{s}] = {counts[s]} is negative.")
        if counts[s] == 0 and not terminal[s]:
            raise ValueError(f"state {s} is not terminal but has no available action: an"
                             " action mask may only empty terminal states.")
        if counts[s] > 0 and terminal[s]:
            raise ValueError(f"terminal state {s} has {counts[s]} actions; terminal states"
                             " take none (they get one absorbing action).")
    A = max(1, int(counts.max()))
    P = np.zeros((S, A, S), dtype)
    R = np.zeros((S, A), dtype)
    std = np.zeros((S, A), dtype)
    mask = np.zeros((S, A), bool)
    for s in range(S):
        if terminal[s]:
            P[s, 0, s], mask[s, 0] = 1, True
            continue
        n = counts[s]
        rows = _table(successors, s, n, "successors")
        means = _table(reward_mean, s, n, "reward_mean")
        stds = _table(reward_std, s, n, "reward_std") if reward_std is not None else [0] * n
        for a in range(n):
            for s_next, p in rows[a].items():
                P[s, a, s_next] += p
        R[s, :n], std[s, :n], mask[s, :n] = means, stds, True
    if np.any(std < 0):
        s, a = np.argwhere(std < 0)[0]
        raise ValueError(f"reward_std[{s}][{a}] = {std[s, a]} is negative.")
    starts = np.flatnonzero(~terminal) if initial_states is None else np.asarray(initial_states)
    rho = np.zeros(S, dtype)
    rho[starts] = 1 / len(starts)
    mdp = MDP(P, R, rho, action_mask=mask)
    return EpisodicMDP(mdp, std, terminal, longest_episode(P, mask, terminal))


def longest_episode(P, mask, terminal) -> Optional[int]:
    """Most steps any policy can take before absorption, or None if it can cycle forever.

    Host-side: a longest path in the graph of transitions with positive probability
    between non-terminal states (None when that graph has a cycle).
    """
    P, mask, terminal = np.asarray(P), np.asarray(mask, bool), np.asarray(terminal, bool)
    edges = np.any((P > 0) & mask[..., None], axis=1) & ~terminal[:, None]
    edges &= ~terminal[None, :]
    live = list(np.flatnonzero(~terminal))
    depth = {}  # steps until absorption, computed leaves first

    def visit(s, path):
        if s in depth:
            return depth[s]
        if s in path:
            raise _Cycle
        path.add(s)
        nxt = [visit(t, path) for t in np.flatnonzero(edges[s])]
        path.discard(s)
        depth[s] = 1 + max(nxt, default=0)
        return depth[s]

    try:
        return max((visit(s, set()) for s in live), default=0)
    except _Cycle:
        return None


class _Cycle(Exception):
    pass


def _table(table, s, n, name):
    if s not in table and str(s) not in table:
        raise ValueError(f"{name} has no entry for non-terminal state {s}.")
    row = list(table[s] if s in table else table[str(s)])
    if len(row) != n:
        raise ValueError(f"{name}[{s}] has {len(row)} entries for {n} available actions.")
    return row


# Facts of the authors' experiment (Klein et al., arXiv 2411.04913, public code's config):
# the environment, the schedule of DynPG, the REINFORCE baseline and exact reference values
# (V* by backward induction on the mean rewards; the uniform policy's mean value).
SUTTON_EXTENDED = dict(
    actions_per_state=(0, 300, 3, 0, 5, 5, 0),
    terminal_states=(0, 3, 6),
    initial_states=(1, 2, 4, 5),
    reward_mean={1: -0.75, 2: 0.0, 4: 1.25, 5: 1.25},
    reward_std={1: 10.0, 2: 0.0, 4: 1.25, 5: 1.25},
    experiment=dict(gammas=(0.99, 0.9), epsilon=0.01, interaction_budget=1200, runs=2000,
                    steps_coefficient=45.0, reinforce_step_horizon=6),
    reference={
        0.99: dict(v_star={1: -0.75, 2: 2.462625, 4: 2.4875, 5: 1.25},
                   mean_v_star=1.36253125, mean_v_uniform=0.890219),
        0.9: dict(v_star={1: -0.75, 2: 2.1375, 4: 2.375, 5: 1.25},
                  mean_v_star=1.253125, mean_v_uniform=0.840625),
    },
)


def sutton_extended(dtype=np.float64) -> EpisodicMDP:
    """The Sutton-extended MDP of Klein et al. (arXiv 2411.04913, experiments): 7 states,
    up to 300 actions (masked per state), Gaussian rewards; `rho` uniform on {1, 2, 4, 5}."""
    facts = SUTTON_EXTENDED
    counts = facts["actions_per_state"]
    successors = {1: [{0: 1.0}] * counts[1],
                  2: [{1: 1.0}, {3: 1.0}, {4: 1.0}],
                  4: [{5: 1.0}] * counts[4],
                  5: [{6: 1.0}] * counts[5]}
    mean = {s: [m] * counts[s] for s, m in facts["reward_mean"].items()}
    std = {s: [d] * counts[s] for s, d in facts["reward_std"].items()}
    return episodic_mdp(counts, facts["terminal_states"], successors, mean, std,
                        facts["initial_states"], dtype)


def sutton_extended_reference(gamma: float) -> dict:
    """The reference values of the authors' experiment for `gamma` in {0.99, 0.9}:
    `v_star` (by state), `mean_v_star` and `mean_v_uniform` (means over the initial states)."""
    ref = SUTTON_EXTENDED["reference"]
    if gamma not in ref:
        raise ValueError(f"reference values exist for gamma in {sorted(ref)}, not {gamma}.")
    return ref[gamma]
