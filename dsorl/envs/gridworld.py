"""Small gridworlds from text layouts, as episodic MDPs.

    "S..#G"     S start, . free, # wall, G goal (terminal, +goal_reward on entering),
    ".#..X"     X trap (terminal, +trap_reward on entering, negative by default)

Actions: up, down, left, right. With probability `slip` the move goes in a uniformly
random direction instead; a move into a wall or off the grid stays put. Each step costs
`step_reward` (added to the expected reward `R[s, a]`). Terminal cells are absorbing
with one zero-reward action. States are the non-wall cells in row-major order; the
initial law is uniform on the `S` cells (or on all non-terminal cells if there is none).

`large_gridworld` builds the same dynamics on an `n x n` grid (up to `n = 1000`, 10^6 states)
as a sparse kernel (`dsorl.sparse.SparseTransitions`, 4 entries a row: one per direction),
vectorised over cells, with walls from an array or a random density and, by default, goals
that reset to the start so that (with slip > 0) every policy's chain is unichain and its
gain and bias are defined.
"""
from typing import Optional, Sequence, Union

import jax
import numpy as np
import scipy.ndimage

from dsorl.episodic import EpisodicMDP
from dsorl.krylov import Krylov
from dsorl.mdp import MDP
from dsorl.sparse import SparseTransitions

__all__ = ["gridworld", "cell_states", "large_gridworld", "MOVES"]

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


def large_gridworld(n: int, *, slip: float = 0.1, walls=None, key: Optional[jax.Array] = None,
                    goals=None, starts=None, step_reward: float = 0.0, goal_reward: float = 1.0,
                    episodic: bool = False, return_cells: bool = False, dtype=np.float64,
                    krylov: Krylov = Krylov()) -> Union[MDP, EpisodicMDP, tuple]:
    """An `n x n` gridworld with a sparse kernel: `MDP` (goals reset) or `EpisodicMDP`.

    Cells `(row, col)`, `0 <= row, col < n`; the states are the non-wall cells in row-major
    order (walls are not states), as in `gridworld`. Actions up, down, left, right
    (`MOVES`); the intended direction is taken with probability `1 - slip`, and with
    probability `slip` a uniformly random one of the four (so direction `b` has probability
    `(1 - slip) [a = b] + slip / 4`); a move off the grid or into a wall stays put. Each step
    from a non-goal cell pays `step_reward`, entering a goal pays `goal_reward` (in the
    expected reward `R[s, a]`). The initial law `rho` is uniform on the start cells.

    Goals: with `episodic=False` (default) every action in a goal moves to the start law
    `rho` with reward 0 (a reset step), so the MDP is recurrent: with `slip > 0` every
    direction has probability `>= slip / 4`, each cell reaches a goal with positive
    probability, hence almost surely, and every policy's chain has the one recurrent class
    through the starts (unichain; gain and bias are defined). With `slip = 0` a
    deterministic policy can walk into a wall forever: some chains are then multichain.
    With `episodic=True` the goals are absorbing with one zero-reward action (the others
    masked), exactly as in `gridworld`, and an `EpisodicMDP` is returned.

    Walls: `None` (none), a boolean `[n, n]` array, or a density `d in [0, 1)`: each cell
    is a wall with probability `d`, drawn with `jax.random.uniform(key, (n, n)) < d`
    (`key` required), starts and goals kept free. Free cells cut off from every goal (4-
    neighbour connectivity) would be closed classes (multichain) or states no episode
    visits: random walls fill them in (a start cut off raises `ValueError`: lower `d` or
    change `key`: a corner start or goal has two neighbours and is often boxed in, for 2
    of 20 keys at `d = 0.2` and 10 of 20 at `d = 0.3` (`n = 300`); past the site-
    percolation threshold, `d` about 0.41, most of a large grid is cut off); an explicit
    wall array is taken as given, and with `episodic=False` a cut-off cell raises
    `ValueError`.

    `goals` / `starts`: a boolean `[n, n]` array or a sequence of `(row, col)` cells;
    defaults: the corner `(n - 1, n - 1)` / the corner `(0, 0)`. Disjoint, on free cells.

    Kernel: `SparseTransitions` `[S, 4, K]` with `successors[s, a, b]` the cell direction
    `b` leads to (repeats allowed: a wall side points at `s` itself) and `probs[s, a, b]`
    the law above; `K = 4`, or, with resetting goals, the number of start cells if larger
    (a goal's row spreads over the starts). At `n = 1000`: 64 MB of successors, 128 MB of
    float64 probabilities; built in 0.6 s (0.8 s with random walls) on the 2-core CPU.
    `krylov`: the solve settings of the chains it induces. `return_cells=True` also returns
    `cells[S, 2]` (int32 `(row, col)` of each state).
    """
    n = _check_size(n)
    if not 0 <= float(slip) <= 1:
        raise ValueError(f"slip = {slip} must lie in [0, 1].")
    for name, value in (("step_reward", step_reward), ("goal_reward", goal_reward)):
        if not np.isfinite(value):
            raise ValueError(f"{name} = {value} must be finite.")
    goal = _cell_set("goals", goals, n, (n - 1, n - 1))
    start = _cell_set("starts", starts, n, (0, 0))
    both = np.argwhere(goal & start)
    if both.size:
        raise ValueError(f"cell {tuple(int(i) for i in both[0])} is both a start and a goal.")
    free = _free_cells(n, walls, key, goal, start, must_connect=not episodic)

    # state index of every cell (-1 on walls); a neighbour off the grid or on a wall is -1
    S = int(free.sum())
    index = np.full((n + 2, n + 2), -1, np.int32)
    index[1:-1, 1:-1][free] = np.arange(S, dtype=np.int32)
    own = index[1:-1, 1:-1][free]
    targets = np.empty((S, len(MOVES)), np.int32)
    for b, (di, dj) in enumerate(MOVES):  # four directions, each vectorised over the cells
        neighbour = index[1 + di:1 + di + n, 1 + dj:1 + dj + n][free]
        targets[:, b] = np.where(neighbour >= 0, neighbour, own)
    is_goal, start_states = goal[free], index[1:-1, 1:-1][start]

    A = len(MOVES)
    K = A if episodic else max(A, start_states.size)
    direction = (1 - slip) * np.eye(A) + slip / A  # [a, b]: law of the direction taken
    successors = np.empty((S, A, K), np.int32)
    successors[:, :, :A] = targets[:, None, :]
    successors[:, :, A:] = own[:, None, None]  # padding: the own state, probability 0
    probs = np.zeros((S, A, K), dtype)
    probs[:, :, :A] = direction
    enter = np.where(is_goal, goal_reward, 0.0)
    R = np.einsum("sab,sb->sa", probs[:, :, :A], enter[targets]) + step_reward
    goal_states = np.flatnonzero(is_goal)
    R[goal_states] = 0
    successors[goal_states] = goal_states[:, None, None]
    probs[goal_states] = 0
    if episodic:  # absorbing, as `gridworld`: every row a self-loop, one action allowed
        probs[goal_states, :, 0] = 1
    else:  # reset: every action moves to the start law
        successors[goal_states, :, :start_states.size] = start_states
        probs[goal_states, :, :start_states.size] = 1 / start_states.size
    rho = np.zeros(S, dtype)
    rho[start_states] = 1 / start_states.size
    P = SparseTransitions(successors, probs, krylov=krylov, dtype=dtype)
    R = R.astype(dtype)
    if episodic:
        mask = np.ones((S, A), bool)
        mask[goal_states, 1:] = False
        result = EpisodicMDP(MDP(P, R, rho, action_mask=mask), np.zeros((S, A), dtype), is_goal,
                             None)
    else:
        result = MDP(P, R, rho)
    if return_cells:
        return result, np.argwhere(free).astype(np.int32)
    return result


def _check_size(n) -> int:
    # n^2 states must be int32 indices (the sparse kernel's successors)
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 2 <= n <= 46_340:
        raise ValueError(f"n = {n!r} must be an integer in [2, 46340] (an n x n grid).")
    return int(n)


def _cell_set(name: str, value, n: int, default) -> np.ndarray:
    """A boolean `[n, n]` from a boolean array or a sequence of `(row, col)` cells."""
    if value is None:
        value = [default]
    array = np.asarray(value)
    if array.dtype == bool:
        if array.shape != (n, n):
            raise ValueError(f"{name} must be a boolean [{n}, {n}] array or (row, col) cells,"
                             f" got a boolean array of shape {array.shape}.")
        cells = array
    else:
        if array.shape == (2,):  # one (row, col) cell
            array = array[None]
        if array.ndim != 2 or array.shape[1] != 2 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{name} must be a boolean [{n}, {n}] array or a sequence of"
                             f" integer (row, col) cells, got {value!r}.")
        bad = np.argwhere((array < 0) | (array >= n))
        if bad.size:
            raise ValueError(f"{name} cell {tuple(int(i) for i in array[bad[0, 0]])} lies off"
                             f" the {n} x {n} grid.")
        cells = np.zeros((n, n), bool)
        cells[array[:, 0], array[:, 1]] = True
    if not cells.any():
        raise ValueError(f"{name} must hold at least one cell.")
    return cells


def _free_cells(n, walls, key, goal, start, must_connect: bool) -> np.ndarray:
    """The non-wall cells `[n, n]`: walls drawn or given, then checked or filled so that
    every free cell reaches a goal (see `large_gridworld`)."""
    drawn = walls is not None and np.ndim(walls) == 0
    if drawn:
        density = walls
        if not (isinstance(density, (float, int, np.floating, np.integer))
                and 0 <= density < 1):
            raise ValueError(f"wall density = {density!r} must lie in [0, 1).")
        if key is None:
            raise ValueError("a random wall density needs an explicit jax.random `key`.")
        wall = np.asarray(jax.random.uniform(key, (n, n)) < density) & ~goal & ~start
    else:
        if key is not None:
            raise ValueError("`key` draws random walls: pass walls as a density in [0, 1).")
        wall = np.zeros((n, n), bool) if walls is None else np.asarray(walls)
        if wall.shape != (n, n) or wall.dtype != bool:
            raise ValueError(f"walls must be None, a density in [0, 1) or a boolean [{n}, {n}]"
                             f" array, got {wall.dtype} {wall.shape}.")
        for name, cells in (("goal", goal), ("start", start)):
            bad = np.argwhere(wall & cells)
            if bad.size:
                raise ValueError(f"{name} cell {tuple(int(i) for i in bad[0])} is a wall.")
    free = ~wall
    # 4-neighbour components (ndimage's default cross structure) that hold a goal
    labels, _ = scipy.ndimage.label(free)
    connected = np.isin(labels, np.unique(labels[goal])) & free
    cut_off = free & ~connected
    if not cut_off.any():
        return free
    if drawn:
        lost = np.argwhere(start & cut_off)
        if lost.size:
            raise ValueError(f"start cell {tuple(int(i) for i in lost[0])} is cut off from every"
                             f" goal by the random walls (density {walls}); lower the density"
                             " or change the key.")
        return connected
    if must_connect:
        cell = tuple(int(i) for i in np.argwhere(cut_off)[0])
        raise ValueError(f"free cell {cell} is cut off from every goal by the walls: with goals"
                         " that reset (episodic=False) it would form a closed class (a"
                         " multichain MDP); wall it in or use episodic=True.")
    return free
