"""Policy-optimisation algorithms: each module has init/step pure functions and a jittable run."""
