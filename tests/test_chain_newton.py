"""Second-order Chain Iteration (issue 14, item 5): the surrogate and exact Hessians against
finite differences of gradients, trust-region Newton on J converging quadratically, Newton
on the surrogate reaching the optimum computed by planning, bad input, the study's tables."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsorl import chain_models as cm
from dsorl.algorithms import dso as alg
from dsorl.envs import garnet
from dsorl.planning import policy_iteration, soft_policy_iteration
from dsorl.policies import tabular_softmax

S, A, GAMMA, TAU = 5, 3, 0.9, 0.3


def _mdp():
    return garnet(jax.random.key(1), S, A, 3)


def _regularised():
    return cm.kl_regularised(_mdp(), tabular_softmax(S, A), TAU)


def _soft_optimum():
    mdp = _mdp()
    return float(mdp.rho @ soft_policy_iteration(mdp, GAMMA, TAU).value)


def _central_jacobian(grad, theta, eps=1e-5):
    """`d grad / d theta` by central differences, one coordinate at a time, `[d, d]`."""
    flat, grad = np.asarray(theta, float).ravel(), jax.jit(grad)
    cols = []
    for i in range(flat.size):
        e = np.zeros_like(flat)
        e[i] = eps
        plus = np.asarray(grad(jnp.asarray((flat + e).reshape(theta.shape)))).ravel()
        minus = np.asarray(grad(jnp.asarray((flat - e).reshape(theta.shape)))).ravel()
        cols.append((plus - minus) / (2 * eps))
    return np.stack(cols, axis=1)


def test_surrogate_and_exact_hessians_match_finite_differences_of_gradients():
    model = cm.marginal(garnet(jax.random.key(1), 3, 2, 2), tabular_softmax(3, 2))
    alpha = jax.random.normal(jax.random.key(2), (3, 2))
    terms = cm.surrogate_terms(model, alpha, GAMMA)
    # surrogate: differences of grad_theta S(theta, alpha) with alpha (m, v) held fixed
    fd_S = _central_jacobian(jax.grad(lambda th: cm.surrogate_at(model, th, terms)), alpha)
    H_S = np.asarray(alg.surrogate_hessian(model, alpha, GAMMA))
    np.testing.assert_allclose(H_S, fd_S, atol=1e-8)
    # exact: differences of the Thm-1 gradient (two linear solves each, no autodiff of J)
    fd_J = _central_jacobian(lambda th: cm.gradient(model, th, GAMMA), alpha)
    H_J = np.asarray(alg.objective_hessian(model, alpha, GAMMA))
    np.testing.assert_allclose(H_J, fd_J, atol=1e-8)
    # they differ (the value-Jacobian coupling) by more than the differencing error
    assert np.linalg.norm(H_S - H_J) > 1e-3 * np.linalg.norm(H_J)


def _run(model, hessian, n_steps, theta0, radius=1.0):
    return alg.newton_chain_iteration(model, theta0, alg.NewtonHParams(GAMMA, radius, 100.0),
                                      config=alg.NewtonConfig(n_steps, hessian=hessian))


def test_newton_on_J_converges_quadratically_and_newton_on_S_reaches_the_planned_optimum():
    model, J_star = _regularised(), _soft_optimum()
    theta0 = jnp.zeros((S, A))
    _, exact = _run(model, "exact", 12, theta0)
    gaps = (J_star - np.asarray(exact.objective)) / abs(J_star)
    assert np.all(gaps > -1e-13)
    # near the optimum (gap < 1e-4) and above round-off: gap_{k+1} <= C gap_k^2, so the
    # ratio of successive gaps falls to 0 (it stays near a constant for a linear rate)
    pairs = [(a, b) for a, b in zip(gaps[:-1], gaps[1:]) if a < 1e-4 and b > 1e-15]
    assert len(pairs) >= 2, gaps
    assert all(b <= 100 * a ** 2 for a, b in pairs), gaps
    ratios = [b / a for a, b in pairs]
    assert ratios[-1] < 1e-5 and ratios[-1] < 1e-2 * ratios[0], gaps
    assert gaps[-1] < 1e-13
    _, surrogate = _run(model, "surrogate", 12, theta0)
    gaps_S = (J_star - np.asarray(surrogate.objective)) / abs(J_star)
    assert gaps_S[-1] < 1e-12
    # H_S - H_J = -(K + K^T) vanishes at this interior optimum (dv/dtheta = 0 there): the
    # Hessian error shrinks with the distance, so Newton on S is quadratic as well
    pairs = [(a, b) for a, b in zip(gaps_S[:-1], gaps_S[1:]) if a < 1e-4 and b > 1e-15]
    assert len(pairs) >= 2 and all(b <= 1e3 * a ** 2 for a, b in pairs), gaps_S
    assert np.all(np.diff(np.asarray(surrogate.objective)) >= -1e-12)  # steps are kept only if J rises


@pytest.mark.slow
def test_newton_on_S_reaches_policy_iterations_optimum_on_an_unregularised_garnet():
    mdp = _mdp()
    model = cm.marginal(mdp, tabular_softmax(S, A))
    J_star = float(mdp.rho @ policy_iteration(mdp, GAMMA).value)
    _, trace = _run(model, "surrogate", 30, jnp.zeros((S, A)))
    assert (J_star - float(trace.objective[-1])) / abs(J_star) < 1e-8


def test_trust_region_step_handles_indefinite_and_singular_hessians():
    g = jnp.array([1.0, 0.5, 0.0])
    # negative definite, step inside: the Newton step
    H = -jnp.diag(jnp.array([2.0, 1.0, 4.0]))
    delta, lam = alg.trust_region_step(g, H, 10.0)
    np.testing.assert_allclose(delta, [0.5, 0.5, 0.0], atol=1e-12)
    assert float(lam) == 0.0
    # indefinite: on the boundary, (lambda I - H) delta = g, lambda I - H positive definite
    H = jnp.diag(jnp.array([1.0, -1.0, -2.0]))
    delta, lam = alg.trust_region_step(g, H, 0.5)
    assert abs(float(jnp.linalg.norm(delta)) - 0.5) < 1e-9 and float(lam) > 1.0
    np.testing.assert_allclose((float(lam) * jnp.eye(3) - H) @ delta, g, atol=1e-9)
    # hard case: positive curvature where g has no component -> the boundary along it
    H = jnp.diag(jnp.array([-1.0, -1.0, 3.0]))
    delta, lam = alg.trust_region_step(g, H, 5.0)
    assert abs(float(jnp.linalg.norm(delta)) - 5.0) < 1e-9
    assert float(g @ delta + 0.5 * delta @ H @ delta) > float(g @ g / 2)
    # singular (a softmax's shift invariance): the null direction is left alone
    H = jnp.array([[-1.0, 1.0], [1.0, -1.0]])
    delta, _ = alg.trust_region_step(jnp.array([1.0, -1.0]), H, 10.0)
    np.testing.assert_allclose(delta, [0.5, -0.5], atol=1e-12)


@pytest.mark.parametrize("field, value, name", [
    ("radius", 0.0, "radius"), ("radius", -1.0, "radius"), ("radius", np.nan, "radius"),
    ("max_radius", 0.5, "max_radius"), ("damping", -1.0, "damping"),
    ("accept", 0.5, "accept"), ("gamma", 1.0, "gamma")])
def test_bad_hparams_raise_naming_the_value(field, value, name):
    model = _regularised()
    hparams = alg.NewtonHParams(GAMMA, 1.0, 2.0)._replace(**{field: value})
    with pytest.raises(ValueError, match=name):
        alg.newton_chain_iteration(model, jnp.zeros((S, A)), hparams,
                                   config=alg.NewtonConfig(1))


@pytest.mark.parametrize("config, name", [
    (alg.NewtonConfig(1, hessian="fisher"), "hessian"),
    (alg.NewtonConfig(1, bisection_steps=0), "bisection_steps"),
    (alg.NewtonConfig(1, rcond=-1.0), "rcond")])
def test_bad_config_raises_naming_the_value(config, name):
    with pytest.raises(ValueError, match=name):
        alg.newton_chain_iteration(_regularised(), jnp.zeros((S, A)),
                                   alg.NewtonHParams(GAMMA, 1.0), config=config)


@pytest.mark.slow
def test_newton_tables_and_figures(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dsorl.jobs import chain_newton as cn

    config = {"repeats": 1, "target": 1e-8,
              "garnet": {**cn.DEFAULTS["garnet"], "n_states": 4, "seeds": 1},
              "lmdp": {**cn.DEFAULTS["lmdp"], "walk_states": 7, "random_states": 5, "seeds": 1},
              "chain_iteration": {"n_steps": 5, "inner_steps": 20, "step_size": 0.1},
              "natural_gradient": {**cn.DEFAULTS["natural_gradient"], "n_steps": 20},
              "newton": {**cn.DEFAULTS["newton"], "n_steps": 25}}
    tables = cn.newton_tables(config, log=lambda *a: None)
    conv = tables["convergence"]
    assert set(conv["method"]) == set(cn.METHODS) and len(conv) == 4 * len(cn.METHODS)
    # Newton on S reaches every planned optimum; a reached row has its iteration count
    newton = conv[conv["method"] == "newton_surrogate"]
    assert newton["reached"].all(), newton
    assert (conv["reached"] == conv["iterations_to_target"].notna()).all()
    # at the interior optima (regularised garnet, LMDPs) the value Jacobian vanishes, so
    # the surrogate Hessian becomes the exact one along Newton-on-S paths
    gaps = tables["hessian_gap"]
    last = gaps[(gaps["path"] == "newton_surrogate") & (gaps["case"] != "garnet tau=0")]
    assert last.groupby(["case", "seed"])["hessian_gap"].last().max() < 1e-8
    assert (gaps.groupby(["case", "seed", "path"])["hessian_gap"].first() > 1e-2).all()
    figures = cn.newton_figures(tables, plt)
    for name, fig in figures.items():
        fig.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    plt.close("all")
