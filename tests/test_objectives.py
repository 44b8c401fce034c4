"""Objectives of policy parameters: autodiff against finite differences and against the
policy-gradient theorem (an independent formula)."""
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import dsorl
from dsorl import policies
from helpers import central_difference, random_mdp

S, A = 4, 3
TABULAR = policies.tabular_softmax(S, A)


_OBJECTIVES = {
    "discounted": lambda th, m: dsorl.discounted_return(m, TABULAR(th), 0.9),
    "entropy_regularised": lambda th, m: dsorl.entropy_regularised_return(m, TABULAR(th), 0.9, 0.4),
    "gain": lambda th, m: dsorl.policy_gain(m, TABULAR(th)),
    "bias_s0": lambda th, m: dsorl.policy_bias(m, TABULAR(th))[0],
}
_COMPILED = {k: (jax.jit(f), jax.jit(jax.grad(f))) for k, f in _OBJECTIVES.items()}


@settings(max_examples=6)
@given(st.integers(0, 10_000))
def test_objective_gradients_match_central_differences(seed):
    mdp = random_mdp(seed, S, A)
    theta = np.random.default_rng(seed).normal(size=(S, A))
    for name, (f, grad) in _COMPILED.items():
        np.testing.assert_allclose(grad(theta, mdp), central_difference(lambda t: f(t, mdp), theta),
                                   rtol=1e-6, atol=1e-8, err_msg=name)


@settings(max_examples=10)
@given(st.integers(0, 10_000), st.floats(0.0, 0.99))
def test_policy_gradient_theorem_equals_autodiff(seed, gamma):
    mdp = random_mdp(seed, S, A)
    rng = np.random.default_rng(seed)
    for policy, params in [(TABULAR, rng.normal(size=(S, A))),
                           (policies.linear_softmax(rng.normal(size=(S, A, 5))), rng.normal(size=5))]:
        params = jnp.asarray(params)
        auto = jax.grad(lambda p: dsorl.discounted_return(mdp, policy(p), gamma))(params)
        pgt = dsorl.discounted_policy_gradient(mdp, policy, params, gamma)
        np.testing.assert_allclose(pgt, auto, rtol=1e-9, atol=1e-11)
        auto_g = jax.grad(lambda p: dsorl.policy_gain(mdp, policy(p)))(params)
        np.testing.assert_allclose(dsorl.gain_policy_gradient(mdp, policy, params), auto_g,
                                   rtol=1e-9, atol=1e-11)


def test_sigmoid_policy_gradients_on_nbw_env():
    mdp = dsorl.envs.nbw_env("B2")
    policy = policies.sigmoid(mdp.n_states)
    w = jnp.array([0.3, -0.2])
    f = jax.jit(lambda w: dsorl.policy_bias(mdp, policy(w))[0])
    np.testing.assert_allclose(jax.grad(f)(w), central_difference(f, w), rtol=1e-6)
    np.testing.assert_allclose(dsorl.gain_policy_gradient(mdp, policy, w),
                               jax.grad(lambda w: dsorl.policy_gain(mdp, policy(w)))(w), rtol=1e-10)


def test_objectives_vmap_over_parameters_and_gamma():
    mdp = random_mdp(0, S, A)
    thetas = jnp.asarray(np.random.default_rng(0).normal(size=(6, S, A)))
    f = lambda th, g: dsorl.discounted_return(mdp, TABULAR(th), g)
    batched = jax.jit(jax.vmap(jax.grad(f), in_axes=(0, None)))(thetas, 0.9)
    for i in range(6):
        np.testing.assert_allclose(batched[i], jax.grad(f)(thetas[i], 0.9), rtol=1e-12)
    gammas = jnp.linspace(0, 0.99, 64)
    values = jax.vmap(f, in_axes=(None, 0))(thetas[0], gammas)
    np.testing.assert_allclose(values[7], f(thetas[0], gammas[7]), rtol=1e-12)
