"""Sampled value and gradient of Kemeny's constant from experiment-episodes.

Kemeny's constant of the chain a policy induces (`dsorl.mixing`, ``"kemeny"``) is
`K = tr(Z) = tr(H) + 1`, `H = sum_t (P^t - P*)` the deviation matrix. Column s of `H` is the
bias of the per-state reward `e_s(x) = 1{x = s}` (the bias of a reward `r` is `h_r = H r`), so

    K = 1 + sum_s h_{e_s}(s),        grad K = sum_s grad h_{e_s}(s):

the diagonal entry `H_ss` is the bias at start s of the reward "being in s", and its gradient
is the bias gradient of Dewanto & Gallagher (arXiv 2105.13609, Thm 3.1 with the post-mixing
form of Thm 3.2; `dsorl.estimators.average_reward`) for that reward and that start. Both
estimators below apply the nBw paper's per-episode estimators once per start s, with the
reward replaced by `e_s` (it does not depend on the policy, so Thm 3.1 holds unchanged), and
sum over s; every start is handled at once (`vmap` over s).

* Gradient (`kemeny_gradient_samples`): sample i is `sum_s g_hat_s,i`, `g_hat_s,i` the
  per-episode bias-gradient estimate (`sample_estimates`: pre-mixing
  `sum_{t<T} A_t psi_t - T A_T psi_T` plus the post-mixing term) of an episode of T steps
  from s, with the exact critic of reward `e_s` (`kemeny_critics`, as the paper's
  experiments: "all policy evaluations are exact", §6.3).
* Value (`kemeny_value_samples`): sample i is `1 + sum_s h_hat_s,i`, `h_hat_s,i =
  sum_{t<T} 1{s_t = s} - (T / M) sum_{T<=t<T+M} 1{s_t = s}` the paper's §6.3 naive bias
  estimator (`value_samples`) on an episode of `T + M` steps from s (`kemeny_episodes`).

**Bias.** Write `rho_t^s = P^t(s, .)`, `u_s(x) = E_a[q_b^s psi | x]`, `post_s(x) =
E_a[(q_w^s - w_s) psi | x]` and `J_s[x] = grad h_{e_s}(x)` (critic of reward `e_s`). The exact
finite-T expectations are

    E[gradient] = sum_s [ sum_{t<T} rho_t^s . u_s - T rho_T^s . u_s + rho_T^s . post_s ]
                = grad K + sum_s (rho_T^s - p*) . (post_s - J_s - T u_s),
    E[value]    = 1 + sum_{t<T} tr(P^t) - (T / M) sum_{T<=t<T+M} tr(P^t).

Both are unbiased when `P^T(s, .) = p*` for every start s (i.e. `P^T = P*`; then `tr P^t = 1`
for `t >= T` and `E[value] = 1 + tr sum_{t<T} (P^t - P*) = K`), and biased by
`O(T max_s ||P^T(s, .) - p*||_1)` otherwise: unlike the bias at one start s0, Kemeny's
constant needs every start to have mixed by T, so the slowest-mixing start sets T.

**Why every start, not a random one.** An alternative draws one start `s ~ uniform` per
episode and scales by S (`S g_hat_s`, also unbiased). With per-start means `mu_s` and
variances `sigma_s^2`, the mean of N bundles of S episodes (one from every start, this
module) has variance `sum_s sigma_s^2 / N`; the mean of `N S` random-start episodes has
`(sum_s sigma_s^2 + S sum_s (mu_s - mu_bar)^2) / N`: at equal cost the stratified form
is never worse (the second term is the spread of the per-start gradients, large
when a few states dominate). The random-start form only helps when fewer than S episodes
fit the budget (large S); it is not offered here.

Shapes: gradients `[N, d]` (d the number of flat parameters, layout of `dsorl.fisher`),
values `[N]`; the mean over N is the estimate, the sample standard deviation over
`sqrt(N)` its standard error (the N samples are independent). Cost: S critics (exact
evaluations of S rewards, dense) and `N S` episodes.
"""
import jax
import jax.numpy as jnp

from dsorl import _checks
from dsorl.estimators.average_reward import (Critic, check_mixing, coupled_episodes,
                                             oracle_critic, sample_estimates, value_samples)
from dsorl.mdp import MDP
from dsorl.sampling import Trajectory

__all__ = ["kemeny_critics", "kemeny_gradient_samples", "kemeny_episodes",
           "kemeny_value_samples"]

Array = jax.Array


def _indicator_mdp(mdp: MDP, s) -> MDP:
    """`mdp` with the reward `R[x, a] = 1{x = s}` (built from a traced `s`: unchecked)."""
    visit = (jnp.arange(mdp.n_states) == s).astype(mdp.R.dtype)
    return MDP(mdp.P, jnp.broadcast_to(visit[:, None], mdp.R.shape), mdp.rho,
               mdp.action_mask)


def kemeny_critics(mdp: MDP, policy, params) -> Critic:
    """`oracle_critic` of the reward `e_s = 1{state = s}`, for every s: a `Critic` whose
    leaves have a leading axis `[S]` (entry s: gain `p*_s`, bias `H[:, s]`, `q_b`, its
    gradient, `w = -H H[:, s]`, `q_w`). One exact evaluation per s, `vmap`ped."""
    return jax.vmap(lambda s: oracle_critic(_indicator_mdp(mdp, s), policy, params))(
        jnp.arange(mdp.n_states))


def kemeny_gradient_samples(key: Array, mdp: MDP, policy, params, *, episode_length: int,
                            n_episodes: int, critics: Critic = None, baseline: bool = True,
                            post_mixing: str = "score", score_clip=None) -> Array:
    """Per-sample estimates `[n_episodes, d]` of `grad K` (module docstring).

    Sample i sums, over every start s, the per-episode bias-gradient estimate
    (`dsorl.estimators.average_reward.sample_estimates`, Dewanto & Gallagher Thm 3.1/3.2)
    of one episode of `episode_length` T steps from s, for the reward `e_s`, with the exact
    critics `critics` (default `kemeny_critics`). Episodes from different starts use
    independent keys (`split(key, S)`). The mean is unbiased for `grad K` when
    `P^T(s, .) = p*` for every s; otherwise it is the finite-T expectation of the module
    docstring. Concrete input is checked as by `sample_estimates` (positive `n_episodes`,
    `episode_length >= 0`, an MDP whose randomised policies mix).
    """
    _checks.check_positive("n_episodes", n_episodes)
    check_mixing(mdp)
    critics = kemeny_critics(mdp, policy, params) if critics is None else critics
    S = mdp.n_states

    def from_start(k, s, critic):
        # absorption_time = 0: the Fisher estimates of sample_estimates are not used here
        return sample_estimates(k, mdp, policy, params, s, episode_length=episode_length,
                                n_episodes=n_episodes, critic=critic, absorption_time=0,
                                baseline=baseline, post_mixing=post_mixing,
                                score_clip=score_clip).bias_gradient
    return jax.vmap(from_start)(jax.random.split(key, S), jnp.arange(S), critics).sum(0)


def kemeny_episodes(mdp: MDP, pi: Array, uniforms: Array) -> Trajectory:
    """Coupled episodes of `pi[S, A]` from every start, rewarded by the visits of the start.

    `uniforms[S, N, L, 2]`: row s drives N episodes from state s (`coupled_episodes`, so a
    second policy on the same uniforms gives common random numbers). Returns a `Trajectory`
    with leading axes `[S, N]`: `states[S, N, L + 1]`, `actions[S, N, L]` and
    `rewards[s, i, t] = 1{s_t = s}`.
    """
    S = mdp.n_states
    if uniforms.ndim != 4 or uniforms.shape[0] != S or uniforms.shape[-1] != 2:
        raise ValueError(f"uniforms of shape {uniforms.shape} must be [S = {S}, N, L, 2]: one"
                         " block of episodes per start state.")

    def from_start(s, u):
        episodes = coupled_episodes(mdp, pi, s, u)
        return episodes._replace(rewards=(episodes.states[:, :-1] == s).astype(u.dtype))
    return jax.vmap(from_start)(jnp.arange(S), uniforms)


def kemeny_value_samples(episodes: Trajectory, *, episode_length: int) -> Array:
    """Per-sample estimates `[N]` of Kemeny's constant, `1 + sum_s h_hat_s` (module docstring).

    `episodes` from `kemeny_episodes` (`[S, N]` episodes of `L = T + M` steps, `M >= 1`);
    `h_hat_s = sum_{t<T} r_t - T g_hat` with `g_hat` the mean of `r_t` over `T <= t < T + M`
    (`value_samples`) on the episodes from s. Mean: `1 + sum_{t<T} tr(P^t) - (T / M)
    sum_{T<=t<T+M} tr(P^t)`, equal to `K` when `P^T = P*`.
    """
    per_start = jax.vmap(lambda ep: value_samples(ep, episode_length=episode_length).bias)
    return 1 + per_start(episodes).sum(0)
