"""Sampled gradient estimators (REINFORCE-type and others), one module per family."""
