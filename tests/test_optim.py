"""Natural-gradient preconditioning as an optax transformation."""
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dsorl.optim import natural_direction


def test_natural_direction_solves_the_damped_fisher_system():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5, 5))
    F = X @ X.T
    params = {"a": jnp.zeros(3), "b": jnp.zeros(2)}
    grads = {"a": jnp.asarray(rng.normal(size=3)), "b": jnp.asarray(rng.normal(size=2))}
    tx = optax.chain(natural_direction(0.1), optax.scale(-0.5))
    updates, _ = tx.update(grads, tx.init(params), params, fisher=F)
    flat = np.concatenate([grads["a"], grads["b"]])
    expected = -0.5 * np.linalg.solve(F + 0.1 * np.eye(5), flat)
    np.testing.assert_allclose(np.concatenate([updates["a"], updates["b"]]), expected, rtol=1e-10)


def test_pseudo_inverse_handles_a_singular_fisher():
    F = np.diag([2.0, 0.0, 4.0])
    tx = natural_direction(pseudo_inverse=True)
    g = jnp.array([1.0, 1.0, 1.0])
    d, _ = tx.update(g, tx.init(g), fisher=F)
    np.testing.assert_allclose(d, [0.5, 0.0, 0.25], atol=1e-15)


def test_fisher_of_the_wrong_size_raises():
    tx = natural_direction(0.1)
    g = jnp.ones(3)
    with pytest.raises(ValueError, match=r"fisher must have shape \[3, 3\]"):
        tx.update(g, tx.init(g), fisher=np.eye(2))
