"""Environments: random garnets, the nBw benchmarks, Gymnasium toy-text imports."""
from dsorl.envs.garnet import garnet
from dsorl.envs.gymnasium_toytext import from_gymnasium, from_transition_table
from dsorl.envs.nbw import NAMES as NBW_NAMES
from dsorl.envs.nbw import nbw_env, nbw_reference

__all__ = ["garnet", "from_gymnasium", "from_transition_table", "NBW_NAMES", "nbw_env",
           "nbw_reference"]
