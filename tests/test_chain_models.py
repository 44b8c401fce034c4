"""Parameterised chains (DSO): objectives, Thm-1 gradients, Hessians, Fishers and the
surrogate against independent references (NumPy solves, central differences, closed
forms, the policy-gradient theorem of the core).

Compiled once per (mapping, quantity) with the MDP as a traced argument (`on`), so the
hypothesis examples reuse one program; the validating (eager) paths have their own tests.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dsorl
from dsorl import chain_models as cm
from dsorl import policies
from dsorl.envs import lmdp as lmdp_envs
from dsorl.lmdp import LMDP
from helpers import central_difference, check_compiled_variants, random_mdp

S, A = 4, 3
TABULAR = policies.tabular_softmax(S, A)


# --- independent NumPy references ---------------------------------------------------------


def np_softmax(theta):
    e = np.exp(theta - theta.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_objective(P, r, P0, gamma, terminal=None):
    """`P0 . (I - gamma P~)^{-1} r` by a dense NumPy solve."""
    P = np.array(P, float)
    if terminal is not None:
        P[np.asarray(terminal)] = 0
    return P0 @ np.linalg.solve(np.eye(len(r)) - gamma * P, r)


def np_mapping(mdp, name, tau=0.3):
    """NumPy `theta -> (P, r, P0)` of each mapping (tabular softmax), written from the maths."""
    Pm, R, rho = (np.asarray(x) for x in (mdp.P, mdp.R, mdp.rho))

    def f(theta):
        pi = np_softmax(theta.reshape(S, A))
        P = np.einsum("sa,sat->st", pi, Pm)
        r = (pi * R).sum(-1)
        if name == "augmented":
            P = (Pm.reshape(S * A, S)[:, :, None] * pi[None]).reshape(S * A, S * A)
            return P, R.reshape(-1), (rho[:, None] * pi).reshape(-1)
        if name == "maximum_entropy":
            r = r - tau * (pi * np.log(pi)).sum(-1)
        if name == "kl_regularised":
            r = r - tau * (pi * np.log(pi * A)).sum(-1)
        return P, r, rho

    return f


def mapping(mdp, name, tau=0.3):
    if name == "marginal":
        return cm.marginal(mdp, TABULAR)
    if name == "augmented":
        return cm.augmented(mdp, TABULAR)
    if name == "maximum_entropy":
        return cm.maximum_entropy(mdp, TABULAR, tau)
    return cm.kl_regularised(mdp, TABULAR, tau)


MAPPINGS = ["marginal", "augmented", "maximum_entropy", "kl_regularised"]


@functools.lru_cache(maxsize=None)
def first_order(name):
    """One jitted program per mapping, `(mdp, theta, alpha, gamma) -> dict`: `J`, Thm-1
    gradient, `jax.grad J`, values, and the surrogate's identities at `(theta, alpha)`."""
    def f(mdp, theta, alpha, gamma):
        model = mapping(mdp, name)
        J = lambda t: cm.objective(model, t, gamma)
        terms = cm.surrogate_terms(model, alpha, gamma)
        swapped = terms._replace(weight=cm.occupancy(model, theta, gamma))
        return dict(
            J=J(theta), gradient=cm.gradient(model, theta, gamma), autodiff=jax.grad(J)(theta),
            value=cm.value(model, theta, gamma), J_alpha=J(alpha),
            S_alpha_alpha=cm.surrogate(model, alpha, alpha, gamma),
            dS_alpha=jax.grad(lambda t: cm.surrogate(model, t, alpha, gamma))(alpha),
            dJ_alpha=cm.gradient(model, alpha, gamma),
            S_theta_alpha=cm.surrogate(model, theta, alpha, gamma),
            S_with_theta_occupancy=cm.surrogate_at(model, theta, swapped))
    return jax.jit(f)


@functools.lru_cache(maxsize=None)
def second_order(name):
    """Jitted: Bellman Hessian, `jax.hessian J`, the surrogate's Hessian, chain Fisher."""
    def f(mdp, theta, gamma):
        model = mapping(mdp, name)
        d = theta.size
        flat = lambda H: H.reshape(d, d)
        return (cm.hessian(model, theta, gamma),
                flat(jax.hessian(lambda t: cm.objective(model, t, gamma))(theta)),
                flat(jax.hessian(lambda t: cm.surrogate(model, t, theta, gamma))(theta)),
                cm.fisher(model, theta, gamma))
    return jax.jit(f)


def sigmoid_exit_chain():
    """3 states, state 2 terminal; from 0 go to 1 w.p. p0 = sigmoid(th0) else stay, from 1
    exit w.p. p1 = sigmoid(th1) else back to 0; reward -1 per non-terminal step."""
    def transition(th):
        p0, p1 = jax.nn.sigmoid(th[0]), jax.nn.sigmoid(th[1])
        return jnp.array([[1 - p0, p0, 0.0], [1 - p1, 0.0, p1], [0.0, 0.0, 1.0]])
    return cm.ChainModel(transition, jnp.array([-1.0, -1.0, 0.0]), jnp.array([1.0, 0.0, 0.0]),
                         terminal=jnp.array([False, False, True]))


EXIT = sigmoid_exit_chain()


@jax.jit
def exit_quantities(th):
    """Everything about the exit chain at gamma = 1, one program."""
    terms = cm.surrogate_terms(EXIT, th, 1.0)
    return dict(objective=cm.objective(EXIT, th, 1.0), gradient=cm.gradient(EXIT, th, 1.0),
                value=cm.value(EXIT, th, 1.0), hessian=cm.hessian(EXIT, th, 1.0),
                fisher=cm.fisher(EXIT, th, 1.0), occupancy=cm.occupancy(EXIT, th, 1.0),
                divergence_hessian=jax.hessian(lambda t: cm.divergence_at(EXIT, t, terms))(th))


def sigmoid_exit_closed_form(th):
    """By hand: v0 = -(1 + p0) / (p0 p1); dv0/dth0 = (1 - p0) / (p0 p1),
    dv0/dth1 = (1 + p0)(1 - p1) / (p0 p1)."""
    p0, p1 = 1 / (1 + np.exp(-np.asarray(th)))
    return (-(1 + p0) / (p0 * p1),
            np.array([(1 - p0) / (p0 * p1), (1 + p0) * (1 - p1) / (p0 * p1)]))


# --- objectives and Thm 1 -----------------------------------------------------------------


@settings(max_examples=3)
@given(st.integers(0, 10_000), st.floats(0.0, 0.95))
def test_mappings_objective_and_thm1_gradient_match_numpy(seed, gamma):
    mdp = random_mdp(seed, S, A)
    theta = np.random.default_rng(seed).normal(size=(S, A))
    for name in MAPPINGS:
        ref = np_mapping(mdp, name)
        f = lambda th: np_objective(*ref(th), gamma)
        q = first_order(name)(mdp, theta, theta, gamma)
        np.testing.assert_allclose(q["J"], f(theta), rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(q["gradient"], central_difference(f, theta), rtol=1e-6,
                                   atol=1e-9, err_msg=name)
        np.testing.assert_allclose(q["gradient"], q["autodiff"], rtol=1e-10, atol=1e-12,
                                   err_msg=name)


@settings(max_examples=5)
@given(st.integers(0, 10_000), st.floats(0.0, 0.99))
def test_marginal_is_policy_gradient_theorem_and_augmented_gives_the_same_number(seed, gamma):
    mdp = random_mdp(seed, S, A)
    theta = jnp.asarray(np.random.default_rng(seed).normal(size=(S, A)))
    pgt, Q = core_references(mdp, theta, gamma)
    marginal = first_order("marginal")(mdp, theta, theta, gamma)
    augmented = first_order("augmented")(mdp, theta, theta, gamma)
    np.testing.assert_allclose(marginal["gradient"], pgt, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(augmented["gradient"], pgt, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(augmented["J"], marginal["J"], rtol=1e-12)
    # the augmented chain's value is Q(s, a)
    np.testing.assert_allclose(augmented["value"].reshape(S, A), Q, rtol=1e-10)


core_references = jax.jit(lambda mdp, th, g: (
    dsorl.discounted_policy_gradient(mdp, TABULAR, th, g), dsorl.action_values(mdp, TABULAR(th), g)))


def test_augmented_mapping_with_masked_actions():
    mdp = random_mdp(3, S, A)
    mask = np.ones((S, A), bool)
    mask[1, 2] = mask[3, 0] = False
    masked = dsorl.MDP(mdp.P, mdp.R, mdp.rho, action_mask=mask)
    policy = policies.tabular_softmax(S, A, mask)
    theta = jnp.asarray(np.random.default_rng(1).normal(size=(S, A)))
    model = cm.augmented(masked, policy)
    np.testing.assert_allclose(cm.objective(model, theta, 0.9),
                               dsorl.discounted_return(masked, policy(theta), 0.9), rtol=1e-12)
    np.testing.assert_allclose(cm.gradient(model, theta, 0.9),
                               dsorl.discounted_policy_gradient(masked, policy, theta, 0.9),
                               rtol=1e-9, atol=1e-12)


def test_first_exit_three_state_chain_closed_form():
    J, grad = sigmoid_exit_closed_form([0.0, 0.0])
    np.testing.assert_allclose(cm.objective(EXIT, jnp.zeros(2), 1.0), J, rtol=1e-13)  # eager
    for th in ([0.0, 0.0], [0.7, -0.4]):
        J, grad = sigmoid_exit_closed_form(th)
        q = exit_quantities(jnp.asarray(th))
        np.testing.assert_allclose(q["objective"], J, rtol=1e-13)
        np.testing.assert_allclose(q["gradient"], grad, rtol=1e-12)
        np.testing.assert_allclose(q["value"][2], 0.0, atol=1e-15)


@settings(max_examples=4)
@given(st.integers(0, 10_000), st.floats(0.5, 1.0))
def test_first_exit_lmdp_chain_against_numpy(seed, gamma):
    lmdp = lmdp_envs.random_lmdp(jax.random.key(seed), 6, 3, n_terminal=2)
    theta = np.random.default_rng(seed).normal(size=6)
    p, q, P0, T = (np.asarray(x) for x in (lmdp.passive, lmdp.cost, lmdp.initial, lmdp.terminal))

    def f(th):  # u ∝ p exp(th), r = -q - KL(u || p) off the terminal set
        u = p * np.exp(th)[None]
        u /= u.sum(1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(u > 0, u * np.log(u / p), 0).sum(1)
        return np_objective(u, -q - np.where(T, 0, kl), P0, gamma, T)

    (J, g), _, _ = lmdp_three_ways(lmdp, theta, gamma)
    np.testing.assert_allclose(J, f(theta), rtol=1e-12)
    np.testing.assert_allclose(g, central_difference(f, theta), rtol=1e-6, atol=1e-9)


@jax.jit
def lmdp_three_ways(lmdp, theta, gamma):
    """`(J, grad J)` with controls by desirability, tabular (rows = theta), user function."""
    by_desirability = cm.lmdp_chain(lmdp)
    tabular = cm.lmdp_chain(lmdp, "tabular")
    user = cm.lmdp_chain(lmdp, by_desirability.transition)
    full = jnp.broadcast_to(theta, (theta.size, theta.size))
    return [(cm.objective(m, th, gamma), cm.gradient(m, th, gamma))
            for m, th in ((by_desirability, theta), (tabular, full), (user, theta))]


def test_average_reward_gain_and_gradient():
    mdp = random_mdp(5, S, A)
    theta = jnp.asarray(np.random.default_rng(5).normal(size=(S, A)))
    model = cm.marginal(mdp, TABULAR)
    np.testing.assert_allclose(cm.gain(model, theta), dsorl.policy_gain(mdp, TABULAR(theta)),
                               rtol=1e-12)
    np.testing.assert_allclose(cm.gain_gradient(model, theta),
                               dsorl.gain_policy_gradient(mdp, TABULAR, theta), rtol=1e-9,
                               atol=1e-12)
    # augmented chain: same gain, gradient against central differences of a NumPy gain
    ref = np_mapping(mdp, "augmented")

    def np_gain(th):
        P, r, _ = ref(th)
        w, V = np.linalg.eig(P.T)
        p = np.real(V[:, np.argmin(np.abs(w - 1))])
        return (p / p.sum()) @ r

    augmented = cm.augmented(mdp, TABULAR)
    np.testing.assert_allclose(cm.gain(augmented, theta), np_gain(np.asarray(theta)), rtol=1e-10)
    np.testing.assert_allclose(cm.gain_gradient(augmented, theta),
                               central_difference(np_gain, np.asarray(theta)), rtol=1e-6,
                               atol=1e-9)


# --- Hessians and Fishers ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["marginal", "augmented"])
def test_hessian_from_bellman_equals_jax_hessian(name):
    mdp = random_mdp(7, S, A)
    theta = jnp.asarray(np.random.default_rng(7).normal(size=(S, A)))
    H, ref, surrogate_H, _ = second_order(name)(mdp, theta, 0.85)
    np.testing.assert_allclose(H, ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(H, H.T, atol=1e-14)
    # the surrogate's Hessian alone (the paper's approximation) misses the coupling term
    assert np.max(np.abs(surrogate_H - H)) > 1e-3 * np.max(np.abs(H))


def test_hessian_first_exit_and_average_against_finite_differences():
    th = np.array([0.3, -0.2])
    grad = lambda t: sigmoid_exit_closed_form(t)[1]
    fd = np.stack([central_difference(lambda t: grad(t)[i], th) for i in range(2)])
    np.testing.assert_allclose(exit_quantities(jnp.asarray(th))["hessian"], fd, rtol=1e-7)
    mdp = random_mdp(8, S, A)
    theta = jnp.asarray(np.random.default_rng(8).normal(size=(S, A)))
    gain_hessians = jax.jit(lambda m, t: (
        cm.gain_hessian(cm.marginal(m, TABULAR), t),
        jax.hessian(lambda x: cm.gain(cm.marginal(m, TABULAR), x))(t).reshape(S * A, S * A)))
    H, ref = gain_hessians(mdp, theta)
    np.testing.assert_allclose(H, ref, rtol=1e-9, atol=1e-12)


def np_fisher(f_log, theta, weights, P):
    """`sum_x w(x) sum_x' P s s^T` with scores by central differences of `log P`."""
    d = theta.size
    scores = np.stack([(f_log(theta + e) - f_log(theta - e)) / 2e-6
                       for e in np.eye(d).reshape(d, *theta.shape) * 1e-6], axis=-1)
    with np.errstate(invalid="ignore"):
        scores = np.where(P[..., None] > 0, scores, 0)
    return np.einsum("x,xy,xyi,xyj->ij", weights, P, scores, scores)


def test_fisher_matches_outer_products_of_scores():
    mdp = random_mdp(9, S, A)
    theta = np.random.default_rng(9).normal(size=(S, A))
    gamma = 0.8
    ref = np_mapping(mdp, "marginal")
    P, r, rho = ref(theta)
    m = np.linalg.solve((np.eye(S) - gamma * P).T, rho)
    expected = np_fisher(lambda t: np.log(ref(t)[0]), theta, m, P)
    np.testing.assert_allclose(second_order("marginal")(mdp, theta, gamma)[3], expected,
                               rtol=1e-6, atol=1e-9)
    w, V = np.linalg.eig(P.T)
    p = np.real(V[:, np.argmin(np.abs(w - 1))])
    np.testing.assert_allclose(cm.gain_fisher(cm.marginal(mdp, TABULAR), jnp.asarray(theta)),
                               np_fisher(lambda t: np.log(ref(t)[0]), theta, p / p.sum(), P),
                               rtol=1e-6, atol=1e-9)
    # augmented: the initial law depends on theta and adds E_P0[s0 s0^T]
    aug = np_mapping(mdp, "augmented")
    P, r, P0 = aug(theta)
    m = np.linalg.solve((np.eye(S * A) - gamma * P).T, P0)
    with np.errstate(divide="ignore"):
        expected = (np_fisher(lambda t: np.log(aug(t)[0]), theta, m, P)
                    + np_fisher(lambda t: np.log(aug(t)[2])[None], theta, np.ones(1), P0[None]))
    np.testing.assert_allclose(second_order("augmented")(mdp, theta, gamma)[3], expected,
                               rtol=1e-6, atol=1e-9)


def test_fisher_is_hessian_of_divergence_and_first_exit_excludes_terminal_rows():
    th = jnp.array([0.4, 0.1])
    q = exit_quantities(th)
    np.testing.assert_allclose(q["fisher"], q["divergence_hessian"], rtol=1e-10)
    # closed form: Bernoulli rows, F = diag(m0 p0 (1 - p0), m1 p1 (1 - p1))
    p0, p1 = 1 / (1 + np.exp(-np.asarray(th)))
    m = np.linalg.solve(np.array([[1 - (1 - p0), -p0], [-(1 - p1), 1.0]]).T, [1.0, 0.0])
    np.testing.assert_allclose(q["occupancy"][:2], m, rtol=1e-12)
    np.testing.assert_allclose(q["fisher"], np.diag([m[0] * p0 * (1 - p0), m[1] * p1 * (1 - p1)]),
                               rtol=1e-12)


# --- surrogate -------------------------------------------------------------------------------


@settings(max_examples=4)
@given(st.integers(0, 10_000), st.floats(0.05, 0.95))
def test_surrogate_identities(seed, gamma):
    mdp = random_mdp(seed, S, A)
    rng = np.random.default_rng(seed)
    alpha = jnp.asarray(rng.normal(size=(S, A)))
    theta = alpha + jnp.asarray(rng.normal(size=(S, A)))
    for name in ("marginal", "augmented"):
        q = first_order(name)(mdp, theta, alpha, gamma)
        np.testing.assert_allclose(q["S_alpha_alpha"], q["J_alpha"], rtol=1e-12)
        np.testing.assert_allclose(q["dS_alpha"], q["dJ_alpha"], rtol=1e-10, atol=1e-12)
        # performance difference: with the occupancy of theta instead of alpha, S is exact
        np.testing.assert_allclose(q["S_with_theta_occupancy"], q["J"], rtol=1e-10)
        assert abs(q["S_theta_alpha"] - q["J"]) > 1e-6  # ... with alpha's it is not (gamma > 0)


# --- LMDP chain ------------------------------------------------------------------------------


def test_lmdp_tabular_and_user_controls_agree():
    lmdp = lmdp_envs.random_lmdp(jax.random.key(2), 6, 3, n_terminal=2)
    theta = jnp.asarray(np.random.default_rng(2).normal(size=6))
    (J, g), (J_tab, g_tab), (J_user, g_user) = lmdp_three_ways(lmdp, theta, 0.9)
    np.testing.assert_allclose(J_tab, J, rtol=1e-12)
    np.testing.assert_allclose(J_user, J, rtol=1e-12)
    np.testing.assert_allclose(g_user, g, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(g_tab.sum(0), g, rtol=1e-10, atol=1e-13)


# --- variants --------------------------------------------------------------------------------


def variants_model():
    return cm.marginal(random_mdp(11, S, A), TABULAR)


def variants_args():
    rng = np.random.default_rng(11)
    return jnp.asarray(rng.normal(size=(3, S, A))), jnp.array([0.0, 0.5, 0.9])


def test_variants_jit_and_vmap_over_theta_and_gamma():
    """First-order quantities: un-jitted == jitted; `vmap` over (theta, gamma) == jitted
    single calls. Second-order ones: jitted and vmapped here, un-jitted in the slow run."""
    model = variants_model()

    def first(theta, gamma):
        return (cm.objective(model, theta, gamma), cm.gradient(model, theta, gamma),
                cm.surrogate(model, theta, theta + 0.5, gamma), cm.gain_gradient(model, theta))

    def everything(theta, gamma):
        return first(theta, gamma) + second_order_quantities(model, theta, gamma)

    thetas, gammas = variants_args()
    check_compiled_variants(everything, (thetas, gammas), eager=False)
    compiled = jax.jit(everything)(thetas[0], gammas[0])  # cached by the check above
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12),
                           first(thetas[0], gammas[0]), compiled[:4])


def second_order_quantities(model, theta, gamma):
    return cm.hessian(model, theta, gamma), cm.fisher(model, theta, gamma), cm.gain_hessian(model, theta)


@pytest.mark.slow
def test_second_order_un_jitted_equals_jitted():
    model = variants_model()
    thetas, gammas = variants_args()
    check_compiled_variants(lambda t, g: second_order_quantities(model, t, g), (thetas, gammas))


# --- bad input -------------------------------------------------------------------------------


def test_rows_not_summing_to_one_raise():
    model = cm.ChainModel(lambda th: jnp.array([[0.5, 0.4], [0.3, 0.7]]) * th, jnp.zeros(2),
                          jnp.array([1.0, 0.0]))
    for call in (lambda: cm.objective(model, 1.0, 0.9), lambda: cm.gradient(model, 1.0, 0.9),
                 lambda: cm.gain(model, 1.0)):
        with pytest.raises(ValueError, match=r"P\[0, :\] sums to .*0\.9"):
            call()
    bad_initial = cm.ChainModel(lambda th: jnp.eye(2), jnp.zeros(2), jnp.array([0.5, 0.6]))
    with pytest.raises(ValueError, match="initial law"):
        cm.objective(bad_initial, 0.0, 0.5)


def test_terminal_set_never_reached_under_gamma_one_raises():
    # state 1 loops forever and never reaches the terminal state 2
    P = jnp.array([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    model = cm.ChainModel(lambda th: P, jnp.array([-1.0, -1.0, 0.0]), jnp.array([1.0, 0, 0]),
                          terminal=jnp.array([False, False, True]))
    with pytest.raises(ValueError, match="terminal set is never reached from state 1"):
        cm.objective(model, 0.0, 1.0)
    with pytest.raises(ValueError, match="terminal set is never reached"):
        cm.hessian(model, jnp.zeros(1), 1.0)
    assert np.isfinite(cm.objective(model, 0.0, 0.99))  # discounting still ends it
    no_terminal = cm.ChainModel(lambda th: P, jnp.zeros(3), jnp.array([1.0, 0, 0]))
    with pytest.raises(ValueError, match=r"gamma = 1.0 must lie in \[0, 1\)"):
        cm.objective(no_terminal, 0.0, 1.0)
    with pytest.raises(ValueError, match="need a discount factor"):
        cm.objective(no_terminal, 0.0, None)


def test_average_reward_on_multichain_raises():
    P = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])  # two closed classes
    model = cm.ChainModel(lambda th: P, jnp.array([1.0, 0.0, 0.5]), jnp.ones(3) / 3)
    for call in (cm.gain, cm.gain_gradient, cm.gain_hessian, cm.gain_fisher):
        with pytest.raises(ValueError, match="unichain chain, but P\\(theta\\) has 2 closed"):
            call(model, 0.0)
    with pytest.raises(ValueError, match="no discount factor"):
        cm.check_model(model, 0.0, 0.9, average=True)
    terminal = cm.ChainModel(lambda th: jnp.eye(2), jnp.zeros(2), jnp.array([1.0, 0.0]),
                             terminal=jnp.array([False, True]))
    with pytest.raises(ValueError, match="first-exit criterion"):
        cm.gain(terminal, 0.0)


def test_lmdp_passive_dynamics_not_covering_controls_raises():
    lmdp = LMDP(np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]]),
                np.array([1.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0]),
                np.array([False, False, True]))
    controls = lambda th: jnp.array([[0.2, 0.4, 0.4], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])
    model = cm.lmdp_chain(lmdp, controls)
    with pytest.raises(ValueError, match=r"passive dynamics do not cover.*u\(2\|0\)"):
        cm.objective(model, 0.0, 1.0)
    with pytest.raises(ValueError, match="controls must be"):
        cm.lmdp_chain(lmdp, "free")


def test_mappings_know_their_parameter_shape_and_dtype():
    """`params_shape` and `dtype` of the mappings (the DSO algorithms check `params0` and
    cast it with them); a float32 `theta` on a float64 chain is validated at float32's
    tolerance (its rows carry theta's rounding) instead of blaming the MDP."""
    mdp = random_mdp(0, S, A)
    for model in (cm.marginal(mdp, TABULAR), cm.marginal(mdp, TABULAR.probs),
                  cm.augmented(mdp, TABULAR), cm.maximum_entropy(mdp, TABULAR, 0.1)):
        assert model.params_shape == (S, A) and model.dtype == mdp.P.dtype
    assert cm.marginal(mdp, lambda th: TABULAR(th)).params_shape is None
    lmdp = lmdp_envs.random_lmdp(jax.random.key(0), 6, 3)
    assert cm.lmdp_chain(lmdp).params_shape == (6,)
    assert cm.lmdp_chain(lmdp, "tabular").params_shape == (6, 6)
    assert cm.ChainModel(lambda th: jnp.eye(2), jnp.zeros(2, jnp.float32),
                         jnp.array([1.0, 0.0])).dtype == jnp.float32
    theta32 = jnp.asarray(np.random.default_rng(0).normal(size=(S, A)) * 3, jnp.float32)
    model = cm.marginal(mdp, TABULAR)
    solution = cm.solve(model, theta32, 0.9)
    assert isinstance(solution, cm.ChainSolution)
    np.testing.assert_allclose(solution.objective, cm.objective(model, theta32.astype(float), 0.9),
                               rtol=1e-6)


def test_negative_temperature_raises():
    with pytest.raises(ValueError, match="tau"):
        cm.kl_regularised(random_mdp(0, S, A), TABULAR, -0.1)
