"""Jobs that `dsorl run CONFIG` runs: one module per job, with `DEFAULTS` and `run(config)`."""
