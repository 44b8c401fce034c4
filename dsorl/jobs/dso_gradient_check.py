"""The first check Todorov suggests for DSO's Algorithm 1 (arXiv 2506.08340): on a
3-state chain with a known gradient, N = 1000 rollouts give a relative error below 10%.

The chain (first exit, gamma = 1): from state 0 move to 1 w.p. `p0 = sigmoid(theta_0)`
(else stay), from 1 exit to the terminal state 2 w.p. `p1 = sigmoid(theta_1)` (else back
to 0); reward -1 per step (cost 1). By hand, `J = -(1 + p0) / (p0 p1)` and
`grad J = ((1 - p0) / (p0 p1), (1 + p0)(1 - p1) / (p0 p1))`: `(2, 3)` at `theta = 0`.

For each batch size N, `repeats` independent estimates (one compiled program; `lax.map`
over the repeats bounds memory) with three baselines: `v_hat = 0`, `v_hat` fitted on the
previous batch (the paper's recipe: tabular mean returns of an independent batch of the
same size) and the exact `v`. Reported: the root-mean-square relative error, the share of
estimates within 10%, the largest bias in standard errors, and the per-episode total
variance (trace of the covariance) with its ratio to `v_hat = 0`. The bias is measured on
all `repeats x N` episodes pooled, in standard errors `z = (mean - exact) / se` per
coordinate: the largest `|z|` (about 3 to 4 for d in the hundreds when unbiased, more with
heavy-tailed episodes) and the mean of `z^2` (about 1 when unbiased; the estimator is
unbiased up to the `gamma^T` truncation).

Table `gradient_check`, one row per batch size and baseline: episodes, baseline (zero,
fitted, exact), rms_relative_error, share_within_10pct, max_bias_in_se,
mean_squared_bias_in_se, total_variance, variance_ratio_to_zero. Arrays: exact_gradient,
objective.
"""
import jax
import jax.numpy as jnp
import numpy as np

from dsorl import chain_models as cm, progress
from dsorl.estimators import dso as est

__all__ = ["DEFAULTS", "exit_chain", "closed_form", "baseline_study", "summarise", "run"]

DEFAULTS = {
    "theta": [0.0, 0.0],
    "episodes": [100, 1000, 4000],
    "repeats": 32,
    "horizon": 100,
    "seed": 0,
    "output_dir": "results/dso_gradient_check",
}


def exit_chain() -> cm.ChainModel:
    """The 3-state first-exit chain of the module docstring."""
    def transition(theta):
        p0, p1 = jax.nn.sigmoid(theta[0]), jax.nn.sigmoid(theta[1])
        return jnp.array([[1 - p0, p0, 0.0], [1 - p1, 0.0, p1], [0.0, 0.0, 1.0]])
    return cm.ChainModel(transition, jnp.array([-1.0, -1.0, 0.0]), jnp.array([1.0, 0.0, 0.0]),
                         terminal=jnp.array([False, False, True]))


def closed_form(theta):
    """`(J, grad J)` by hand."""
    p0, p1 = 1 / (1 + np.exp(-np.asarray(theta, float)))
    return (-(1 + p0) / (p0 * p1),
            np.array([(1 - p0) / (p0 * p1), (1 + p0) * (1 - p1) / (p0 * p1)]))


def baseline_study(model, theta, gamma, horizon: int, n_episodes: int, keys, exact_value):
    """Per-episode Algorithm-1 gradients `[R, N, d]` for `v_hat` = 0, fitted, exact
    (`R = len(keys)` independent repeats, each with its own previous batch)."""
    X = exact_value.shape[0]

    def one(key):
        k_prev, k_now = jax.random.split(key)
        previous = est.sample_episodes(k_prev, model, theta, horizon, n_episodes)
        fitted = est.fit_value(est.prepare_batch(model, theta, gamma, previous, jnp.zeros(X)),
                               jnp.zeros(X))
        states = est.sample_episodes(k_now, model, theta, horizon, n_episodes)
        grads = [est.backward_accumulation(model, theta, gamma, states, v, per_episode=True)
                 for v in (jnp.zeros(X), fitted, exact_value)]
        return [jnp.reshape(g, (n_episodes, -1)) for g in grads]

    return jax.lax.map(one, keys)


def summarise(per_episode, exact) -> list:
    """Rows of the baseline table from `[R, N, d]` per-episode gradients per baseline."""
    rows, variance0 = [], None
    for name, g in zip(("zero", "fitted", "exact"), per_episode):
        g = np.asarray(g)
        R, N = g.shape[:2]
        means = g.mean(axis=1)
        relative = np.linalg.norm(means - exact, axis=1) / np.linalg.norm(exact)
        variance = float(g.var(axis=1, ddof=1).sum(axis=1).mean())
        variance0 = variance if variance0 is None else variance0
        pooled = g.reshape(R * N, -1)  # episodes are independent given their batch's v_hat
        z = (pooled.mean(0) - exact) / (pooled.std(axis=0, ddof=1) / np.sqrt(R * N))
        rows.append({"episodes": N, "baseline": name,
                     "rms_relative_error": float(np.sqrt(np.mean(relative ** 2))),
                     "share_within_10pct": float(np.mean(relative < 0.1)),
                     "max_bias_in_se": float(np.max(np.abs(z))),
                     "mean_squared_bias_in_se": float(np.mean(z ** 2)),
                     "total_variance": variance,
                     "variance_ratio_to_zero": variance / variance0})
    return rows


def run(config: dict) -> dict:
    model = exit_chain()
    theta = jnp.asarray(config["theta"], float)
    J, exact = closed_form(config["theta"])
    value = cm.value(model, theta, 1.0)
    np.testing.assert_allclose(cm.gradient(model, theta, 1.0), exact, rtol=1e-12)
    rows = []
    for i, n in progress.track(list(enumerate(config["episodes"])), "dso_gradient_check",
                               unit="episode counts"):
        keys = jax.random.split(jax.random.fold_in(jax.random.key(config["seed"]), i),
                                config["repeats"])
        study = jax.jit(lambda k: baseline_study(model, theta, 1.0, config["horizon"], n, k,
                                                 value))
        rows += summarise(study(keys), exact)
    return {"tables": {"gradient_check": rows}, "seeds": [config["seed"]],
            "arrays": {"exact_gradient": exact, "objective": np.asarray(J)}}
