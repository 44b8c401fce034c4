"""Sampled DSO gradients and surrogates: Algorithm 1 (backward accumulation) of Todorov,
"Dynamical System Optimization" (arXiv 2506.08340), with a fitted value baseline.

Episodes of a `dsorl.chain_models.ChainModel` are rolled out (`lax.scan`, `vmap` over
keys) and returns accumulated backwards, `G_t = r(x_t) + gamma G_{t+1}`, bootstrapped
with `v_hat(x_T)` at the horizon `T` and stopped at a terminal state. Algorithm 1 is

    g = (1/N) sum_n [ grad log P0(x_0) (G_0 - P0 . v_hat)
                      + sum_{t<T} gamma^t ( grad r(x_t) + grad log P(x_{t+1}|x_t) (G_t - v_hat(x_t)) ) ],

the sampled Thm 1 with baseline `b(x_t) = (v_hat(x_t) - r(x_t)) / gamma`; it is unbiased
for every `v_hat` up to the truncation term of order `gamma^T`. The sums are scattered
into cotangents of `(r, log P, log P0)` and pulled back through the model once (one VJP
per batch, or per episode with `per_episode=True`).

Off-chain data (episodes of a behaviour chain `B`, first state drawn from `P0_alpha`)
are reweighted per decision (Precup, Sutton & Singh 2000): `rho_t = P_alpha(x_{t+1}|x_t) /
B(x_{t+1}|x_t)`, prefix weights `w_t = prod_{k<t} rho_k`, returns
`G_t = r(x_t) + gamma rho_t G_{t+1}`. On-chain, `B = P_alpha` and every ratio is 1.

The sampled surrogate (importance ratios `P_theta / P_alpha` of the sampled transitions)
estimates `S(theta, alpha)` of `dsorl.chain_models.surrogate` for every `theta`; with
ratios clipped to `[1 - eps, 1 + eps]` pessimistically it is the objective of Proximal
Chain Optimisation (PPO's analogue).
"""
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from dsorl import _checks
from dsorl import chain_models as cm
from dsorl._struct import unchecked
from dsorl.markov import Chain, validate_chain
from dsorl.sampling import chain_rollout

__all__ = ["sample_chain", "sample_episodes", "Batch", "prepare_batch", "backward_accumulation",
           "surrogate_estimate", "fit_value"]

Array = jax.Array


def _check_sizes(**sizes) -> None:
    for name, value in sizes.items():
        if int(value) < 1:
            raise ValueError(f"{name} = {value} must be >= 1.")


def sample_chain(key: Array, P: Array, initial: Array, horizon: int, n_episodes: int) -> Array:
    """`n_episodes` state sequences `x_0..x_T` of the chain `P[X, X]` from `x_0 ~ initial`,
    shape `[N, T + 1]` (core `dsorl.sampling.chain_rollout`, one `vmap` over keys)."""
    _check_sizes(horizon=horizon, n_episodes=n_episodes)
    chain = unchecked(Chain, P=P, r=jnp.zeros(P.shape[0], P.dtype))
    keys = jax.random.split(key, n_episodes)
    return jax.vmap(lambda k: chain_rollout(k, chain, horizon, initial))(keys)


def sample_episodes(key: Array, model: cm.ChainModel, theta, horizon: int,
                    n_episodes: int) -> Array:
    """Episodes of the model's chain at `theta` (`x_0 ~ P0(theta)`), `[N, T + 1]`.

    Rollouts continue past a terminal state; every estimator ignores those steps.
    """
    _check_sizes(horizon=horizon, n_episodes=n_episodes)
    cm.check_chain(model, theta)
    P, _, P0 = cm.evaluate(model, theta)
    return sample_chain(key, P, P0, horizon, n_episodes)


class Batch(NamedTuple):
    """Sampled episodes prepared at the parameters `alpha` they are judged against.

    Shapes `[N, T]` unless noted. `states[N, T + 1]`; `alive[N, T + 1]` (no terminal
    state before t); `reward_weight = gamma^t alive_t w_t` (weight of `r(x_t, .)`);
    `ratio_weight = gamma^t alive_t (x_t not terminal) w_t rho_t` (weight of the
    transition term); `advantage = r_alpha(x_t) + gamma G_{t+1} - v_hat(x_t)` (on-chain:
    `G_t - v_hat(x_t)`); `initial_advantage[N] = G_0 - P0_alpha . v_hat`;
    `returns[N, T + 1]` (`G_T = v_hat(x_T)`); `log_p` / `log_p0[N]`: `log P_alpha` of the
    sampled transitions / first states; `reward = r_alpha(x_t)`.
    """

    states: Array
    alive: Array
    reward_weight: Array
    ratio_weight: Array
    advantage: Array
    initial_advantage: Array
    returns: Array
    log_p: Array
    log_p0: Array
    reward: Array


def prepare_batch(model: cm.ChainModel, alpha, gamma, states: Array, v_hat: Array, *,
                  behaviour: Optional[Array] = None) -> Batch:
    """Backward accumulation of the returns of `states[N, T + 1]` at `alpha`.

    `behaviour[X, X]`: the chain that generated the transitions (off-chain; default: the
    model's own chain at `alpha`). Everything returned is constant in `theta`.
    """
    cm.check_model(model, alpha, gamma)
    if behaviour is not None and _checks.is_concrete(behaviour):
        validate_chain(behaviour)
    _, r, P0 = jax.lax.stop_gradient(cm.evaluate(model, alpha))
    log_P = jax.lax.stop_gradient(cm.log_transition(model, alpha))
    v_hat = jnp.asarray(v_hat, r.dtype)
    x, x_next = states[:, :-1], states[:, 1:]
    T = x.shape[1]
    cont = cm.not_terminal(model, r.shape[0], r.dtype)[x]
    log_p = log_P[x, x_next]
    if behaviour is None:
        rho = jnp.ones_like(log_p)
    else:
        rho = jnp.exp(log_p - cm.safe_log(jnp.asarray(behaviour, r.dtype))[x, x_next])
    reward = r[x]

    def back(G_next, inputs):
        reward_t, cont_t, rho_t = inputs
        G = reward_t + gamma * cont_t * rho_t * G_next
        return G, G

    G_T = v_hat[states[:, -1]]
    _, G = lax.scan(back, G_T, (reward.T, cont.T, rho.T), reverse=True)
    returns = jnp.concatenate([G.T, G_T[:, None]], axis=1)
    alive = jnp.concatenate([jnp.ones_like(cont[:, :1]), jnp.cumprod(cont, axis=1)], axis=1)
    prefix = jnp.concatenate([jnp.ones_like(rho[:, :1]), jnp.cumprod(rho, axis=1)[:, :-1]],
                             axis=1)
    discount = gamma ** jnp.arange(T, dtype=r.dtype)
    reward_weight = discount * alive[:, :-1] * prefix
    advantage = reward + gamma * cont * returns[:, 1:] - v_hat[x]
    return Batch(states=states, alive=alive, reward_weight=reward_weight,
                 ratio_weight=reward_weight * cont * rho, advantage=advantage,
                 initial_advantage=returns[:, 0] - P0 @ v_hat, returns=returns,
                 log_p=log_p, log_p0=cm.safe_log(P0)[states[:, 0]], reward=reward)


def backward_accumulation(model: cm.ChainModel, theta, gamma, states: Array, v_hat: Array,
                          *, behaviour: Optional[Array] = None, per_episode: bool = False):
    """Algorithm 1: the sampled DSO gradient at `theta` from `states[N, T + 1]`.

    Returns a pytree like `theta` (the batch mean), or with a leading `[N]` axis (one
    estimate per episode, for standard errors) when `per_episode`. `v_hat[X]` is the
    baseline (fitted on the previous batch, `fit_value`); any `v_hat` leaves the mean
    unbiased. `behaviour` as in `prepare_batch`.
    """
    batch = prepare_batch(model, theta, gamma, states, v_hat, behaviour=behaviour)
    dtype = batch.reward.dtype
    n = jnp.shape(v_hat)[0]

    def cotangents(b: Batch):
        x, x_next = b.states[..., :-1], b.states[..., 1:]
        c_r = jnp.zeros(n, dtype).at[x].add(b.reward_weight)
        c_P = jnp.zeros((n, n), dtype).at[x, x_next].add(b.ratio_weight * b.advantage)
        c_0 = jnp.zeros(n, dtype).at[b.states[..., 0]].add(b.initial_advantage)
        return c_r, c_P, c_0

    _, pullback = jax.vjp(lambda th: (model.reward(th), cm.log_transition(model, th),
                                      cm.log_initial(model, th)), theta)
    if per_episode:
        return jax.vmap(lambda b: pullback(cotangents(b))[0])(batch)
    c_r, c_P, c_0 = cotangents(batch)
    size = states.shape[0]
    return pullback((c_r / size, c_P / size, c_0 / size))[0]


def surrogate_estimate(model: cm.ChainModel, theta, batch: Batch, clip=jnp.inf) -> Array:
    """Sampled `S(theta, alpha)` from a `Batch` prepared at `alpha`:

    `mean_n [ G_0 + pess(rho0, A0) - A0 + sum_t reward_weight_t (r(x_t, theta) - r(x_t, alpha))
    + ratio_weight_t (pess(rho_t, A_t) - A_t) ]`, with `rho_t = P_theta / P_alpha` of the
    sampled transition, `pess(rho, A) = min(rho A, clip(rho, 1 - eps, 1 + eps) A)`,
    `eps = clip` (the default `inf` leaves ratios unclipped: an unbiased estimate whose
    gradient at `theta = alpha` is Algorithm 1's).
    """
    b = batch
    x, x_next = b.states[:, :-1], b.states[:, 1:]
    live = b.ratio_weight > 0
    log_ratio = jnp.where(live, cm.log_transition(model, theta)[x, x_next] - jnp.where(live, b.log_p, 0), 0)
    log_ratio0 = cm.log_initial(model, theta)[b.states[:, 0]] - b.log_p0
    transitions = b.ratio_weight * (_pessimistic(jnp.exp(log_ratio), b.advantage, clip) - b.advantage)
    start = _pessimistic(jnp.exp(log_ratio0), b.initial_advantage, clip) - b.initial_advantage
    rewards = b.reward_weight * (model.reward(theta)[x] - b.reward)
    return jnp.mean(b.returns[:, 0] + start + jnp.sum(rewards + transitions, axis=1))


def _pessimistic(ratio, advantage, clip):
    return jnp.minimum(ratio * advantage, jnp.clip(ratio, 1 - clip, 1 + clip) * advantage)


def fit_value(batch: Batch, previous: Array) -> Array:
    """Tabular value fit: the mean return `G_t` of each state over the batch's live steps
    `t < T`; states not visited keep `previous[X]`. The baseline of the next batch."""
    x = batch.states[:, :-1]
    live = batch.alive[:, :-1]
    n = previous.shape[0]
    sums = jnp.zeros(n, previous.dtype).at[x].add(live * batch.returns[:, :-1])
    counts = jnp.zeros(n, previous.dtype).at[x].add(live)
    return jnp.where(counts > 0, sums / jnp.maximum(counts, 1), previous)
