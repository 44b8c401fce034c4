"""Episodic MDPs: a `dsorl.MDP` with absorbing terminal states and Gaussian reward noise.

The container the sampled algorithms take as their problem (`dsorl.algorithms.dynpg`,
`dsorl.algorithms.pg`); the environments that build one live in `dsorl.envs` (e.g.
`dsorl.envs.dynpg.episodic_mdp`, `sutton_extended`, `dsorl.envs.chains.committal_chain`).
A terminal state is absorbing with a single allowed zero-reward action (the MDP container
needs at least one action per state); sampled rewards are `R[s, a] + reward_std[s, a] N(0, 1)`
(`dsorl.sampling.sample_episode`).
"""
from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dsorl import _checks
from dsorl.mdp import MDP

Array = jax.Array

__all__ = ["EpisodicMDP", "problem_mdp", "mdp_and_noise", "check_reward_std"]


class EpisodicMDP(NamedTuple):
    """An MDP with absorbing terminal states and Gaussian reward noise.

    `mdp`: the MDP (terminal states: one absorbing zero-reward action, the rest masked);
    `reward_std[S, A]`: noise standard deviations of sampled rewards;
    `terminal[S]`: bool; `max_episode_length`: the longest possible episode (steps from a
    non-terminal state until absorption), or None when some policy can cycle forever.
    """

    mdp: MDP
    reward_std: Array
    terminal: Optional[np.ndarray] = None
    max_episode_length: Optional[int] = None


def problem_mdp(problem) -> MDP:
    """The `MDP` of a problem that is an `MDP` or an `EpisodicMDP` (no computation, so safe
    in validation of traced input); `TypeError` otherwise."""
    if isinstance(problem, EpisodicMDP):
        problem = problem.mdp
    if isinstance(problem, MDP):
        return problem
    raise TypeError(f"the problem must be a dsorl.MDP or a dsorl.episodic.EpisodicMDP, got"
                    f" {type(problem).__name__}.")


def mdp_and_noise(problem) -> Tuple[MDP, Array]:
    """`(mdp, reward_std[S, A])` of an `MDP` (noiseless: zeros) or an `EpisodicMDP`,
    `reward_std` in the MDP's float dtype."""
    mdp = problem_mdp(problem)
    if isinstance(problem, EpisodicMDP):
        return mdp, jnp.asarray(problem.reward_std, mdp.R.dtype)
    return mdp, jnp.zeros_like(mdp.R)


def check_reward_std(problem) -> None:
    """An `EpisodicMDP`'s `reward_std` is `[S, A]`, finite and >= 0 (`ValueError`; concrete
    values only); nothing to check for an `MDP`."""
    if isinstance(problem, EpisodicMDP):
        _checks.check_shape("reward_std", problem.reward_std, problem_mdp(problem).R.shape,
                            "[S, A]")
        _checks.check_positive("reward_std", problem.reward_std, allow_zero=True)
