"""Write a linear layer on rows as the Gemm ONNX Runtime would run it anyway:

    Add(MatMul(x, W), b), x (..., K) static, W (K, N), b (N,)
        -> Reshape(Gemm(Reshape(x, [M, K]), W, b), [..., N])      (M = rows of x)

ONNX Runtime's CPU optimizer makes this rewrite itself (its MatMul + Add fusion), after kiln,
so the Reshapes it inserts stay as kernels: one per linear in and one out, Reshape pairs around
a GELU between two linears, the query/key/value input flattened three times. Made here, the
shape passes that follow clean them up: Reshape chains collapse (the output Reshape merges with
the split-heads Reshape), Reshapes around elementwise regions go, and equal Reshapes of one
input are one after CSE. Where nothing absorbs them, both Reshapes stay (one node more than
MatMul + Add), as ORT would have run them anyway.

Exact (the same dot products and bias, in one kernel). Static shapes and float32 only. A 2-D x
needs no Reshape. Written as an onnxscript pattern / check / rewrite rule.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern as orp

from kiln.ir.queries import static_shape
from kiln.passes.infra.contract import PassContext
from kiln.passes.infra.rule_pass import RulePass


class MatMulAddToGemm(orp.RewriteRuleClassBase):
    """Add(MatMul(x, W), b) -> Gemm(x, W, b), with Reshapes to and from rows when x has rank > 2."""

    def pattern(self, op, x, w, b):
        return op.Add(op.MatMul(x, w, _outputs=["product"]), b)

    def check(self, context, x, w, b, product) -> orp.MatchResult:
        result = orp.MatchResult()
        x_shape, w_shape, b_shape = static_shape(x), static_shape(w), static_shape(b)
        if x_shape is None or w_shape is None or b_shape is None:
            return result.fail("x, W and b need static shapes")
        if len(x_shape) < 2 or len(w_shape) != 2 or x_shape[-1] != w_shape[0]:
            return result.fail(f"not rows times a matrix: x {list(x_shape)}, W {list(w_shape)}")
        if b_shape != (w_shape[1],):
            return result.fail(f"bias {list(b_shape)} is not one value per output column ({w_shape[1]})")
        if not (x.dtype == w.dtype == b.dtype == ir.DataType.FLOAT):
            return result.fail("only float32 linears are rewritten")
        if product.is_graph_output() or len(product.uses()) != 1:
            return result.fail("the MatMul result is read elsewhere")
        if len(x_shape) > 2 and not product.name:
            return result.fail("the MatMul result has no name to derive the shape constants' names from")
        return result

    def rewrite(self, op, x, w, b, product):
        x_shape, (k, n) = static_shape(x), static_shape(w)
        if len(x_shape) == 2:
            return op.Gemm(x, w, b)
        rows = int(np.prod(x_shape[:-1]))
        flat = op.Reshape(x, op.initializer(ir.tensor(np.array([rows, k], np.int64)), name=f"{product.name}_rows"))
        gemm = op.Gemm(flat, w, b)
        out = op.Reshape(gemm, op.initializer(ir.tensor(np.array([*x_shape[:-1], n], np.int64)),
                                              name=f"{product.name}_unflatten"))
        for value, shape in ((flat, (rows, k)), (gemm, (rows, n))):  # the shape passes read static shapes
            value.dtype, value.shape = x.dtype, ir.Shape(shape)
        return out


class LinearToGemm(RulePass):
    """Rewrite constant-shape MatMul + bias Add as Gemm on rows (see the module docstring)."""

    name = "linear_to_gemm"
    commute = True
    explanation = ("MatMul + bias is one Gemm on rows, as ONNX Runtime would rewrite it; made here, the shape passes "
                   "remove the Reshapes it needs")

    def rules(self, ctx: PassContext) -> list[orp.RewriteRule]:
        return [MatMulAddToGemm.rule(self.name)]
