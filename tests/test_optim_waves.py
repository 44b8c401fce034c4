"""Armijo backtracking under `vmap` without lock-step (`dsorl.optim._while_unsynchronised`):
every member's search is the one it runs alone, and the nBw trajectories are the lock-step
loop's, bit for bit."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from dsorl import envs, optim, policies
from dsorl.algorithms import nbw
from dsorl.envs.nbw import paper_hyperparams
from dsorl.optim import armijo_backtracking


def _search(x, g, f, **kw):
    tx = armijo_backtracking(**kw)
    _, state = tx.update(g, tx.init(x), x, value=f(x), grad=g, value_fn=f)
    return state.step_size, state.evaluations


def _one_by_one(fn, *columns):
    """`fn` on each member alone (no vmap), stacked: the independent reference."""
    outs = [fn(*(c[i] for c in columns)) for i in range(len(columns[0]))]
    return [np.stack([np.asarray(o[j]) for o in outs]) for j in range(len(outs[0]))]


def test_members_needing_different_numbers_of_halvings_get_their_own_steps():
    # f(x) = -(x - a)^2 / scale from x = 0 along the gradient: alpha = 1 overshoots by a
    # factor 2 a / scale ..., so the accepted step needs more halvings as scale shrinks;
    # scale 1e-30 makes every trial fail (step 0 at the rounding-level stop).
    scales = jnp.array([2.0, 1.0, 0.3, 1e-2, 1e-4, 1e-7, 1e-12, 1e-30] * 5)
    targets = jnp.linspace(0.5, 3.0, scales.size)

    def member(a, scale):
        f = lambda x: -jnp.sum((x - a) ** 2) / scale
        x = jnp.zeros(1)
        return _search(x, jax.grad(f)(x), f)

    steps, evaluations = jax.jit(jax.vmap(member))(targets, scales)
    ref_steps, ref_evaluations = _one_by_one(jax.jit(member), targets, scales)
    np.testing.assert_array_equal(steps, ref_steps)
    np.testing.assert_array_equal(evaluations, ref_evaluations)
    assert len(set(np.asarray(evaluations).tolist())) >= 5  # the members really differ
    # the Armijo condition by hand for one member: first accepted halving
    a, s = float(targets[3]), float(scales[3])
    g = 2 * a / s
    k = next(k for k in range(100)
             if -(2.0 ** -k * g - a) ** 2 / s >= -a * a / s + 1e-4 * 2.0 ** -k * g * g)
    assert float(steps[3]) == 2.0 ** -k and int(evaluations[3]) == k + 1


def test_coupled_sample_searches_and_nested_vmap_match_the_members_alone():
    # the resolved/expansion state machine of sampled line searches, batched twice
    def member(first_change, increase):
        def f(x):
            changed = x[0] >= first_change
            return jnp.where(changed, increase, 0.0), changed
        x, g = jnp.zeros(1), jnp.ones(1)
        tx = armijo_backtracking(max_expansions=5)
        _, state = tx.update(g, tx.init(x), x, value=0.0, grad=g, value_fn=f)
        return state.step_size, state.evaluations

    first = jnp.array([[1.0, 4.0, 0.3, 1e9, 16.0], [0.1, 2.0, 8.0, 0.5, 32.0]])
    increase = jnp.array([[1.0, -1.0, -1.0, 1.0, 1.0], [1.0, 1.0, 1.0, -1.0, 1.0]])
    steps, evaluations = jax.jit(jax.vmap(jax.vmap(member)))(first, increase)
    ref_steps, ref_evaluations = _one_by_one(jax.jit(member), first.ravel(), increase.ravel())
    np.testing.assert_array_equal(np.asarray(steps).ravel(), ref_steps)
    np.testing.assert_array_equal(np.asarray(evaluations).ravel(), ref_evaluations)
    assert float(steps[0, 1]) == 0.0 and float(steps[0, 4]) == 16.0  # expansions


def _lock_step(cond, body, start):
    return lax.while_loop(cond, body, start)


# The starts of each environment whose searches halve most often on the 41 x 41 grid
# (A2: 13-14 halvings in one step; B2: 8 halvings at most steps), and two quick ones.
STARTS = {
    "A1": [[-10.0, 10.0], [3.0, -4.0], [0.5, 0.5]],
    "A2": [[2.0, -7.0], [-2.0, 7.0], [-2.0, 5.0], [-1.0, 4.5], [6.0, 6.0]],
    "A3": [[-10.0, 10.0], [3.0, -4.0], [0.5, 0.5]],
    "B1": [[-10.0, 10.0], [3.0, -4.0], [0.5, 0.5]],
    "B2": [[0.5, -9.0], [0.5, -6.0], [0.5, -5.5], [1.0, -6.0], [-8.0, 8.0]],
    "B3": [[-8.5, 6.0], [-8.5, 8.5], [-10.0, 7.5], [-9.0, 9.0], [2.0, 2.0]],
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n == "B2" else pytest.mark.slow)
                                  for n in STARTS])
def test_nbw_trajectories_equal_the_lock_step_loop(name, monkeypatch):
    mdp, ref = envs.nbw_env(name), envs.nbw_reference(name)
    config = nbw.Config(policies.sigmoid(mdp.P.shape[0]), n_steps=40,
                        episode_length=ref["episode_length"])
    hp = nbw.HParams(**paper_hyperparams(name))
    starts = jnp.asarray(STARTS[name])
    grid = jnp.concatenate([starts, policies.sigmoid_grid(step=5.0)])  # 30 starts: waves of 4

    def runs():
        return jax.jit(jax.vmap(lambda w: nbw.run(mdp, w, hp, config=config,
                                                  keep_params=True)[1]))(grid)

    waves = runs()
    monkeypatch.setattr(optim, "_while_unsynchronised", _lock_step)
    lock_step = runs()
    for field in waves._fields:
        np.testing.assert_array_equal(getattr(waves, field), getattr(lock_step, field),
                                      err_msg=f"{name}: trace field {field}")
    assert int(jnp.max(waves.evaluations)) >= (2 if name in ("A2", "B2") else 1)
