"""Sampled gain and bias gradients and Fisher matrices from experiment-episodes.

Dewanto & Gallagher, "A nearly Blackwell-optimal policy gradient method" (arXiv 2105.13609),
§3-4 and their Algorithm 2. An experiment-episode starts in `s0` and runs `T` steps; its last
state-action pair `(s_T, a_T)` stands for a draw from the stationary law (`T` at least the
mixing time from `s0`), the earlier ones for the transient laws `P^t(s0, .)`. With scores
`psi_t = grad log pi(a_t|s_t)` and critic values `A_t = q_b(s_t, a_t) - b(s_t)` (bias action
values, minus the state baseline `b = h` unless `baseline=False`; the baseline leaves every
expectation unchanged because `E_a[psi] = 0`), one episode gives

    gain gradient      z_T = A_T psi_T                                (Sutton et al. 2000)
    gain Fisher        psi_T psi_T^T                                  (eq. 15)
    bias, pre-mixing   sum_{t<T} A_t psi_t - T z_T                    (Thm 3.1)
    bias, post-mixing  grad q_b(s_T, a_T) + z_T            ("critic_gradient", Thm 3.1)
                    or (q_w(s_T, a_T) - w(s_T)) psi_T      ("score", Thm 3.2)
    bias Fisher        sum_{t<tau} psi_t psi_t^T + tau psi_T psi_T^T  (eq. 19, tau = 2)

Each is unbiased for its exact value when `P^T(s0, .) = p*`; otherwise its mean is the exact
finite-T expectation (tests check both). The critic is an input (`Critic`); `oracle_critic`
evaluates the policy exactly, as in the paper's experiments ("all policy evaluations are
exact", §6.3). Gradients are flat `[d]`, Fishers `[d, d]` (layout of `dsorl.fisher`).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from dsorl import _checks
from dsorl.bias_gradient import bias_offset_values
from dsorl.fisher import score_table
from dsorl.markov import bias, closed_classes, gain
from dsorl.mdp import MDP, induced_chain
from dsorl.sampling import Trajectory, rollouts

Array = jax.Array

POST_MIXING_FORMS = ("score", "critic_gradient")


class Critic(NamedTuple):
    """Values of a policy used by the estimators (exact ones from `oracle_critic`).

    `gain` g; `bias[S]` h; `q_bias[S, A]` = R - g + P h; `grad_q_bias[S, A, d]` its gradient
    in theta; `offset[S]` w = -H h and `q_offset[S, A]` = -h + P w (see
    `dsorl.bias_gradient.bias_offset_values`).
    """

    gain: Array
    bias: Array
    q_bias: Array
    grad_q_bias: Array
    offset: Array
    q_offset: Array


class EpisodeEstimates(NamedTuple):
    """Estimates from one episode (or their means over episodes)."""

    gain_gradient: Array
    gain_fisher: Array
    bias_pre_mixing: Array
    bias_post_mixing: Array
    bias_fisher: Array

    @property
    def bias_gradient(self) -> Array:
        return self.bias_pre_mixing + self.bias_post_mixing


def oracle_critic(mdp: MDP, policy, params) -> Critic:
    """Exact policy evaluation of `policy(params)`: gain, bias, `q_b`, `grad q_b`, `w`, `q_w`.

    `grad q_b(s, a) = -grad g + sum_s' P(s'|s, a) grad h(s')`, by autodiff of the exact
    evaluation (the Jacobian of `h`, `[S, d]`).
    """
    flat, unravel = ravel_pytree(params)

    def evaluate(theta):
        chain = induced_chain(mdp, policy.probs(unravel(theta)))
        g, h = gain(chain), bias(chain)
        return mdp.R - g + mdp.P @ h, (g, h)

    q, (g, h) = evaluate(flat)
    grad_q = jax.jacfwd(lambda th: evaluate(th)[0])(flat)
    w, q_w = bias_offset_values(mdp, policy.probs(params))
    return Critic(g, h, q, grad_q, w, q_w)


def episode_estimates(episode: Trajectory, scores: Array, critic: Critic, *,
                      absorption_time: int = 2, baseline: bool = True,
                      post_mixing: str = "score") -> EpisodeEstimates:
    """Estimates from one episode `(s_0, a_0, ..., s_T, a_T)` (module docstring).

    `episode.states[:T+1]` and `episode.actions[:T+1]` are used (T = `len(actions) - 1`);
    `scores[S, A, d]` from `dsorl.fisher.score_table`. `absorption_time` (tau, static) must
    not exceed T.
    """
    T = episode.actions.shape[-1] - 1
    _check_options(T, absorption_time, post_mixing)
    s, a = episode.states[:T + 1], episode.actions
    psi = scores[s, a]
    adv = critic.q_bias[s, a] - (critic.bias[s] if baseline else 0)
    z = adv[:, None] * psi
    z_T, psi_T = z[T], psi[T]
    if post_mixing == "critic_gradient":
        post = critic.grad_q_bias[s[T], a[T]] + z_T
    else:
        q_w = critic.q_offset[s[T], a[T]] - (critic.offset[s[T]] if baseline else 0)
        post = q_w * psi_T
    outer_T = jnp.outer(psi_T, psi_T)
    head = psi[:absorption_time]
    return EpisodeEstimates(
        gain_gradient=z_T,
        gain_fisher=outer_T,
        bias_pre_mixing=z[:T].sum(axis=0) - T * z_T,
        bias_post_mixing=post,
        bias_fisher=head.T @ head + absorption_time * outer_T,
    )


def sample_estimates(key: Array, mdp: MDP, policy, params, state, *, episode_length: int,
                     n_episodes: int, critic: Critic = None, absorption_time: int = 2,
                     baseline: bool = True, post_mixing: str = "score") -> EpisodeEstimates:
    """Per-episode estimates from `n_episodes` episodes of `episode_length` steps from `state`.

    Returns an `EpisodeEstimates` whose leaves have a leading axis `[n_episodes]`: their
    mean is the estimate (`mean_estimates`), their standard deviation over `sqrt(N)` its
    standard error. Episodes are `lax.scan`s, `vmap`ped over split keys
    (`dsorl.sampling.rollouts`); `critic` defaults to `oracle_critic`. Concrete input is
    checked: positive `n_episodes`, `episode_length >= absorption_time`, and an MDP whose
    randomised policies induce aperiodic unichain chains (`check_mixing`).
    """
    _checks.check_positive("n_episodes", n_episodes)
    _check_options(episode_length, absorption_time, post_mixing)
    check_mixing(mdp)
    pi = policy.probs(params)
    critic = oracle_critic(mdp, policy, params) if critic is None else critic
    episodes = rollouts(key, mdp, pi, episode_length + 1, n_episodes, initial_state=state)
    scores = score_table(policy, params)
    one = lambda ep: episode_estimates(ep, scores, critic, absorption_time=absorption_time,
                                       baseline=baseline, post_mixing=post_mixing)
    return jax.vmap(one)(episodes)


def mean_estimates(samples: EpisodeEstimates) -> EpisodeEstimates:
    """Sample means over the leading (episode) axis."""
    return jax.tree_util.tree_map(lambda x: x.mean(axis=0), samples)


def check_mixing(mdp: MDP, *, aperiodic: bool = True) -> None:
    """Raise `ValueError` unless a policy using every available action mixes from any state.

    Such (randomised) policies all induce the chain structure of the union of the actions'
    supports, so one check covers every sigmoid or softmax policy: it must be unichain (one
    closed class; multichain MDPs have state-dependent gains) and, if `aperiodic`, its
    closed class aperiodic (else `P^t` has no limit and the last state of an episode is no
    draw from `p*`). Deciding whether every deterministic policy is unichain is NP-hard (Tsitsiklis
    2007); the randomised iterates of a policy gradient never need it. Skipped for traced
    MDPs.
    """
    if not _checks.is_concrete(mdp.P, mdp.action_mask):
        return
    allowed = (np.ones(mdp.R.shape, bool) if mdp.action_mask is None
               else np.asarray(mdp.action_mask))
    support = (np.asarray(mdp.P) * allowed[..., None]).sum(axis=1) > 0
    classes = closed_classes(support)
    if len(classes) != 1:
        shown = "; ".join(str(c.tolist()[:8]) for c in classes[:4])
        raise ValueError(f"the MDP is multichain: a policy using every action has"
                         f" {len(classes)} closed recurrent classes ({shown}), so gain and"
                         " bias depend on the initial state.")
    period = _period(support, classes[0]) if aperiodic else 1
    if period != 1:
        raise ValueError(f"the recurrent class {classes[0].tolist()[:8]} is periodic (period"
                         f" {period}): P^t never converges, so episodes never mix.")


def _check_options(T: int, absorption_time: int, post_mixing: str) -> None:
    if not 0 <= absorption_time <= T:
        raise ValueError(f"absorption_time = {absorption_time} must lie in [0, T = {T}]"
                         " (T: the episode length).")
    if post_mixing not in POST_MIXING_FORMS:
        raise ValueError(f"post_mixing = {post_mixing!r}; choose one of {POST_MIXING_FORMS}.")


def _period(support: np.ndarray, states: np.ndarray) -> int:
    """Period of a closed class: gcd of `level(u) + 1 - level(v)` over its edges (BFS levels)."""
    sub = support[np.ix_(states, states)]
    level = np.full(len(states), -1)
    level[0], frontier = 0, [0]
    while frontier:
        nxt = []
        for u in frontier:
            for v in np.flatnonzero(sub[u]):
                if level[v] < 0:
                    level[v] = level[u] + 1
                    nxt.append(v)
        frontier = nxt
    src, dst = np.nonzero(sub)
    return int(np.gcd.reduce(np.abs(level[src] + 1 - level[dst])))


__all__ = ["Critic", "EpisodeEstimates", "oracle_critic", "episode_estimates",
           "sample_estimates", "mean_estimates", "check_mixing", "POST_MIXING_FORMS"]
