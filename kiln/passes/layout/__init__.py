"""Exact layout passes: layout-op chains, Reshape sinking, batch transposes, linears on rows as Gemm."""
