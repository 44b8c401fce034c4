"""Environments for Blackwell optimality: nearly Blackwell-optimal policies that differ in `y_1`.

In A2 of the nBw paper (`dsorl.envs.nbw`) the eight nBw-optimal deterministic policies differ
only in duplicated actions, so they tie in every Laurent coefficient and all are Blackwell
optimal; nothing beyond the bias separates them. `blackwell_tie` is built so that two routes
earn the same bias but at different times: the bias cannot tell them apart, `y_1` can.
"""
import jax.numpy as jnp
import numpy as np

from dsorl.mdp import MDP

__all__ = ["blackwell_tie", "BLACKWELL_TIE_FACTS"]

# Hand-derived facts of `blackwell_tie` (module docstring of the constructor), at s0 with the
# hub's action a0 (gain 1): (y_{-1}, y_0, y_1) of the three routes.
BLACKWELL_TIE_FACTS = {
    "early": (1.0, 1.0, -1.0),        # s0 -a0-> s1 -a0-> hub: rewards 2, 1, then 1 forever
    "early_trap": (1.0, 0.0, 1.0),    # s0 -a0-> s1 -a1-> hub: rewards 2, 0
    "late": (1.0, 1.0, -4.0),         # s0 -a1-> s2 -> s3 -> hub: rewards 0, 2, 2
    "blackwell_actions": (0, 0, None, None, 0),   # s2, s3: identical actions
}


def blackwell_tie(dtype=None) -> MDP:
    """Five states, two actions: nBw-optimal policies tie in the bias and differ in `y_1`.

    s0 (start): a0 "early" earns 2 and moves to s1; a1 "late" earns 0 and moves to s2.
    s1: a0 earns 1, a1 earns 0 (a bias trap), both to the hub s4.
    s2, s3: both actions earn 2 and move on (s2 -> s3 -> s4).
    s4 (hub, absorbing): a0 earns 1, a1 earns 0 (a gain trap).

    Every policy is unichain (the hub is absorbing and aperiodic). The gain is `pi(a0|s4)`,
    1 at best. With the hub's a0, relative to g = 1 the early route collects `(2 - 1) +
    (1 - 1) = 1` and the late one `(0 - 1) + (2 - 1) + (2 - 1) = 1`: equal bias `h(s0) = 1`,
    so the nBw-optimal policies are a0 at s1 and s4 with either action at s0 (and any at s2,
    s3): 8 deterministic policies. `y_1 = -H h` solves `y_1 = -h + P y_1` with `y_1(hub) = 0`:
    early `y_1(s1) = -h(s1) = 0`, `y_1(s0) = -1 + 0 = -1`; late `y_1(s3) = -1`,
    `y_1(s2) = -2 - 1 = -3`, `y_1(s0) = -1 - 3 = -4`. So early is Blackwell optimal, as the
    discounted values say for every gamma: `v_early - v_late = (2 + gamma + gamma^2 / (1 -
    gamma)) - (2 gamma + 2 gamma^2 + gamma^3 / (1 - gamma)) = (1 - gamma)(2 + gamma) > 0`
    (threshold gamma* = 0). The trap at s1 lowers the bias of the early route to 0 and raises
    its `y_1(s0)` to +1: a method optimising `y_1` without holding the bias loses the bias.
    Facts in `BLACKWELL_TIE_FACTS`; the episode starts in s0.
    """
    S, A = 5, 2
    P = np.zeros((S, A, S))
    P[0, 0, 1] = P[0, 1, 2] = 1.0
    P[1, :, 4] = P[2, :, 3] = P[3, :, 4] = P[4, :, 4] = 1.0
    R = np.array([[2.0, 0.0], [1.0, 0.0], [2.0, 2.0], [2.0, 2.0], [1.0, 0.0]])
    rho = np.eye(S)[0]
    dtype = dtype or jnp.result_type(float)
    return MDP(P.astype(dtype), R.astype(dtype), rho.astype(dtype))
