"""Quantization insertion: linears to int8 where the cost model prices them faster and the
outputs keep the user's accuracy budget (`QuantConfig`; ``kiln.optimize(..., quantize="int8")``),
after an exact migration of activation outliers into the weights when the config asks."""

from kiln.passes.quantization.config import QuantConfig, resolve_quantize
from kiln.passes.quantization.outlier_migration import MigrateActivationOutliers
from kiln.passes.quantization.quantize_int8 import QuantizeInt8

__all__ = ["MigrateActivationOutliers", "QuantConfig", "QuantizeInt8", "resolve_quantize"]
