"""Sparse kernels and matrix-free solves: every quantity against the dense path (an
independent LU computation), gradients also against central finite differences, bad
input named, non-convergence reported."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse

import dsorl
from dsorl import chain_models as cm
from dsorl import fisher, krylov, markov, objectives, planning, sparse
from dsorl.algorithms import base, dso, dynpg, nbw, pg
from dsorl.mdp import MDP, action_values, bias_action_values, induced_chain
from dsorl.policies import linear_softmax, tabular_softmax

# Agreement goal of the issue: 1e-8 relative. The solves stop at a relative residual of
# 1e-12 and cond(I - gamma P) <= (1 + gamma) / (1 - gamma) = 199 at gamma = 0.99, so the
# relative error is below ~2e-10; the bound used below leaves that margin.
RTOL = 1e-8


def _random_mdp(seed, S, A, density=0.1):
    rng = np.random.default_rng(seed)
    P = rng.random((S, A, S)) * (rng.random((S, A, S)) < density)
    P[..., rng.integers(S)] += 0.01  # one state reachable from all: unichain
    P /= P.sum(-1, keepdims=True)
    return P, rng.random((S, A)), np.full(S, 1 / S)


def _pair(seed=0, S=40, A=3, density=0.1):
    P, R, rho = _random_mdp(seed, S, A, density)
    return MDP(P, R, rho), MDP(sparse.from_dense(P), R, rho)


def _close(a, b, rtol=RTOL):
    a, b = np.asarray(a), np.asarray(b)
    assert np.max(np.abs(a - b)) <= rtol * max(1.0, np.max(np.abs(a))), np.max(np.abs(a - b))


# ----------------------------------------------------------------------------------------
# The representation


def test_from_dense_round_trips_and_pads_with_zero_probability():
    P, _, _ = _random_mdp(1, 30, 2)
    Ps = sparse.from_dense(P)
    assert Ps.shape == P.shape and Ps.successors.dtype == jnp.int32
    assert Ps.fan_out == int((P > 0).sum(-1).max())
    np.testing.assert_array_equal(np.asarray(Ps.to_dense()), P)
    v = np.random.default_rng(0).normal(size=30)
    np.testing.assert_allclose(np.asarray(Ps @ v), P @ v, rtol=1e-14, atol=1e-14)
    u = np.random.default_rng(1).normal(size=(30, 2))
    np.testing.assert_allclose(np.asarray(u @ Ps), np.einsum("sa,sat->t", u, P), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(sparse.self_loops(Ps)),
                               np.diagonal(P, axis1=0, axis2=2).T)


def test_from_scipy_reads_one_matrix_per_action_and_the_stacked_form():
    P, _, _ = _random_mdp(2, 25, 3)
    per_action = [scipy.sparse.csr_matrix(P[:, a]) for a in range(3)]
    stacked = scipy.sparse.csr_matrix(P.reshape(75, 25))
    for form in (per_action, stacked):
        np.testing.assert_allclose(np.asarray(sparse.from_scipy(form).to_dense()), P,
                                   rtol=0, atol=1e-15)
    chain = sparse.from_scipy(scipy.sparse.csr_matrix(P[:, 0]))
    assert chain.shape == (25, 25)
    # duplicate (row, column) entries of a COO matrix add up
    dup = scipy.sparse.coo_matrix(([0.25, 0.25, 0.5], ([0, 0, 0], [1, 1, 0])), shape=(2, 2))
    dup = scipy.sparse.vstack([dup.tocsr()[:1], scipy.sparse.csr_matrix([[0.0, 1.0]])])
    np.testing.assert_allclose(np.asarray(sparse.from_scipy(dup).to_dense()),
                               [[0.5, 0.5], [0.0, 1.0]])


@pytest.mark.parametrize("mutate, message", [
    (lambda s, p: (s, p.at[3, 1, 0].add(0.2)), r"probs\[3, 1, :\] sums to"),
    (lambda s, p: (s.at[2, 0, 1].set(99), p), r"successors\[2, 0, 1\] = 99 is not a state"),
    (lambda s, p: (s.at[2, 0, 1].set(-1), p), r"successors\[2, 0, 1\] = -1"),
    (lambda s, p: (s, p.at[4, 0, 0].set(jnp.nan)), r"probs\[4, 0, 0\] = nan is not finite"),
    (lambda s, p: (s, p.at[5, 1, 0].add(-2.0).at[5, 1, 1].add(2.0)), r"is negative"),
    (lambda s, p: (s[..., :2], p), r"must share one shape"),
    (lambda s, p: (s.astype(jnp.float32), p), r"integer state indices"),
])
def test_bad_sparse_kernels_are_refused_naming_the_entry(mutate, message):
    P, R, rho = _random_mdp(3, 10, 2, density=0.5)
    Ps = sparse.from_dense(P)
    succ, probs = mutate(Ps.successors, Ps.probs)
    with pytest.raises(ValueError, match=message):
        MDP(sparse.SparseTransitions(np.asarray(succ), np.asarray(probs)), R, rho)



def test_sparse_chain_shape_and_mask_are_checked():
    P, R, rho = _random_mdp(4, 8, 2, density=0.5)
    Ps = sparse.from_dense(P)
    with pytest.raises(ValueError, match=r"must be \[S, A, K\]"):
        MDP(sparse.from_dense(P[:, 0]), R, rho)
    with pytest.raises(ValueError, match=r"must be \[S, K\]"):
        markov.Chain(Ps, R[:, 0])
    # a masked action's row may be anything finite (here all zero)
    mask = np.ones((8, 2), bool)
    mask[3, 1] = False
    probs = np.asarray(Ps.probs).copy()
    probs[3, 1] = 0
    MDP(sparse.SparseTransitions(Ps.successors, probs), R, rho, mask)
    with pytest.raises(ValueError, match=r"probs\[3, 1, :\] sums to"):  # not masked
        MDP(sparse.SparseTransitions(Ps.successors, probs), R, rho)
    # a chain has no mask: an empty row is refused
    with pytest.raises(ValueError, match=r"probs\[3, :\] sums to"):
        markov.Chain(sparse.SparseTransitions(Ps.successors[:, 1], probs[:, 1]), R[:, 0])


def test_krylov_settings_are_validated():
    for bad in (dict(tol=0.0), dict(tol=1.5), dict(tol=float("nan")), dict(max_iters=0),
                dict(max_iters=2.5)):
        with pytest.raises(ValueError, match="Krylov"):
            krylov.Krylov(**bad)


# ----------------------------------------------------------------------------------------
# The solver


def test_bicgstab_solves_a_nonsymmetric_system_and_reports_honestly():
    rng = np.random.default_rng(5)
    M = np.eye(60) + 0.3 * rng.normal(size=(60, 60)) / np.sqrt(60)
    b = rng.normal(size=60)
    x, info = krylov.bicgstab(lambda x: jnp.asarray(M) @ x, jnp.asarray(b), tol=1e-12,
                              max_iters=500)
    np.testing.assert_allclose(np.asarray(x), np.linalg.solve(M, b), rtol=1e-9, atol=1e-11)
    assert bool(info.converged) and 0 < int(info.iterations) < 500
    # the reported residual is the true one, recomputed from x
    assert float(info.residual) == pytest.approx(
        np.linalg.norm(b - M @ np.asarray(x)) / np.linalg.norm(b), rel=1e-6, abs=1e-16)
    x0, info0 = krylov.bicgstab(lambda x: jnp.asarray(M) @ x, jnp.zeros(60), tol=1e-12,
                                max_iters=10)
    assert int(info0.iterations) == 0 and bool(info0.converged) and not np.any(x0)


def test_values_and_average_reward_quantities_agree_with_the_dense_path():
    dense, sp = _pair()
    pi = jax.nn.softmax(jax.random.normal(jax.random.key(0), (40, 3)), -1)
    cd, cs = induced_chain(dense, pi), induced_chain(sp, pi)
    for gamma in (0.5, 0.99):
        _close(markov.discounted_value(cd, gamma), markov.discounted_value(cs, gamma))
        _close(markov.occupancy(cd, dense.rho, gamma), markov.occupancy(cs, sp.rho, gamma))
        _close(action_values(dense, pi, gamma), action_values(sp, pi, gamma))
    _close(markov.stationary_distribution(cd), markov.stationary_distribution(cs))
    _close(markov.gain(cd), markov.gain(cs))
    _close(markov.bias(cd), markov.bias(cs))
    _close(bias_action_values(dense, pi), bias_action_values(sp, pi))
    H = np.asarray(markov.deviation_matrix(cd))
    x = np.random.default_rng(6).normal(size=40)
    for transpose, reference in ((False, H @ x), (True, x @ H)):
        _close(markov.deviation_product(cs, x, transpose=transpose), reference)
        _close(markov.deviation_product(cd, x, transpose=transpose), reference)


def test_reports_give_residual_and_iterations():
    dense, sp = _pair(seed=7)
    pi = jnp.full((40, 3), 1 / 3)
    v, info = markov.discounted_value(induced_chain(sp, pi), 0.99, return_info=True)
    assert bool(info.converged) and float(info.residual) <= 1e-12 and int(info.iterations) > 0
    _, dense_info = markov.bias(induced_chain(dense, pi), return_info=True)
    assert int(dense_info.iterations) == 0 and float(dense_info.residual) < 1e-12
    _, gain_info = markov.gain(induced_chain(sp, pi), return_info=True)
    assert bool(gain_info.converged)


def _objectives(pi_of, rho0):
    return {
        "discounted": lambda m, th: objectives.discounted_return(m, pi_of(th), 0.99),
        "gain": lambda m, th: objectives.policy_gain(m, pi_of(th)),
        "bias": lambda m, th: objectives.policy_bias(m, pi_of(th))[rho0],
        "soft": lambda m, th: objectives.entropy_regularised_return(m, pi_of(th), 0.9, 0.1),
    }


@pytest.mark.parametrize("name", ["discounted", "gain", "bias", "soft"])
def test_gradients_agree_with_dense_and_finite_differences(name):
    dense, sp = _pair(seed=8, S=20, A=3, density=0.3)
    f = _objectives(lambda th: jax.nn.softmax(th, -1), 0)[name]
    theta = jax.random.normal(jax.random.key(1), (20, 3))
    g_sparse = jax.grad(lambda th: f(sp, th))(theta)
    _close(jax.grad(lambda th: f(dense, th))(theta), g_sparse)
    # central differences along random directions: error O(h^2) + O(eps / h) ~ 1e-10
    h = 1e-5
    for d in jax.random.normal(jax.random.key(2), (3, 20, 3)):
        fd = (f(sp, theta + h * d) - f(sp, theta - h * d)) / (2 * h)
        assert float(jnp.vdot(g_sparse, d)) == pytest.approx(float(fd), rel=1e-6, abs=1e-8)


def test_jit_vmap_and_grad_compose_on_sparse_mdps():
    _, sp = _pair(seed=9)
    thetas = jax.random.normal(jax.random.key(3), (4, 40, 3))

    @jax.jit
    def value_and_grad(theta, gamma):
        return jax.value_and_grad(
            lambda th: objectives.discounted_return(sp, jax.nn.softmax(th, -1), gamma))(theta)

    values, grads = jax.vmap(value_and_grad, in_axes=(0, None))(thetas, 0.9)
    for k in range(4):
        v, g = value_and_grad(thetas[k], 0.9)
        _close(values[k], v)
        _close(grads[k], g)
    chain = induced_chain(sp, jnp.full((40, 3), 1 / 3))
    gammas = jnp.array([0.3, 0.9, 0.99])
    swept = jax.vmap(lambda g: markov.discounted_value(chain, g))(gammas)
    for k, g in enumerate(gammas):
        _close(swept[k], markov.discounted_value(chain, float(g)))


def test_a_solve_that_misses_its_tolerance_raises_or_returns_nan_with_a_flag():
    P, R, rho = _random_mdp(10, 40, 3)
    sp = MDP(sparse.from_dense(P, krylov=krylov.Krylov(max_iters=1)), R, rho)
    pi = jnp.full((40, 3), 1 / 3)
    chain = induced_chain(sp, pi)
    with pytest.raises(ValueError, match="did not converge"):
        markov.discounted_value(chain, 0.99)
    with pytest.raises(ValueError, match="did not converge"):
        markov.bias(chain)
    v, info = jax.jit(lambda c: markov.discounted_value(c, 0.99, return_info=True))(chain)
    assert np.all(np.isnan(np.asarray(v))) and not bool(info.converged)
    assert int(info.iterations) == 1 and float(info.residual) > 1e-12
    objective = lambda th: objectives.discounted_return(sp, jax.nn.softmax(th, -1), 0.99)  # noqa: E731
    with pytest.raises(ValueError, match="did not converge"):  # eager grad: concrete report
        jax.grad(objective)(jnp.zeros((40, 3)))
    assert np.all(np.isnan(np.asarray(jax.jit(jax.grad(objective))(jnp.zeros((40, 3))))))


def test_multichain_sparse_chains_are_refused_for_average_reward():
    P = np.zeros((4, 4))
    P[0, 1] = P[1, 0] = P[2, 3] = P[3, 2] = 1  # two closed classes
    chain = markov.Chain(sparse.from_dense(P), np.arange(4.0))
    for quantity in (markov.gain, markov.bias, markov.stationary_distribution):
        with pytest.raises(ValueError, match="2 closed recurrent classes"):
            quantity(chain)
    with pytest.raises(ValueError, match="dense"):
        markov.deviation_matrix(markov.Chain(sparse.from_dense(np.full((3, 3), 1 / 3)),
                                             np.zeros(3)))


# ----------------------------------------------------------------------------------------
# Planners and algorithms run unchanged on a sparse MDP


def test_planners_agree_with_the_dense_path():
    dense, sp = _pair(seed=11)
    for plan in (lambda m: planning.value_iteration(m, 0.95).value,
                 lambda m: planning.policy_iteration(m, 0.95).value,
                 lambda m: planning.soft_policy_iteration(m, 0.95, 0.1).value):
        _close(plan(dense), plan(sp))
    # implicit derivative of the optimal value, matrix-free on the sparse kernel
    R = jnp.asarray(dense.R)
    for opt in (lambda m, R: planning.optimal_value(MDP(m.P, R, m.rho), 0.95)[3],
                lambda m, R: planning.soft_optimal_value(MDP(m.P, R, m.rho), 0.95, 0.1)[3]):
        _close(jax.grad(lambda R: opt(dense, R))(R), jax.grad(lambda R: opt(sp, R))(R))


def _algorithm_cases(S, A):
    features = jax.random.normal(jax.random.key(1), (S, A, 4))
    marginal = lambda m: cm.marginal(m, tabular_softmax(S, A))  # noqa: E731
    return [
        ("pg exact", pg, lambda m: m, jnp.zeros((S, A)), pg.HParams(gamma=0.9, step_size=1.0),
         pg.Config(n_steps=3)),
        ("pg natural", pg, lambda m: m, jnp.zeros((S, A)),
         pg.HParams(gamma=0.9, step_size=0.5), pg.Config(n_steps=3, estimator="natural")),
        ("dynpg exact", dynpg, lambda m: m, jnp.zeros((S, A)),
         dynpg.HParams(gamma=0.9, step_size=1.0), dynpg.Config(n_steps=2)),
        ("dso gradient ascent", dso.GRADIENT_ASCENT, marginal, jnp.zeros((S, A)),
         dso.GRADIENT_ASCENT.HParams(gamma=0.9, step_size=1.0),
         dso.GRADIENT_ASCENT.Config(n_steps=3)),
        ("nbw exact, linear features", nbw.EXACT, lambda m: m, jnp.zeros(4), nbw.HParams(),
         nbw.Config(n_steps=3, policy=linear_softmax(features))),
    ]


@pytest.mark.parametrize("case", [0, 1, 2, 3, pytest.param(4, marks=pytest.mark.slow)],
                         ids=lambda k: _algorithm_cases(2, 2)[k][0])
def test_algorithms_run_unchanged_on_a_sparse_mdp(case):
    S, A = 12, 3
    dense = dsorl.envs.garnet(jax.random.key(3), n_states=S, n_actions=A, branching=3)
    sp = MDP(sparse.from_dense(dense.P), dense.R, dense.rho)
    _, algorithm, problem, params0, hparams, config = _algorithm_cases(S, A)[case]
    traces = [base.run(algorithm, problem(m), params0, hparams, jax.random.key(0),
                       config=config, keep_params=True)[1] for m in (dense, sp)]
    _close(traces[0].objective, traces[1].objective)
    _close(traces[0].params, traces[1].params)


@pytest.mark.slow
def test_dso_natural_gradient_and_chain_iteration_agree_with_the_dense_path():
    """The chain KL and Fisher of a sparse marginal chain are the dense chain's: the rows
    list each successor once (merged), so whole runs agree to rounding."""
    S, A = 8, 3
    dense = dsorl.envs.garnet(jax.random.key(3), n_states=S, n_actions=A, branching=4)
    sp = MDP(sparse.from_dense(dense.P), dense.R, dense.rho)
    # successors shared by several actions: the merge is what makes the KL the chain's
    assert int(np.max(np.sum(np.asarray(dense.P) > 0, axis=1))) > 1
    theta = jax.random.normal(jax.random.key(7), (S, A))
    models = [cm.marginal(m, tabular_softmax(S, A)) for m in (dense, sp)]
    _close(cm.fisher(models[0], theta, 0.9), cm.fisher(models[1], theta, 0.9))
    terms = [cm.surrogate_terms(m, theta, 0.9) for m in models]
    other = theta + 0.3 * jax.random.normal(jax.random.key(8), (S, A))
    _close(cm.divergence_at(models[0], other, terms[0]), cm.divergence_at(models[1], other, terms[1]))
    merged = models[1].transition(theta)
    np.testing.assert_allclose(np.asarray(merged.to_dense()),
                               np.asarray(models[0].transition(theta)), atol=1e-15)
    runs = [(dso.GRADIENT_ASCENT, dso.GRADIENT_ASCENT.HParams(gamma=0.9, step_size=1.0),
             dso.GRADIENT_ASCENT.Config(n_steps=2, natural=True)),
            (dso.CHAIN_ITERATION, dso.CHAIN_ITERATION.HParams(gamma=0.9, step_size=0.5),
             dso.CHAIN_ITERATION.Config(n_steps=2, inner_steps=3))]
    for algorithm, hparams, config in runs:
        traces = [base.run(algorithm, m, jnp.zeros((S, A)), hparams, config=config,
                           keep_params=True)[1] for m in models]
        _close(traces[0].objective, traces[1].objective)
        _close(traces[0].params, traces[1].params)


def test_natural_policy_gradient_is_the_fisher_preconditioned_gradient_on_both_forms():
    dense, sp = _pair(seed=12, S=15, A=3, density=0.4)
    policy = tabular_softmax(15, 3)
    theta = jax.random.normal(jax.random.key(4), (15, 3))
    gamma = 0.9
    F = np.asarray(fisher.discounted_fisher(dense, policy, theta, gamma))
    grad = jax.grad(lambda th: objectives.discounted_return(dense, policy.probs(th), gamma))(theta)
    # the minimum-norm solution F^+ grad: orthogonal to the null space (per-state constants)
    w = (np.linalg.pinv(F, rcond=1e-10) @ np.asarray(grad).reshape(-1)).reshape(15, 3)
    npg = np.asarray(objectives.natural_policy_gradient(dense, policy.probs(theta), gamma))
    np.testing.assert_allclose(w, npg - npg.mean(-1, keepdims=True), rtol=1e-7, atol=1e-9)
    _close(npg, objectives.natural_policy_gradient(sp, policy.probs(theta), gamma))


@pytest.mark.slow
def test_agreement_at_two_thousand_states():
    """The issue's agreement goal at its largest size: values and gradients at S = 2000."""
    P, R, rho = _random_mdp(13, 2000, 4, density=0.005)
    dense, sp = MDP(P, R, rho), MDP(sparse.from_dense(P), R, rho)
    theta = jax.random.normal(jax.random.key(5), (2000, 4))
    for f in _objectives(lambda th: jax.nn.softmax(th, -1), 0).values():
        value_and_grad = jax.jit(jax.value_and_grad(lambda th, m: f(m, th)))
        (vd, gd), (vs, gs) = value_and_grad(theta, dense), value_and_grad(theta, sp)
        _close(vd, vs)
        _close(gd, gs)


def test_pg_natural_estimator_takes_the_npg_step():
    """theta_1 = theta_0 + eta A / (1 - gamma), A from an independent NumPy solve."""
    P, R, rho = _random_mdp(14, 12, 3, density=0.4)
    theta0 = np.asarray(jax.random.normal(jax.random.key(6), (12, 3)))
    gamma, eta = 0.9, 0.5
    _, trace = base.run(pg, MDP(sparse.from_dense(P), R, rho), jnp.asarray(theta0),
                        pg.HParams(gamma=gamma, step_size=eta),
                        config=pg.Config(n_steps=1, estimator="natural"), keep_params=True)
    pi = np.exp(theta0) / np.exp(theta0).sum(-1, keepdims=True)
    v = np.linalg.solve(np.eye(12) - gamma * np.einsum("sa,sat->st", pi, P), (pi * R).sum(-1))
    Q = R + gamma * P @ v
    expected = theta0 + eta * (Q - (pi * Q).sum(-1, keepdims=True)) / (1 - gamma)
    np.testing.assert_allclose(np.asarray(trace.params[0]), expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="tabular softmax"):
        base.run(pg, MDP(P, R, rho), jnp.zeros(4), pg.HParams(gamma=gamma, step_size=eta),
                 config=pg.Config(n_steps=1, estimator="natural",
                                  policy=linear_softmax(jnp.ones((12, 3, 4)))))
