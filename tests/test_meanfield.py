"""Mean-field Langevin policy gradient (Kerimkulov, Leahy, Šiška, Szpruch, ICML 2022).

Exact quantities against dense NumPy references (the policy, the regularised value, the
Lions derivative in closed form), autodiff against the covariance formula and finite
differences; the particle dynamics against the laws they must reach (N(0, I) when r = 0,
monotone ascent for small steps, forgetting of the initialisation for large sigma, the gap
to the soft optimum), the algorithm contract (trace after each step, float32, jit/vmap with
the problem captured or passed), variants, divergence reports and input errors.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import dsorl
from dsorl import features
from dsorl.algorithms import meanfield as mf
from helpers import central_difference, check_variants, random_mdp
from test_features import numpy_feature_gradients, numpy_features

S, A, K = 4, 3, 4
BOUND = 1.5
FEATURE = features.TanhFeature(width=K, bound=BOUND)
X = features.one_hot_encoding(S, A)
MU = np.array([[0.2, 0.3, 0.5], [1 / 3, 1 / 3, 1 / 3], [0.6, 0.2, 0.2], [0.1, 0.8, 0.1]])


def problem(seed=0, mu=MU, mdp=None):
    return mf.MeanFieldProblem(random_mdp(seed, S, A) if mdp is None else mdp, FEATURE, X, mu)


# one draw of i.i.d. N(0, I) particles; ensembles are random subsets of it (one compile of
# the initialiser instead of one per ensemble size)
_BANK = jax.tree_util.tree_map(np.asarray, features.init_particles(FEATURE, jax.random.key(0), 4000, X))


def particles(n, seed=0, loc=0.0, scale=1.0):
    index = np.random.default_rng(seed).permutation(4000)[:n]
    return jax.tree_util.tree_map(lambda x: jnp.asarray(loc + scale * x[index]), _BANK)


def hparams(gamma=0.8, tau=1.0, sigma=0.5, step_size=0.1):
    return mf.HParams(gamma, tau, sigma, step_size)


# jitted entry points shared by the exact tests (one compile per structure, not per call)
_POLICY = jax.jit(mf.mean_field_policy)
_VALUE = jax.jit(mf.regularised_value)
_LIONS = jax.jit(mf.lions_derivative, static_argnames="method")


def leaves(tree):
    p = tree["params"]
    return tuple(np.asarray(p[k]) for k in ("c", "w", "b"))


# ----------------------------------------------------------------------------------------
# NumPy references


def numpy_soft(mdp, pi, gamma, tau, mu):
    """V_tau^pi[S], Q_tau^pi[S, A] and the unnormalised occupancy m[S] by dense solves."""
    P, R, rho = (np.asarray(x) for x in (mdp.P, mdp.R, mdp.rho))
    P_pi = np.einsum("sa,sat->st", pi, P)
    kl = np.sum(pi * np.log(pi / mu), axis=1)
    V = np.linalg.solve(np.eye(len(rho)) - gamma * P_pi, (pi * R).sum(1) - tau * kl)
    m = np.linalg.solve((np.eye(len(rho)) - gamma * P_pi).T, rho)
    return V, R + gamma * P @ V, m


def numpy_policy(ps, mu):
    f_nu = numpy_features(*leaves(ps), np.asarray(X), BOUND).mean(0)
    w = mu * np.exp(f_nu - f_nu.max(1, keepdims=True))
    return w / w.sum(1, keepdims=True)


def numpy_lions_derivative(mdp, ps, gamma, tau, mu):
    """(1/(1-gamma)) E_{s ~ d_rho} Cov_pi(Q_tau - tau log(pi/mu), grad f(theta_i)), literally."""
    pi = numpy_policy(ps, mu)
    _, Q, m = numpy_soft(mdp, pi, gamma, tau, mu)
    d_rho = (1 - gamma) * m
    X_sa = Q - tau * np.log(pi / mu)
    centred = X_sa - (pi * X_sa).sum(1, keepdims=True)
    weights = d_rho[:, None] * pi * centred / (1 - gamma)
    return numpy_feature_gradients(*leaves(ps), np.asarray(X), weights, BOUND)


def numpy_soft_value_iteration(mdp, gamma, tau, mu, sweeps=3000):
    P, R = np.asarray(mdp.P), np.asarray(mdp.R)
    v = np.zeros(P.shape[0])
    for _ in range(sweeps):
        q = R + gamma * P @ v
        top = q.max(1, keepdims=True)
        v = (top + tau * np.log((mu * np.exp((q - top) / tau)).sum(1, keepdims=True)))[:, 0]
    q = R + gamma * P @ v
    return v, q, mu * np.exp((q - v[:, None]) / tau)


# ----------------------------------------------------------------------------------------
# Item 1: the entropy-regularised quantities with a reference measure


def test_soft_optimum_with_a_reference_measure():
    mdp = random_mdp(1, S, A)
    gamma, tau = 0.9, 0.3
    sol = dsorl.soft_policy_iteration(mdp, gamma, tau, MU)
    v, q, pi = numpy_soft_value_iteration(mdp, gamma, tau, MU)
    np.testing.assert_allclose(sol.value, v, rtol=1e-10)
    np.testing.assert_allclose(sol.q, q, rtol=1e-10)
    np.testing.assert_allclose(sol.policy, pi, rtol=1e-9)
    # pi*_tau attains V*_tau, and the regularised gradient vanishes there (first-order
    # optimality in the logits of pi ∝ mu exp(theta))
    V_pi, Q_pi, _ = numpy_soft(mdp, np.asarray(sol.policy), gamma, tau, MU)
    np.testing.assert_allclose(V_pi, v, rtol=1e-10)
    np.testing.assert_allclose(dsorl.soft_action_values(mdp, sol.policy, gamma, tau, MU), Q_pi, rtol=1e-10)
    J = jax.jit(lambda th: dsorl.entropy_regularised_return(mdp, jax.nn.softmax(th + np.log(MU), -1),
                                                            gamma, tau, MU))
    theta_star = np.log(np.asarray(sol.policy) / MU)
    assert np.abs(jax.jit(jax.grad(J))(theta_star)).max() < 1e-10
    assert all(J(theta_star + np.random.default_rng(i).normal(scale=0.3, size=(S, A))) < J(theta_star)
               for i in range(5))


# ----------------------------------------------------------------------------------------
# Item 3: the mean-field policy, its exact value and the Lions derivative


def test_policy_and_regularised_value_match_numpy():
    prob, ps = problem(), particles(6)
    pi = numpy_policy(ps, MU)
    np.testing.assert_allclose(_POLICY(prob, ps), pi, rtol=1e-13)
    for gamma, tau in [(0.5, 0.1), (0.95, 2.0)]:
        V, _, _ = numpy_soft(prob.mdp, pi, gamma, tau, MU)
        np.testing.assert_allclose(_VALUE(prob, ps, gamma, tau), prob.mdp.rho @ V, rtol=1e-12)
    # un-jitted, once
    np.testing.assert_allclose(mf.regularised_value(prob, ps, 0.5, 0.1),
                               prob.mdp.rho @ numpy_soft(prob.mdp, pi, 0.5, 0.1, MU)[0], rtol=1e-12)


def test_policy_respects_the_action_mask():
    base = random_mdp(2, S, A)
    mask = np.ones((S, A), bool)
    mask[1, 2] = mask[3, 0] = False
    mdp = dsorl.MDP(base.P, base.R, base.rho, mask)
    prob = problem(mdp=mdp, mu=None)
    pi = np.asarray(_POLICY(prob, particles(6)))
    assert pi[1, 2] == 0 and pi[3, 0] == 0
    np.testing.assert_allclose(pi.sum(1), 1, rtol=1e-14)
    lions = _LIONS(prob, particles(6), 0.9, 0.5, method="covariance")
    auto = _LIONS(prob, particles(6), 0.9, 0.5, method="autodiff")
    for a, b in zip(leaves(auto), leaves(lions)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * np.abs(a).max())


@pytest.mark.parametrize("seed, gamma, tau", [(0, 0.9, 0.5), (3, 0.5, 2.0), (4, 0.99, 0.05)])
def test_lions_derivative_autodiff_equals_covariance_formula(seed, gamma, tau):
    prob, ps = problem(seed), particles(6, seed, scale=1.5)
    auto = leaves(_LIONS(prob, ps, gamma, tau, method="autodiff"))
    cov = leaves(_LIONS(prob, ps, gamma, tau, method="covariance"))
    ref = numpy_lions_derivative(prob.mdp, ps, gamma, tau, MU)
    for a, c, r in zip(auto, cov, ref):
        scale = np.abs(r).max()
        assert np.abs(a - c).max() <= 1e-10 * scale   # the 1e-10 in float64
        np.testing.assert_allclose(a, r, rtol=1e-9, atol=1e-10 * scale)
        np.testing.assert_allclose(c, r, rtol=1e-9, atol=1e-10 * scale)


def test_float32_stays_float32_and_reaches_its_precision():
    """float32 inputs give float32 results within ~100 eps_32 (1e-5) of float64: the solves'
    condition number is about 1 / (1 - gamma) = 10."""
    m = random_mdp(0, S, A)
    mdp32 = dsorl.MDP(*(np.asarray(x, np.float32) for x in (m.P, m.R, m.rho)))
    prob32 = mf.MeanFieldProblem(mdp32, FEATURE, X.astype(np.float32), MU.astype(np.float32))
    ps = particles(6)
    ps32 = jax.tree_util.tree_map(lambda x: x.astype(np.float32), ps)
    for method in mf.GRADIENTS:
        got = leaves(_LIONS(prob32, ps32, 0.9, 0.5, method=method))
        want = leaves(_LIONS(problem(0), ps, 0.9, 0.5, method=method))
        for g, w in zip(got, want):
            assert g.dtype == np.float32
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * np.abs(w).max())


def test_lions_derivative_is_n_times_the_particle_gradient():
    # finite differences of the exact value in one particle's parameters, times N
    prob, ps, n = problem(5), particles(6, 5), 6
    lions = _LIONS(prob, ps, 0.9, 0.7, method="autodiff")
    for name in ("c", "w", "b"):
        def value_of(leaf, name=name):
            tree = {"params": {**ps["params"], name: ps["params"][name].at[2].set(leaf)}}
            return _VALUE(prob, tree, 0.9, 0.7)
        fd = central_difference(value_of, ps["params"][name][2])
        np.testing.assert_allclose(lions["params"][name][2], n * fd, rtol=1e-6, atol=1e-9)


def test_lions_derivative_variants():
    # autodiff here; the covariance form is compared with it (jitted) above
    prob, ps = problem(), particles(6)
    check_variants(lambda p, t: mf.lions_derivative(prob, p, 0.9, t), (ps, 0.5),
                   (ps, jnp.array([0.2, 3.0])), (None, 0))


# ----------------------------------------------------------------------------------------
# Item 4: the Langevin dynamics


def test_langevin_ascent_update():
    ps = particles(200)
    grad = jax.tree_util.tree_map(lambda p: jnp.cos(p), ps)
    eta, sigma = 0.05, 0.7
    tx = mf.langevin_ascent(eta, sigma)
    key = jax.random.key(3)
    upd, _ = jax.jit(lambda g, p, k: tx.update(g, tx.init(p), p, key=k))(grad, ps, key)
    drift = jax.tree_util.tree_map(lambda g, p: eta * (g - sigma ** 2 / 2 * p), grad, ps)
    noise = np.concatenate([np.ravel((u - d) / (sigma * np.sqrt(eta)))
                            for u, d in zip(leaves(upd), leaves(drift))])
    # the noise is i.i.d. N(0, 1): mean and variance within 4.5 standard errors
    n = noise.size
    assert abs(noise.mean()) < 4.5 / np.sqrt(n) and abs(noise.var() - 1) < 4.5 * np.sqrt(2 / n)
    upd0, _ = mf.langevin_ascent(eta, 0.0).update(grad, tx.init(ps), ps, key=key)
    for u, g in zip(leaves(upd0), leaves(grad)):
        np.testing.assert_allclose(u, eta * g, rtol=1e-15)


def test_float32_noise_is_opt_in_standard_normal_and_leaves_the_default_path_alone():
    ps = particles(2000)   # 2000 x K (d + 2) coordinates of noise
    grad = jax.tree_util.tree_map(jnp.zeros_like, ps)
    eta, sigma, key = 0.05, 0.7, jax.random.key(4)
    tx32 = mf.langevin_ascent(eta, sigma, noise_dtype="float32")
    upd, _ = jax.jit(lambda p, k: tx32.update(grad, tx32.init(p), p, key=k))(ps, key)
    drift = jax.tree_util.tree_map(lambda p: -eta * sigma ** 2 / 2 * p, ps)
    xi = np.asarray(ravel_pytree(jax.tree_util.tree_map(
        lambda u, d: (u - d) / (sigma * np.sqrt(eta)), upd, drift))[0])  # the draw's layout
    assert all(u.dtype == np.float64 for u in leaves(upd))  # cast up to the particles' dtype
    # float32 draws: representable in float32, i.i.d. N(0, 1) in mean, variance and kurtosis
    # within 4.5 standard errors (var(xi^2) = 2, var(xi^4) = 96 for a standard normal)
    raw = np.asarray(jax.random.normal(key, xi.shape, jnp.float32), np.float64)
    np.testing.assert_allclose(xi, raw, rtol=1e-9, atol=1e-12)
    n = xi.size
    assert abs(xi.mean()) < 4.5 / np.sqrt(n) and abs(xi.var() - 1) < 4.5 * np.sqrt(2 / n)
    assert abs(np.mean(xi ** 4) - 3) < 4.5 * np.sqrt(96 / n)
    # the default path is untouched: float64 draws, other numbers than the float32 path
    tx = mf.langevin_ascent(eta, sigma)
    upd64, _ = tx.update(grad, tx.init(ps), ps, key=key)
    assert not np.allclose(leaves(upd64)[0], leaves(upd)[0])
    # through the algorithm: validated, and a run with float32 noise stays float64
    prob, hp = problem(), hparams()
    with pytest.raises(ValueError, match="noise_dtype"):
        mf.run(prob, particles(4), hp, key, config=mf.Config(2, noise_dtype="float16"))
    state, trace = mf.run(prob, particles(4), hp, key, config=mf.Config(2, noise_dtype="float32"))
    assert trace.value_tau.dtype == np.float64 and np.all(np.isfinite(trace.value_tau))


def test_run_matches_manual_steps_and_records_the_trace_after_each_step():
    prob, ps, hp = problem(), particles(6), hparams()
    key, config = jax.random.key(0), mf.Config(4)
    state, trace = jax.jit(lambda k: mf.run(prob, ps, hp, k, config=config, keep_params=True))(key)
    hp_arrays = mf.HParams(*map(jnp.asarray, hp))
    manual = mf.init(prob, ps, hp_arrays, key, config=config)
    step = jax.jit(lambda s, k: mf.step(prob, s, hp_arrays, k, config=config))
    rows, ensembles = [], []
    for i in range(4):   # the driver's keys: fold_in(key, i) for step i
        manual, row = step(manual, jax.random.fold_in(key, i))
        rows.append(row)
        ensembles.append(manual.params)
    for a, b in zip(leaves(state.params), leaves(manual.params)):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert int(state.step) == 4 and int(state.first_bad_step) == -1
    # row k describes nu_{k+1}, the ensemble after step k: compare with independent
    # evaluations of the ensembles (the last row is the final state's)
    evaluate = jax.jit(mf.evaluate)
    final = state.params
    pi = numpy_policy(final, MU)
    V, _, _ = numpy_soft(prob.mdp, pi, 0.8, 1.0, MU)
    np.testing.assert_allclose(trace.value_tau[-1], prob.mdp.rho @ V, rtol=1e-12)
    np.testing.assert_allclose(trace.value[-1], prob.mdp.rho @ numpy_soft(prob.mdp, pi, 0.8, 0.0, MU)[0],
                               rtol=1e-12)
    flat = np.concatenate([x.reshape(6, -1) for x in leaves(final)], axis=1)
    np.testing.assert_allclose(trace.dispersion[-1], flat.var(0).mean(), rtol=1e-12)
    m, v = flat.mean(0), flat.var(0)
    kl = 0.5 * np.sum(v + m ** 2 - 1 - np.log(v))
    np.testing.assert_allclose(trace.objective[-1], prob.mdp.rho @ V - 0.5 ** 2 / 2 * kl, rtol=1e-12)
    for k, ensemble in enumerate(ensembles):
        for a, b in zip(leaves(trace.params), leaves(ensemble)):
            np.testing.assert_allclose(a[k], b, rtol=1e-12)
        want = evaluate(prob, ensemble, hp_arrays)
        for name in ("objective", "value_tau", "value", "dispersion"):
            np.testing.assert_allclose(getattr(trace, name)[k], getattr(want, name), rtol=1e-12)
            np.testing.assert_allclose(getattr(trace, name)[k], getattr(rows[k], name), rtol=1e-12)
    # the carried Lions derivative is that of the current particles
    np.testing.assert_allclose(leaves(state.lions)[1], leaves(_LIONS(prob, final, 0.8, 1.0))[1],
                               rtol=1e-11, atol=1e-14)


def test_float32_run_stays_float32():
    """float32 problem and particles (with x64 enabled): a float32 run, within 1e-5 of
    float64 without noise (the normal draws of a key differ between the two dtypes)."""
    m = random_mdp(0, S, A)
    mdp32 = dsorl.MDP(*(np.asarray(x, np.float32) for x in (m.P, m.R, m.rho)))
    prob32 = mf.MeanFieldProblem(mdp32, FEATURE, X.astype(np.float32), MU.astype(np.float32))
    ps32 = jax.tree_util.tree_map(lambda x: x.astype(np.float32), particles(6))
    for gradient in mf.GRADIENTS:
        state, trace = jax.jit(lambda ps, g=gradient: mf.run(prob32, ps, hparams(sigma=0.0),
                                                             jax.random.key(0),
                                                             config=mf.Config(3, g)))(ps32)
        assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves((state.params, state.lions,
                                                                             trace)))
        state64, trace64 = jax.jit(lambda ps, g=gradient: mf.run(problem(0), ps, hparams(sigma=0.0),
                                                                 jax.random.key(0),
                                                                 config=mf.Config(3, g)))(particles(6))
        np.testing.assert_allclose(trace.value_tau, trace64.value_tau, rtol=1e-5)
        for a, b in zip(leaves(state.params), leaves(state64.params)):
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_jit_vmap_with_the_problem_captured_or_passed():
    prob, ps, hp, config = problem(), particles(5), hparams(), mf.Config(3)
    keys = jax.random.split(jax.random.key(3), 2)
    captured = jax.jit(jax.vmap(lambda k: mf.run(prob, ps, hp, k, config=config)))(keys)
    passed = jax.jit(jax.vmap(lambda p, k: mf.run(p, ps, hp, k, config=config),
                              in_axes=(None, 0)))(prob, keys)
    direct = [mf.run(prob, ps, hp, k, config=config) for k in keys]
    for i, (state, trace) in enumerate(direct):
        for got in (captured, passed):
            np.testing.assert_allclose(got[1].objective[i], trace.objective, rtol=1e-12)
            for a, b in zip(leaves(got[0].params), leaves(state.params)):
                np.testing.assert_allclose(a[i], b, rtol=1e-12)
    assert not np.allclose(captured[1].objective[0], captured[1].objective[1])  # keys reach the noise


def test_run_variants_over_seeds_tau_sigma_step_size():
    # N = 1 (allowed; its objective is -inf for sigma > 0, which is not a divergence)
    prob, ps = problem(), particles(1)
    config = mf.Config(3)

    def fn(key, tau, sigma, step_size):
        state, trace = mf.run(prob, ps, mf.HParams(0.8, tau, sigma, step_size), key, config=config)
        return state.params, state.first_bad_step, trace

    keys = jax.random.split(jax.random.key(1), 3)
    batched = (keys, jnp.array([0.5, 1.0, 2.0]), jnp.array([0.0, 0.3, 1.0]), jnp.array([0.01, 0.1, 0.2]))
    check_variants(fn, (keys[0], 1.0, 0.3, 0.1), batched, (0, 0, 0, 0), rtol=1e-11, atol=1e-12)
    _, first_bad, trace = jax.vmap(fn)(*batched)   # the cached program of check_variants
    assert np.all(np.asarray(first_bad) == -1)
    np.testing.assert_array_equal(trace.objective[0], trace.value_tau[0])   # sigma = 0
    assert np.all(np.asarray(trace.objective[1:]) == -np.inf)


def test_with_zero_reward_the_particle_law_converges_to_the_standard_gaussian():
    """r = 0: J^{tau,sigma} is maximised by nu = N(0, I) (V_tau <= 0 = V_tau(pi = mu) and
    psi odd makes f_nu = 0 there), so the particles relax like an Ornstein-Uhlenbeck
    process. The Euler scheme's stationary law is N(0, v I), v = 1 / (1 - eta sigma^2 / 4);
    the start N(2, 0.25) is forgotten like (1 - eta sigma^2 / 2)^T = 0.95^400 ~ 1e-9."""
    base = random_mdp(6, S, A)
    prob = mf.MeanFieldProblem(dsorl.MDP(base.P, np.zeros((S, A)), base.rho), FEATURE, X)
    N, T, eta, sigma = 4000, 400, 0.1, 1.0
    # small tau: the finite-N interaction (pull of f_nu towards 0) stays far below the SE
    state, trace = jax.jit(lambda ps: mf.run(prob, ps, hparams(0.5, 0.05, sigma, eta), jax.random.key(8),
                                             config=mf.Config(T)))(particles(N, 7, loc=2.0, scale=0.5))
    flat = np.concatenate([x.reshape(N, -1) for x in leaves(state.params)], axis=1)
    v = 1 / (1 - eta * sigma ** 2 / 4)
    transient = 2.0 * (1 - eta * sigma ** 2 / 2) ** T
    se_mean, se_var, se_cov = np.sqrt(v / N), v * np.sqrt(2 / N), v / np.sqrt(N)
    np.testing.assert_array_less(np.abs(flat.mean(0)), 4.5 * se_mean + transient)
    cov = np.cov(flat, rowvar=False)
    np.testing.assert_array_less(np.abs(np.diag(cov) - v), 4.5 * se_var)
    np.testing.assert_array_less(np.abs(cov - np.diag(np.diag(cov))), 4.5 * se_cov)
    assert abs(trace.dispersion[-1] - v) < 4.5 * se_var / np.sqrt(flat.shape[1])


# one compiled program for the dynamics tests below: B = 12 runs of 150 steps of N = 16
# particles, batched over initial ensembles, hyperparameters and keys
_B, _N, _T = 12, 16, 150
_RUNS = jax.jit(jax.vmap(lambda prob, ps, hp, key: mf.run(prob, ps, hp, key, config=mf.Config(_T)),
                         in_axes=(None, 0, 0, 0)))


def _batch(*trees):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _hparams_batch(**kwargs):
    return mf.HParams(*(jnp.broadcast_to(jnp.asarray(v, float), (_B,))
                                for v in hparams(**kwargs)))


def test_objective_does_not_decrease_for_small_steps():
    """sigma = 0 (run 0): gradient ascent on V_tau, monotone up to rounding for a small
    step. sigma = 0.3 (runs 1..11): the objective's mean over seeds is non-decreasing up to
    its standard error (4.5 SE between any two steps) and rises significantly overall."""
    sigma = np.r_[0.0, np.full(_B - 1, 0.3)]
    _, trace = _RUNS(problem(0), _batch(*[particles(_N)] * _B), _hparams_batch(sigma=sigma, step_size=0.05),
                     jax.random.split(jax.random.key(1), _B))
    value = np.asarray(trace.value_tau[0])
    assert np.all(np.diff(value) >= -1e-13 * np.abs(value).max())
    assert value[-1] - value[0] > 0.5   # and it does climb
    J = np.asarray(trace.objective[1:])
    mean, se = J.mean(0), J.std(0, ddof=1) / np.sqrt(len(J))
    drop = mean[None, :] - mean[:, None]          # drop[j, k] = mean_k - mean_j
    tol = 4.5 * np.sqrt(se[None, :] ** 2 + se[:, None] ** 2)
    later = np.triu(np.ones_like(drop, bool), 1)
    assert np.all(drop[later] >= -tol[later])
    assert mean[-1] - mean[0] > 4.5 * np.hypot(se[0], se[-1])


def test_large_sigma_forgets_the_initialisation():
    """sigma^2/2 = 2 dominates the drift's Lipschitz constant: the dynamics contract (by
    about 1 - eta sigma^2/2 = 0.8 per step), so ensembles started far apart and driven by
    the same noise reach the same policy (the coupling behind the W_2 contraction of
    Kerimkulov et al.'s convergence theorem). Runs 2i and 2i+1 share a key."""
    prob = problem(0)
    starts = [particles(_N, i) if i % 2 == 0 else particles(_N, i, loc=1.0, scale=0.5) for i in range(_B)]
    keys = jnp.repeat(jax.random.split(jax.random.key(4), _B // 2), 2)
    state, _ = _RUNS(prob, _batch(*starts), _hparams_batch(sigma=2.0, step_size=0.1), keys)
    pis = np.asarray(jax.vmap(lambda p: mf.mean_field_policy(prob, p))(state.params))
    pis0 = np.stack([np.asarray(_POLICY(prob, p)) for p in starts])
    gap0 = np.abs(pis0[0::2] - pis0[1::2]).max(axis=(1, 2))
    gap = np.abs(pis[0::2] - pis[1::2]).max(axis=(1, 2))
    assert np.all(gap0 > 1e-2) and np.all(gap < 1e-10)


def test_gap_to_the_soft_optimum_shrinks_as_n_grows_and_sigma_falls():
    """The finite-N fluctuation of f_nu is O(1/sqrt(N)) and the sigma-regularisation biases
    the optimum by O(sigma^2): the mean gap falls along both axes (measured; the full table
    is the `meanfield` job's). Per seed, the gap is averaged over 4 snapshots 50 steps
    apart after 100 steps of burn-in; the spread over seeds gives its standard error."""
    prob = problem(0, mu=None)
    gamma, tau, eta = 0.8, 1.0, 0.4
    pi_star = dsorl.soft_policy_iteration(prob.mdp, gamma, tau).policy
    seeds, sigmas = 16, jnp.array([0.5, 0.125])

    def gaps(n):
        def one(sigma, key):
            hp = mf.HParams(*map(jnp.asarray, (gamma, tau, sigma, eta)))

            def chunk(ps, k):
                state, _ = mf.run(prob, ps, hp, k, config=mf.Config(50))
                pi = mf.mean_field_policy(prob, state.params)
                return state.params, jnp.abs(pi - pi_star).sum(-1).max()

            _, snapshots = jax.lax.scan(chunk, particles(n), jax.random.split(key, 6))
            return snapshots[2:].mean()

        keys = jax.random.split(jax.random.key(2), seeds)
        g = np.asarray(jax.jit(jax.vmap(jax.vmap(one, (None, 0)), (0, None)))(sigmas, keys))
        return g.mean(1), g.std(1, ddof=1) / np.sqrt(seeds)

    (small_n, se_small), (large_n, se_large) = gaps(4), gaps(64)
    # N grows (at each sigma) and sigma falls (at each N): the gap drops beyond 4.5 SE
    assert np.all(small_n - large_n > 4.5 * np.hypot(se_small, se_large))
    for mean, se in ((small_n, se_small), (large_n, se_large)):
        assert mean[0] - mean[1] > 4.5 * np.hypot(se[0], se[1])


# ----------------------------------------------------------------------------------------
# Item 8: divergence and bad input


def test_divergence_is_reported_with_its_step_and_hyperparameters():
    """eta sigma^2 / 2 = 50: |theta| grows like 49^k; the first non-finite statistic is the
    particles' variance, when |theta|^2 overflows (|theta| ~ 1.3e154), and the step
    reported is the one after which that happens. The bounded drift and the noise only shift
    the start, so the step is predictable within a few steps from the largest initial
    coordinate."""
    step_size = np.r_[np.full(_B - 1, 0.1), 100.0]
    ps = particles(_N)
    state, trace = _RUNS(problem(), _batch(*[ps] * _B), _hparams_batch(sigma=1.0, step_size=step_size),
                         jax.random.split(jax.random.key(0), _B))
    bad = np.asarray(state.first_bad_step)
    assert np.all(bad[:-1] == -1) and bad[-1] >= 0
    k = bad[-1]
    start = np.abs(np.concatenate([x.ravel() for x in leaves(ps)])).max()
    predicted = np.log(np.sqrt(np.finfo(np.float64).max) / start) / np.log(49) - 1
    assert abs(k - predicted) <= 3
    # the trace agrees: rows before k are finite, row k (the ensemble after step k) is not
    rows = np.stack([np.asarray(getattr(trace, f)[-1]) for f in ("objective", "value_tau",
                                                                   "value", "dispersion")], axis=1)
    assert np.all(np.isfinite(rows[:k])) and not np.all(np.isfinite(rows[k]))
    mf.check_divergence(state.first_bad_step[:-1], hparams(sigma=1.0, step_size=step_size[:-1]))
    with pytest.raises(mf.DivergenceError, match=rf"1 of 12 .* run \(11,\): step {k} \(gamma=0.8, tau=1.0,"
                                                 r" sigma=1.0, step_size=100.0\)") as err:
        mf.check_divergence(state.first_bad_step, hparams(sigma=1.0, step_size=step_size))
    assert err.value.runs == [{"index": (11,), "first_bad_step": k, "gamma": 0.8, "tau": 1.0,
                               "sigma": 1.0, "step_size": 100.0}]


_NAN = particles(3)
_NAN = {"params": {**_NAN["params"], "w": _NAN["params"]["w"].at[1, 2, 0].set(np.nan)}}


@pytest.mark.parametrize("change, message", [
    (dict(hp=hparams(tau=0.0)), "tau = 0.0 must be finite and > 0"),
    (dict(hp=hparams(tau=-1.0)), "tau = -1.0 must be"),
    (dict(hp=hparams(sigma=-0.1)), "sigma = -0.1 must be finite and >= 0"),
    (dict(hp=hparams(step_size=0.0)), "step_size = 0.0 must be finite and > 0"),
    (dict(hp=hparams(step_size=jnp.array([0.1, -1.0]))), "step_size = .* must be finite and > 0"),
    (dict(hp=hparams(gamma=1.0)), "gamma = 1.0 must lie in"),
    (dict(hp=hparams(gamma=-0.1)), "gamma = -0.1 must lie in"),
    (dict(hp={"gamma": 0.9, "tau": 1.0, "sigma": 0.1, "eta": 0.1}), "missing step_size; unknown eta"),
    (dict(ps=_NAN), r"params0 leaf 2\[1, 2, 0\] = nan is not finite"),
    (dict(ps=jax.tree_util.tree_map(lambda p: p[:0], particles(3))),
     "params0: number of particles N = 0 must be >= 1"),
    (dict(prob=mf.MeanFieldProblem(random_mdp(0, S, A), FEATURE, features.one_hot_encoding(S, A)[..., :6])),
     r"params0: encodings have width \(6,\) but .* expect d = 7"),
    (dict(config=mf.Config(3, n_particles=4)), r"params0 leaf 0 must have shape \(4, 4\), got \(3, 4\)"),
    (dict(config=mf.Config(3, n_particles=0)), "n_particles = 0 must be None or an integer >= 1"),
    (dict(config=mf.Config(-1)), "n_steps = -1 must be >= 0"),
    (dict(config=mf.Config(3, "finite_differences")), "unknown Lions-derivative method"),
    (dict(key=None), "pass an explicit key"),
])
def test_bad_run_inputs_raise(change, message):
    args = dict(prob=problem(), ps=particles(3), hp=hparams(), config=mf.Config(3), key=jax.random.key(0))
    args.update(change)
    with pytest.raises(ValueError, match=message):
        mf.run(args["prob"], args["ps"], args["hp"], args["key"], config=args["config"])


def test_run_rejects_hparams_of_another_type():
    with pytest.raises(TypeError, match="hparams must be a HParams or a mapping"):
        mf.run(problem(), particles(3), (0.9, 1.0, 0.1, 0.1), jax.random.key(0), config=mf.Config(3))


def test_bad_inputs_of_the_exact_quantities_raise():
    prob, ps = problem(), particles(3)
    narrow = mf.MeanFieldProblem(prob.mdp, FEATURE, X[..., :5])
    for call, message in [
        (lambda: mf.regularised_value(prob, ps, 0.9, 0.0), "tau = 0.0"),
        (lambda: mf.lions_derivative(prob, ps, 0.9, -0.5), "tau = -0.5"),
        (lambda: mf.lions_derivative(prob, ps, 0.9, 0.5, method="exact"), "unknown Lions"),
        (lambda: mf.regularised_value(narrow, ps, 0.9, 0.5), r"width \(5,\) .* d = 7"),
        (lambda: mf.mean_field_policy(narrow, ps), r"width \(5,\) .* d = 7"),
        (lambda: mf.evaluate(prob, ps, hparams(tau=0.0)), "tau = 0.0"),
        (lambda: mf.MeanFieldProblem(prob.mdp, FEATURE, X[:2]), r"\[S, A, d\] = \[4, 3, d\]"),
        (lambda: mf.MeanFieldProblem(prob.mdp, FEATURE, X.at[0, 0, 0].set(np.inf)), "not finite"),
        (lambda: mf.MeanFieldProblem(prob.mdp, "tanh", X), "TanhFeature"),
        (lambda: mf.MeanFieldProblem(np.ones((S, A, S)), FEATURE, X), "dsorl.MDP"),
        (lambda: mf.MeanFieldProblem(prob.mdp, FEATURE, X, np.ones((S, A))), "reference-measure row"),
        (lambda: jax.jit(lambda k: mf.check_divergence(k, hparams()))(jnp.int32(3)), "outside jit"),
        (lambda: mf.validate(prob, hparams(sigma=jnp.array([0.1, -0.2])), mf.Config(3)),
         "sigma = .* must be finite and >= 0"),
        (lambda: mf.validate(ps, hparams(), mf.Config(3)), "problem must be a MeanFieldProblem"),
    ]:
        with pytest.raises(ValueError, match=message):
            call()


def test_problem_is_a_pytree():
    prob = problem()
    leaves_, treedef = jax.tree_util.tree_flatten(prob)
    again = jax.tree_util.tree_unflatten(treedef, leaves_)
    assert again.feature == FEATURE and np.array_equal(again.encodings, prob.encodings)
    # vmap over problems that differ in their encodings' scale
    scaled = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), prob)
    scaled = jax.tree_util.tree_unflatten(treedef, [*jax.tree_util.tree_leaves(scaled.mdp),
                                                    jnp.stack([X, 2 * X]), scaled.mu])
    values = jax.jit(jax.vmap(lambda p: mf.regularised_value(p, particles(6), 0.9, 0.5)))(scaled)
    doubled = mf.MeanFieldProblem(prob.mdp, FEATURE, 2 * X, MU)
    np.testing.assert_allclose(values, [_VALUE(prob, particles(6), 0.9, 0.5),
                                        _VALUE(doubled, particles(6), 0.9, 0.5)], rtol=1e-12)


# ----------------------------------------------------------------------------------------
# Jobs and the benchmark's baseline


def test_numpy_baseline_of_the_benchmark_is_the_same_update():
    from dsorl.jobs.meanfield_benchmark import NumpyLangevin

    prob, ps, hp = problem(), particles(6), hparams(sigma=0.0)
    state, trace = jax.jit(lambda k: mf.run(prob, ps, hp, k, config=mf.Config(4)))(jax.random.key(0))
    baseline = NumpyLangevin(prob, jax.tree_util.tree_map(np.asarray, ps), hp, np.random.default_rng(0))
    rows = np.array(baseline.run(4))   # row k: the ensemble step k starts from
    np.testing.assert_allclose(rows[1:], np.stack(trace[:4], axis=1)[:-1], rtol=1e-11)
    for got, want in zip((baseline.c, baseline.w, baseline.b), leaves(state.params)):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13)


@pytest.mark.slow
def test_meanfield_jobs_run_end_to_end():
    from dsorl import config as config_lib
    from dsorl.jobs import meanfield as job, meanfield_control as control_job

    # step_size = 1000: sigma = 0 stays finite (bounded drift), sigma = 1 diverges (factor -499)
    cfg = config_lib.resolve({"job": "meanfield", "particles": [3], "sigmas": [0.0, 1.0], "seeds": 2,
                              "step_size": 1000.0, "burn_in": 60, "snapshots": 2, "snapshot_every": 10,
                              "on_divergence": "report"})
    out = job.run(cfg)
    rows = out["tables"]["gap"]
    assert [(r["particles"], r["sigma"], r["runs"], r["diverged"]) for r in rows] == [(3, 0.0, 2, 0),
                                                                                       (3, 1.0, 0, 2)]
    assert 0 <= rows[0]["policy_gap"] <= 2 and rows[0]["value_gap"] >= 0
    assert out["tables"]["lions_check"][0]["autodiff_vs_covariance_rel"] < 1e-10
    assert out["arrays"]["value_gap_n3_sigma0"].shape == (80,)
    with pytest.raises(ValueError, match="on_divergence"):
        job.run({**cfg, "on_divergence": "ignore"})

    cfg = config_lib.resolve({"job": "meanfield_control", "grid": {"n_states": 7, "n_actions": 5},
                              "particles": 4, "steps": 5, "seeds": 2})
    rows = control_job.run(cfg)["tables"]["policies"]
    assert rows[0]["policy_gap"] == 0 and rows[0]["value_gap"] == 0
    assert len(rows) == 4 and all(r["policy_gap"] > 0 for r in rows[1:3])


def test_run_from_key_draws_the_particles_then_runs():
    from dsorl.jobs.meanfield import particles_from_key, run_from_key

    prob, hp, key = problem(), hparams(), jax.random.key(4)
    config = mf.Config(3, n_particles=5)
    state, trace = jax.jit(lambda k: run_from_key(prob, None, hp, k, config=config))(key)
    k_init, k_run = jax.random.split(key)
    ps = features.init_particles(FEATURE, k_init, 5, X)
    want_state, want_trace = jax.jit(lambda: mf.run(prob, ps, hp, k_run, config=config))()
    np.testing.assert_allclose(trace.objective, want_trace.objective, rtol=1e-13)
    for a, b in zip(leaves(state.params), leaves(want_state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    centre = jax.tree_util.tree_map(lambda x: jnp.ones(x.shape[1:]), ps)
    shifted, k = particles_from_key(prob, key, 5, centre)
    for a, b in zip(leaves(shifted), leaves(ps)):
        np.testing.assert_allclose(a, b + 1, rtol=1e-15)
    assert np.array_equal(jax.random.key_data(k), jax.random.key_data(k_run))
    with pytest.raises(ValueError, match="give config.n_particles"):
        run_from_key(prob, None, hp, key, config=mf.Config(3))
