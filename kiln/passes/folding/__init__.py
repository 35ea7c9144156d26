"""Exact folding passes: constants, layers (BatchNorm / affine / scales into weights), Reciprocal into Div, linear chains."""
