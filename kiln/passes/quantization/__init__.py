"""Quantization insertion: linears to int8 where the cost model prices them faster and the
outputs keep the user's accuracy budget (`QuantConfig`; ``kiln.optimize(..., quantize="int8")``),
or to block-wise 4-/8-bit weights where they measured faster (``quantize="int4-weights"``), after
an exact migration of activation outliers into the weights when the config asks."""

from kiln.passes.quantization.config import QuantConfig, resolve_quantize
from kiln.passes.quantization.outlier_migration import MigrateActivationOutliers
from kiln.passes.quantization.quantize_int8 import QuantizeInt8
from kiln.passes.quantization.quantize_weights_blockwise import QuantizeWeightsBlockwise

__all__ = ["MigrateActivationOutliers", "QuantConfig", "QuantizeInt8", "QuantizeWeightsBlockwise", "resolve_quantize"]
