"""Parameterised policies: probabilities, masks, and the nBw paper's sigmoid family."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsorl import policies


def test_tabular_softmax_matches_formula():
    theta = np.random.default_rng(0).normal(size=(4, 3))
    pi = np.asarray(policies.tabular_softmax(4, 3)(jnp.asarray(theta)))
    ref = np.exp(theta) / np.exp(theta).sum(1, keepdims=True)
    np.testing.assert_allclose(pi, ref, rtol=1e-14)
    np.testing.assert_allclose(policies.tabular_softmax(4, 3).log_probs(jnp.asarray(theta)),
                               np.log(ref), rtol=1e-13)


def test_masked_actions_get_zero_probability_and_finite_gradients():
    mask = np.array([[True, False, True], [False, True, False]])
    policy = policies.tabular_softmax(2, 3, mask)
    theta = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3)))
    pi = policy(theta)
    assert np.all(np.asarray(pi)[~mask] == 0.0)
    np.testing.assert_allclose(pi.sum(1), 1, rtol=1e-15)
    # entropy sum pi log pi must not become 0 * inf = nan on masked actions
    entropy = lambda th: -jnp.sum(policy(th) * policy.log_probs(th))
    grad = jax.grad(entropy)(theta)
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~mask] == 0)


def test_sigmoid_policy_matches_the_paper():
    w = jnp.array([0.7, -1.3])
    pi = np.asarray(policies.sigmoid(5)(w))
    s = np.arange(5)
    p0 = 1 / (1 + np.exp(-(0.7 * s - 1.3)))
    np.testing.assert_allclose(pi[:, 0], p0, rtol=1e-14)
    np.testing.assert_allclose(pi[:, 1], 1 - p0, rtol=1e-13)
    # extreme parameters stay finite in log space
    logp = policies.sigmoid(7).log_probs(jnp.array([10.0, 10.0]))
    assert np.all(np.isfinite(np.asarray(logp)))


def test_sigmoid_grid_is_the_papers_41_by_41_grid():
    grid = np.asarray(policies.sigmoid_grid(dtype=jnp.float64))
    assert grid.shape == (1681, 2)
    np.testing.assert_array_equal(grid[0], [-10, -10])
    np.testing.assert_array_equal(grid[-1], [10, 10])
    np.testing.assert_array_equal(np.unique(grid[:, 0]), np.arange(-10, 10.5, 0.5))


def test_linear_softmax_matches_formula():
    rng = np.random.default_rng(2)
    phi = rng.normal(size=(3, 2, 4))
    theta = rng.normal(size=4)
    scores = phi @ theta
    ref = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    np.testing.assert_allclose(policies.linear_softmax(phi)(jnp.asarray(theta)), ref, rtol=1e-13)
    with pytest.raises(ValueError, match=r"\[S, A, d\]"):
        policies.linear_softmax(phi[0])


def test_policies_vmap_over_parameters():
    policy = policies.sigmoid(3)
    ws = policies.sigmoid_grid(step=5.0, dtype=jnp.float64)
    batched = jax.vmap(policy)(ws)
    for i in range(len(ws)):
        np.testing.assert_allclose(batched[i], policy(ws[i]), rtol=1e-15)


def test_bad_masks_raise():
    with pytest.raises(ValueError, match="without actions"):
        policies.tabular_softmax(2, 2, np.array([[True, True], [False, False]]))
    with pytest.raises(ValueError, match="mask must have shape"):
        policies.tabular_softmax(2, 2, np.ones((3, 2), bool))


@pytest.mark.parametrize("kwargs, message", [(dict(step=0.0), "step"), (dict(step=-0.5), "step"),
                                             (dict(low=1.0, high=-1.0), "low <= high")])
def test_sigmoid_grid_refuses_a_bad_grid(kwargs, message):
    with pytest.raises(ValueError, match=message):
        policies.sigmoid_grid(**kwargs)


def test_initial_parameters_follow_the_default_float():
    """Under x64 the library's own starts are float64, like the MDPs they meet."""
    assert policies.sigmoid_grid().dtype == jnp.float64
    assert policies.tabular_softmax(3, 2).init().dtype == jnp.float64
    assert policies.sigmoid(3).init(jnp.float32).dtype == jnp.float32
