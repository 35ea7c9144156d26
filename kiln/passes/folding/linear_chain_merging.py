"""Merge consecutive linear maps: x @ W1 @ W2 -> x @ (W1 W2), and with a bias between them
(x @ W1 + b1) @ W2 -> x @ (W1 W2) + b1 W2, where the cost model predicts the merged form faster.

Exact up to float rounding (the product is computed in float64). Per row of x, the FLOPs and
the weight bytes of both forms scale with the weight elements (k n against k m + m n), so the
cost model's price follows them, plus one kernel launch fewer for the merged form. Written as
onnxscript pattern / check / rewrite rules (onnxscript ships none); the check asks
``PassContext.cost`` and records the decision, and keeps the chain when there is no cost model.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern as orp

from kiln.ir.edits import placeholder_weight, sketch_node
from kiln.ir.queries import FLOAT_TYPES, initializer_array
from kiln.passes.infra.contract import PassContext
from kiln.passes.infra.rule_pass import DecidingRule, RulePass


def _constant_matrix(value: ir.Value) -> np.ndarray | None:
    """The value of a 2-D float initializer that is not a graph input or output, else None."""
    array = initializer_array(value) if value.dtype in FLOAT_TYPES else None
    return array if array is not None and array.ndim == 2 else None


def _product(a: ir.Value, b: ir.Value) -> ir.TensorProtocol:
    """a @ b computed in float64 and stored in the weights' dtype."""
    x, y = a.const_value.numpy(), b.const_value.numpy()
    return ir.tensor((x.astype(np.float64) @ y.astype(np.float64)).astype(x.dtype))


class _MergeRule(DecidingRule):
    """Shared check: both weights constant matrices of matching inner size, and the cost model
    predicts one MatMul by W1 W2 (plus the merged bias) faster than the chain it replaces."""

    def _decide(self, context, x: ir.Value, w1: ir.Value, w2: ir.Value, biased: bool) -> orp.MatchResult:
        result = orp.MatchResult()
        a, b = _constant_matrix(w1), _constant_matrix(w2)
        if a is None or b is None:
            return result.fail("both weights must be constant 2-D float initializers")
        (k, m), (m2, n) = a.shape, b.shape
        if m != m2:
            return result.fail(f"inner dimensions differ ({m} vs {m2})")
        if self.ctx.cost is None:
            return result.fail("no cost model in the context to price the merge")
        out = context.root.outputs[0]
        merged = [sketch_node("MatMul", [x, placeholder_weight("w1_x_w2", (k, n), w1.dtype)], [(out.shape, out.dtype)])]
        if biased:
            merged.append(sketch_node("Add", [merged[0].outputs[0], placeholder_weight("b1_x_w2", (n,), w1.dtype)],
                                      [(out.shape, out.dtype)]))
        return self.follow(self.ctx.cost.choose(
            subject=f"{w1.name} @ {w2.name}", question="merge consecutive linear maps",
            alternatives={"chain": list(context.nodes), "merged": merged}, keep="chain",
            metrics={"chain": {"weight_elements": float(k * m + m * n)}, "merged": {"weight_elements": float(k * n)}}),
            "merged")


class MergeMatMulChain(_MergeRule):
    """MatMul(MatMul(x, W1), W2) -> MatMul(x, W1 W2)."""

    def pattern(self, op, x, w1, w2):
        return op.MatMul(op.MatMul(x, w1), w2)

    def check(self, context, x, w1, w2) -> orp.MatchResult:
        return self._decide(context, x, w1, w2, biased=False)

    def rewrite(self, op, x, w1, w2):
        return op.MatMul(x, op.initializer(_product(w1, w2), name=f"{w1.name}_x_{w2.name}"))


class MergeMatMulBiasMatMul(_MergeRule):
    """MatMul(Add(MatMul(x, W1), b1), W2) -> Add(MatMul(x, W1 W2), b1 W2)."""

    def pattern(self, op, x, w1, b1, w2):
        return op.MatMul(op.Add(op.MatMul(x, w1), b1), w2)

    def check(self, context, x, w1, b1, w2) -> orp.MatchResult:
        result = orp.MatchResult()
        if not b1.is_initializer() or b1.is_graph_input() or b1.const_value is None or b1.dtype != w2.dtype:
            return result.fail("the bias must be a constant initializer of the weights' dtype")
        bias = b1.const_value.numpy()
        if w2.const_value is None or bias.ndim == 0 or bias.shape[-1] != w2.const_value.shape[0]:
            return result.fail(f"bias shape {list(bias.shape)} does not end with the inner dimension")
        return self._decide(context, x, w1, w2, biased=True)

    def rewrite(self, op, x, w1, b1, w2):
        bias = b1.const_value.numpy()
        merged_bias = ir.tensor((bias.astype(np.float64) @ w2.const_value.numpy().astype(np.float64)).astype(bias.dtype))
        return op.Add(
            op.MatMul(x, op.initializer(_product(w1, w2), name=f"{w1.name}_x_{w2.name}")),
            op.initializer(merged_bias, name=f"{b1.name}_x_{w2.name}"),
        )


class MergeLinearChains(RulePass):
    """Merge chains of constant-weight MatMuls (with an optional bias between) into one where the
    cost model predicts it faster (see the module docstring)."""

    name = "linear_chain_merging"
    commute = True
    explanation = "consecutive linear maps with nothing non-linear between them; the merged one is predicted faster"

    def rules(self, ctx: PassContext) -> list[orp.RewriteRule]:
        return [MergeMatMulChain.rule(ctx, "merge_matmul_chain"),
                MergeMatMulBiasMatMul.rule(ctx, "merge_matmul_bias_matmul")]
