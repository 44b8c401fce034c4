"""The six benchmark MDPs of Dewanto & Gallagher, "A nearly Blackwell-optimal policy gradient
method" (arXiv 2105.13609, §7): A1, A2, A3 (all policies gain-optimal: the bias decides) and
B1, B2, B3 (gain and bias both matter).

Definitions follow the authors' public environment configurations; every state has two
actions (duplicated where the original had one), rewards are expected rewards `R[s, a]`,
and every episode starts in state 0. The reference values were recomputed by
enumerating all deterministic policies (gain `g = p* . r`, bias `h = H r` at state 0);
`nbw_optimal` lists the gain-optimal policies of maximal bias (action index per state).
`episode_length` and `mixing_time_bound` are the experiment-episode lengths of the
authors' sampling experiments and the mixing-time bounds behind them.
"""
import jax.numpy as jnp
import numpy as np

from dsorl.mdp import MDP

__all__ = ["NAMES", "PAPER_SETTINGS", "nbw_env", "nbw_reference", "paper_hyperparams"]

NAMES = ("A1", "A2", "A3", "B1", "B2", "B3")

# Settings of the paper's experiments (its §7 and the authors' configuration).
PAPER_SETTINGS = dict(
    gain_phase_tolerance=1e-4,
    barrier_slack=1.0,
    barrier_init={"A": 0.1, "B": 100.0},
    barrier_divisor=10.0,
    iterations=100,
    armijo=dict(alpha0=1.0, c=1e-4, shrink=0.5, max_tries=100),
    episodes_per_step=16,
    sampling_seeds=10,
    discounts={
        "A1": (0.5, 0.95, 0.99999), "A2": (0.2, 0.55, 0.99999), "A3": (0.0, 0.05, 0.99999),
        "B1": (0.0, 0.05, 0.99999), "B2": (0.3, 0.8, 0.99999), "B3": (0.5, 0.85, 0.99999),
    },
)

_ENVS = {
    "A1": dict(
        about='Puterman (1994) Example 10.1.2 (p500), modified so absorbing s1 has 2 identical self-loop actions (repo requires equal action counts). All policies gain -1; a0_0 at s0 gives bias 12 vs 11 for a0_1.',
        P=[
            [[0.5, 0.5], [0.0, 1.0]],
            [[0.0, 1.0], [0.0, 1.0]],
        ],
        R=[[5.0, 10.0], [-1.0, -1.0]],
        optimal_gain=-1.0,
        optimal_bias_s0=12.0,
        nbw_optimal=[[0, 0], [0, 1]],
        episode_length=25,
        mixing_time_bound=20,
    ),
    "A2": dict(
        about='Inspired by Puterman Example 10.0.1 (p493). Deterministic chain s0->{s1|s2}->s3->s4 (s4 absorbing, reward 0). Actions at s1,s2,s4 are duplicates. All policies gain 0.',
        P=[
            [[0.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]],
            [[0.0, 0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0]],
            [[0.0, 0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0]],
            [[0.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0, 1.0]],
            [[0.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0, 1.0]],
        ],
        R=[[1.0, 0.0], [1.0, 1.0], [3.0, 3.0], [3.0, 0.0], [0.0, 0.0]],
        optimal_gain=0.0,
        optimal_bias_s0=6.0,
        nbw_optimal=[[1, 0, 0, 0, 0], [1, 0, 0, 0, 1], [1, 0, 1, 0, 0], [1, 0, 1, 0, 1], [1, 1, 0, 0, 0], [1, 1, 0, 0, 1], [1, 1, 1, 0, 0], [1, 1, 1, 0, 1]],
        episode_length=8,
        mixing_time_bound=3,
    ),
    "A3": dict(
        about="2x2 grid navigation ('GridNav_2'); states s00 (start, bottom-left), s10, s01, s11 (goal, absorbing, 2 identical self-loops, reward 0). Moves succeed w.p. 0.9, else slip to the other neighbour. Reward is per transition: -1 for landing in s00/s10/s01, +2 for landing in s11. All 16 policies gain 0.",
        P=[
            [[0.0, 0.9, 0.1, 0.0], [0.0, 0.1, 0.9, 0.0]],
            [[0.9, 0.0, 0.0, 0.1], [0.1, 0.0, 0.0, 0.9]],
            [[0.1, 0.0, 0.0, 0.9], [0.9, 0.0, 0.0, 0.1]],
            [[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]],
        ],
        R=[[-1.0, -1.0], [-0.7, 1.7], [1.7, -0.7], [0.0, 0.0]],
        optimal_gain=0.0,
        optimal_bias_s0=0.7777777777777777,
        nbw_optimal=[[0, 1, 0, 0], [0, 1, 0, 1], [1, 1, 0, 0], [1, 1, 0, 1]],
        episode_length=217,
        mixing_time_bound=212,
    ),
    "B1": dict(
        about='Author-made 2-state env (Tor_20201121a). s0 is transient under a1_1; unichain under all policies.',
        P=[
            [[0.0, 1.0], [0.0, 1.0]],
            [[0.5, 0.5], [0.0, 1.0]],
        ],
        R=[[1.0, 3.0], [0.5, 4.0]],
        optimal_gain=4.0,
        optimal_bias_s0=-1.0,
        nbw_optimal=[[1, 1]],
        episode_length=23,
        mixing_time_bound=18,
    ),
    "B2": dict(
        about="Hordijk, Dekker & Kallenberg, 'Sensitivity-analysis in discounted Markovian decision problems', Sec 3.5 p148; v4 differs from v3 in transient-state rewards. s0,s1 transient; {s2,s3,s4} recurrent. Actions at s1 are duplicates.",
        P=[
            [[0.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]],
            [[0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]],
            [[0.0, 0.0, 0.5, 0.25, 0.25], [0.0, 0.0, 0.0625, 0.75, 0.1875]],
            [[0.0, 0.0, 0.5, 0.0, 0.5], [0.0, 0.0, 0.0625, 0.875, 0.0625]],
            [[0.0, 0.0, 0.25, 0.25, 0.5], [0.0, 0.0, 0.125, 0.75, 0.125]],
        ],
        R=[[5.0, 25.0], [50.0, 50.0], [8.0, 2.75], [16.0, 15.0], [7.0, 4.0]],
        optimal_gain=13.344537815126051,
        optimal_bias_s0=16.36600522561966,
        nbw_optimal=[[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]],
        episode_length=22,
        mixing_time_bound=17,
    ),
    "B3": dict(
        about="Modified NChain (NChain_mod-v1): unichain with 2 transient states s0,s1; recurrent chain s2..s6 where action 0 advances w.p. 0.8 (reward 0) or returns to s2 w.p. 0.2 (reward 2), action 1 has the probabilities swapped; s6 'advance' is a self-loop with reward 10.",
        P=[
            [[0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]],
            [[0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]],
            [[0.0, 0.0, 0.2, 0.8, 0.0, 0.0, 0.0], [0.0, 0.0, 0.8, 0.2, 0.0, 0.0, 0.0]],
            [[0.0, 0.0, 0.2, 0.0, 0.8, 0.0, 0.0], [0.0, 0.0, 0.8, 0.0, 0.2, 0.0, 0.0]],
            [[0.0, 0.0, 0.2, 0.0, 0.0, 0.8, 0.0], [0.0, 0.0, 0.8, 0.0, 0.0, 0.2, 0.0]],
            [[0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 0.8], [0.0, 0.0, 0.8, 0.0, 0.0, 0.0, 0.2]],
            [[0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 0.8], [0.0, 0.0, 0.8, 0.0, 0.0, 0.0, 0.2]],
        ],
        R=[[5.0, 10.0], [8.0, 1.0], [0.4, 1.6], [0.4, 1.6], [0.4, 1.6], [0.4, 1.6], [8.4, 3.6]],
        optimal_gain=3.6768,
        optimal_bias_s0=-2.4608000000000025,
        nbw_optimal=[[1, 0, 0, 0, 0, 0, 0]],
        episode_length=50,
        mixing_time_bound=45,
    ),
}


def nbw_env(name: str, dtype=None) -> MDP:
    """The nBw benchmark MDP `name` (one of `NAMES`), starting in state 0."""
    spec = _spec(name)
    P = np.asarray(spec["P"], np.float64)
    rho = np.zeros(P.shape[0])
    rho[0] = 1.0
    dtype = dtype or jnp.result_type(float)
    return MDP(P.astype(dtype), np.asarray(spec["R"], dtype), rho.astype(dtype))


def nbw_reference(name: str) -> dict:
    """Published/enumerated facts of env `name`: optimal gain, optimal bias at s0,
    nBw-optimal deterministic policies, episode length and mixing-time bound."""
    spec = _spec(name)
    return {k: spec[k] for k in ("optimal_gain", "optimal_bias_s0", "nbw_optimal",
                                 "episode_length", "mixing_time_bound", "about")}


def paper_hyperparams(name: str) -> dict:
    """The barrier settings of the paper's experiments (§6.3) for env `name` (`A1`..`B3`):
    `{barrier_init, barrier_divisor, slack, gain_tolerance}`, the fields of
    `dsorl.algorithms.nbw.HParams` (use `nbw.HParams(**paper_hyperparams(name))`)."""
    kind = _key(name)[0]
    return dict(barrier_init=PAPER_SETTINGS["barrier_init"][kind],
                barrier_divisor=PAPER_SETTINGS["barrier_divisor"],
                slack=PAPER_SETTINGS["barrier_slack"],
                gain_tolerance=PAPER_SETTINGS["gain_phase_tolerance"])


def _key(name: str) -> str:
    key = name.removeprefix("Env-")
    if key not in _ENVS:
        raise ValueError(f"unknown nBw environment {name!r}; choose one of {NAMES}.")
    return key


def _spec(name: str) -> dict:
    return _ENVS[_key(name)]
