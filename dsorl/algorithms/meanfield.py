"""Mean-field Langevin policy gradient on entropy-regularised MDPs (docs/design.md §9.4).

Kerimkulov, Leahy, Šiška, Szpruch, "Convergence of policy gradient for entropy regularized
MDPs with neural network approximation in the mean-field regime" (ICML 2022, arXiv
2201.07296). A measure `nu` on particle parameters `theta` defines the softmax policy

    pi_nu(a|s) ∝ mu(a|s) exp(f_nu(s, a)),   f_nu = ∫ f(x(s, a), theta) nu(d theta),

(`f` the tanh feature of `dsorl.features`, `x` the state-action encodings). The method
maximises `J^{tau,sigma}(nu) = V_tau^{pi_nu}(rho) - (sigma^2 / 2) KL(nu || e^{-U})`,
`U(theta) = |theta|^2 / 2 + const`, by noisy gradient ascent on N particles
`nu_N = (1/N) sum_i delta_{theta_i}` (the Euler-Maruyama scheme of their McKean-Vlasov SDE):

    theta_i <- theta_i + eta [grad_theta dV/dnu(nu_N, theta_i) - (sigma^2/2) theta_i]
               + sigma sqrt(eta) xi_i,    xi_i ~ N(0, I) i.i.d.,  eta = step_size.

The Lions derivative `grad_theta dV/dnu(nu_N, theta_i)` equals `N dV(nu_N)/dtheta_i` (one
`jax.grad` of the exact value, all particles at once) and also their covariance formula
`1/(1-gamma) E_{s ~ d_rho} Cov_{a ~ pi_nu}(Q_tau - tau log(pi_nu / mu), grad f(theta))`.

Everything is exact (linear solves, no sampling of trajectories); the only randomness is the
Langevin noise, from an explicit key. The algorithm follows `dsorl.algorithms.base`
(`HParams`, `Config`, `State`, `Trace`, `validate`, `expected_params`, `init`, `step`,
`run`). Rewards are maximised. dtype follows the MDP: float32 works and reaches about 1e-6
relative in the Lions derivative (tested to 1e-5 at gamma = 0.9).
"""
import sys
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from dsorl import _checks, optim
from dsorl.algorithms import base
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
# Langevin particle dynamics: the algorithm contract of dsorl.algorithms.base


class HParams(NamedTuple):
    """Swept numbers (traced, so `vmap` over any of them works).

    `gamma`: discount in [0, 1); `tau` > 0: entropy regularisation of the policy;
    `sigma` >= 0: the Langevin noise, i.e. the weight sigma^2/2 of KL(nu || e^{-U});
    `step_size` > 0: the Euler-Maruyama step eta.
    """

    gamma: Array
    tau: Array
    sigma: Array
    step_size: Array


class Config(NamedTuple):
    """Static choices: `n_steps` Langevin steps; `gradient` in {"autodiff", "covariance"}
    (how the Lions derivative is computed, see `lions_derivative`); `n_particles`: N, or
    None to take it from `params0` (given, `params0` must hold N particles; needed by
    `dsorl.jobs.meanfield.run_from_key`); `noise_dtype`: None (default) draws the Langevin
    noise in the particles' dtype, "float32" draws it in float32 and casts it up (opt-in,
    see `langevin_ascent`)."""

    n_steps: int
    gradient: str = "autodiff"
    n_particles: Optional[int] = None
    noise_dtype: Optional[str] = None


class State(NamedTuple):
    """`params`: the particles (pytree, leading axis N); optax state; `lions`: the Lions
    derivative at `params` (computed once per ensemble: the step that produced `params`
    evaluated it with the trace row, the next step moves along it); `step` count;
    `first_bad_step`: the first step k after which the ensemble `nu_{k+1}` had non-finite
    particles, values or dispersion (-1: none). `check_divergence` turns it into an error
    on the host."""

    params: dict
    opt_state: optax.OptState
    lions: dict
    step: Array
    first_bad_step: Array


class Trace(NamedTuple):
    """Per-step statistics of the ensemble `nu_{k+1}` after step k (row -1: the final one).

    `objective`: `value_tau - (sigma^2/2) KL_G` with `KL_G` the KL divergence from N(0, I)
    of the Gaussian with the particles' per-coordinate means and variances (a lower bound of
    `KL(nu || e^{-U})` for the law the particles sample, so `objective` estimates
    `J^{tau,sigma}` from above; exact when that law is such a Gaussian, e.g. at r = 0;
    -inf when some coordinate has no spread, e.g. N = 1, unless sigma = 0);
    `value_tau`: the regularised value `V_tau^{pi_nu}(rho)`; `value`: the unregularised
    discounted return `V^{pi_nu}(rho)`; `dispersion`: `(1/(N D)) sum_i |theta_i - mean|^2`,
    the mean per-coordinate variance of the particles (D = K (d + 2)); `params`: the
    particles, with `run(..., keep_params=True)`. (No `grad_norm`: its reduction over all
    particles would add about 8% to a step.)
    """

    objective: Array
    value_tau: Array
    value: Array
    dispersion: Array
    params: Any = None


def langevin_ascent(step_size, sigma, *, noise_dtype=None) -> optax.GradientTransformationExtraArgs:
    """One Euler-Maruyama step of `d theta = (g - (sigma^2/2) grad U(theta)) dt + sigma dW`.

    `updates = eta (g - (sigma^2/2) theta) + sigma sqrt(eta) xi` (eta = `step_size`),
    `xi ~ N(0, I)` drawn from the `key=` extra argument of `update`; `U(theta) = |theta|^2/2`:
    SGD with weight decay sigma^2/2 on `-V`, plus noise, fed the ascent direction `g` by
    `dsorl.optim.ascent` (Kerimkulov et al., ICML 2022, the particle approximation of the
    policy-gradient flow). Stateless; `step_size` and `sigma` may be traced.

    `noise_dtype="float32"` draws `xi` in float32 and casts it to the parameters' dtype.
    Drawing the noise is the largest single cost of a float64 step at many particles
    (threefry normals: 3.2 ms in float64 against 1.3 ms in float32 for 640 000 coordinates,
    N = 10^4, on this 2-core CPU). The float32 draws are standard normals to 24 bits; their
    tails are cut at about 5.4 standard deviations in float32's inverse-error-function
    sampler, against about 8.2 in float64. That is harmless for Langevin noise, but the draws are
    other numbers: runs differ from the default path, which stays bit-for-bit as it was.
    """
    return optim.ascent(optax.chain(optax.add_decayed_weights(sigma ** 2 / 2),
                                    optax.sgd(step_size),
                                    _gaussian_noise(sigma * jnp.sqrt(step_size), noise_dtype)))


def _gaussian_noise(std, dtype=None) -> optax.GradientTransformationExtraArgs:
    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None, *, key, **extra):
        del params, extra
        # one draw for the whole pytree: several times faster than a draw per leaf on CPU
        flat, unravel = ravel_pytree(updates)
        xi = jax.random.normal(key, flat.shape, dtype or flat.dtype).astype(flat.dtype)
        return optax.tree.add_scale(updates, std, unravel(xi)), state

    return optax.GradientTransformationExtraArgs(init, update)


def validate(problem: MeanFieldProblem, hparams: HParams, config: Config) -> None:
    """`ValueError` naming the argument unless `problem` is a `MeanFieldProblem`, gamma in
    [0, 1), tau > 0, sigma >= 0, step_size > 0 (any batch shape; traced values pass), and
    `config` a `Config` with a known `gradient`, `n_particles` None or >= 1 and
    `noise_dtype` None or "float32"."""
    _check_problem(problem)
    if not isinstance(config, Config):
        raise ValueError(f"config must be a meanfield.Config, got {config!r}.")
    _check_method(config.gradient)
    n = config.n_particles
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ValueError(f"config.n_particles = {n!r} must be None or an integer >= 1.")
    if config.noise_dtype not in (None, "float32"):
        raise ValueError(f"config.noise_dtype = {config.noise_dtype!r} must be None (noise in"
                         " the particles' dtype) or 'float32'.")
    base.check_discount(hparams.gamma)
    base.check_positive("tau", hparams.tau)
    base.check_positive("sigma", hparams.sigma, allow_zero=True)
    base.check_positive("step_size", hparams.step_size)


def expected_params(problem: MeanFieldProblem, config: Config):
    """The particle shapes `{"params": {"c": (N, K), "w": (N, K, d), "b": (N, K)}}` when
    `config.n_particles` gives N, else None (any N: `init` checks K and d)."""
    N = getattr(config, "n_particles", None)
    if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or N < 1:
        return None  # None, or invalid: `validate` names it
    K, d = problem.feature.width, problem.encodings.shape[-1]
    return {"params": {"b": (N, K), "c": (N, K), "w": (N, K, d)}}


def init(problem: MeanFieldProblem, params0, hparams: HParams, key=None, *,
         config: Config) -> State:
    """The state before the first step: particles `params0`, optimiser state, and the Lions
    derivative at `params0` (the first step's direction). Deterministic: `key` is unused."""
    del key
    try:
        check_particles(problem.feature, params0, problem.encodings)
    except ValueError as err:
        raise ValueError(f"params0: {err}") from None
    _, lions, _ = _value_and_lions_derivative(problem, params0, hparams.gamma, hparams.tau,
                                              config.gradient)
    tx = langevin_ascent(hparams.step_size, hparams.sigma, noise_dtype=config.noise_dtype)
    return State(params0, tx.init(params0), lions, jnp.int32(0), jnp.int32(-1))


def step(problem: MeanFieldProblem, state: State, hparams: HParams, key: Array, *,
         config: Config):
    """One Langevin step for all particles: `(new_state, Trace row of nu_{k+1})`.

    `theta_i += eta [grad dV/dnu(nu_N, theta_i) - (sigma^2/2) theta_i] + sigma sqrt(eta) xi_i`
    (docs/design.md §9.4; Kerimkulov et al., ICML 2022, "policy gradient flow approximation"), `xi`
    from `key`. One value-and-Lions-derivative evaluation per step: that of the new ensemble,
    which gives the trace row and the next step's direction (carried in the state).
    """
    tx = langevin_ascent(hparams.step_size, hparams.sigma, noise_dtype=config.noise_dtype)
    updates, opt_state = tx.update(state.lions, state.opt_state, state.params, key=key)
    particles = optax.apply_updates(state.params, updates)
    value_tau, lions, pi = _value_and_lions_derivative(problem, particles, hparams.gamma,
                                                       hparams.tau, config.gradient)
    row = _statistics(problem, particles, pi, value_tau, hparams)
    # not the objective: it is legitimately -inf for an ensemble without spread (N = 1)
    finite = _all_finite((row.value_tau, row.value, row.dispersion, particles))
    first_bad = jnp.where((state.first_bad_step < 0) & ~finite, state.step, state.first_bad_step)
    return State(particles, opt_state, lions, state.step + 1, first_bad), row


def run(problem: MeanFieldProblem, params0, hparams: HParams, key: Array = None, *,
        config: Config, keep_params: bool = False):
    """`config.n_steps` Langevin steps from the particles `params0`: `(final State, Trace)`.

    `dsorl.algorithms.base.run` (one `lax.scan`; step k's noise from `fold_in(key, k)`):
    `trace` holds arrays `[n_steps]`, row k the ensemble after step k. Pure; `jit` it, and
    `vmap` over `params0`, `hparams` (gamma, tau, sigma, step_size), `key` or the problem.
    Concrete inputs are validated (see `validate`; `params0` finite, N >= 1 particles of
    the feature's width K and the encodings' width d). A divergent run is not an exception
    here: its `final_state.first_bad_step` is >= 0 (see `check_divergence`). Under `vmap`
    the inputs are traced and unchecked: validate a sweep's concrete arrays first.
    """
    return base.run(sys.modules[__name__], problem, params0, hparams, key, config=config,
                    keep_params=keep_params)


def evaluate(problem: MeanFieldProblem, particles, hparams: HParams) -> Trace:
    """The `Trace` statistics of one ensemble (scalars), e.g. of an initial state."""
    hparams = base.coerce_hparams(hparams, base.problem_dtype(problem, particles), HParams)
    _check_value_args(problem, particles, hparams.gamma, hparams.tau)
    value_tau, pi = _regularised_value(problem, particles, hparams.gamma, hparams.tau)
    return _statistics(problem, particles, pi, value_tau, hparams)


def particle_moments(particles) -> tuple:
    """`(mean[D], var[D])`: each of the D parameter coordinates' mean and variance over the
    N particles (leading axis of every leaf); `mean(var)` is the trace's `dispersion`."""
    flat = jnp.concatenate([x.reshape(x.shape[0], -1)
                            for x in jax.tree_util.tree_leaves(particles)], axis=1)
    return jnp.mean(flat, axis=0), jnp.var(flat, axis=0)


def _statistics(problem, particles, pi, value_tau, hparams) -> Trace:
    mean, var = particle_moments(particles)
    kl_gaussian = 0.5 * jnp.sum(var + mean ** 2 - 1 - jnp.log(var))
    # sigma = 0 drops the term even where KL_G = inf (a coordinate without spread, N = 1)
    penalty = jnp.where(hparams.sigma > 0, hparams.sigma ** 2 / 2 * kl_gaussian, 0)
    return Trace(objective=value_tau - penalty,
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


def check_divergence(first_bad_step, hparams: HParams, *, max_listed: int = 5) -> None:
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
                          f" particles or statistics; try a smaller step_size): {listed}{more}.", runs)


def _entry(value: np.ndarray, index: tuple, shape: tuple):
    try:
        return np.broadcast_to(value, shape)[index].item()
    except ValueError:  # not batched like the state: show it whole
        return value.tolist()


# ----------------------------------------------------------------------------------------
# Validation at the entry points (concrete values only)


def _check_problem(problem) -> None:
    if not isinstance(problem, MeanFieldProblem):
        raise ValueError(f"problem must be a MeanFieldProblem, got {type(problem).__name__}.")


def _check_value_args(problem, particles, gamma, tau) -> None:
    _check_problem(problem)
    _checks.check_discount(gamma)
    _checks.check_positive("tau", tau)
    check_particles(problem.feature, particles, problem.encodings)


def _check_method(method: str) -> None:
    if method not in GRADIENTS:
        raise ValueError(f"unknown Lions-derivative method {method!r}; use one of {GRADIENTS}.")


__all__ = ["MeanFieldProblem", "mean_field_policy", "regularised_value", "lions_derivative",
           "HParams", "Config", "State", "Trace", "langevin_ascent", "particle_moments",
           "validate", "expected_params", "init", "step", "run", "evaluate", "check_divergence",
           "DivergenceError", "GRADIENTS"]
