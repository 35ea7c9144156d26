"""Fusion passes: several nodes become fewer, larger kernels where the cost model or a measurement says it pays."""
