"""Identity and no-op elimination: Identity nodes and ops that return their input unchanged
(onnxscript's no-op rules, the structural no-ops of `structural_no_ops`, then onnx-ir's
Identity elimination with two unsafe cases guarded)."""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript import rewriter
from onnxscript.rewriter.rules import common as common_rules

from kiln.ir.compat import IdentityEliminationHook
from kiln.ir.queries import is_onnx
from kiln.passes.cleanup.structural_no_ops import REASONS as STRUCTURAL_NO_OP_REASONS
from kiln.passes.cleanup.structural_no_ops import replace_structural_no_ops
from kiln.passes.infra.contract import Pass, PassContext, PassResult
from kiln.passes.infra.rule_pass import run_ir_passes

# onnxscript rules whose match is an op that returns its input unchanged.
_NO_OP_RULES = (
    common_rules.mul_by_1_rule,
    common_rules.add_0_rule,
    common_rules.sub_0_rule,
    common_rules.div_by_1_rule,
    common_rules.dropout_zero_rule,
    common_rules.dropout_inference_rule,
    common_rules.no_op_cast_rule,
    common_rules.no_op_expand_rule,
    common_rules.no_op_transpose_rule,
)

_NO_OP_REASONS = {
    "Identity": "Identity forwards its input",
    "Mul": "multiplies by one",
    "Div": "divides by one",
    "Add": "adds zero",
    "Sub": "subtracts zero",
    "Dropout": "Dropout is the identity at inference",
    "Cast": "casts to the dtype it already has",
    "Expand": "expands to the shape it already has",
    "Transpose": "permutation is the identity",
    **{op: reason for op, reason in STRUCTURAL_NO_OP_REASONS.items() if op not in ("Add", "Sub", "Mul", "Div")},
}


class _GuardedIdentityElimination(IdentityEliminationHook):
    """onnx-ir's Identity elimination, minus two unsafe cases it takes (onnx-ir 1.1.0):
    an Identity that makes a second graph output from a value that is already one
    (outputs [a, Identity(a)] became [b, b], silently losing `a`), and one that returns a value
    from an enclosing graph as a subgraph output (ORT rejects the result; Scan bodies computed
    wrong values). Both Identities must stay."""

    def keep(self, node: ir.Node) -> bool:
        if is_onnx(node, "Identity") and node.inputs and node.outputs:
            source, output = node.inputs[0], node.outputs[0]
            graph = node.graph
            if source is not None and output.is_graph_output() and graph is not None:
                producer = source.producer()
                already_output = any(source is v for v in graph.outputs)
                from_outer_scope = (producer.graph is not graph) if producer is not None else (
                    source.graph is not graph
                )
                return already_output or from_outer_scope
        return False


class EliminateIdentityAndNoOps(Pass):
    """Remove Identity nodes and ops that return their input unchanged (x*1, x+0, x-0, x/1,
    inference Dropout, Cast to the same type, Expand or Reshape to the same shape, identity
    Transpose, Pad by zeros, full Slice, Concat of one)."""

    name = "identity_elimination"
    rule = "remove_no_op"

    def explain(self, removed: list[ir.Node], successors: list[ir.Value]) -> str:
        # Constants feeding a removed no-op (the 1 in x*1) go with it; they need no reason.
        ops = [n for n in removed if n.op_type != "Constant"] or removed
        reasons = sorted({_NO_OP_REASONS.get(n.op_type, f"{n.op_type} is a no-op here") for n in ops})
        return "; ".join(reasons)

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        structural = replace_structural_no_ops(model)
        result = run_ir_passes(model, [
            rewriter.RewritePass(rewriter.RewriteRuleSet(list(_NO_OP_RULES))),
            _GuardedIdentityElimination(),
            common_passes.RemoveUnusedNodesPass(),
        ])
        result.modified = result.modified or structural > 0
        return result
