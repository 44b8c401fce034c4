"""Sweep mean-field Langevin PG over γ × τ × σ × η × seed on a garnet MDP (exact values).

Kerimkulov, Leahy, Šiška, Szpruch (ICML 2022, arXiv 2201.07296); docs/design.md §9.4. Each member
draws its N initial particles i.i.d. from N(0, I) = e^{-U} and its Langevin noise from its
seed's key, then runs `dsorl.algorithms.meanfield.run` (one `lax.scan`), both by
`dsorl.jobs.meanfield.run_from_key`. One row per member, of the final ensemble `nu_T` (the
trace's last row): the regularised value `value_tau = V_tau^{pi_nu}(rho)`,
the unregularised return `value = V^{pi_nu}(rho)`, the soft optimum `soft_optimal =
rho . V*_tau` of the member's (γ, τ) (`dsorl.soft_policy_iteration`), the `gap` between
them, the particles' `dispersion`, `diverged` (bool) and `first_bad_step` (the first step
after which the ensemble was not finite; NaN when it never was): a diverging member is
listed, not dropped, and its other columns describe non-finite particles: NaN or
meaningless, since the bounded tanh feature can keep the values finite. N, the feature width and the number of steps are
static.
"""
import jax
import jax.numpy as jnp
import numpy as np

from dsorl import features
from dsorl.algorithms import meanfield as mf
from dsorl.config import Free
from dsorl.jobs.meanfield import build_problem, run_from_key
from dsorl.planning import soft_policy_iteration
from dsorl.sweep import Grid

__all__ = ["DEFAULTS", "HPARAMS", "REFERENCES", "sweep_spec"]

# the soft optimum of each (γ, τ) is drawn as a reference line in value_tau's figure
REFERENCES = {"soft_optimal": "value_tau"}

DEFAULTS = {
    "env": {"n_states": 6, "n_actions": 3, "branching": 3, "seed": 0},
    "feature": {"width": 4, "bound": 2.0},
    "particles": 64,         # N (static)
    # gamma, tau, sigma, step_size required; seed optional (default: every member uses key 0)
    "grid": Free(gamma=[0.9], tau=[0.2], sigma=[0.0, 0.05, 0.1], step_size=[0.5], seed=[0, 1, 2, 3]),
    "n_steps": 500,
    "gradient": "autodiff",  # Lions derivative: autodiff or covariance
    "output_dir": "results/sweep_meanfield",
}

HPARAMS = mf.HParams._fields  # gamma, tau, sigma, step_size


def _hparams(point) -> mf.HParams:
    return mf.HParams(*(point[name] for name in HPARAMS))


def _metrics(final_state, trace, member) -> dict:
    problem, hp = member.mdp, member.hparams
    final = jax.tree_util.tree_map(lambda x: x[-1], trace)  # the final ensemble nu_T
    optimum = problem.mdp.rho @ soft_policy_iteration(problem.mdp, hp.gamma, hp.tau, problem.mu).value
    return {"value_tau": final.value_tau, "value": final.value, "soft_optimal": optimum,
            "gap": optimum - final.value_tau, "dispersion": final.dispersion,
            "diverged": final_state.first_bad_step >= 0,  # the state's -1 is "none": NaN here
            "first_bad_step": jnp.where(final_state.first_bad_step >= 0,
                                        final_state.first_bad_step, jnp.nan)}


def sweep_spec(config: dict) -> dict:
    """Keyword arguments of `dsorl.sweep.sweep` for this config (hparams checked first)."""
    grid = dict(config["grid"])
    keys = set(HPARAMS) | {"seed"}
    if set(grid) - keys or not set(HPARAMS) <= set(grid):
        raise ValueError(f"config key 'grid' takes {', '.join(HPARAMS)} (all required) and seed;"
                         f" got {', '.join(grid)}.")
    if config["gradient"] not in mf.GRADIENTS:
        raise ValueError(f"config key 'gradient' must be one of {', '.join(mf.GRADIENTS)},"
                         f" got {config['gradient']!r}.")
    if config["particles"] < 1 or config["n_steps"] < 1:
        raise ValueError(f"config keys 'particles' and 'n_steps' must be >= 1, got"
                         f" {config['particles']} and {config['n_steps']}.")
    grid = Grid(**grid)
    problem = build_problem(config)
    static = mf.Config(config["n_steps"], config["gradient"], config["particles"])
    # under vmap the hparams are traced and unchecked: check every axis value here
    mf.validate(problem, _hparams({name: grid.axes[name].values for name in HPARAMS}), static)
    single = features.init_particles(problem.feature, jax.random.key(0), 1, problem.encodings)
    centre = jax.tree_util.tree_map(lambda x: np.zeros(x.shape[1:], x.dtype), single)
    return {"run": run_from_key, "mdp": problem, "grid": grid, "config": static,
            "params0": centre, "hparams": _hparams, "metrics": _metrics}
