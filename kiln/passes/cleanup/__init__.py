"""Exact clean-up passes: dead nodes, Identity and no-op ops, common subexpressions, duplicate initializers."""
