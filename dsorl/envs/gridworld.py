"""Small gridworlds from text layouts, as episodic MDPs.

    "S..#G"     S start, . free, # wall, G goal (terminal, +goal_reward on entering),
    ".#..X"     X trap (terminal, +trap_reward on entering, negative by default)

Actions: up, down, left, right. With probability `slip` the move goes in a uniformly
random direction instead; a move into a wall or off the grid stays put. Each step costs
`step_reward` (added to the expected reward `R[s, a]`). Terminal cells are absorbing
with one zero-reward action. States are the non-wall cells in row-major order; the
initial law is uniform on the `S` cells (or on all non-terminal cells if there is none).
"""
from typing import Sequence

import numpy as np

from dsorl.episodic import EpisodicMDP
from dsorl.mdp import MDP

__all__ = ["gridworld", "cell_states", "MOVES"]

MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))  # up, down, left, right


def gridworld(layout: Sequence[str], *, slip: float = 0.0, step_reward: float = 0.0,
              goal_reward: float = 1.0, trap_reward: float = -1.0,
              dtype=np.float64) -> EpisodicMDP:
    """An `EpisodicMDP` from a text `layout` (see the module docstring)."""
    rows = [str(r) for r in layout]
    if not rows or len({len(r) for r in rows}) != 1:
        raise ValueError("layout must be a non-empty list of equally long strings.")
    bad = sorted(set("".join(rows)) - set("S.#GX"))
    if bad:
        raise ValueError(f"unknown layout characters {bad}; use S . # G X.")
    if not 0 <= slip <= 1:
        raise ValueError(f"slip = {slip} must lie in [0, 1].")
    cells = [(i, j) for i, r in enumerate(rows) for j, c in enumerate(r) if c != "#"]
    index = {c: k for k, c in enumerate(cells)}
    kind = np.array([rows[i][j] for i, j in cells])
    terminal = np.isin(kind, ["G", "X"])
    if not terminal.any():
        raise ValueError("layout needs at least one terminal cell (G or X).")
    S, A = len(cells), len(MOVES)
    enter = np.where(kind == "G", goal_reward, np.where(kind == "X", trap_reward, 0.0))
    P = np.zeros((S, A, S), dtype)
    for k, (i, j) in enumerate(cells):
        if terminal[k]:
            P[k, :, k] = 1
            continue
        targets = []
        for di, dj in MOVES:
            nxt = (i + di, j + dj)
            targets.append(index.get(nxt, k))
        for a in range(A):
            P[k, a, targets[a]] += 1 - slip
            for b in range(A):
                P[k, a, targets[b]] += slip / A
    R = (P @ enter + step_reward).astype(dtype)
    R[terminal] = 0
    mask = np.ones((S, A), bool)
    mask[terminal, 1:] = False
    starts = kind == "S" if (kind == "S").any() else ~terminal
    rho = (starts / starts.sum()).astype(dtype)
    return EpisodicMDP(MDP(P, R, rho, action_mask=mask), np.zeros((S, A), dtype), terminal,
                       None)


def cell_states(layout: Sequence[str]) -> dict:
    """`{(row, col): state index}` of the non-wall cells of `layout`."""
    cells = [(i, j) for i, r in enumerate(layout) for j, c in enumerate(r) if c != "#"]
    return {c: k for k, c in enumerate(cells)}
