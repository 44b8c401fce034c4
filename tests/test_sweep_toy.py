"""A small algorithm to sweep, and a sweep job built on it (importable as a job module
`test_sweep_toy` with the tests directory on the path; the algorithm is `softmax_pg`,
since a job module's `run` is `run(config)`).

Exact softmax policy gradient on a garnet: `theta <- theta + lr * grad J(theta)` with
`J = rho . v_pi` (`dsorl.discounted_return`, gradient through the linear solve) as an
optax SGD ascent, started from `params0 + 0.1 * N(0, I)` drawn with the member's key,
so members with different seeds differ.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import dsorl
from dsorl.sweep import Grid


class Config(NamedTuple):
    n_steps: int = 20


def softmax_pg(mdp, params0, hparams, key, *, config):
    """`run(mdp, theta0[S, A], {"gamma", "lr"}, key, config=Config) -> (theta, trace)`."""
    optimiser = optax.sgd(hparams["lr"])
    theta0 = params0 + 0.1 * jax.random.normal(key, params0.shape, params0.dtype)
    objective = lambda th: dsorl.discounted_return(mdp, jax.nn.softmax(th), hparams["gamma"])

    def step(carry, _):
        theta, state = carry
        value, grad = jax.value_and_grad(objective)(theta)
        updates, state = optimiser.update(-grad, state)  # ascent: rewards are maximised
        return (optax.apply_updates(theta, updates), state), {
            "objective": value, "grad_norm": jnp.linalg.norm(grad)}

    (theta, _), trace = jax.lax.scan(step, (theta0, optimiser.init(theta0)), None,
                                     length=config.n_steps)
    return theta, trace


DEFAULTS = {
    "env": {"n_states": 5, "n_actions": 3, "branching": 3, "seed": 0},
    "grid": {"gamma": [0.5, 0.9], "lr": [0.5, 2.0], "seed": [0, 1, 2]},
    "n_steps": 20,
    "output_dir": "results/toy",
}


def sweep_spec(config):
    env = config["env"]
    mdp = dsorl.envs.garnet(jax.random.key(env["seed"]), env["n_states"], env["n_actions"],
                            env["branching"])
    return {"run": softmax_pg, "mdp": mdp, "grid": Grid(**config["grid"]), "config": Config(config["n_steps"]),
            "params0": jnp.zeros((env["n_states"], env["n_actions"]))}


def dense_return(mdp, theta, gamma):
    """NumPy reference of `J(theta)`: softmax policy, `v = (I - gamma P_pi)^-1 r_pi`."""
    P, R, rho = (np.asarray(x) for x in (mdp.P, mdp.R, mdp.rho))
    pi = np.exp(theta - theta.max(1, keepdims=True))
    pi /= pi.sum(1, keepdims=True)
    P_pi, r_pi = np.einsum("sa,sat->st", pi, P), (pi * R).sum(1)
    return rho @ np.linalg.solve(np.eye(len(rho)) - gamma * P_pi, r_pi)


def test_toy_run_is_gradient_ascent_on_the_exact_return():
    from helpers import central_difference

    mdp = sweep_spec({**DEFAULTS, "sweep": {}})["mdp"]
    theta, trace = jax.jit(softmax_pg, static_argnames="config")(
        mdp, jnp.zeros((5, 3)), {"gamma": 0.9, "lr": 0.5}, jax.random.key(3), config=Config(3))
    # replay the three steps with a NumPy return and central differences
    th = 0.1 * np.asarray(jax.random.normal(jax.random.key(3), (5, 3), jnp.float64))
    for t in range(3):
        # after step 0, th carries the central differences' O(1e-10) error
        np.testing.assert_allclose(trace["objective"][t], dense_return(mdp, th, 0.9),
                                   rtol=1e-12 if t == 0 else 1e-8)
        grad = central_difference(lambda x: dense_return(mdp, x, 0.9), th)
        np.testing.assert_allclose(trace["grad_norm"][t], np.linalg.norm(grad), rtol=1e-7)
        th = th + 0.5 * grad
    np.testing.assert_allclose(theta, th, rtol=1e-7, atol=1e-9)
