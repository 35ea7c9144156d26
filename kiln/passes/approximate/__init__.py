"""Approximate passes: rewrites that change outputs on purpose, within an explicit error budget."""
