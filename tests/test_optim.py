"""Natural-gradient preconditioning and Armijo backtracking as optax transformations."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dsorl.optim import armijo_backtracking, natural_direction


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


# ----------------------------------------------------------------------------------------
# Armijo backtracking


def _armijo(x, g, d, f, **kw):
    tx = armijo_backtracking(**kw)
    return tx.update(d, tx.init(x), x, value=f(x), grad=g, value_fn=f)


def test_armijo_accepts_first_sufficient_increase():
    f = lambda x: -jnp.sum((x - 3.0) ** 2)
    x = jnp.zeros(1)
    g = jax.grad(f)(x)  # 6: alpha = 1 overshoots to x = 6 (no increase), 1/2 lands on 3
    update, state = _armijo(x, g, g, f)
    np.testing.assert_allclose(update, [3.0])
    assert float(state.step_size) == 0.5 and int(state.evaluations) == 2
    # c close to 1 rejects alpha = 1/2 too: f(3) - f(0) = 9 < c * 0.5 * 36 for c = 0.6
    update, state = _armijo(x, g, g, f, c=0.6)
    assert float(state.step_size) == 0.25


def test_armijo_rejects_descent_nonfinite_and_unresolvable_steps():
    f = lambda x: -jnp.sum((x - 3.0) ** 2)
    x = jnp.zeros(1)
    g = jax.grad(f)(x)
    update, state = _armijo(x, g, -g, f)  # descent direction: step 0, no evaluation
    assert float(update[0]) == 0 and int(state.evaluations) == 0
    undefined = lambda x: jnp.where(x[0] == 0, 0.0, jnp.nan)  # e.g. a barrier's log(< 0)
    update, state = _armijo(x, g, g, undefined, max_tries=7)
    assert float(update[0]) == 0 and int(state.evaluations) == 7
    tiny = jnp.full(1, 1e-20)  # increase below f's rounding level: give up at once
    update, state = _armijo(x, tiny, tiny, f)
    assert float(update[0]) == 0 and int(state.evaluations) == 0


def test_armijo_vmaps_over_traced_settings_and_keeps_float32():
    f = lambda x: -jnp.sum((x - 3.0) ** 2)
    x = jnp.zeros(1)
    g = jax.grad(f)(x)
    steps = jax.jit(jax.vmap(lambda c: _armijo(x, g, g, f, c=c)[1].step_size))(
        jnp.array([1e-4, 0.6, 0.8]))
    np.testing.assert_allclose(steps, [0.5, 0.25, 0.125])
    x32 = jnp.zeros(1, jnp.float32)
    update, state = _armijo(x32, g.astype(jnp.float32), g.astype(jnp.float32), f)
    assert update.dtype == state.step_size.dtype == jnp.float32


def _staircase(first_change, increase, resolved):
    # A coupled-sample estimate along x = alpha: the samples of x = 0 (value 0, unresolved)
    # below `first_change`, then `increase` (already less `confidence` standard errors).
    def f(x):
        changed = x[0] >= first_change
        return jnp.where(changed, increase, 0.0), changed & resolved
    return f


@pytest.mark.parametrize("first_change, increase, resolved, step, evaluations", [
    (1.0, 1.0, True, 1.0, 1),      # resolved at alpha0: plain Armijo
    (4.0, 1.0, True, 4.0, 3),      # unchanged at 1 and 2: lengthen, accept 4
    (4.0, -1.0, True, 0.0, 3),     # after lengthening, the first resolved trial decides
    (4.0, -0.1, False, 0.0, 6),    # an increase never significant: 5 lengthenings, step 0
    (1e9, 1.0, True, 0.0, 6),      # never changes within the expansions
    (0.3, -1.0, True, 0.0, 3),     # rejections at 1, 0.5, then unchanged at 0.25: stop
])
def test_armijo_with_coupled_sample_estimates(first_change, increase, resolved, step,
                                              evaluations):
    x, g = jnp.zeros(1), jnp.ones(1)
    tx = armijo_backtracking(max_expansions=5)
    f = _staircase(first_change, increase, resolved)
    update, state = tx.update(g, tx.init(x), x, value=0.0, grad=g, value_fn=f)
    assert float(state.step_size) == step and int(state.evaluations) == evaluations
    np.testing.assert_allclose(update, [step])
