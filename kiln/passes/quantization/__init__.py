"""Quantization insertion: linears to int8 where the cost model prices them faster and the
outputs keep the user's accuracy budget (`QuantConfig`; ``kiln.optimize(..., quantize="int8")``)."""

from kiln.passes.quantization.config import QuantConfig, resolve_quantize
from kiln.passes.quantization.dynamic_int8 import QuantizeLinearsDynamicInt8

__all__ = ["QuantConfig", "QuantizeLinearsDynamicInt8", "resolve_quantize"]
