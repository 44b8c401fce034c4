"""Sweep a dsorl method (PCO, DSO Algorithm 1, REINFORCE, natural DSO) with neural
policies on a gymnax control environment over step size × seed (× any other
hyperparameter) as one `dsorl sweep`.

The methods, networks and batch shape are those of the control benchmark
(`dsorl.jobs.control`, `dsorl.algorithms.control`): `dsorl:` holds the shared settings
(MLP sizes, `n_envs` x `n_rollout` steps per batch, value fit, gradient clipping), `pco:`
PCO's epochs and minibatches, `natural_dso:` its conjugate-gradient iterations, `hparams`
the fixed `HParams` fields (gamma, value_step_size, clip, damping) and `grid` the swept
ones (any `HParams` field, plus `seed`).
Every member trains for `total_steps` environment steps from its own initial network,
drawn like the benchmark's from `fold_in(key, 7)` of its key `jax.random.key(seed)`
(`params0`, zeros, only fixes the shapes and the float32 dtype: neural networks need a
random start). Every grid value is checked by the algorithm's own `validate` before
anything is compiled.

One row per member: `eval_return`, the mean return of `eval_episodes` stochastic
episodes of the final policy (rejax's evaluator, as the benchmark scores), `train_return`,
the mean return of the training episodes that ended in the last tenth of the batches (a
steadier view of where training ended), and `mean_train_return`, the mean over all
batches (the area under the learning curve: sample efficiency). The trace
`episode_return` (per batch) can be kept with `sweep: {traces: [episode_return]}`.
"""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dsorl.config import Free
from dsorl.sweep import Grid, check_grid

__all__ = ["DEFAULTS", "METHODS", "FromKey", "sweep_spec"]

METHODS = ("pco", "dso", "reinforce", "natural_dso")

DEFAULTS = {
    "env": "CartPole-v1",
    "method": "pco",
    "total_steps": 100000,
    "dsorl": {"hidden": [64, 64], "n_envs": 10, "n_rollout": 100, "value_epochs": 10,
              "max_grad_norm": 0.5},
    "pco": {"epochs": 4, "n_minibatches": 4},
    "natural_dso": {"cg_iters": 10},
    "hparams": Free(gamma=0.99, value_step_size=1e-3),  # fixed HParams fields
    "grid": Free(step_size=[3e-4, 1e-3, 3e-3, 1e-2], seed=list(range(16))),
    "eval_episodes": 32,
    "output_dir": "results/sweep_control",
}


@dataclasses.dataclass(frozen=True)
class FromKey:
    """`algorithm.run` from the policy's random initialisation drawn from `fold_in(key, 7)`
    (as `dsorl.jobs.control` draws each seed's start) in the dtype of `params0`: the run
    signature of `dsorl.sweep`."""

    algorithm: Any

    def __call__(self, problem, params0, hparams, key, *, config):
        dtype = jax.tree_util.tree_leaves(params0)[0].dtype
        start = config.policy.init(jax.random.fold_in(key, 7), dtype)
        return self.algorithm.run(problem, start, hparams, key, config=config)


@dataclasses.dataclass(frozen=True)
class _Metrics:
    """The row of a member (see the module docstring): `policy` the members' network,
    `episodes` evaluation episodes, `tail` the batches of `train_return`."""

    policy: Any
    episodes: int
    tail: int

    def __call__(self, final_state, trace, member):
        from dsorl.jobs.control import evaluation_return

        returns = trace.episode_return
        score = evaluation_return(member.mdp, self.policy, final_state.params,
                                  jax.random.fold_in(member.key, 99), self.episodes)
        return {"eval_return": score, "train_return": jnp.nanmean(returns[-self.tail:]),
                "mean_train_return": jnp.nanmean(returns)}


def sweep_spec(config: dict) -> dict:
    """Keyword arguments of `dsorl.sweep.sweep` for this config (every grid value checked
    by the algorithm's `validate` first)."""
    from dsorl.algorithms import base
    from dsorl.envs.gymnax_control import make
    from dsorl.jobs.control import static_config

    method = config["method"]
    if method not in METHODS:
        raise ValueError(f"config key 'method' must be one of {', '.join(METHODS)}, got"
                         f" {method!r}.")
    shared = config["dsorl"]
    batch = shared["n_envs"] * shared["n_rollout"]
    if config["total_steps"] < batch:
        raise ValueError(f"config key 'total_steps' = {config['total_steps']} must be at least"
                         f" one batch (dsorl n_envs * n_rollout = {batch}).")
    if config["eval_episodes"] < 1:
        raise ValueError(f"config key 'eval_episodes' = {config['eval_episodes']} must be >= 1.")
    problem = make(config["env"])
    algorithm, static, policy = static_config(method, shared, config.get(method, {}),
                                              config["total_steps"], problem)
    grid = dict(config["grid"])
    fields = set(algorithm.HParams._fields)
    unknown = sorted(set(grid) - fields - {"seed"})
    if unknown or "seed" not in grid:
        raise ValueError(f"config key 'grid' for {method} takes {', '.join(sorted(fields))} and"
                         f" seed (required: it draws each member's network and episodes);"
                         f" got {', '.join(sorted(grid))}.")
    fixed = dict(config["hparams"])
    if set(fixed) - fields:
        raise ValueError(f"config key 'hparams' for {method}: unknown"
                         f" {', '.join(sorted(set(fixed) - fields))} (fields:"
                         f" {', '.join(algorithm.HParams._fields)}).")
    grid = Grid(**grid)
    shapes = algorithm.expected_params(problem, static)
    params0 = jax.tree_util.tree_map(lambda s: np.zeros(s, np.float32), shapes,
                                     is_leaf=lambda s: isinstance(s, tuple))
    check_grid(algorithm, problem, grid, config=static, hparams=fixed, params0=params0)
    tail = max(1, static.n_steps // 10)
    return {"run": FromKey(algorithm), "mdp": problem, "grid": grid, "config": static,
            "params0": params0,
            "hparams": lambda point: base.make_hparams(algorithm.HParams, {**fixed, **point}),
            "metrics": _Metrics(policy, int(config["eval_episodes"]), tail)}
