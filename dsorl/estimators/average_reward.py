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

Objective values from samples (`value_samples`, used by the sampled line search of
`dsorl.algorithms.nbw`): an episode of `T + M` steps from `s0` with rewards `r_t = R(s_t, a_t)`
gives

    gain               g_hat = (1/M) sum_{T <= t < T+M} r_t     (rewards after mixing)
    bias at s0         h_hat = sum_{t<T} r_t - T g_hat            (the paper's §6.3 "naive"
                                                                  estimator, from s0)

Episodes are drawn from shared uniforms (`common_uniforms`, `coupled_episodes`), so estimates
at several parameters are coupled: common random numbers.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from dsorl import _checks
from dsorl.bias_gradient import bias_offset_values
from dsorl.fisher import score_table
from dsorl.graph import action_support
from dsorl.markov import bias, gain
from dsorl.mdp import MDP, induced_chain
from dsorl.sampling import Trajectory, draw, rollouts

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
                     baseline: bool = True, post_mixing: str = "score",
                     score_clip=None) -> EpisodeEstimates:
    """Per-episode estimates from `n_episodes` episodes of `episode_length` steps from `state`.

    Returns an `EpisodeEstimates` whose leaves have a leading axis `[n_episodes]`: their
    mean is the estimate (`mean_estimates`), their standard deviation over `sqrt(N)` its
    standard error. Episodes are `lax.scan`s, `vmap`ped over split keys
    (`dsorl.sampling.rollouts`); `critic` defaults to `oracle_critic`. Concrete input is
    checked: positive `n_episodes`, `episode_length >= absorption_time`, and an MDP whose
    randomised policies induce aperiodic unichain chains (`check_mixing`). `score_clip`:
    the scores of clipped probabilities (`dsorl.fisher.score_table`).
    """
    _checks.check_positive("n_episodes", n_episodes)
    _check_options(episode_length, absorption_time, post_mixing)
    check_mixing(mdp)
    pi = policy.probs(params)
    critic = oracle_critic(mdp, policy, params) if critic is None else critic
    episodes = rollouts(key, mdp, pi, episode_length + 1, n_episodes, initial_state=state)
    scores = score_table(policy, params, score_clip=score_clip)
    one = lambda ep: episode_estimates(ep, scores, critic, absorption_time=absorption_time,
                                       baseline=baseline, post_mixing=post_mixing)
    return jax.vmap(one)(episodes)


def mean_estimates(samples: EpisodeEstimates) -> EpisodeEstimates:
    """Sample means over the leading (episode) axis."""
    return jax.tree_util.tree_map(lambda x: x.mean(axis=0), samples)


class ValueSamples(NamedTuple):
    """Per-episode estimates `[N]` of the gain and of the bias at the start state."""

    gain: Array
    bias: Array


def common_uniforms(key: Array, n_steps: int, n_episodes: int, dtype=None) -> Array:
    """The random numbers of `n_episodes` coupled episodes: uniforms `[N, n_steps, 2]`.

    Step `t` of episode `i` draws its action with `u[i, t, 0]` and its next state with
    `u[i, t, 1]` (`coupled_episodes`). Reusing one array at several policies gives common
    random numbers.
    """
    _checks.check_positive("n_episodes", n_episodes)
    dtype = jnp.result_type(float) if dtype is None else dtype
    return jax.random.uniform(key, (n_episodes, n_steps, 2), dtype)


def coupled_episodes(mdp: MDP, pi: Array, state, uniforms: Array) -> Trajectory:
    """Episodes of `pi[S, A]` from `state`, every draw the inverse cumulative law of a uniform.

    `a_t = min{a : F_pi(a | s_t) > u[t, 0]}`, `s_{t+1} = min{s' : F_P(s' | s_t, a_t) > u[t, 1]}`
    with `F` the cumulative sums (`dsorl.sampling.draw`); zero-probability actions and
    states are never drawn. Each
    episode has the law of `dsorl.sampling.rollout`; two policies run on the same `uniforms`
    (shape `[N, L, 2]`) take the same draws until a uniform falls between their cumulative
    laws, which happens with probability at most `sum_t max_s TV(pi(.|s), pi'(.|s))` before
    the episodes part. Returns a `Trajectory` with leading axis `[N]`: `states[N, L + 1]`,
    `actions[N, L]`, `rewards[N, L]` (`r_t = R(s_t, a_t)`).
    """
    def step(s, u):
        a = draw(pi[s], u[0])
        return draw(mdp.P[s, a], u[1]), (s, a)

    def episode(us):
        s_last, (states, actions) = lax.scan(step, jnp.asarray(state, jnp.int32), us)
        return Trajectory(jnp.append(states, s_last), actions, mdp.R[states, actions])

    return jax.vmap(episode)(uniforms)


def value_samples(episodes: Trajectory, *, episode_length: int) -> ValueSamples:
    """Per-episode gain and bias estimates at the episodes' start state (§6.3).

    With `T = episode_length` and `M = L - T >= 1` (the gain window; `L` the episodes'
    number of steps), each episode `(s_t, a_t, r_t)_{t < T+M}` gives
    `g_hat = (1/M) sum_{T<=t<T+M} r_t` and `h_hat = sum_{t<T} r_t - T g_hat` (Dewanto &
    Gallagher, arXiv 2105.13609, §6.3: the sum of rewards from `s0` minus the gain estimate
    times the number of steps).

    Bias (truncation). With `e_T = ||P^T(s0, .) - p*||_1` (nonincreasing in T), span(x) =
    max x - min x, `r_pi` the policy's reward and `h` its bias:
    `|E g_hat - g| <= e_T span(r_pi) / 2` and `|E h_hat - h(s0)| <= e_T (T span(r_pi) +
    span(h)) / 2`, since `h(s0) = sum_{t<T} (P^t r_pi - g)(s0) + ((P^T - P*) h)(s0)`. Both
    vanish once `P^T(s0, .) = p*`, e.g. for T at least the mixing time (the paper's episode
    lengths).

    Variance. `Var h_hat` is dominated by `T^2 Var g_hat`: the window averages `M` correlated
    post-mixing rewards, so `Var g_hat` falls roughly like `1/M` once `M` exceeds the chain's
    correlation time (Env B2, T = 22, sigmoid w = (0.3, -0.5): the standard deviation of
    `h_hat` is 114 with M = 1 and 28 with M = T). The standard error of a mean over `N` episodes is the sample
    standard deviation over `sqrt(N)`.

    Shapes: `episodes.rewards[N, L]` (e.g. from `coupled_episodes`); returns `[N]` arrays.
    """
    T = episode_length
    if not 0 <= T < episodes.rewards.shape[-1]:
        raise ValueError(f"episodes of {episodes.rewards.shape[-1]} steps leave no gain"
                         f" window after episode_length = {T} (need T + M steps, M >= 1).")
    r = episodes.rewards
    g = r[:, T:].mean(axis=1)
    return ValueSamples(g, r[:, :T].sum(axis=1) - T * g)


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
    _checks.check_unichain(action_support(mdp.P, mdp.action_mask),
                           "the MDP is multichain: a policy using every action",
                           "gain and bias depend on the initial state", aperiodic=aperiodic)


def _check_options(T: int, absorption_time: int, post_mixing: str) -> None:
    if not 0 <= absorption_time <= T:
        raise ValueError(f"absorption_time = {absorption_time} must lie in [0, T = {T}]"
                         " (T: the episode length).")
    if post_mixing not in POST_MIXING_FORMS:
        raise ValueError(f"post_mixing = {post_mixing!r}; choose one of {POST_MIXING_FORMS}.")


__all__ = ["Critic", "EpisodeEstimates", "oracle_critic", "episode_estimates",
           "sample_estimates", "mean_estimates", "ValueSamples", "common_uniforms",
           "coupled_episodes", "value_samples", "check_mixing", "POST_MIXING_FORMS"]
