"""MDPs on which exact softmax policy gradient is slow: a three-action chain with buffer and
adjoint states after Li et al., and a sparse-reward reset chain after Agarwal et al.

**What is and is not the papers' construction.** Neither paper's text could be read from the
sources available to this project (only abstracts and the first pages were reachable).

- `li_chain` follows Li, Wei, Chi, Gu, Chen, "Softmax policy gradient methods can take
  exponential time to converge" (arXiv 2102.11270) as far as it could be established. Two
  secondary sources agree on the theorem's setting: three actions, the initial law `rho`
  uniform over the states, the uniform initial policy, constant step size `eta`, and a lower
  bound `(c/eta) |S|^(2^Omega(1/(1-gamma)))` on the iterations (Szepesvári's lecture notes,
  rltheory.github.io, winter 2022, lecture 16, "PG is slow with Boltzmann policies"). One
  third-party summary of the paper's TeX source (AutoResearch-Factory/agon-artifacts,
  wiki/2102.11270.md) adds the structure used here: an absorbing state 0, buffer sets
  `S_1, S_2`, primary states `3..H`, adjoint states `1bar..Hbar`, `H = c_h / (1 - gamma)`,
  `p = c_p (1 - gamma)`, thresholds `tau_s = 0.5 gamma^(2s/3)`, reward scale
  `r_s = 0.5 gamma^(2s/3 + 5/6)`; `a1` optimal everywhere with `V*(s) = gamma^(2s)` and
  `V*(sbar) = gamma^(2s+1)`; in buffer state 1 `Q(a0) = -gamma^2`, `Q(a1) = gamma^2`, in
  buffer state 2 `-gamma^4` and `gamma^4`; primary `a0` ends the episode with a reward that
  has a `p tau_{s-2}` term, `a1` moves to `(s-1)bar`, `a2` moves to `(s-2)bar` with
  probability `p` and ends the episode otherwise; adjoint `a1` returns to `s`, `a0` ends the
  episode; the theorem assumes `0.96 < gamma < 1`, `0 < eta < (1 - gamma)^2 / 5`,
  `|S| >= c_3 (1 - gamma)^(-6)`. **Not established** (so chosen here, and named as our
  choice): the exact rewards of primary `a0` and `a2`, the constants `c_h, c_p, c_b1, c_b2,
  c_m`, how an adjoint state enters a buffer set, and the booster states `S_hat` (which the
  paper adds to turn one slow state into a large average error; left out here). Our choices:
  `r(s, a2) = r_s` and `r(s, a0) = r_s + p gamma tau_{s-2}`, so that
  `Q(s, a2) - Q(s, a0) = p gamma (V(((s-2)bar)) - tau_{s-2})`: `a2` overtakes `a0` exactly
  when the adjoint state two below crosses its threshold (the cascade the summary describes);
  `1bar`, `2bar` enter their buffer set uniformly; buffer sets of equal size `buffer_size`.

- `reset_chain` is the sparse-reward chain of the kind Agarwal, Kakade, Lee, Mahajan use
  ("On the theory of policy gradient methods", arXiv 1908.00261) to show that exact softmax
  PG from the uniform policy sees exponentially small gradients: one action advances along
  the chain, the others reset to its start, and only the last advance is rewarded. The
  number of actions and the start law are parameters here (their figure's values could not
  be checked).

Both are `dsorl.episodic.EpisodicMDP`s (every policy's episodes end in a terminal state).
"""
import jax.numpy as jnp
import numpy as np

from dsorl import _checks
from dsorl.episodic import EpisodicMDP
from dsorl.mdp import MDP

__all__ = ["A0", "A1", "A2", "li_chain", "li_chain_layout", "li_chain_optimum", "reset_chain",
           "reset_chain_optimum"]

A0, A1, A2 = 0, 1, 2


def li_chain_layout(H: int, buffer_size: int = 1) -> dict:
    """State indices of `li_chain(H, ...)`: `{"terminal": 0, "buffer1": [...],
    "buffer2": [...], "primary": {s: index} for s = 3..H, "adjoint": {s: index} for s = 1..H}`.
    Order: terminal, buffer set 1, buffer set 2, primary 3..H, adjoint 1..H."""
    m = int(buffer_size)
    b1 = list(range(1, 1 + m))
    b2 = list(range(1 + m, 1 + 2 * m))
    primary = {s: 1 + 2 * m + (s - 3) for s in range(3, H + 1)}
    adjoint = {s: 1 + 2 * m + (H - 2) + (s - 1) for s in range(1, H + 1)}
    return {"terminal": 0, "buffer1": b1, "buffer2": b2, "primary": primary, "adjoint": adjoint,
            "n_states": 1 + 2 * m + (H - 2) + H}


def li_chain(H: int, gamma, *, c_p: float = 0.5, buffer_size: int = 1,
             dtype=np.float64) -> EpisodicMDP:
    """The three-action chain after Li et al. (arXiv 2102.11270; see the module docstring
    for what is theirs and what is our choice), with primary states `3..H`.

    Actions `a0, a1, a2` (indices 0, 1, 2), `p = c_p (1 - gamma)`,
    `tau_s = 0.5 gamma^(2s/3)`, `r_s = 0.5 gamma^(2s/3 + 5/6)`:

        terminal 0:       a0 stays, reward 0 (a1, a2 masked)
        buffer set k=1,2: a0 -> 0 with reward -gamma^(2k), a1 -> 0 with reward gamma^(2k)
        adjoint sbar:     a1 -> s (s = 1, 2: uniformly into buffer set s), a0 -> 0; reward 0
        primary s >= 3:   a0 -> 0 with reward r_s + p gamma tau_{s-2};
                          a1 -> (s-1)bar with reward 0;
                          a2 -> (s-2)bar with probability p, else -> 0, reward r_s.

    `rho` is uniform over all states; the uniform policy is the paper's initial policy.
    `a1` is optimal everywhere, `V*(s) = gamma^(2s)`, `V*(sbar) = gamma^(2s+1)`
    (`li_chain_optimum`), provided `H` is small enough against `1 / (1 - gamma)` (the
    paper's `H = c_h / (1 - gamma)`); a `ValueError` names the first primary state where it
    is not. Rewards depend on `gamma` (concrete here: the check needs it).
    """
    if int(H) != H or H < 3:
        raise ValueError(f"H = {H} must be an integer >= 3 (primary states 3..H).")
    if int(buffer_size) != buffer_size or buffer_size < 1:
        raise ValueError(f"buffer_size = {buffer_size} must be a positive integer.")
    _checks.check_discount(gamma)
    g = float(gamma)
    if not 0 < c_p or not c_p * (1 - g) < 1:
        raise ValueError(f"c_p = {c_p} must give p = c_p (1 - gamma) in (0, 1).")
    H, m = int(H), int(buffer_size)
    p = c_p * (1 - g)
    tau = lambda s: 0.5 * g ** (2 * s / 3)  # noqa: E731
    r = lambda s: 0.5 * g ** (2 * s / 3 + 5 / 6)  # noqa: E731
    for s in range(3, H + 1):  # a1 must beat a0 and a2 at V*
        q1, q0 = g ** (2 * s), r(s) + p * g * tau(s - 2)
        q2 = r(s) + p * g * g ** (2 * (s - 2) + 1)
        if not q1 > max(q0, q2):
            raise ValueError(f"H = {H} is too long for gamma = {g}: at primary state {s},"
                             f" a1's optimal value gamma^(2s) = {q1:.4g} does not beat a0"
                             f" ({q0:.4g}) and a2 ({q2:.4g}); keep H below about"
                             f" 0.5 / (1 - gamma) = {0.5 / (1 - g):.4g}.")
    lay = li_chain_layout(H, m)
    S = lay["n_states"]
    P = np.zeros((S, 3, S), dtype)
    R = np.zeros((S, 3), dtype)
    mask = np.zeros((S, 3), bool)
    P[0, A0, 0] = 1
    mask[0, A0] = True
    for k, states in ((1, lay["buffer1"]), (2, lay["buffer2"])):
        for b in states:
            P[b, A0, 0] = P[b, A1, 0] = 1
            R[b, A0], R[b, A1] = -g ** (2 * k), g ** (2 * k)
            mask[b, [A0, A1]] = True
    adj, pri = lay["adjoint"], lay["primary"]
    for s, i in adj.items():
        P[i, A0, 0] = 1
        if s <= 2:
            P[i, A1, lay[f"buffer{s}"]] = 1 / m
        else:
            P[i, A1, pri[s]] = 1
        mask[i, [A0, A1]] = True
    for s, i in pri.items():
        P[i, A0, 0] = 1
        R[i, A0] = r(s) + p * g * tau(s - 2)
        P[i, A1, adj[s - 1]] = 1
        P[i, A2, adj[s - 2]] = p
        P[i, A2, 0] = 1 - p
        R[i, A2] = r(s)
        mask[i] = True
    rho = np.full(S, 1 / S, dtype)
    terminal = np.zeros(S, bool)
    terminal[0] = True
    # longest episode: primary H -> (H-1)bar -> H-1 -> ... -> 2bar -> buffer 2 -> 0
    longest = 2 * (H - 2) + 2
    return EpisodicMDP(MDP(P, jnp.asarray(R), rho, action_mask=mask), np.zeros((S, 3), dtype),
                       terminal, longest + 1)


def li_chain_optimum(H: int, gamma, buffer_size: int = 1) -> np.ndarray:
    """`V*[S]` of `li_chain(H, gamma, buffer_size=...)` in closed form: `gamma^(2s)` on primary
    state `s` and on buffer set `s` (s = 1, 2), `gamma^(2s+1)` on `sbar`, 0 on the terminal."""
    lay = li_chain_layout(H, buffer_size)
    v = np.zeros(lay["n_states"])
    v[lay["buffer1"]] = gamma ** 2
    v[lay["buffer2"]] = gamma ** 4
    for s, i in lay["primary"].items():
        v[i] = gamma ** (2 * s)
    for s, i in lay["adjoint"].items():
        v[i] = gamma ** (2 * s + 1)
    return v


def reset_chain(n: int, n_actions: int = 4, start: str = "first",
                dtype=np.float64) -> EpisodicMDP:
    """A sparse-reward reset chain (the kind of Agarwal et al., arXiv 1908.00261): states
    `0..n-1` and a terminal state `n`; action 0 advances `s -> s + 1` (from `n - 1` into the
    terminal state with reward 1, the only reward), every other action resets to state 0.

    `start="first"`: `rho` is a point mass on state 0 (from the uniform policy the reward is
    reached with probability of order `n_actions^(-n)`, so the gradient is exponentially
    small in `n`); `"uniform"`: uniform over `0..n-1`. `V*(s) = gamma^(n-1-s)`
    (`reset_chain_optimum`). An `EpisodicMDP` without a longest episode (resets can cycle).
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n = {n} must be a positive integer.")
    if int(n_actions) != n_actions or n_actions < 2:
        raise ValueError(f"n_actions = {n_actions} must be an integer >= 2.")
    if start not in ("first", "uniform"):
        raise ValueError(f"start must be 'first' or 'uniform', got {start!r}.")
    n, A = int(n), int(n_actions)
    S = n + 1
    P = np.zeros((S, A, S), dtype)
    s = np.arange(n)
    P[s, 0, s + 1] = 1
    P[s, 1:, 0] = 1
    P[n, :, n] = 1
    R = np.zeros((S, A), dtype)
    R[n - 1, 0] = 1
    mask = np.ones((S, A), bool)
    mask[n, 1:] = False
    rho = np.zeros(S, dtype)
    if start == "first":
        rho[0] = 1
    else:
        rho[:n] = 1 / n
    terminal = np.zeros(S, bool)
    terminal[n] = True
    return EpisodicMDP(MDP(P, R, rho, action_mask=mask), np.zeros((S, A), dtype), terminal, None)


def reset_chain_optimum(n: int, gamma) -> np.ndarray:
    """`V*[S]` of `reset_chain(n, ...)`: `gamma^(n-1-s)` on `0..n-1`, 0 on the terminal."""
    return np.concatenate([gamma ** (n - 1.0 - np.arange(n)), [0.0]])
