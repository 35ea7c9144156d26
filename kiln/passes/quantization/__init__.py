"""Quantization insertion: linears to int8 where the cost model prices them faster and the
outputs keep the user's accuracy budget (`QuantConfig`; ``kiln.optimize(..., quantize="int8")``)."""

from kiln.passes.quantization.config import QuantConfig, resolve_quantize
from kiln.passes.quantization.quantize_int8 import QuantizeInt8

__all__ = ["QuantConfig", "QuantizeInt8", "resolve_quantize"]
