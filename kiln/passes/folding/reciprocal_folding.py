"""Fold a Reciprocal into the Mul that reads it, ``Mul(x, Reciprocal(y)) -> Div(x, y)``, where
the division pays.

torch's exporter writes ``rsqrt`` as ``Reciprocal(Sqrt(v))`` and multiplies by it, so every
RMSNorm (Llama, Mistral, T5) carries a node more than it needs. The division rounds once where
the reciprocal-then-multiply rounds twice (within one ulp of the original). It applies when

- y has the product's shape: one divide per element replaces a reciprocal and a multiply per
  element; or
- the product is then scaled by a constant vector, as a norm is: ``Pow, ReduceMean, Add, Sqrt,
  Div, Mul(scale)`` is the form ONNX Runtime fuses into one ``SimplifiedLayerNormalization``
  kernel (it does not match the Reciprocal form).

Otherwise y is broadcast (one value per row) and a reciprocal per row with a multiply per
element is the cheaper form: llama-gqa (norm scales all ones, so nothing fuses) ran with the
nine norms as Div at 1.001, 1.002 and 1.002 times Reciprocal + Mul (median per-pair ratio, 300
pairs each, ORT ENABLE_ALL, 2 threads). Small, but it is a cost with nothing in return.

Float tensors only; the Reciprocal must have no other reader. Written as an onnxscript
pattern / check / rewrite rule.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript import rewriter
from onnxscript.rewriter import pattern as orp

from kiln.passes.infra.rule_pass import run_ir_passes
from kiln.passes.infra.contract import Pass, PassContext, PassResult
from kiln.ir.queries import FLOAT_TYPES, is_onnx
from kiln.ir.queries import static_shape


def _scaled_by_constant_vector(value: ir.Value) -> bool:
    """`value` is read only by a Mul with a constant 1-D operand (a norm's scale)."""
    users = [user for user, _ in value.uses()]
    if value.is_graph_output() or len(users) != 1 or not is_onnx(users[0], "Mul"):
        return False
    other = [v for v in users[0].inputs if v is not value]
    return (len(other) == 1 and other[0] is not None and other[0].const_value is not None
            and len(other[0].const_value.shape) == 1)


class MulByReciprocalToDiv(orp.RewriteRuleClassBase):
    """Mul(x, Reciprocal(y)) -> Div(x, y) when nothing else reads the reciprocal and y is not
    broadcast or a norm scale follows."""

    def pattern(self, op, x, y):
        return op.Mul(x, op.Reciprocal(y, _outputs=["inverse"]))

    def check(self, context, x, y, inverse) -> orp.MatchResult:
        result = orp.MatchResult()
        if y.dtype not in FLOAT_TYPES or x.dtype != y.dtype:
            return result.fail("only float operands of one type are folded")
        if inverse.is_graph_output() or len(inverse.uses()) != 1:
            return result.fail("the reciprocal is read elsewhere")
        product = next(iter(inverse.uses())).node.outputs[0]
        if static_shape(y) is not None and static_shape(y) == static_shape(product):
            return result  # not broadcast: one divide instead of a reciprocal and a multiply
        if _scaled_by_constant_vector(product):
            return result  # a norm: ORT fuses the Div form with its scale
        return result.fail("y is broadcast and no norm scale follows: a reciprocal per row and a multiply are cheaper")

    def rewrite(self, op, x, y, inverse):
        return op.Div(x, y)


_RULES = rewriter.RewriteRuleSet([MulByReciprocalToDiv.rule()], commute=True)


class FoldReciprocalIntoDivision(Pass):
    """Rewrite Mul by a Reciprocal as one Div (see the module docstring)."""

    name = "reciprocal_folding"
    rule = "mul_reciprocal_to_div"

    def explain(self, removed: list[ir.Node], successors: list[ir.Value]) -> str:
        return "x * (1 / y) is x / y: one node and one rounding fewer (same-shape y, or a norm ORT fuses)"

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        return run_ir_passes(model, [rewriter.RewritePass(_RULES)])
