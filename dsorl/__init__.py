"""dsorl: differentiable, batchable reinforcement learning for policy-gradient research.

The core is exact: an MDP and a policy induce a Markov chain (`induced_chain`), and
every chain quantity (discounted value, occupancy, stationary law, gain, bias, deviation
matrix) is a linear solve that `jax.grad` differentiates implicitly and `jax.vmap`
batches over discount factors, MDPs and policy parameters.
"""
from dsorl import envs, policies
from dsorl.fixed_point import implicit_fixed_point
from dsorl.graph import closed_classes
from dsorl.markov import (Chain, bias, deviation_matrix, discounted_value, gain, is_unichain,
                          mixing_time, occupancy, stationary_distribution)
from dsorl.mdp import (MDP, action_values, bias_action_values, entropy_regularised_chain,
                       induced_chain, policy_kl, reference_measure, soft_action_values)
from dsorl.objectives import (discounted_policy_gradient, discounted_return,
                              entropy_regularised_return, gain_policy_gradient, policy_bias,
                              policy_gain)
from dsorl.planning import (NearlyBlackwellSolution, Solution, SoftSolution,
                            deterministic_policies, nearly_blackwell_optimal, optimal_value,
                            policy_iteration, soft_optimal_value, soft_policy_iteration,
                            value_iteration)

__version__ = "0.1.0"

__all__ = [
    "MDP", "Chain", "induced_chain", "entropy_regularised_chain", "reference_measure",
    "policy_kl", "action_values", "bias_action_values", "soft_action_values",
    "discounted_value", "occupancy", "stationary_distribution", "gain", "bias",
    "deviation_matrix", "mixing_time", "is_unichain", "closed_classes",
    "implicit_fixed_point", "optimal_value", "soft_optimal_value",
    "value_iteration", "policy_iteration", "soft_policy_iteration", "Solution", "SoftSolution",
    "nearly_blackwell_optimal", "NearlyBlackwellSolution", "deterministic_policies",
    "discounted_return", "entropy_regularised_return", "policy_gain", "policy_bias",
    "discounted_policy_gradient", "gain_policy_gradient", "policies", "envs",
]
