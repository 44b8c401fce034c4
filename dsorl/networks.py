"""Neural policies and value baselines (flax) for sampled episodes of control environments.

Each is a frozen, hashable dataclass (so it can sit in an algorithm's static `Config`)
whose parameters are a pytree: every dsorl optimiser, `vmap` and sweep applies to them.

- `CategoricalPolicy(n_actions, hidden)`: `pi(a|x) = softmax(f_theta(x))_a`, `f` an MLP;
- `GaussianPolicy(action_dim, hidden)`: `a ~ N(mu_theta(x), diag(exp(2 log_std)))`, `mu`
  an MLP, `log_std` a state-independent parameter vector (the draw is unclipped; the
  rollout clips it to the action space, so the score function stays exact);
- `MeanFieldPolicy(n_actions, n_particles, width)`: `pi(a|x) ∝ exp(f_nu(x, a))`, `f_nu` the
  particle average of `dsorl.features` tanh features of `(x / scale, e_a)` (mean-field PG);
  `MeanFieldGaussianPolicy(action_dim, ...)`: `N(action_scale f_nu(x, .), fixed std)`;
- `ValueMLP(hidden)`: `v_phi(x)`, the fitted baseline of Algorithm 1.

`policy_for(action_space)` picks the policy an action space needs; `check_space` raises a
`ValueError` for a policy that cannot act in a space (a categorical policy on real
actions, a Gaussian on finitely many).
"""
import dataclasses
import math
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dsorl.features import TanhFeature, init_particles, mean_field_feature
from dsorl.rollouts import Box, Discrete

__all__ = ["MLP", "CategoricalPolicy", "GaussianPolicy", "MeanFieldPolicy",
           "MeanFieldGaussianPolicy", "ValueMLP", "policy_for"]

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


class _Categorical:
    """Sampling, log-probabilities and the space check of a policy whose `logits(params,
    obs)` are the normalised `log pi(.|x)[..., A]` over `n_actions` actions."""

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
        name = type(self).__name__
        if not isinstance(space, Discrete):
            raise ValueError(f"{name} needs a discrete action space, got {space}"
                             " (real-valued actions: use dsorl.networks.GaussianPolicy).")
        if space.n != self.n_actions:
            raise ValueError(f"{name} has n_actions = {self.n_actions}, the action"
                             f" space has {space.n}.")


@dataclasses.dataclass(frozen=True)
class CategoricalPolicy(_Categorical):
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


class _Gaussian:
    """Sampling, log-probabilities and the space check of a policy `N(mu(x), diag(exp(2
    log_std)))` whose `_moments(params, obs)` are `(mu[..., action_dim], log_std)`."""

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
        name = type(self).__name__
        if not isinstance(space, Box):
            raise ValueError(f"{name} needs a real (Box) action space, got {space}"
                             " (finitely many actions: use dsorl.networks.CategoricalPolicy).")
        if int(np.prod(space.shape)) != self.action_dim or len(space.shape) != 1:
            raise ValueError(f"{name} has action_dim = {self.action_dim}, the action"
                             f" space has shape {space.shape}.")


@dataclasses.dataclass(frozen=True)
class GaussianPolicy(_Gaussian):
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


class _MeanField:
    """The particles of a mean-field policy (Kerimkulov, Leahy, Šiška, Szpruch, ICML 2022,
    arXiv 2201.07296; `dsorl.algorithms.meanfield`) on continuous observations: the
    particle average of the `dsorl.features.TanhFeature` of `width` K and truncation
    `bound` at `z(x, j) = (x / observation_scale, e_j)`, `e_j` one-hot over the policy's M
    outputs (`_outputs`: the actions of a categorical policy, the action coordinates of a
    Gaussian one), `d = d_x + M`:

        f_nu(x, j) = (1/N) sum_i f(z(x, j), theta_i),   f(z, theta) = sum_k psi(c_k)
        tanh(<w_k, z> + b_k),   nu_N = (1/N) sum_i delta_{theta_i}.

    Parameters: the particles `{"params": {"c": [N, K], "w": [N, K, d], "b": [N, K]}}`,
    initialised i.i.d. N(0, 1) (from `e^{-U}`, `dsorl.features.init_particles`).
    `observation_scale` (one positive number per flattened observation entry, None: ones)
    brings the coordinates to order 1, so N(0, 1) weights give unsaturated units.
    """

    def _check(self, outputs: str) -> None:
        for name in (outputs, "n_particles"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} = {value!r} must be an int >= 1.")
        TanhFeature(self.width, self.bound)  # raises the ValueError naming a bad width or bound
        if self.observation_scale is not None:
            d = int(np.prod(self.observation_shape)) if self.observation_shape else 1
            scale = np.asarray(self.observation_scale, float)
            if scale.shape != (d,):
                raise ValueError(f"observation_scale must have one entry per observation"
                                 f" coordinate ({d}), got {self.observation_scale!r}.")
            bad = np.flatnonzero(~(np.isfinite(scale) & (scale > 0)))
            if bad.size:
                raise ValueError(f"observation_scale[{bad[0]}] = {scale[bad[0]]} must be"
                                 " finite and > 0.")
            object.__setattr__(self, "observation_scale", tuple(float(x) for x in scale))

    @property
    def feature(self) -> TanhFeature:
        return TanhFeature(self.width, self.bound)

    def encodings(self, obs) -> Array:
        """`z(x, j)` for every output j: `[..., M, d_x + M]` for `obs[..., *shape]`."""
        x = _flat_input(obs, self.observation_shape)
        if self.observation_scale is not None:
            x = x / jnp.asarray(self.observation_scale, x.dtype)
        M = int(self._outputs)
        states = jnp.broadcast_to(x[..., None, :], x.shape[:-1] + (M, x.shape[-1]))
        outputs = jnp.broadcast_to(jnp.eye(M, dtype=x.dtype), x.shape[:-1] + (M, M))
        return jnp.concatenate([states, outputs], axis=-1)

    def init(self, key, dtype=None):
        """N particles i.i.d. N(0, I) (`dsorl.features.init_particles`)."""
        M = int(self._outputs)
        d = (int(np.prod(self.observation_shape)) if self.observation_shape else 1) + M
        z = jnp.zeros((1, M, d), dtype or jnp.result_type(float))
        return init_particles(self.feature, key, int(self.n_particles), z)

    def mean_field_feature(self, params, obs) -> Array:
        """`f_nu(x, j)[..., M]` for observations `obs[..., *shape]`."""
        return mean_field_feature(self.feature, params, self.encodings(obs))


@dataclasses.dataclass(frozen=True)
class MeanFieldPolicy(_MeanField, _Categorical):
    """The mean-field softmax policy of N tanh-feature particles on continuous observations:
    `pi_nu(a|x) ∝ exp(f_nu(x, a))` over `n_actions` actions (the policy of
    `dsorl.algorithms.meanfield` with the observation in place of a finite state and the
    uniform reference measure; `f_nu` and the particles as in `_MeanField`, one output per
    action, `d = d_x + A`)."""

    n_actions: int
    n_particles: int = 64
    width: int = 8
    bound: float = 1.0
    observation_shape: tuple = ()
    observation_scale: Optional[tuple] = None

    def __post_init__(self):
        self._check("n_actions")

    @property
    def _outputs(self) -> int:
        return self.n_actions

    def logits(self, params, obs) -> Array:
        """`log pi_nu(.|x)[..., A]` (normalised) for observations `obs[..., *shape]`."""
        return jax.nn.log_softmax(self.mean_field_feature(params, obs))


@dataclasses.dataclass(frozen=True)
class MeanFieldGaussianPolicy(_MeanField, _Gaussian):
    """The mean-field Gaussian policy on real actions: `a ~ N(mu_nu(x), exp(2 log_std) I)`,
    `mu_nu(x)_j = action_scale f_nu(x, j)` for the `action_dim` coordinates j (`f_nu` and
    the particles as in `_MeanField`, `d = d_x + action_dim`). The standard deviation is
    fixed (`log_std`, static), so the particles are the whole parameter and the Langevin
    step moves all of it. `|mu_nu| < action_scale * width * bound`."""

    action_dim: int
    n_particles: int = 64
    width: int = 8
    bound: float = 1.0
    observation_shape: tuple = ()
    observation_scale: Optional[tuple] = None
    action_scale: float = 1.0
    log_std: float = 0.0

    def __post_init__(self):
        self._check("action_dim")
        if not (math.isfinite(self.action_scale) and self.action_scale > 0):
            raise ValueError(f"action_scale = {self.action_scale!r} must be finite and > 0.")
        if not math.isfinite(self.log_std):
            raise ValueError(f"log_std = {self.log_std!r} must be finite.")

    @property
    def _outputs(self) -> int:
        return self.action_dim

    def _moments(self, params, obs):
        mu = self.action_scale * self.mean_field_feature(params, obs)
        return mu, jnp.full(self.action_dim, self.log_std, mu.dtype)


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
