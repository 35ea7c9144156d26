"""``x * 0.5 * (1 + Erf(x / sqrt(2)))`` -> ``Gelu(x)`` (ONNX opset 20): the exact GELU as torch
exports it, five elementwise nodes, as one op."""

from __future__ import annotations

import math

import numpy as np

from kiln.ir.queries import constant_scalar
from kiln.passes.fusion.fusion_rule import FusionRule


def _scalar_close(value, expected: float) -> bool:
    number = constant_scalar(value, max_rank=4)
    return number is not None and math.isclose(number, expected, rel_tol=1e-6)


class ErfGelu(FusionRule):
    """Mul(Mul(x, Add(Erf(Div(x, sqrt2)), 1)), 0.5) -> Gelu(x)."""

    def pattern(self, op, x, sqrt2, one, half):
        return op.Mul(op.Mul(x, op.Add(op.Erf(op.Div(x, sqrt2)), one)), half)

    def condition(self, context, x, sqrt2, one, half) -> str:
        if context.model.opset_imports.get("", 0) < 20:
            return "Gelu needs ONNX opset 20"
        if not (_scalar_close(sqrt2, math.sqrt(2)) and _scalar_close(one, 1.0) and _scalar_close(half, 0.5)):
            return "the constants are not sqrt(2), 1 and 0.5"
        if x.dtype is None or x.dtype.numpy() not in (np.float32, np.float16, np.float64):
            return "Gelu takes float tensors"
        return ""

    def rewrite(self, op, x, sqrt2, one, half):
        return op.Gelu(x, approximate="none")
