"""`dsorl.envs.make`: every registered name builds its environment; unknown names listed."""
import jax
import numpy as np
import pytest

import dsorl
from dsorl import envs


def test_make_builds_what_the_constructor_builds():
    key = jax.random.key(0)
    made = envs.make("garnet", key=key, n_states=4, n_actions=2, branching=2)
    direct = envs.garnet(key, 4, 2, 2)
    np.testing.assert_array_equal(made.P, direct.P)
    for name in envs.NBW_NAMES:
        np.testing.assert_array_equal(envs.make(name).P, envs.nbw_env(name).P)
    made, direct = envs.make("sutton_extended"), dsorl.envs.dynpg.sutton_extended()
    for a, b in zip(jax.tree_util.tree_leaves(made), jax.tree_util.tree_leaves(direct)):
        np.testing.assert_array_equal(a, b)


def test_every_registered_name_resolves_with_a_description():
    described = envs.registry()
    assert list(described) == envs.names() and all(described.values())
    # each constructor module of dsorl.envs has its public constructors registered
    assert {"garnet", "sparse_garnet", "gridworld", "large_gridworld", "committal_chain",
            "linear_quadratic_regulator", "soft_lqr", "sutton_extended", "random_lmdp",
            "random_walk_lmdp", "gymnasium"} <= set(envs.names())


def test_an_unknown_name_lists_the_registry():
    with pytest.raises(ValueError, match=r"unknown environment 'mars'; the registry has: garnet,"):
        envs.make("mars")
