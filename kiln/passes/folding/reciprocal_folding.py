"""Fold a Reciprocal into the Mul that reads it, ``Mul(x, Reciprocal(y)) -> Div(x, y)``, where
the division is cheaper.

torch's exporter writes ``rsqrt`` as ``Reciprocal(Sqrt(v))`` and multiplies by it, so every
RMSNorm (Llama, Mistral, T5) carries a node more than it needs. The division rounds once where
the reciprocal-then-multiply rounds twice (within one ulp of the original). Which form is
cheaper is asked, never assumed:

- y has the product's shape: the cost model prices one divide per element against a
  reciprocal and a multiply per element;
- the product is scaled by a constant vector after an RMSNorm's ``Pow, ReduceMean, Add,
  Sqrt``: ONNX Runtime fuses the Div form (not the Reciprocal form) into one
  ``SimplifiedLayerNormalization`` kernel, so the cost model prices the norm as one fused
  kernel against its separate kernels;
- otherwise y is broadcast (one value per row): a reciprocal per row and a multiply per
  element against a divide per element differ only in the per-element cost of Div and Mul,
  which the cost model does not tell apart, so both forms are measured on the target
  (``PassContext.measured``); without measured choices the graph keeps its form.

Float tensors only; the Reciprocal must have no other reader. An onnxscript pattern / check /
rewrite rule.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern as orp

from kiln.cost_model.decisions import Fused, measured_decision
from kiln.ir.edits import sketch_node, standalone_model, tensor_input
from kiln.ir.queries import FLOAT_TYPES, is_onnx, static_shape
from kiln.passes.infra.contract import PassContext
from kiln.passes.infra.rule_pass import DecidingRule, RulePass


def _constant_vector_scale(value: ir.Value) -> ir.Node | None:
    """The Mul that alone reads `value` with a constant 1-D operand (a norm's scale), else None."""
    users = [user for user, _ in value.uses()]
    if value.is_graph_output() or len(users) != 1 or not is_onnx(users[0], "Mul"):
        return None
    other = [v for v in users[0].inputs if v is not value]
    if len(other) == 1 and other[0] is not None and other[0].const_value is not None \
            and len(other[0].const_value.shape) == 1:
        return users[0]
    return None


def _rms_statistics(y: ir.Value, x: ir.Value) -> list[ir.Node] | None:
    """``Sqrt(Add(ReduceMean(Pow(x, 2)), eps))`` computing `y` from `x`: the nodes, else None."""
    chain: list[ir.Node] = []
    value = y
    for op in ("Sqrt", "Add", "ReduceMean", "Pow"):
        node = value.producer()
        if node is None or not is_onnx(node, op) or not node.inputs or node.inputs[0] is None:
            return None
        chain.append(node)
        value = node.inputs[0]
    return list(reversed(chain)) if value is x else None


def _single_op_model(op: str, x: ir.Value, y: ir.Value, *, reciprocal_first: bool) -> ir.Model:
    """x op y (or x * Reciprocal(y)) as a model with static inputs of x's and y's shapes."""
    a, b = tensor_input("x", static_shape(x), x.dtype), tensor_input("y", static_shape(y), y.dtype)
    nodes = [ir.Node("", "Reciprocal", [b])] if reciprocal_first else []
    nodes.append(ir.Node("", op, [a, nodes[0].outputs[0] if reciprocal_first else b]))
    out = nodes[-1].outputs[0]
    out.name, out.dtype = "z", x.dtype
    return standalone_model([a, b], [out], nodes, name=op)


class MulByReciprocalToDiv(DecidingRule):
    """Mul(x, Reciprocal(y)) -> Div(x, y) where the context says Div is cheaper."""

    def pattern(self, op, x, y):
        return op.Mul(x, op.Reciprocal(y, _outputs=["inverse"]))

    def check(self, context, x, y, inverse) -> orp.MatchResult:
        result = orp.MatchResult()
        if y.dtype not in FLOAT_TYPES or x.dtype != y.dtype:
            return result.fail("only float operands of one type are folded")
        if inverse.is_graph_output() or len(inverse.uses()) != 1:
            return result.fail("the reciprocal is read elsewhere")
        mul = context.root
        product = mul.outputs[0]
        separate = list(context.nodes)
        div = sketch_node("Div", [x, y], [(product.shape, product.dtype)])
        subject = f"{mul.name} = {x.name} * 1/{y.name}"
        question = "fold Reciprocal into Div"
        scale = _constant_vector_scale(product)
        statistics = _rms_statistics(y, x) if scale is not None else None
        if static_shape(y) is not None and static_shape(y) == static_shape(product):
            if self.ctx.cost is None:
                return result.fail("no cost model in the context to price the division")
            decision = self.ctx.cost.choose(subject, question, {"reciprocal_mul": separate, "div": [div]},
                                            keep="reciprocal_mul", why={"div": "y is not broadcast"})
        elif statistics is not None:
            if self.ctx.cost is None:
                return result.fail("no cost model in the context to price the norm")
            norm = [*statistics, *separate, scale]
            decision = self.ctx.cost.choose(
                subject, question, {"reciprocal_mul": norm, "div": Fused(norm)}, keep="reciprocal_mul",
                why={"div": "ONNX Runtime fuses the Div form of this RMSNorm into one SimplifiedLayerNormalization "
                            "kernel"})
        else:
            shapes = (static_shape(x), static_shape(y))
            decision = measured_decision(
                self.ctx.measured, key=f"reciprocal_mul_vs_div x={shapes[0]} y={shapes[1]} {x.dtype.name}",
                subject=subject, question=question, names=("reciprocal_mul", "div"),
                build=lambda: (_single_op_model("Mul", x, y, reciprocal_first=True),
                               _single_op_model("Div", x, y, reciprocal_first=False)),
                predicted={"reciprocal_mul": self.ctx.cost.price(separate), "div": self.ctx.cost.price([div])}
                if self.ctx.cost is not None else None,
                policy=self.ctx.measured_policy, static=None not in shapes)
        return self.follow(decision, "div")

    def rewrite(self, op, x, y, inverse):
        return op.Div(x, y)


class FoldReciprocal(RulePass):
    """Rewrite Mul by a Reciprocal as one Div where that is cheaper (see the module docstring)."""

    name = "reciprocal_folding"
    commute = True
    explanation = "x * (1 / y) is x / y: one node and one rounding fewer, and the cheaper form here"

    def rules(self, ctx: PassContext) -> list[orp.RewriteRule]:
        return [MulByReciprocalToDiv.rule(ctx, self.name)]
