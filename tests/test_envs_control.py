"""The grid-discretised noisy LQR: transitions against SciPy's normal CDF, exact moments
of the rounded Gaussian (Sheppard's correction), and the soft-optimal policy on the grid
against the closed-form Gaussian policy of the continuous problem."""
import jax
import numpy as np
import pytest
from scipy.stats import norm

import dsorl
from dsorl.envs import control


def scipy_lqr(S, A, bound, u_bound, a, b, s, q, r):
    x = np.linspace(-bound, bound, S)
    u = np.linspace(-u_bound, u_bound, A)
    edges = np.r_[-np.inf, (x[1:] + x[:-1]) / 2, np.inf]
    P = np.empty((S, A, S))
    for i in range(S):
        for j in range(A):
            lo, hi = edges[:-1], edges[1:]
            m = a * x[i] + b * u[j]
            # cells above the mean through the survival function (no 1 - (1 - tiny))
            P[i, j] = np.where(lo > m, norm.sf(lo, m, s) - norm.sf(hi, m, s),
                               norm.cdf(hi, m, s) - norm.cdf(lo, m, s))
    return x, u, P, -(q * x[:, None] ** 2 + r * u[None, :] ** 2)


def test_grid_lqr_matches_scipy():
    env = control.linear_quadratic_regulator(9, 5, state_bound=2.0, action_bound=1.0, a=0.9, b=0.5,
                                             noise_std=0.4, state_cost=2.0, action_cost=0.5)
    x, u, P, R = scipy_lqr(9, 5, 2.0, 1.0, 0.9, 0.5, 0.4, 2.0, 0.5)
    np.testing.assert_allclose(env.states, x, rtol=1e-15)
    np.testing.assert_allclose(env.actions, u, rtol=1e-15)
    np.testing.assert_allclose(env.mdp.P, P, rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(env.mdp.R, R, rtol=1e-15)
    np.testing.assert_allclose(env.mdp.rho, np.full(9, 1 / 9), rtol=1e-15)
    np.testing.assert_allclose(np.asarray(env.mdp.P).sum(-1), 1, rtol=1e-14)


def test_rounded_gaussian_moments_are_sheppard_corrected():
    """For a next-state mean far (> 9 std) from the grid's ends, E[x'] = a x + b u and
    Var[x'] = s^2 + dx^2 / 12 up to O(exp(-2 pi^2 s^2 / dx^2)) = e^{-79} (s = 2 dx) and
    tail mass below e^{-40}."""
    S, dx = 101, 0.05
    env = control.linear_quadratic_regulator(S, 11, state_bound=(S - 1) / 2 * dx, action_bound=0.5,
                                             a=0.8, b=1.0, noise_std=2 * dx)
    x, u, P = np.asarray(env.states), np.asarray(env.actions), np.asarray(env.mdp.P)
    mean = 0.8 * x[:, None] + u[None, :]
    interior = np.abs(mean) < x[-1] - 9 * 2 * dx
    assert interior.sum() > 200
    m1 = P @ x
    m2 = P @ x ** 2 - m1 ** 2
    np.testing.assert_allclose(m1[interior], mean[interior], atol=1e-12)
    np.testing.assert_allclose(m2[interior], (2 * dx) ** 2 + dx ** 2 / 12, rtol=1e-11)


def test_soft_lqr_solves_the_riccati_equation():
    for gamma, a, b, q, r in [(0.9, 1.0, 1.0, 1.0, 1.0), (0.5, 1.3, 0.4, 2.0, 0.1), (0.0, 1.0, 1.0, 1.5, 1.0),
                              (0.99, 0.7, 2.0, 1.0, 0.0)]:
        sol = control.soft_lqr(gamma, 0.3, a=a, b=b, state_cost=q, action_cost=r)
        p = float(sol.p)
        assert p >= 0
        np.testing.assert_allclose(p, q + gamma * a ** 2 * p - (gamma * a * b * p) ** 2 / (r + gamma * b ** 2 * p),
                                   rtol=1e-13)
        np.testing.assert_allclose(sol.gain, -gamma * a * b * p / (r + gamma * b ** 2 * p), rtol=1e-13)
        np.testing.assert_allclose(sol.action_std, np.sqrt(0.3 / (2 * (r + gamma * b ** 2 * p))), rtol=1e-13)
    # gamma = 0: myopic, p = q and the policy is centred
    sol0 = control.soft_lqr(0.0, 1.0, state_cost=1.5)
    assert float(sol0.p) == pytest.approx(1.5, rel=1e-15) and float(sol0.gain) == 0


def test_soft_policy_iteration_on_the_grid_recovers_the_gaussian_soft_policy():
    """Interior states (|x| <= 1.5) of grids with spacing 0.2: the policy's mean is
    gain * x and its standard deviation action_std, up to aliasing ~ e^{-100} and the
    truncation at the grid's ends, whose effect must vanish fast as the grid widens."""
    gamma, tau = 0.9, 1.0
    ref = control.soft_lqr(gamma, tau)
    errors = []
    for bound in (3.0, 4.4):
        n = int(round(2 * bound / 0.2)) + 1
        env = control.linear_quadratic_regulator(n, n, state_bound=bound, action_bound=bound, noise_std=0.4)
        pi = np.asarray(dsorl.soft_policy_iteration(env.mdp, gamma, tau).policy)
        x, u = np.asarray(env.states), np.asarray(env.actions)
        mean = pi @ u
        std = np.sqrt(pi @ u ** 2 - mean ** 2)
        inner = np.abs(x) <= 1.5 + 1e-9
        errors.append(max(np.abs(mean - float(ref.gain) * x)[inner].max(),
                          np.abs(std - float(ref.action_std))[inner].max()))
    assert errors[0] < 1e-3 and errors[1] < errors[0] / 1000 and errors[1] < 1e-8


def test_grid_lqr_is_jittable_and_vmaps_over_the_noise():
    make = lambda s: control.linear_quadratic_regulator(7, 3, noise_std=s).mdp.P
    batched = jax.vmap(make)(np.array([0.2, 0.5]))
    for i, s in enumerate((0.2, 0.5)):
        np.testing.assert_allclose(batched[i], make(s), rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(jax.jit(make)(0.3), make(0.3), rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_states=1), "n_states = 1"),
    (dict(n_actions=0), "n_actions = 0"),
    (dict(noise_std=0.0), "noise_std = 0.0 must be finite and > 0"),
    (dict(state_bound=-1.0), "state_bound"),
    (dict(action_cost=-1.0), "action_cost = -1.0 must be finite and >= 0"),
])
def test_bad_lqr_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        control.linear_quadratic_regulator(**kwargs)


def test_bad_soft_lqr_arguments_raise():
    with pytest.raises(ValueError, match="tau"):
        control.soft_lqr(0.9, 0.0)
    with pytest.raises(ValueError, match="gamma"):
        control.soft_lqr(1.0, 1.0)
