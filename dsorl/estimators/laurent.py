"""Sampled gradients of the Laurent coefficients `y_{-1}(s0), ..., y_n(s0)` from episodes.

The n-level extension of Dewanto & Gallagher's bias-gradient estimators (arXiv 2105.13609,
Thm 3.1 with the post-mixing form of Thm 3.2), used by `dsorl.algorithms.blackwell`.

Coefficients (`dsorl.markov.laurent_coefficients`, Puterman 1994 §8.2): `y_{-1} = g 1`,
`y_0 = h`, `y_k = -H y_{k-1}`; each `y_k` (k >= 0) is the bias of the chain with reward
`r_k` = `r` (k = 0) or `-y_{k-1}` (k >= 1), whose gain is `p* r_k` = g (k = 0) or 0. Action
values of level j >= 0 and their advantages (state baseline `y_j`, `sum_a pi A_j = 0`):

    q_j(s, a) = r_j(s, a) - y_{j-1}(s) + sum_s' P(s'|s, a) y_j(s'),     A_j = q_j - y_j,

with `r_0 = R` and `r_j = 0` for j >= 1 (so `q_0 = q_b` and `q_1 = q_w` of the nBw paper).

**Derivation.** Differentiating `y_k = pi.q_k` gives `grad y_k(s) = c_k(s) + (P grad y_k)(s)`
with `c_k(s) = E_a[A_k psi] - grad y_{k-1}(s)` (`grad y_{-1} = grad g`, `psi = grad log pi`);
`p* c_k = 0` (the gain of the level's reward is constant), so unrolling from s0,

    grad y_k(s0) = sum_{t>=0} E[c_k(s_t)] + p* grad y_k,

and for any `f` with `p* f = 0`, `-(grad p*) f = p* (grad P) (-H f) = E_{p*, pi}[A psi]`
with the advantages of `-H f` (Thm 3.2's argument), so `p* grad y_k = E_{p*}[A_{k+1} psi]`.
Substituting the expansion of `grad y_{k-1}(s_t)` recursively and summing the nested
series (`sum_{u=0}^{n} C(u + m, m) = C(n + m + 1, m + 1)`) gives, with the centred terms
`D_j(t) = E[A_j psi]_t - E_{p*}[A_j psi]` (`E_{p*}[A_0 psi] = grad g`),

    grad y_k(s0) = sum_{j=0}^{k} (-1)^{k-j} sum_{t>=0} C(t + k - j, k - j) D_j(t)
                   + E_{p*, pi}[A_{k+1} psi].

For k = 0 this is the paper's `sum_t (E[A_0 psi]_t - grad g) + E_{p*}[A_1 psi]`; for k = 1 the
bias terms come weighted by `-(t + 1)` because `y_1(s0) = -sum_t (t + 1) (E r_t - g)` (for an
aperiodic chain, `H^2 = sum_m (m + 1) (P^m - P*)`).

**One episode** `(s_0, a_0, ..., s_T, a_T)` from s0, its last pair standing for a draw from
`p*` (T at least the mixing time, as in the paper), estimates with `Z_j(t) = A_j(s_t, a_t)
psi_t`:

    grad y_{-1}   Z_0(T)
    grad y_k      sum_{j=0}^{k} (-1)^{k-j} sum_{t<T} C(t + k - j, k - j) (Z_j(t) - Z_j(T))
                  + Z_{k+1}(T)

Each term is linear in one state-action draw, so the estimate is unbiased when
`P^T(s0, .) = p*`; otherwise the truncation error grows like `T^k ||P^T(s0, .) - p*||`
(the weights are polynomials of degree k in t), so higher levels need longer episodes.
The critic (`laurent_critic`) is exact, as in the paper's experiments ("all policy
evaluations are exact", its §6.3); learning the critics of the higher levels is not done
here.
"""
from math import comb
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dsorl import _checks
from dsorl.estimators.average_reward import check_mixing
from dsorl.fisher import score_table
from dsorl.markov import laurent_coefficients
from dsorl.mdp import MDP, induced_chain
from dsorl.sampling import Trajectory, rollouts

Array = jax.Array

__all__ = ["LaurentCritic", "LaurentEstimates", "laurent_critic", "level_weights",
           "episode_laurent_gradients", "sample_laurent_gradients"]


class LaurentCritic(NamedTuple):
    """Exact values of a policy for levels up to `n`: `y[n + 3, S]` = `y_{-1..n+1}` and the
    advantages `advantage[n + 2, S, A]` = `A_0..A_{n+1}` (module docstring)."""

    y: Array
    advantage: Array


class LaurentEstimates(NamedTuple):
    """Per-episode (or mean) estimates: `gradients[order + 2, d]` of `y_{-1..order}(s0)`, and
    the nBw paper's gain Fisher `psi_T psi_T^T` (eq. 15) and bias Fisher
    `sum_{t<tau} psi_t psi_t^T + tau psi_T psi_T^T` (eq. 19) from the same episode."""

    gradients: Array
    gain_fisher: Array
    bias_fisher: Array


def laurent_critic(mdp: MDP, pi: Array, order: int) -> LaurentCritic:
    """Exact `y_{-1..order+1}` and advantages `A_0..A_{order+1}` of policy `pi[S, A]`.

    `A_j(s, a) = r_j(s, a) - y_{j-1}(s) + (P_a y_j)(s) - y_j(s)` with `r_0 = R`, `r_j = 0`
    (j >= 1). One LU of `I - P_pi` (`laurent_coefficients`); unichain `pi`.
    """
    chain = induced_chain(mdp, pi)
    y = laurent_coefficients(chain, order + 1)           # [order + 3, S]
    rewards = jnp.zeros((order + 2,) + mdp.R.shape, y.dtype).at[0].set(mdp.R)
    q = rewards - y[:-1, :, None] + jnp.einsum("sat,jt->jsa", mdp.P, y[1:])
    return LaurentCritic(y, q - y[1:, :, None])


def level_weights(order: int, T: int) -> np.ndarray:
    """`W[k, j, t] = (-1)^(k-j) C(t + k - j, k - j)` for `j <= k`, else 0: `[order+1, order+1, T]`
    (levels k, j = 0..order; t < T), the weights of the centred terms in `grad y_k`."""
    W = np.zeros((order + 1, order + 1, T))
    for k in range(order + 1):
        for j in range(k + 1):
            m = k - j
            W[k, j] = (-1) ** m * np.array([comb(t + m, m) for t in range(T)], float)
    return W


def episode_laurent_gradients(episode: Trajectory, scores: Array, critic: LaurentCritic,
                              order: int) -> Array:
    """Gradients `[order + 2, d]` of `y_{-1}(s0), ..., y_order(s0)` from one episode.

    `episode.states[:T+1]`, `episode.actions[:T+1]` (T = `len(actions) - 1` >= 1, static);
    `scores[S, A, d]` (`dsorl.fisher.score_table`); `critic` of order >= `order`.
    """
    T = episode.actions.shape[-1] - 1
    s, a = episode.states[:T + 1], episode.actions
    psi = scores[s, a]                                              # [T + 1, d]
    Z = critic.advantage[:order + 2, s, a][..., None] * psi         # [order + 2, T + 1, d]
    centred = Z[:order + 1, :T] - Z[:order + 1, T:]                 # [order + 1, T, d]
    W = jnp.asarray(level_weights(order, T), psi.dtype)
    levels = jnp.einsum("kjt,jtd->kd", W, centred) + Z[1:order + 2, T]
    return jnp.concatenate([Z[0, T][None], levels])


def sample_laurent_gradients(key: Array, mdp: MDP, policy, params, state, *, order: int,
                             episode_length: int, n_episodes: int, critic=None,
                             absorption_time: int = 2, score_clip=None) -> LaurentEstimates:
    """Per-episode `LaurentEstimates` (leading axis `[n_episodes]`) from `state`.

    Episodes of `episode_length` steps (`dsorl.sampling.rollouts`); their mean is the
    estimate. `critic`: defaults to the exact `laurent_critic`. Concrete input is checked:
    `order >= 0`, `n_episodes > 0`, `episode_length >= max(1, absorption_time)`, and an MDP
    whose randomised policies induce aperiodic unichain chains (`check_mixing`).
    """
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 0:
        raise ValueError(f"order = {order!r} must be an integer >= 0.")
    _checks.check_positive("n_episodes", n_episodes)
    if episode_length < max(1, absorption_time):
        raise ValueError(f"episode_length = {episode_length} must be >= max(1,"
                         f" absorption_time = {absorption_time}).")
    check_mixing(mdp)
    pi = policy.probs(params)
    critic = laurent_critic(mdp, pi, order) if critic is None else critic
    episodes = rollouts(key, mdp, pi, episode_length + 1, n_episodes, initial_state=state)
    scores = score_table(policy, params, score_clip=score_clip)

    def one(episode):
        T = episode_length
        psi = scores[episode.states[:T + 1], episode.actions]
        head, outer_T = psi[:absorption_time], jnp.outer(psi[T], psi[T])
        return LaurentEstimates(episode_laurent_gradients(episode, scores, critic, order),
                                outer_T, head.T @ head + absorption_time * outer_T)

    return jax.vmap(one)(episodes)
