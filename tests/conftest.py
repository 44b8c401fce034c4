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


@pytest.fixture
def rng():
    return np.random.default_rng(0)
