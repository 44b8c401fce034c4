"""Test configuration: float64 everywhere, a fast hypothesis profile, shared fixtures."""
import os

os.environ.setdefault("JAX_ENABLE_X64", "1")
# commands run by the tests keep their compilation cache in a directory of this session,
# never the user's ~/.cache/dsorl (set before dsorl is imported anywhere)
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


@pytest.fixture
def rng():
    return np.random.default_rng(0)
