"""n-discount, Blackwell and nearly Blackwell optimality by lexicographic policy iteration,
against enumeration of deterministic policies (NumPy Laurent coefficients), and Blackwell
thresholds against a brute-force grid of discount factors."""
import itertools

import numpy as np
import pytest

import dsorl
from dsorl import envs, planning
from dsorl.sparse import SparseTransitions
from helpers import np_laurent, random_mdp


def tied_mdp(seed, S, A, split=0.5, levels=3):
    """A random MDP with many ties: integer rewards below `levels`; moves to higher states or
    back to 0, split 50/50 between two targets with probability `split` (else deterministic);
    the last state returns to 0 (w.p. 1/2 or 1): every policy is unichain."""
    rng = np.random.default_rng(seed)
    P = np.zeros((S, A, S))
    for s, a in itertools.product(range(S), range(A)):
        targets = [0] + list(range(s + 1, S)) if s < S - 1 else [0, S - 1]
        picks = rng.choice(targets, size=2)
        if s == S - 1:
            picks[0] = 0
        P[s, a, picks[0]] += 0.5
        P[s, a, picks[1] if rng.random() < split else picks[0]] += 0.5
    R = rng.integers(0, levels, size=(S, A)).astype(float)
    rho = np.full(S, 1 / S)
    return dsorl.MDP(P, R, rho)


def enumeration(mdp, K, rtol=1e-9):
    """Lexicographic optimum over all deterministic policies: y*_{-1..K} (the statewise maximum
    of y_k among policies optimal through k - 1) and the policies attaining all of them."""
    P, R = np.asarray(mdp.P), np.asarray(mdp.R)
    S, A = R.shape
    policies = np.array(list(itertools.product(range(A), repeat=S)))
    Y = np.array([np_laurent(P[np.arange(S), d], R[np.arange(S), d], K) for d in policies])
    alive = np.ones(len(policies), bool)
    y_star = []
    for k in range(K + 2):
        best = Y[alive, k].max(axis=0)
        alive &= np.all(Y[:, k] >= best - rtol * max(1, np.abs(best).max()), axis=1)
        assert alive.any()  # one policy is optimal in every state at once
        y_star.append(best)
    return np.array(y_star), {tuple(d) for d in policies[alive]}


def product(mask):
    return {tuple(d) for d in itertools.product(*[np.flatnonzero(row) for row in mask])}


CASES = ([("nbw", name) for name in envs.NBW_NAMES]
         + [("tied", (seed, 5, 2)) for seed in range(2)] + [("tied", (9, 4, 3))]
         + [("tied", (seed, 5, 2, 0.0, 2)) for seed in (0, 3, 4)]
         + [("random", (seed, 4, 3)) for seed in range(2)])


def make(kind, arg):
    if kind == "nbw":
        return envs.nbw_env(arg)
    if kind == "sparse":  # transitions to 40% of the states (and to state 0)
        return random_mdp(arg, 4, 2, density=0.4)
    return tied_mdp(*arg) if kind == "tied" else random_mdp(*arg)


@pytest.mark.parametrize("kind, arg", CASES)
def test_lexicographic_policy_iteration_matches_enumeration(kind, arg):
    mdp = make(kind, arg)
    S = mdp.n_states
    y_star, blackwell_set = enumeration(mdp, S + 2)
    for n in (-1, 0, 1, 2):
        sol = planning.n_discount_optimal(mdp, n)
        scale = np.maximum(1, np.abs(y_star[:n + 2]).max(axis=1, keepdims=True))
        np.testing.assert_allclose(sol.y / scale, y_star[:n + 2] / scale, atol=1e-9,
                                   err_msg=f"n = {n}")
        _, optimal_n = enumeration(mdp, n)
        assert tuple(sol.actions) in optimal_n
        assert product(sol.conserving) <= optimal_n  # sufficient: D_{n+1} policies
        np.testing.assert_array_equal(sol.policy, np.eye(mdp.n_actions)[sol.actions])
    sol = planning.blackwell_optimal(mdp)
    assert sol.y.shape == (S, S)
    assert product(sol.conserving) == blackwell_set  # exactly the Blackwell-optimal ones
    # nearly Blackwell: gain, bias and the whole set of bias-optimal policies
    nbw = planning.nearly_blackwell_optimal(mdp)
    _, bias_optimal = enumeration(mdp, 0)
    np.testing.assert_allclose(nbw.gain, y_star[0, 0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(nbw.bias, y_star[1], rtol=1e-9, atol=1e-10)
    assert {tuple(d) for d in nbw.nbw_optimal} == bias_optimal


def test_ties_make_some_cases_discriminating():
    """In the deterministic tied cases above the bias-optimal policies differ in y_1 and
    only some are Blackwell optimal, so the comparison exercises the higher orders."""
    for seed in (0, 3, 4):
        mdp = tied_mdp(seed, 5, 2, 0.0, 2)
        assert len(enumeration(mdp, 0)[1]) > len(enumeration(mdp, 7)[1])


# ----------------------------------------------------------------------------------------
# Blackwell thresholds


def brute_force_failures(mdp, blackwell_set, gammas):
    """The grid gammas at which the gamma-optimal deterministic policies (all policies'
    values by NumPy solves) are not exactly the Blackwell-optimal ones."""
    P, R = np.asarray(mdp.P), np.asarray(mdp.R)
    S, A = R.shape
    policies = np.array(list(itertools.product(range(A), repeat=S)))
    Pd = P[np.arange(S), policies]  # [K, S, S]
    rd = R[np.arange(S), policies]  # [K, S]
    systems = np.eye(S) - gammas[:, None, None, None] * Pd[None]
    V = np.linalg.solve(systems, np.broadcast_to(rd, systems.shape[:3])[..., None])[..., 0]
    best = V.max(axis=1, keepdims=True)
    optimal = np.all(V >= best - 1e-11 * np.maximum(1, np.abs(best)), axis=2)  # [G, K]
    in_blackwell = np.array([tuple(d) in blackwell_set for d in policies])
    return gammas[np.any(optimal != in_blackwell, axis=1)]


# Up to gamma = 0.999: closer to 1 a policy that is nBw- but not Blackwell-optimal trails by
# about rho^j |psi_j| (j >= 1), below what the float64 values (size 1 / (1 - gamma)) resolve.
GRID = np.concatenate([np.linspace(0.0005, 0.9945, 1990), 1 - np.logspace(-2.3, -3, 20)])
STEP = GRID[1] - GRID[0]


THRESHOLD_CASES = (CASES + [("sparse", seed) for seed in range(12)]  # 5 with gamma* > 0
                   + [("tied", (8, 4, 2, 0.5, 4))])  # gamma* = 2/3


@pytest.mark.parametrize("kind, arg", THRESHOLD_CASES)
def test_blackwell_threshold_matches_a_brute_force_gamma_grid(kind, arg):
    mdp = make(kind, arg)
    gamma_star = planning.blackwell_threshold(mdp)
    _, blackwell_set = enumeration(mdp, mdp.n_states + 2)
    failures = brute_force_failures(mdp, blackwell_set, GRID)
    assert np.all(failures <= gamma_star + 1e-6), (gamma_star, failures.max())
    if gamma_star > GRID[0] + 1e-6:  # the grid sees the failure just below gamma*
        assert failures.size and failures.max() >= gamma_star - STEP - 1e-6, gamma_star


def test_blackwell_threshold_closed_forms():
    # A1: a0 at s0 (5, stay w.p. 1/2) against a1 (10, then -1 forever): both values vanish
    # at gamma = 10/11. A2: s0 -> s1 earns 1 + gamma, s0 -> s2 earns 3 gamma: gamma* = 1/2.
    np.testing.assert_allclose(planning.blackwell_threshold(envs.nbw_env("A1")), 10 / 11,
                               rtol=1e-12)
    np.testing.assert_allclose(planning.blackwell_threshold(envs.nbw_env("A2")), 0.5,
                               rtol=1e-12)


# ----------------------------------------------------------------------------------------
# Errors


def test_multichain_mdps_and_bad_orders_raise():
    P = np.zeros((2, 2, 2))
    P[0, 0, 0] = P[0, 1, 1] = P[1, 0, 1] = P[1, 1, 0] = 1.0  # policy (0, 0) splits the chain
    mdp = dsorl.MDP(P, np.zeros((2, 2)), np.array([1.0, 0.0]))
    for call in (lambda: planning.n_discount_optimal(mdp, 1), lambda: planning.blackwell_optimal(mdp),
                 lambda: planning.blackwell_threshold(mdp),
                 lambda: planning.nearly_blackwell_optimal(mdp)):
        with pytest.raises(ValueError, match=r"policy \[0, 0\] induces 2 closed.*multichain not"
                                             " supported"):
            call()
    for n in (-2, 0.5, True):
        with pytest.raises(ValueError, match="integer n >= -1"):
            planning.n_discount_optimal(random_mdp(0, 3, 2), n)
    sparse = dsorl.MDP(SparseTransitions(np.zeros((2, 2, 1), np.int32), np.ones((2, 2, 1))),
                       np.zeros((2, 2)), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="dense MDPs only"):
        planning.n_discount_optimal(sparse, 0)


def test_nearly_blackwell_listing_is_capped():
    # every action identical: all 4^12 policies are nBw-optimal, too many to list
    P = np.broadcast_to(np.full((12, 1, 12), 1 / 12), (12, 4, 12))
    mdp = dsorl.MDP(P, np.zeros((12, 4)), np.full(12, 1 / 12))
    with pytest.raises(ValueError, match="exceed max_policies"):
        planning.nearly_blackwell_optimal(mdp, max_policies=1000)
    assert planning.blackwell_threshold(mdp) == 0.0  # every action ties for every gamma
