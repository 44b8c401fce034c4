"""Test configuration: float64 everywhere, a fast hypothesis profile, shared fixtures."""
import os

os.environ.setdefault("JAX_ENABLE_X64", "1")
# No persistent compilation cache in the tests (tests/test_compilation.py turns it on where
# it is the subject): a test run compiles hundreds of one-off programs, and one CI run
# segfaulted inside XLA's compile on the cache-writing path after a test had left the cache
# on in-process (not reproduced in isolation). A cache directory of this session, never the
# user's ~/.cache/dsorl, in case a test asks for it. Set before dsorl is imported anywhere.
os.environ.setdefault("DSORL_CACHE", "0")
if "DSORL_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["DSORL_CACHE_DIR"] = tempfile.mkdtemp(prefix="dsorl-test-cache-")
    atexit.register(shutil.rmtree, os.environ["DSORL_CACHE_DIR"], ignore_errors=True)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_enable_x64", True)

settings.register_profile("dsorl", max_examples=20, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dsorl"))


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module. One process runs the whole
    suite, thousands of programs, and each keeps its code mapped: late in the session XLA's
    compile segfaulted (three runs, in two different tests; never in a shorter session)."""
    yield
    jax.clear_caches()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# Variants moved to `pytest -m slow` to keep the default run within its 10-minute budget on
# 2 cores (the whole default run took 696 s before, measured 2026-12-05). Each is a second
# view of behaviour a faster test already checks: float32 and captured-problem jit/vmap
# variants, job tables and subprocess cases whose logic is covered in-process. Seconds are
# that run's durations.
MOVED_TO_SLOW = {
    "test_large_mdp_job.py::test_methods_agree_and_reports_are_filled_in",      # 11.1
    "test_large_mdp_job.py::test_memory_probe_runs_in_a_fresh_process",         # 4.0
    "test_dso.py::test_jit_vmap_with_the_problem_captured_and_passed",          # 10.6
    "test_dso.py::test_float32_model_and_params_run_in_float32",                # 6.9
    "test_meanfield.py::test_run_variants_over_seeds_tau_sigma_step_size",      # 9.3
    "test_meanfield.py::test_jit_vmap_with_the_problem_captured_or_passed",     # 4.9
    "test_meanfield.py::test_lions_derivative_variants",                        # 4.5
    "test_cli_subprocess.py::test_another_jobs_results_are_refused_unless_forced",  # 8.4
    "test_sparse.py::test_planners_agree_with_the_dense_path",                  # 8.1
    "test_sweep_distributed.py::test_killed_sweep_resumes_without_losing_or_duplicating_rows",  # 7.4
    "test_sweep_distributed.py::test_two_processes_run_one_sweep",              # 3.9
    "test_job_tables.py::test_dso_benchmark_seed_counts_are_numbers",           # 6.8
    "test_job_tables.py::test_dso_lmdp_not_reached_is_nan_not_minus_one",       # 4.8
    "test_estimators_average_reward.py::test_variants_jit_vmap_and_reproducibility",  # 5.5
    "test_sweep_jobs.py::test_pco_rows_equal_direct_runs_and_dense_references",  # 5.3
    "test_sweep_jobs.py::test_meanfield_rows_equal_direct_runs_and_dense_references",  # 4.6
    "test_optim_waves.py::test_nbw_trajectories_equal_the_lock_step_loop[B2]",  # 4.9
    "test_estimators_dso.py::test_variants_jit_and_vmap_over_parameters_and_episodes",  # 4.7
    "test_envs_control.py::test_soft_policy_iteration_on_the_grid_recovers_the_gaussian_soft_policy",  # 4.5
    "test_dynpg.py::test_float32_problem_stays_float32",                        # 4.2
    "test_dynpg.py::test_run_interactions_with_the_problem_captured_or_passed",  # 3.4
    "test_progress.py::test_dsorl_run_shows_progress_only_when_asked[--no-progress]",  # 4.0
    "test_nbw.py::test_float32_problem_stays_float32[exact]",                   # 3.9
    "test_nbw.py::test_float32_problem_stays_float32[sampled]",                 # 3.6
    "test_nbw.py::test_jit_vmap_with_the_problem_captured_or_passed[discounted]",  # 3.9
    "test_bias_gradient.py::test_variants_jit_and_vmap",                        # 3.9
    "test_pg.py::test_float32_problem_stays_float32",                           # 3.7
    "test_pg.py::test_jit_vmap_with_the_problem_captured_or_passed[reinforce]",  # 3.4
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.split("tests/", 1)[-1] in MOVED_TO_SLOW:
            item.add_marker(pytest.mark.slow)
