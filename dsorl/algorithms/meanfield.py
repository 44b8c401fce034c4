"""Mean-field Langevin policy gradient on entropy-regularised MDPs (DESIGN 5.6).

Kerimkulov, Leahy, Šiška, Szpruch, "Convergence of policy gradient for entropy regularized
MDPs with neural network approximation in the mean-field regime" (ICML 2022, arXiv
2201.07296). A measure `nu` on particle parameters `theta` defines the softmax policy

    pi_nu(a|s) ∝ mu(a|s) exp(f_nu(s, a)),   f_nu = ∫ f(x(s, a), theta) nu(d theta),

(`f` the tanh feature of `dsorl.features`, `x` the state-action encodings). The method
maximises `J^{tau,sigma}(nu) = V_tau^{pi_nu}(rho) - (sigma^2 / 2) KL(nu || e^{-U})`,
`U(theta) = |theta|^2 / 2 + const`, by noisy gradient ascent on N particles
`nu_N = (1/N) sum_i delta_{theta_i}` (the Euler-Maruyama scheme of their McKean-Vlasov SDE):

    theta_i <- theta_i + eta [grad_theta dV/dnu(nu_N, theta_i) - (sigma^2/2) theta_i]
               + sigma sqrt(eta) xi_i,    xi_i ~ N(0, I) i.i.d.

The Lions derivative `grad_theta dV/dnu(nu_N, theta_i)` equals `N dV(nu_N)/dtheta_i` (one
`jax.grad` of the exact value, all particles at once) and also their covariance formula
`1/(1-gamma) E_{s ~ d_rho} Cov_{a ~ pi_nu}(Q_tau - tau log(pi_nu / mu), grad f(theta))`.

Everything is exact (linear solves, no sampling of trajectories); the only randomness is the
Langevin noise, from an explicit key. Rewards are maximised. dtype follows the MDP: float32
works and reaches about 1e-6 relative in the Lions derivative (tested to 1e-5 at gamma = 0.9).
"""
from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from dsorl import _checks
from dsorl.features import (TanhFeature, check_particles, mean_field_feature, n_particles,
                            particle_features)
from dsorl.markov import discounted_value, occupancy
from dsorl.mdp import (MDP, entropy_regularised_chain, induced_chain, reference_measure,
                       soft_action_values)
from dsorl.objectives import discounted_return

Array = jax.Array

GRADIENTS = ("autodiff", "covariance")


class MeanFieldProblem:
    """An MDP with the feature, encodings and reference measure of its mean-field policy.

    `mdp`: the MDP; `feature`: a `TanhFeature` (static: it is part of the pytree
    structure, not a leaf); `encodings[S, A, d]`: the vector `x(s, a)` each pair is fed to
    the feature as; `mu[S, A]`: the reference measure (uniform on available actions by
    default). A pytree (leaves: the MDP's arrays, `encodings`, `mu`), so it can be passed
    through `jit` and `vmap`; validated when built from concrete arrays.
    """

    __slots__ = ("mdp", "feature", "encodings", "mu")

    def __init__(self, mdp: MDP, feature: TanhFeature, encodings: Array,
                 mu: Optional[Array] = None):
        if not isinstance(mdp, MDP):
            raise ValueError(f"mdp must be a dsorl.MDP, got {type(mdp).__name__}.")
        if not isinstance(feature, TanhFeature):
            raise ValueError(f"feature must be a dsorl.features.TanhFeature, got {feature!r}.")
        encodings = jnp.asarray(encodings, mdp.R.dtype)
        S, A = mdp.n_states, mdp.n_actions
        if encodings.ndim != 3 or encodings.shape[:2] != (S, A) or encodings.shape[2] < 1:
            raise ValueError(f"encodings must have shape [S, A, d] = [{S}, {A}, d] (d >= 1),"
                             f" got {encodings.shape}.")
        if _checks.is_concrete(encodings):
            _checks.check_finite("encodings", encodings)
        for name, value in (("mdp", mdp), ("feature", feature), ("encodings", encodings),
                            ("mu", reference_measure(mdp, mu))):
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError("MeanFieldProblem is immutable.")

    def __repr__(self):
        return (f"MeanFieldProblem(S={self.mdp.n_states}, A={self.mdp.n_actions},"
                f" d={self.encodings.shape[-1]}, K={self.feature.width}, bound={self.feature.bound})")


def _flatten(problem):
    children = ((jax.tree_util.GetAttrKey("mdp"), problem.mdp),
                (jax.tree_util.GetAttrKey("encodings"), problem.encodings),
                (jax.tree_util.GetAttrKey("mu"), problem.mu))
    return children, problem.feature


def _unflatten(feature, children):
    # bypass __init__: leaves may be tracers or placeholders (e.g. vmap's in_axes)
    problem = object.__new__(MeanFieldProblem)
    for name, value in zip(("mdp", "encodings", "mu"), children):
        object.__setattr__(problem, name, value)
    object.__setattr__(problem, "feature", feature)
    return problem


jax.tree_util.register_pytree_with_keys(MeanFieldProblem, _flatten, _unflatten)


# ----------------------------------------------------------------------------------------
# The mean-field policy, its value and the Lions derivative


def mean_field_policy(problem: MeanFieldProblem, particles) -> Array:
    """`pi_nu(a|s) = mu(a|s) exp(f_nu(s, a)) / Z(s)` for `nu_N = (1/N) sum_i delta_{theta_i}`.

    Kerimkulov et al. (ICML 2022), the softmax mean-field policy. `particles` as from
    `dsorl.features.init_particles`; returns `pi[S, A]` (0 where `mu` is 0).
    """
    f_nu = mean_field_feature(problem.feature, particles, problem.encodings)
    return _softmax_policy(f_nu, problem.mu)


def regularised_value(problem: MeanFieldProblem, particles, gamma, tau) -> Array:
    """The exact regularised value `V_tau^{pi_nu}(rho) = E sum_t gamma^t [r - tau log(pi_nu/mu)]`.

    A scalar: the entropy-regularised value of Kerimkulov et al. (ICML 2022) for the
    mean-field policy of the particles, exact (one linear solve).
    """
    _check_value_args(problem, particles, gamma, tau)
    return _regularised_value(problem, particles, gamma, tau)[0]


def lions_derivative(problem: MeanFieldProblem, particles, gamma, tau, *,
                     method: str = "autodiff"):
    """`grad_theta dV_tau/dnu(nu_N, theta_i)` at every particle: a pytree like `particles`.

    `method="autodiff"`: `N dV_tau(nu_N)/dtheta_i` (one reverse pass through the exact value).
    `method="covariance"`: Kerimkulov et al.'s lemma (the Lions derivative),
    `sum_s m(s) Cov_{pi_nu(.|s)}(Q_tau - tau log(pi_nu/mu), grad_theta f(x(s, .), theta_i))`
    with `m = rho^T (I - gamma P_pi)^{-1} = d_rho / (1 - gamma)` the unnormalised occupancy.
    The two agree to rounding; the covariance form never differentiates the value.
    """
    _check_value_args(problem, particles, gamma, tau)
    _check_method(method)
    return _value_and_lions_derivative(problem, particles, gamma, tau, method)[1]


def _softmax_policy(f_nu, mu):
    logits = jnp.where(mu > 0, f_nu + jnp.log(jnp.where(mu > 0, mu, 1)), -jnp.inf)
    return jax.nn.softmax(logits, axis=-1)


def _regularised_value(problem, particles, gamma, tau):
    """`(V_tau^{pi_nu}(rho), pi_nu)`."""
    pi = mean_field_policy(problem, particles)
    chain = entropy_regularised_chain(problem.mdp, pi, tau, problem.mu)
    return problem.mdp.rho @ discounted_value(chain, gamma), pi


def _value_and_lions_derivative(problem, particles, gamma, tau, method):
    """`(V_tau^{pi_nu}(rho), Lions derivative at each particle, pi_nu)`."""
    if method == "autodiff":
        (value, pi), grad = jax.value_and_grad(_regularised_value, argnums=1, has_aux=True)(
            problem, particles, gamma, tau)
        N = n_particles(particles)
        return value, jax.tree_util.tree_map(lambda g: N * g, grad), pi
    mdp = problem.mdp
    pi = mean_field_policy(problem, particles)
    chain = entropy_regularised_chain(mdp, pi, tau, problem.mu)
    value = mdp.rho @ discounted_value(chain, gamma)
    m = occupancy(induced_chain(mdp, pi), mdp.rho, gamma)
    available = pi > 0
    log_ratio = jnp.log(jnp.where(available, pi, 1)) - jnp.log(jnp.where(available, problem.mu, 1))
    X = jnp.where(available, soft_action_values(mdp, pi, gamma, tau, problem.mu) - tau * log_ratio, 0)
    # Cov_pi(X, grad f) = sum_a pi (X - E_pi X) grad f: a weighted pullback of the features
    weights = m[:, None] * pi * (X - jnp.sum(pi * X, axis=-1, keepdims=True))
    features, pullback = jax.vjp(
        lambda p: particle_features(problem.feature, p, problem.encodings), particles)
    (lions,) = pullback(jnp.broadcast_to(weights, features.shape))
    return value, lions, pi


# ----------------------------------------------------------------------------------------
# Langevin particle dynamics: init / step / run


class LangevinHParams(NamedTuple):
    """Swept numbers (traced, so `vmap` over any of them works).

    `gamma`: discount in [0, 1); `tau` > 0: entropy regularisation of the policy;
    `sigma` >= 0: the Langevin noise, i.e. the weight sigma^2/2 of KL(nu || e^{-U});
    `eta` > 0: the step size (learning rate).
    """

    gamma: Array
    tau: Array
    sigma: Array
    eta: Array


class MeanFieldConfig(NamedTuple):
    """Static choices: `n_steps` Langevin steps; `gradient` in {"autodiff", "covariance"}
    (how the Lions derivative is computed, see `lions_derivative`)."""

    n_steps: int
    gradient: str = "autodiff"


class MeanFieldState(NamedTuple):
    """`particles` (pytree, leading axis N), optax state, PRNG `key`, `step` count, and
    `first_bad_step`: the first step k whose values or dispersion (of `nu_k`, see
    `MeanFieldTrace`) or updated particles were not finite (-1: none). Use `check_divergence` on the host to turn
    it into an error."""

    particles: dict
    opt_state: optax.OptState
    key: Array
    step: Array
    first_bad_step: Array


class MeanFieldTrace(NamedTuple):
    """Per-step statistics of the ensemble `nu_k` (before step k's update).

    `objective`: `value_tau - (sigma^2/2) KL_G` with `KL_G` the KL divergence from N(0, I)
    of the Gaussian with the particles' per-coordinate means and variances (a lower bound of
    `KL(nu || e^{-U})` for the law the particles sample, so `objective` estimates
    `J^{tau,sigma}` from above; exact when that law is such a Gaussian, e.g. at r = 0;
    -inf when some coordinate has no spread, e.g. N = 1, unless sigma = 0);
    `value_tau`: the regularised value `V_tau^{pi_nu}(rho)`; `value`: the unregularised
    discounted return `V^{pi_nu}(rho)`; `dispersion`: `(1/(N D)) sum_i |theta_i - mean|^2`,
    the mean per-coordinate variance of the particles (D = K (d + 2)).
    """

    objective: Array
    value_tau: Array
    value: Array
    dispersion: Array


def langevin_ascent(eta, sigma) -> optax.GradientTransformationExtraArgs:
    """One Euler-Maruyama step of `d theta = (g - (sigma^2/2) grad U(theta)) dt + sigma dW`.

    `updates = eta (g - (sigma^2/2) theta) + sigma sqrt(eta) xi`, `xi ~ N(0, I)` drawn from
    the `key=` extra argument of `update`; `U(theta) = |theta|^2/2`, so `grad U` is a
    (negative) weight decay. Ascent: `g` is the gradient of the objective to maximise
    (Kerimkulov et al., ICML 2022, the particle approximation of the policy-gradient flow).
    Stateless; `eta` and `sigma` may be traced.
    """
    return optax.chain(optax.add_decayed_weights(-sigma ** 2 / 2), optax.scale(eta),
                       _gaussian_noise(sigma * jnp.sqrt(eta)))


def _gaussian_noise(std) -> optax.GradientTransformationExtraArgs:
    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None, *, key, **extra):
        del params, extra
        # one draw for the whole pytree: several times faster than a draw per leaf on CPU
        flat, unravel = ravel_pytree(updates)
        noise = unravel(jax.random.normal(key, flat.shape, flat.dtype))
        return optax.tree.add_scale(updates, std, noise), state

    return optax.GradientTransformationExtraArgs(init, update)


def init(problem: MeanFieldProblem, particles0, hparams: LangevinHParams, key: Array) -> MeanFieldState:
    """The state before the first step: particles `particles0`, optimiser state, key."""
    tx = langevin_ascent(hparams.eta, hparams.sigma)
    return MeanFieldState(particles0, tx.init(particles0), key, jnp.int32(0), jnp.int32(-1))


def step(problem: MeanFieldProblem, state: MeanFieldState, hparams: LangevinHParams, *,
         gradient: str = "autodiff"):
    """One Langevin step for all particles: `(new_state, MeanFieldTrace of nu_k)`.

    `theta_i += eta [grad dV/dnu(nu_N, theta_i) - (sigma^2/2) theta_i] + sigma sqrt(eta) xi_i`
    (DESIGN 5.6; Kerimkulov et al., ICML 2022, "policy gradient flow approximation").
    """
    key, noise_key = jax.random.split(state.key)
    value_tau, lions, pi = _value_and_lions_derivative(problem, state.particles, hparams.gamma,
                                                       hparams.tau, gradient)
    tx = langevin_ascent(hparams.eta, hparams.sigma)
    updates, opt_state = tx.update(lions, state.opt_state, state.particles, key=noise_key)
    particles = optax.apply_updates(state.particles, updates)
    row = _statistics(problem, state.particles, pi, value_tau, hparams)
    # not the objective: it is legitimately -inf for an ensemble without spread (N = 1)
    finite = _all_finite((row.value_tau, row.value, row.dispersion, particles))
    first_bad = jnp.where((state.first_bad_step < 0) & ~finite, state.step, state.first_bad_step)
    return MeanFieldState(particles, opt_state, key, state.step + 1, first_bad), row


def run(problem: MeanFieldProblem, particles0, hparams: LangevinHParams, key: Array, *,
        config: MeanFieldConfig):
    """`config.n_steps` Langevin steps as one jitted `lax.scan`: `(final_state, trace)`.

    `trace` is a `MeanFieldTrace` of arrays `[n_steps]` (row k describes `nu_k`, before step
    k). Pure and jittable; `vmap` over `particles0`, `hparams` (gamma, tau, sigma, eta) and
    `key` for sweeps. Concrete inputs are validated (tau > 0, sigma >= 0, eta > 0, gamma in
    [0, 1), N >= 1, encodings of the particles' width). A divergent run is not an exception
    here: its `final_state.first_bad_step` is >= 0 (see `check_divergence`). Under `vmap`
    the inputs are traced and unchecked: validate a sweep first with `check_hparams`.
    """
    hparams = _as_hparams(hparams, problem.encodings.dtype)
    check_hparams(hparams)
    check_particles(problem.feature, particles0, problem.encodings)
    _check_config(config)
    return _run(problem, particles0, hparams, key, config)


@partial(jax.jit, static_argnames="config")
def _run(problem, particles0, hparams, key, config):
    def body(state, _):
        return step(problem, state, hparams, gradient=config.gradient)

    return lax.scan(body, init(problem, particles0, hparams, key), length=config.n_steps)


def evaluate(problem: MeanFieldProblem, particles, hparams: LangevinHParams) -> MeanFieldTrace:
    """The `MeanFieldTrace` statistics of one ensemble (scalars), e.g. of a final state."""
    hparams = _as_hparams(hparams, problem.encodings.dtype)
    _check_value_args(problem, particles, hparams.gamma, hparams.tau)
    value_tau, pi = _regularised_value(problem, particles, hparams.gamma, hparams.tau)
    return _statistics(problem, particles, pi, value_tau, hparams)


def _statistics(problem, particles, pi, value_tau, hparams) -> MeanFieldTrace:
    flat = jnp.concatenate([x.reshape(x.shape[0], -1)
                            for x in jax.tree_util.tree_leaves(particles)], axis=1)
    mean, var = jnp.mean(flat, axis=0), jnp.var(flat, axis=0)
    kl_gaussian = 0.5 * jnp.sum(var + mean ** 2 - 1 - jnp.log(var))
    # sigma = 0 drops the term even where KL_G = inf (a coordinate without spread, N = 1)
    penalty = jnp.where(hparams.sigma > 0, hparams.sigma ** 2 / 2 * kl_gaussian, 0)
    return MeanFieldTrace(objective=value_tau - penalty,
                          value_tau=value_tau,
                          value=discounted_return(problem.mdp, pi, hparams.gamma),
                          dispersion=jnp.mean(var))


def _all_finite(tree) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


# ----------------------------------------------------------------------------------------
# Divergence reporting (host side)


class DivergenceError(ValueError):
    """Some runs produced non-finite particles or values. `runs` lists, for each diverged
    run, its batch index, first bad step and hyperparameters."""

    def __init__(self, message: str, runs: list):
        super().__init__(message)
        self.runs = runs


def check_divergence(first_bad_step, hparams: LangevinHParams, *, max_listed: int = 5) -> None:
    """Raise `DivergenceError` if any run has `first_bad_step >= 0` (any batch shape).

    Host-side (reads concrete values): pass `final_state.first_bad_step` of one run or of a
    vmapped batch, and the `hparams` given to `run`, batched the same way (leaves
    broadcastable to the batch shape, e.g. scalars for shared values). The message names
    the first bad step and the hyperparameters of each diverged run.
    """
    if not _checks.is_concrete(first_bad_step):
        raise ValueError("check_divergence reads concrete values: call it outside jit/vmap.")
    first_bad = np.asarray(first_bad_step)
    diverged = np.argwhere(first_bad >= 0)
    if not diverged.size:
        return
    values = {name: np.asarray(v) for name, v in hparams._asdict().items()}
    runs = []
    for index in (tuple(int(i) for i in row) for row in diverged):
        runs.append({"index": index, "first_bad_step": int(first_bad[index]),
                     **{name: _entry(v, index, first_bad.shape) for name, v in values.items()}})
    listed = "; ".join(
        f"run {r['index']}: step {r['first_bad_step']} (" +
        ", ".join(f"{n}={r[n]}" for n in values) + ")" for r in runs[:max_listed])
    more = f"; and {len(runs) - max_listed} more" if len(runs) > max_listed else ""
    raise DivergenceError(f"{len(runs)} of {first_bad.size} mean-field runs diverged (non-finite"
                          f" particles or statistics; try a smaller eta): {listed}{more}.", runs)


def _entry(value: np.ndarray, index: tuple, shape: tuple):
    try:
        return np.broadcast_to(value, shape)[index].item()
    except ValueError:  # not batched like the state: show it whole
        return value.tolist()


# ----------------------------------------------------------------------------------------
# Validation at the entry points (concrete values only)


def _as_hparams(hparams, dtype) -> LangevinHParams:
    if not isinstance(hparams, LangevinHParams):
        raise ValueError(f"hparams must be a LangevinHParams(gamma, tau, sigma, eta), got {hparams!r}.")
    return LangevinHParams(*(jnp.asarray(h, dtype) for h in hparams))


def check_hparams(hparams: LangevinHParams) -> None:
    """Raise `ValueError` unless gamma in [0, 1), tau > 0, sigma >= 0 and eta > 0.

    Works on batched (array) hyperparameters; traced values pass unchecked, so call it on
    the concrete arrays before `vmap`ping `run` over them.
    """
    _checks.check_discount(hparams.gamma)
    _checks.check_positive("tau", hparams.tau)
    _checks.check_positive("sigma", hparams.sigma, allow_zero=True)
    _checks.check_positive("eta", hparams.eta)


def _check_value_args(problem, particles, gamma, tau) -> None:
    if not isinstance(problem, MeanFieldProblem):
        raise ValueError(f"problem must be a MeanFieldProblem, got {type(problem).__name__}.")
    _checks.check_discount(gamma)
    _checks.check_positive("tau", tau)
    check_particles(problem.feature, particles, problem.encodings)


def _check_method(method: str) -> None:
    if method not in GRADIENTS:
        raise ValueError(f"unknown Lions-derivative method {method!r}; use one of {GRADIENTS}.")


def _check_config(config) -> None:
    if not isinstance(config, MeanFieldConfig):
        raise ValueError(f"config must be a MeanFieldConfig, got {config!r}.")
    if not (isinstance(config.n_steps, (int, np.integer)) and config.n_steps >= 1):
        raise ValueError(f"n_steps = {config.n_steps!r} must be an integer >= 1.")
    _check_method(config.gradient)


__all__ = ["MeanFieldProblem", "mean_field_policy", "regularised_value", "lions_derivative",
           "LangevinHParams", "MeanFieldConfig", "MeanFieldState", "MeanFieldTrace",
           "langevin_ascent", "init", "step", "run", "evaluate", "check_hparams",
           "check_divergence", "DivergenceError"]
