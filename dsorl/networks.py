"""Neural policies and value baselines (flax) for sampled episodes of control environments.

Each is a frozen, hashable dataclass (so it can sit in an algorithm's static `Config`)
whose parameters are a pytree: every dsorl optimiser, `vmap` and sweep applies to them.

- `CategoricalPolicy(n_actions, hidden)`: `pi(a|x) = softmax(f_theta(x))_a`, `f` an MLP;
- `GaussianPolicy(action_dim, hidden)`: `a ~ N(mu_theta(x), diag(exp(2 log_std)))`, `mu`
  an MLP, `log_std` a state-independent parameter vector (the draw is unclipped; the
  rollout clips it to the action space, so the score function stays exact);
- `ValueMLP(hidden)`: `v_phi(x)`, the fitted baseline of Algorithm 1.

`policy_for(action_space)` picks the policy an action space needs; `check_space` raises a
`ValueError` for a policy that cannot act in a space (a categorical policy on real
actions, a Gaussian on finitely many).
"""
import dataclasses
import math
from typing import Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dsorl.rollouts import Box, Discrete

__all__ = ["MLP", "CategoricalPolicy", "GaussianPolicy", "ValueMLP", "policy_for"]

Array = jax.Array


class MLP(nn.Module):
    """`tanh` hidden layers of sizes `hidden`, then a linear layer of `out` units."""

    hidden: Tuple[int, ...]
    out: int

    @nn.compact
    def __call__(self, x):
        for width in self.hidden:
            x = jnp.tanh(nn.Dense(width, param_dtype=x.dtype)(x))
        return nn.Dense(self.out, param_dtype=x.dtype)(x)


def _check_hidden(hidden) -> tuple:
    hidden = tuple(hidden)
    if not all(isinstance(w, (int, np.integer)) and not isinstance(w, bool) and w >= 1
               for w in hidden):
        raise ValueError(f"hidden layer sizes must be positive ints, got {hidden!r}.")
    return tuple(int(w) for w in hidden)


def _flat_input(obs, observation_shape):
    """Observations `[..., *observation_shape]` flattened to `[..., d]` (float)."""
    obs = jnp.asarray(obs)
    if not jnp.issubdtype(obs.dtype, jnp.floating):
        obs = obs.astype(jnp.result_type(float))
    k = len(observation_shape)
    return obs.reshape(obs.shape[:obs.ndim - k] + (-1,)) if k else obs[..., None]


def _init_mlp(module: MLP, key, observation_shape, dtype):
    dtype = dtype or jnp.result_type(float)
    d = int(np.prod(observation_shape)) if observation_shape else 1
    return module.init(key, jnp.zeros((1, d), dtype))


@dataclasses.dataclass(frozen=True)
class CategoricalPolicy:
    """`pi(a|x) = softmax(MLP(x))_a` over `n_actions` actions; parameters: the MLP's."""

    n_actions: int
    hidden: Sequence[int] = (64, 64)
    observation_shape: tuple = ()

    def __post_init__(self):
        if not (isinstance(self.n_actions, (int, np.integer)) and self.n_actions >= 1):
            raise ValueError(f"n_actions = {self.n_actions!r} must be an int >= 1.")
        object.__setattr__(self, "hidden", _check_hidden(self.hidden))

    @property
    def _net(self):
        return MLP(self.hidden, int(self.n_actions))

    def init(self, key, dtype=None):
        """Parameters for observations of `observation_shape` (flax's default init)."""
        return _init_mlp(self._net, key, self.observation_shape, dtype)

    def logits(self, params, obs) -> Array:
        """`log pi(.|x)[..., A]` (normalised) for observations `obs[..., *shape]`."""
        return jax.nn.log_softmax(self._net.apply(params, _flat_input(obs, self.observation_shape)))

    def log_prob(self, params, obs, action) -> Array:
        """`log pi(a|x)` for `obs[..., *shape]`, integer `action[...]`."""
        logp = self.logits(params, obs)
        return jnp.take_along_axis(logp, jnp.asarray(action)[..., None].astype(jnp.int32),
                                   axis=-1)[..., 0]

    def sample(self, params, obs, key):
        """`(a, log pi(a|x))` with `a ~ pi(.|x)` for every observation of `obs[..., *shape]`."""
        logp = self.logits(params, obs)
        action = jax.random.categorical(key, logp)
        return action, jnp.take_along_axis(logp, action[..., None], axis=-1)[..., 0]

    def check_space(self, space) -> None:
        """`ValueError` unless `space` is `Discrete` with this policy's number of actions."""
        if not isinstance(space, Discrete):
            raise ValueError(f"CategoricalPolicy needs a discrete action space, got {space}"
                             " (real-valued actions: use dsorl.networks.GaussianPolicy).")
        if space.n != self.n_actions:
            raise ValueError(f"CategoricalPolicy has n_actions = {self.n_actions}, the action"
                             f" space has {space.n}.")


@dataclasses.dataclass(frozen=True)
class GaussianPolicy:
    """`a ~ N(MLP(x), diag(exp(2 log_std)))`: parameters `{"mean": MLP params,
    "log_std": [action_dim]}` (initial `log_std = init_log_std`)."""

    action_dim: int
    hidden: Sequence[int] = (64, 64)
    observation_shape: tuple = ()
    init_log_std: float = 0.0

    def __post_init__(self):
        if not (isinstance(self.action_dim, (int, np.integer)) and self.action_dim >= 1):
            raise ValueError(f"action_dim = {self.action_dim!r} must be an int >= 1.")
        if not math.isfinite(self.init_log_std):
            raise ValueError(f"init_log_std = {self.init_log_std!r} must be finite.")
        object.__setattr__(self, "hidden", _check_hidden(self.hidden))

    @property
    def _net(self):
        return MLP(self.hidden, int(self.action_dim))

    def init(self, key, dtype=None):
        mean = _init_mlp(self._net, key, self.observation_shape, dtype)
        dtype = jax.tree_util.tree_leaves(mean)[0].dtype
        return {"mean": mean, "log_std": jnp.full(self.action_dim, self.init_log_std, dtype)}

    def _moments(self, params, obs):
        mu = self._net.apply(params["mean"], _flat_input(obs, self.observation_shape))
        return mu, params["log_std"]

    def log_prob(self, params, obs, action) -> Array:
        """`log N(a; mu(x), diag(sigma^2))` for `action[..., action_dim]`."""
        mu, log_std = self._moments(params, obs)
        z = (jnp.asarray(action, mu.dtype) - mu) * jnp.exp(-log_std)
        return jnp.sum(-0.5 * z ** 2 - log_std - 0.5 * jnp.log(2 * jnp.pi), axis=-1)

    def sample(self, params, obs, key):
        mu, log_std = self._moments(params, obs)
        action = mu + jnp.exp(log_std) * jax.random.normal(key, mu.shape, mu.dtype)
        return action, self.log_prob(params, obs, action)

    def check_space(self, space) -> None:
        """`ValueError` unless `space` is a `Box` of `action_dim` entries."""
        if not isinstance(space, Box):
            raise ValueError(f"GaussianPolicy needs a real (Box) action space, got {space}"
                             " (finitely many actions: use dsorl.networks.CategoricalPolicy).")
        if int(np.prod(space.shape)) != self.action_dim or len(space.shape) != 1:
            raise ValueError(f"GaussianPolicy has action_dim = {self.action_dim}, the action"
                             f" space has shape {space.shape}.")


@dataclasses.dataclass(frozen=True)
class ValueMLP:
    """`v_phi(x) = MLP(x)` (one output): the fitted value baseline."""

    hidden: Sequence[int] = (64, 64)
    observation_shape: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "hidden", _check_hidden(self.hidden))

    def init(self, key, dtype=None):
        return _init_mlp(MLP(self.hidden, 1), key, self.observation_shape, dtype)

    def __call__(self, params, obs) -> Array:
        """`v(x)[...]` for `obs[..., *observation_shape]`."""
        return MLP(self.hidden, 1).apply(params, _flat_input(obs, self.observation_shape))[..., 0]


def policy_for(problem, hidden: Sequence[int] = (64, 64)):
    """The policy a `dsorl.rollouts.ControlProblem`'s action space needs: categorical for
    `Discrete`, Gaussian for a 1-D `Box`."""
    space = problem.action_space
    if isinstance(space, Discrete):
        return CategoricalPolicy(space.n, hidden, problem.observation_shape)
    if isinstance(space, Box) and len(space.shape) == 1:
        return GaussianPolicy(int(space.shape[0]), hidden, problem.observation_shape)
    raise ValueError(f"no policy for the action space {space} (Discrete or a 1-D Box).")
