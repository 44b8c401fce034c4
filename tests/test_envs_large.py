"""Large sparse environments: the N x N gridworld, the sparse garnet, sparse toy-text imports.

References are independent of the code under test: the dense layout-based `gridworld`, the
dense Gymnasium import, closed-form laws of the garnet draw, graph searches.
"""
import importlib

import jax
import numpy as np
import pytest
import scipy.sparse.csgraph
import scipy.stats

import dsorl
from dsorl import envs, markov
from dsorl.envs.garnet import sparse_garnet
from dsorl.envs.gridworld import MOVES, gridworld, large_gridworld
from dsorl.krylov import Krylov
from dsorl.mdp import induced_chain
from dsorl.sparse import is_sparse

LAYOUT = ["S..#.",
          ".#...",
          "...#G",
          "#....",
          "..#.."]


def _layout_cells(layout):
    grid = np.array([list(row) for row in layout])
    return dict(walls=grid == "#", goals=grid == "G", starts=grid == "S")


# -- large_gridworld -------------------------------------------------------------------------


@pytest.mark.parametrize("slip", [0.0, 0.3, 1.0])
def test_large_gridworld_episodic_equals_layout_gridworld(slip):
    """With absorbing goals the sparse constructor is the dense `gridworld` of the layout:
    the same kernel, rewards, initial law, mask and terminal set."""
    kw = dict(slip=slip, step_reward=-0.1, goal_reward=2.0)
    dense = gridworld(LAYOUT, **kw)
    large = large_gridworld(5, episodic=True, **_layout_cells(LAYOUT), **kw)
    assert isinstance(large, dsorl.episodic.EpisodicMDP) and is_sparse(large.mdp.P)
    assert large.mdp.P.fan_out == 4
    np.testing.assert_allclose(large.mdp.P.to_dense(), dense.mdp.P, rtol=0, atol=1e-15)
    np.testing.assert_allclose(large.mdp.R, dense.mdp.R, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(large.mdp.rho, dense.mdp.rho)
    np.testing.assert_array_equal(large.mdp.action_mask, dense.mdp.action_mask)
    np.testing.assert_array_equal(large.terminal, dense.terminal)


def test_large_gridworld_reset_differs_from_layout_only_on_goal_rows():
    """Default (reset) goals: every non-goal row and every reward equal the dense layout's;
    each action in the goal moves to the start with probability 1; no mask."""
    kw = dict(slip=0.2, step_reward=-0.5, goal_reward=3.0)
    dense = gridworld(LAYOUT, **kw)
    large, cells = large_gridworld(5, return_cells=True, **_layout_cells(LAYOUT), **kw)
    assert isinstance(large, dsorl.MDP) and large.action_mask is None
    P, goal = np.asarray(large.P.to_dense()), np.asarray(dense.terminal)
    np.testing.assert_allclose(P[~goal], np.asarray(dense.mdp.P)[~goal], rtol=0, atol=1e-15)
    np.testing.assert_allclose(large.R, dense.mdp.R, rtol=0, atol=1e-15)
    start = dsorl.envs.gridworld.cell_states(LAYOUT)[(0, 0)]
    np.testing.assert_array_equal(P[goal], np.eye(P.shape[0])[start][None, None].repeat(4, 1))
    np.testing.assert_array_equal(cells, sorted(dsorl.envs.gridworld.cell_states(LAYOUT)))


def test_large_gridworld_moves_and_slip_by_hand():
    """An open 3 x 3 grid, centre cell 4: action a goes to its neighbour with 1 - slip +
    slip/4 and to each other neighbour with slip/4; a corner's wall sides stay put."""
    slip = 0.4
    P = np.asarray(large_gridworld(3, slip=slip, goals=[(2, 2)]).P.to_dense())
    neighbours = {0: 1, 1: 7, 2: 3, 3: 5}  # up, down, left, right of cell (1, 1)
    for a, target in neighbours.items():
        expected = np.zeros(9)
        for b, other in neighbours.items():
            expected[other] += (1 - slip) * (a == b) + slip / 4
        np.testing.assert_allclose(P[4, a], expected, rtol=1e-15)
    # corner (0, 0): up and left hit the edge, so "up" stays with 1 - slip + slip/2
    np.testing.assert_allclose(P[0, 0, 0], 1 - slip + slip / 2, rtol=1e-15)
    assert MOVES[0] == (-1, 0)


def test_large_gridworld_reset_is_unichain_for_random_policies():
    """Random walls, several starts and goals: every sampled deterministic and stochastic
    policy's chain has one closed class, and the sparse gain agrees with the dense one."""
    key = jax.random.key(3)
    mdp = large_gridworld(12, slip=0.1, walls=0.3, key=key, goals=[(11, 11), (0, 11)],
                          starts=[(0, 0), (11, 0), (5, 5)], step_reward=-0.01)
    assert mdp.P.fan_out == 4
    dense = dsorl.MDP(mdp.P.to_dense(), mdp.R, mdp.rho)
    rng = np.random.default_rng(0)
    for trial in range(4):
        if trial < 2:
            pi = np.eye(4)[rng.integers(0, 4, mdp.n_states)]
        else:
            pi = rng.dirichlet(np.ones(4), mdp.n_states)
        chain = induced_chain(mdp, pi)
        assert bool(markov.is_unichain(chain))
        np.testing.assert_allclose(markov.gain(chain), markov.gain(induced_chain(dense, pi)),
                                   rtol=1e-8)
    # without slip, "always up" keeps every top-row cell in place: the docstring's caveat
    no_slip = large_gridworld(12, slip=0.0)
    up = np.eye(4)[np.zeros(no_slip.n_states, int)]
    assert not bool(markov.is_unichain(induced_chain(no_slip, up)))


def test_large_gridworld_random_walls_fill_cut_off_cells():
    """Random walls follow the documented draw `uniform(key, (n, n)) < d` with the start and
    goal kept free; the key determines the grid; free cells cut off from the goal are
    filled in (some are, for this key), every remaining cell reaches the goal."""
    n, density = 30, 0.25

    def build(seed):
        return large_gridworld(n, walls=density, key=jax.random.key(seed), return_cells=True)
    (mdp, cells), (again, cells_again), (_, other) = build(4), build(4), build(5)
    np.testing.assert_array_equal(cells, cells_again)
    np.testing.assert_array_equal(mdp.P.successors, again.P.successors)
    assert not np.array_equal(cells, other)
    drawn_free = ~np.array(jax.random.uniform(jax.random.key(4), (n, n)) < density)
    drawn_free[0, 0] = drawn_free[n - 1, n - 1] = True
    kept = np.zeros((n, n), bool)
    kept[cells[:, 0], cells[:, 1]] = True
    assert not (kept & ~drawn_free).any() and (drawn_free & ~kept).sum() > 0
    goal = int(np.flatnonzero(np.all(cells == (n - 1, n - 1), axis=1))[0])
    # the states that reach the goal: a search from it along reversed edges
    reaching = scipy.sparse.csgraph.breadth_first_order(mdp.P.support().T.tocsr(), goal,
                                                        directed=True, return_predecessors=False)
    assert reaching.size == mdp.n_states
    assert kept[0, 0] and float(mdp.rho[0]) == 1.0


def test_large_gridworld_sizes():
    mdp = large_gridworld(100, slip=0.05)
    assert mdp.n_states == 10_000 and mdp.P.shape == (10_000, 4, 10_000)
    assert mdp.P.successors.dtype == np.int32 and float(mdp.rho[0]) == 1.0
    v = markov.discounted_value(induced_chain(mdp, np.full((10_000, 4), 0.25)), 0.9)
    assert np.isfinite(v).all()


def test_large_gridworld_float32_and_many_starts():
    starts = [(0, j) for j in range(6)]
    mdp = large_gridworld(6, starts=starts, dtype=np.float32)
    assert mdp.P.dtype == np.float32 and mdp.P.fan_out == 6  # a reset row over 6 starts
    np.testing.assert_allclose(mdp.rho[:6], 1 / 6, rtol=1e-7)
    goal = mdp.n_states - 1
    np.testing.assert_allclose(mdp.P.to_dense()[goal, 2, :6], 1 / 6, rtol=1e-7)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=1), "n = 1 must be an integer"),
    (dict(n=4.0), "n = 4.0 must be an integer"),
    (dict(n=4, slip=1.5), "slip = 1.5"),
    (dict(n=4, slip=-0.1), "slip = -0.1"),
    (dict(n=4, walls=0.2), "needs an explicit jax.random `key`"),
    (dict(n=4, walls=1.0, key=jax.random.key(0)), "wall density = 1.0"),
    (dict(n=4, walls=np.zeros((3, 3), bool)), "boolean \\[4, 4\\]"),
    (dict(n=4, key=jax.random.key(0)), "`key` draws random walls"),
    (dict(n=4, goals=[(4, 0)]), "goals cell \\(4, 0\\) lies off"),
    (dict(n=4, goals=np.zeros((4, 4), bool)), "goals must hold at least one cell"),
    (dict(n=4, starts=[(3, 3)]), "cell \\(3, 3\\) is both a start and a goal"),
    (dict(n=4, walls=np.eye(4, dtype=bool)[::-1]), "free cell \\(0, 0\\) is cut off"),
    (dict(n=3, walls=np.arange(9).reshape(3, 3) == 0), "start cell \\(0, 0\\) is a wall"),
    (dict(n=3, walls=np.arange(9).reshape(3, 3) == 8), "goal cell \\(2, 2\\) is a wall"),
    (dict(n=4, step_reward=np.nan), "step_reward = nan"),
])
def test_large_gridworld_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        large_gridworld(**kwargs)


def test_large_gridworld_cut_off_cells_kept_when_episodic_or_filled_when_drawn():
    walls = np.zeros((4, 4), bool)
    walls[1, :3] = walls[0, 2] = True  # cells (0, 0) and (0, 1) enclosed
    with pytest.raises(ValueError, match="free cell"):
        large_gridworld(4, walls=walls, starts=[(3, 0)])
    env = large_gridworld(4, walls=walls, starts=[(3, 0)], episodic=True)
    assert env.mdp.n_states == 16 - 4  # the pocket stays, as in `gridworld`
    with pytest.raises(ValueError, match="cut off from every goal by the random walls"):
        # density 0.9 walls in the start's neighbours (its key fixed: the draw is checked)
        large_gridworld(20, walls=0.9, key=jax.random.key(0))


# -- sparse_garnet ---------------------------------------------------------------------------


def test_sparse_garnet_structure_and_key():
    """Shapes, K distinct in-range successors a pair, rows summing to 1, rewards in [0, 1),
    uniform rho; the key determines the MDP, another key differs; jit + vmap over keys give
    the eager draws."""
    S, A, K = 2000, 2, 5  # the sizes of the next test: one compilation
    mdp = sparse_garnet(jax.random.key(0), S, A, K)
    succ, probs = np.asarray(mdp.P.successors), np.asarray(mdp.P.probs)
    assert mdp.P.shape == (S, A, S) and succ.shape == probs.shape == (S, A, K)
    assert succ.dtype == np.int32 and succ.min() >= 0 and succ.max() < S
    assert (np.diff(np.sort(succ, axis=-1), axis=-1) > 0).all()  # distinct
    assert (probs > 0).all()
    np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-14)
    R = np.asarray(mdp.R)
    assert R.shape == (S, A) and (R >= 0).all() and (R < 1).all()
    np.testing.assert_array_equal(mdp.rho, np.full(S, 1 / S))
    again = sparse_garnet(jax.random.key(0), S, A, K)
    np.testing.assert_array_equal(again.P.successors, succ)
    np.testing.assert_array_equal(again.P.probs, probs)
    other = sparse_garnet(jax.random.key(1), S, A, K)
    assert not np.array_equal(other.P.successors, succ)
    keys = jax.random.split(jax.random.key(2), 2)
    batch = jax.jit(jax.vmap(lambda k: sparse_garnet(k, S, A, K)))(keys)
    assert batch.P.successors.shape == (2, S, A, K)
    one = sparse_garnet(keys[1], S, A, K)
    np.testing.assert_array_equal(batch.P.successors[1], one.P.successors)
    np.testing.assert_allclose(batch.P.probs[1], one.P.probs, rtol=1e-15)


def test_sparse_garnet_successor_sets_are_uniform():
    """Floyd's draw gives every K-subset of the S states the same probability: with S = 6,
    K = 3 the 20 subsets over 24000 pairs pass a chi-square test, and so do the 6 states'
    frequencies (each is a successor of a pair with probability K / S)."""
    S, A, K = 6, 4000, 3
    succ = np.sort(np.asarray(sparse_garnet(jax.random.key(5), S, A, K).P.successors),
                   axis=-1).reshape(-1, K)
    codes = (1 << succ).sum(-1)  # a subset as a bit mask
    _, counts = np.unique(codes, return_counts=True)
    assert counts.size == 20  # C(6, 3)
    assert scipy.stats.chisquare(counts).pvalue > 1e-3
    assert scipy.stats.chisquare(np.bincount(succ.ravel(), minlength=S)).pvalue > 1e-3


def test_sparse_garnet_probabilities_are_uniform_on_the_simplex():
    """Each entry of a Dirichlet(1, ..., 1) row is Beta(1, K - 1) (Kolmogorov-Smirnov), the
    same law as the dense garnet's gaps of sorted uniforms; rewards are U[0, 1)."""
    S, A, K = 2000, 2, 5
    mdp = sparse_garnet(jax.random.key(7), S, A, K)
    probs = np.asarray(mdp.P.probs).reshape(-1, K)
    for k in range(K):
        assert scipy.stats.kstest(probs[:, k], scipy.stats.beta(1, K - 1).cdf).pvalue > 1e-3
    dense = np.asarray(envs.garnet(jax.random.key(7), 200, 2, K).P).reshape(-1, 200)
    dense_entries = dense[dense > 0]
    assert scipy.stats.ks_2samp(probs.ravel(), dense_entries).pvalue > 1e-3
    assert scipy.stats.kstest(np.asarray(mdp.R).ravel(), "uniform").pvalue > 1e-3


def test_sparse_garnet_extreme_branching_and_float32():
    """Edge cases: branching = n_states (every state a successor, a valid dense MDP) and
    branching = 1 (probability 1, where E / E could be 0 / 0); float32 follows dtype."""
    full = sparse_garnet(jax.random.key(4), 50, 3, 50)
    np.testing.assert_array_equal(np.sort(full.P.successors, -1),
                                  np.broadcast_to(np.arange(50), (50, 3, 50)))
    dsorl.MDP(full.P.to_dense(), full.R, full.rho)  # passes the dense validation
    single = sparse_garnet(jax.random.key(4), 50, 3, 1, dtype=np.float32)
    assert single.P.dtype == np.float32 and (np.asarray(single.P.probs) == 1).all()


def test_sparse_garnet_draws_by_blocks(monkeypatch):
    """Large S is drawn block by block (the last block overlapping the one before): with a
    block of 64 states, S = 150 takes three blocks; every row is a valid draw of the law,
    the blocks are different draws, and the key still determines the MDP."""
    # the module (`dsorl.envs.garnet` the attribute is the dense constructor)
    monkeypatch.setattr(importlib.import_module("dsorl.envs.garnet"), "_BLOCK_STATES", 64)
    S, A, K = 150, 3, 4
    mdp = sparse_garnet(jax.random.key(9), S, A, K)
    succ, probs = np.asarray(mdp.P.successors), np.asarray(mdp.P.probs)
    assert (np.diff(np.sort(succ, axis=-1), axis=-1) > 0).all() and (probs > 0).all()
    np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-14)
    assert not np.array_equal(succ[:64], succ[64:128])
    assert not np.array_equal(succ[64:128], succ[86:150])  # the last block: rows 86..149
    np.testing.assert_array_equal(sparse_garnet(jax.random.key(9), S, A, K).P.successors,
                                  succ)


@pytest.mark.parametrize("args, match", [
    ((5, 2, 6), "branching = 6 must lie in \\[1, n_states = 5\\]"),
    ((5, 2, 0), "branching = 0 must be an integer >= 1"),
    ((0, 2, 1), "n_states = 0 must be an integer >= 1"),
    ((5, 0, 1), "n_actions = 0 must be an integer >= 1"),
    ((5.0, 2, 1), "n_states = 5.0 must be an integer"),
    ((2 ** 31, 1, 1), "exceeds the int32"),
])
def test_sparse_garnet_rejects_bad_sizes(args, match):
    with pytest.raises(ValueError, match=match):
        sparse_garnet(jax.random.key(0), *args)


# -- sparse Gymnasium toy-text imports -------------------------------------------------------


def _assert_same_mdp(sparse, dense):
    assert is_sparse(sparse.P) and not is_sparse(dense.P)
    np.testing.assert_allclose(sparse.P.to_dense(), dense.P, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(sparse.R, dense.R)
    np.testing.assert_array_equal(sparse.rho, dense.rho)
    if dense.action_mask is None:
        assert sparse.action_mask is None
    else:
        np.testing.assert_array_equal(sparse.action_mask, dense.action_mask)


def test_transition_table_sparse_repeats_masks_and_termination():
    """A hand table: a repeated next state (probabilities add), an action missing in one
    state (masked), a terminating outcome (the appended absorbing state), rows of unequal
    length (padding): the sparse import equals the dense one."""
    table = {0: {0: [(0.5, 1, 1.0, False), (0.25, 1, 2.0, False), (0.25, 0, 0.0, False)],
                 1: [(1.0, 2, -1.0, True)]},
             1: {0: [(1.0, 0, 0.5, False)]},
             2: {0: [(0.6, 2, 0.0, False), (0.4, 1, 3.0, True)], 1: [(1.0, 0, 0.0, False)]}}
    rho = [1.0, 0.0, 0.0]
    sparse = envs.from_transition_table(table, rho, sparse=True)
    dense = envs.from_transition_table(table, rho)
    assert sparse.P.fan_out == 3 and sparse.n_states == 4
    _assert_same_mdp(sparse, dense)
    assert not bool(sparse.action_mask[1, 1])
    with pytest.raises(ValueError, match="states must be 0..S-1"):
        envs.from_transition_table({1: table[0]}, [1.0], sparse=True)
    with pytest.raises(ValueError, match="lists no outcome"):
        envs.from_transition_table({0: {0: []}}, [1.0], sparse=True)


@pytest.mark.parametrize("env_id, kwargs", [("Taxi-v4", {}),
                                            ("FrozenLake-v1", {"map_name": "8x8"})])
def test_gymnasium_sparse_import_equals_dense(env_id, kwargs):
    """Taxi and FrozenLake 8 x 8 imported sparse: the same kernel (`to_dense`), rewards,
    initial law and mask as the dense import, and the same discounted value of the uniform
    policy at gamma = 0.99 to 1e-10 relative, entry by entry: the sparse value is a Krylov
    solve, here asked for a relative residual of 1e-13 (the default 1e-12 leaves 7e-10 on
    FrozenLake's smallest values, with cond(I - 0.99 P) up to 199)."""
    pytest.importorskip("gymnasium")  # in the `test` extra: always present in CI
    sparse = envs.from_gymnasium(env_id, sparse=True, krylov=Krylov(tol=1e-13), **kwargs)
    dense = envs.from_gymnasium(env_id, **kwargs)
    _assert_same_mdp(sparse, dense)
    pi = dsorl.mdp.reference_measure(dense)
    v_sparse = markov.discounted_value(induced_chain(sparse, pi), 0.99)
    v_dense = markov.discounted_value(induced_chain(dense, pi), 0.99)
    np.testing.assert_allclose(v_sparse, v_dense, rtol=1e-10)
