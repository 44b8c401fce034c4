"""Mean-field Langevin policy gradient on sampled episodes of JAX control environments.

Kerimkulov, Leahy, Šiška, Szpruch, "Convergence of policy gradient for entropy regularized
MDPs with neural network approximation in the mean-field regime" (ICML 2022, arXiv
2201.07296), the particle scheme of `dsorl.algorithms.meanfield` with the exact Lions
derivative replaced by DSO's sampled Algorithm 1 (Todorov, arXiv 2506.08340;
`dsorl.algorithms.control`), so it runs on continuous observations (CartPole). The policy
is a `dsorl.networks.MeanFieldPolicy`: N particles `theta_i = (c_i, w_i, b_i)`, `pi_nu(a|x)
∝ exp((1/N) sum_i f(z(x, a), theta_i))`, `f` the tanh feature (on real actions, e.g.
Pendulum: a `MeanFieldGaussianPolicy`, mean `action_scale (1/N) sum_i f(z(x, j),
theta_i)` per action coordinate j, fixed standard deviation). Each step collects one batch
(`config.n_envs` copies for `config.n_rollout` steps, as `dsorl.algorithms.control`),
takes Algorithm 1's estimate

    g_i = (1/B) sum_{n,t} gamma^t grad_{theta_i} log pi_nu(a_t|x_t) (G_t - v_hat(x_t))

(`control.policy_gradient`, B = `n_envs` copies; unbiased for `dJ/dtheta_i` up to the
bootstrap at a cut) and moves every particle along the sampled Lions derivative `N g_i`
(`grad_theta dJ/dnu(nu_N, theta_i) = N dJ(nu_N)/dtheta_i`, the convention of
`meanfield.lions_derivative`) by one Euler-Maruyama step of the mean-field Langevin
dynamics (`meanfield.langevin_ascent`; docs/design.md §9.4):

    theta_i <- theta_i + eta [N g_i - (sigma^2/2) theta_i] + sigma sqrt(eta) xi_i,
    xi_i ~ N(0, I) i.i.d.,   eta = step_size,

the noisy ascent of `J(nu) - (sigma^2/2) KL(nu || e^{-U})`, `U(theta) = |theta|^2/2`
(confinement: without reward the particles' law relaxes to `e^{-U} = N(0, I)`). Here `J`
is the unregularised discounted return (the paper's policy-entropy weight tau is 0: the
sampled rewards are the environment's). `config.max_grad_norm` (inf: none) clips the
global norm of `g = (g_1, ..., g_N)` before the scaling by N, as DSO's clipping does.
The value baseline `v_hat` is refitted after each batch exactly as in `control`.

Shapes: particles `{"params": {"c": [N, K], "w": [N, K, d], "b": [N, K]}}`, `d = d_x + A`
(Gaussian: `d_x + action_dim`);
a batch `[n_rollout, n_envs]`. The algorithm `MEANFIELD_PG` follows
`dsorl.algorithms.base` (state `control.State`, one `lax.scan`, `jit`table and `vmap`pable
over `params0`, `hparams` and keys). Step k's key splits in two: the first half draws
the batch, the second the Langevin noise. Trace rows as `control`'s (`episode_return`,
`interactions`, `grad_norm` of the Lions field `N g`, `value_loss`) and `dispersion`, the
mean per-coordinate variance of the particles after the step.
"""
import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dsorl.algorithms import base
from dsorl.algorithms import control as C
from dsorl.algorithms.meanfield import langevin_ascent, particle_moments
from dsorl.networks import MeanFieldGaussianPolicy, MeanFieldPolicy

Array = jax.Array

__all__ = ["HParams", "Config", "Trace", "lions_field", "validate", "expected_params", "init",
           "step", "MEANFIELD_PG", "meanfield_pg"]


class HParams(NamedTuple):
    """Traced: discount `gamma` in [0, 1), Langevin `step_size` eta > 0, noise `sigma` >= 0
    (also the confinement weight sigma^2/2), `value_step_size` > 0 of the baseline fit."""

    gamma: Array
    step_size: Array
    sigma: Array
    value_step_size: Array = 1e-3


@dataclasses.dataclass(frozen=True)
class Config:
    """Static: `n_steps` batches; `policy` (a `dsorl.networks.MeanFieldPolicy` or
    `MeanFieldGaussianPolicy`, which fixes N) and `value` (a `ValueMLP`, or None for no
    baseline); `n_envs` copies x `n_rollout` steps per batch; `value_optimizer` (`step_size
    -> optax transformation`) and `value_epochs` of the baseline fit; `max_grad_norm`
    (global-norm clipping of Algorithm 1's estimate, inf: none); `discount_weights`: weigh
    step `t` by `gamma^t` (Algorithm 1)."""

    n_steps: int
    policy: Any
    value: Any = None
    n_envs: int = 8
    n_rollout: int = 128
    value_optimizer: Callable = optax.adam
    max_grad_norm: float = math.inf
    value_epochs: int = 10
    discount_weights: bool = True


class Trace(NamedTuple):
    """Per batch, after its update (see the module docstring)."""

    episode_return: Array
    interactions: Array
    grad_norm: Array
    value_loss: Array
    dispersion: Array
    params: Any = None


def lions_field(policy, particles, batch: C.Batch, max_grad_norm: float = math.inf):
    """The sampled Lions derivative `N g_i` at every particle (a pytree like `particles`):
    `g = control.policy_gradient` (Algorithm 1), clipped to global norm `max_grad_norm`."""
    g = C.policy_gradient(policy, particles, batch)
    if math.isfinite(max_grad_norm):
        g, _ = optax.clip_by_global_norm(max_grad_norm).update(g, optax.EmptyState())
    return jax.tree_util.tree_map(lambda x: policy.n_particles * x, g)


def validate(problem, hparams: HParams, config: Config) -> None:
    """`ValueError` naming the offending argument: `config` not a `Config`, a policy that
    is not a mean-field one, and everything `control.validate` refuses (a problem that is
    not a `ControlProblem`, a categorical policy on real actions or a Gaussian on finitely
    many, another number of actions, observations of another shape, gamma outside [0, 1),
    step sizes <= 0, counts < 1, `max_grad_norm` <= 0); `sigma` < 0. N >= 1 is checked
    by the policy itself."""
    if not isinstance(config, Config):
        raise ValueError(f"config must be a meanfield_control.Config, got {config!r}.")
    if not isinstance(config.policy, (MeanFieldPolicy, MeanFieldGaussianPolicy)):
        raise ValueError(f"config.policy must be a dsorl.networks.MeanFieldPolicy or"
                         f" MeanFieldGaussianPolicy, got {config.policy!r}.")
    C.validate(problem, hparams, config)
    base.check_positive("sigma", hparams.sigma, allow_zero=True)


def expected_params(problem, config: Config):
    """The particle shapes of `config.policy.init(key)`."""
    shapes = jax.eval_shape(lambda: config.policy.init(jax.random.key(0)))
    return jax.tree_util.tree_map(lambda x: tuple(x.shape), shapes)


def init(problem, params0, hparams: HParams, key, *, config: Config) -> C.State:
    """`control.init` with the (stateless) Langevin step as the policy's transformation:
    value parameters from `fold_in(key, 0)`, the environment copies from `fold_in(key, 1)`."""
    return C.init(problem, params0, hparams, key, config=config,
                  policy_tx=langevin_ascent(hparams.step_size, hparams.sigma))


def step(problem, state: C.State, hparams: HParams, key, *, config: Config):
    """One batch (from `split(key)[0]`), then one Langevin step of all particles along
    `lions_field` with noise from `split(key)[1]`: `(new State, Trace row)`."""
    k_batch, k_noise = jax.random.split(key)
    # the batch and (in _finish) the value refit are DSO's: only the policy update differs
    rollout, batch, v = C._collect(problem, state, hparams, k_batch, config)
    lions = lions_field(config.policy, state.params, batch, config.max_grad_norm)
    updates, opt_state = langevin_ascent(hparams.step_size, hparams.sigma).update(
        lions, state.opt_state, state.params, key=k_noise)
    particles = optax.apply_updates(state.params, updates)
    new, row = C._finish(problem, state, particles, opt_state, rollout, batch, v, hparams,
                         config, base.tree_norm(lions), base.nan_like(batch.returns.dtype))
    return new, Trace(row.episode_return, row.interactions, row.grad_norm, row.value_loss,
                      jnp.mean(particle_moments(particles)[1]))


MEANFIELD_PG = base.Algorithm(
    "meanfield_pg", HParams=HParams, Config=Config, State=C.State, Trace=Trace, init=init,
    step=step, validate=validate, expected_params=expected_params)


def meanfield_pg(problem, params0, hparams: HParams, key, *, config: Config,
                 keep_params: bool = False):
    """Mean-field Langevin PG on sampled episodes: `base.run(MEANFIELD_PG, ...)` ->
    `(control.State, Trace[n_steps])`."""
    return MEANFIELD_PG.run(problem, params0, hparams, key, config=config,
                            keep_params=keep_params)
