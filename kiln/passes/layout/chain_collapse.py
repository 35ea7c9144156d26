"""Collapse chains of layout ops: Transpose pairs (cancelled, or composed into one), Reshape
chains, Unsqueeze chains, Squeeze+Reshape to 1-D, Slices that split a tensor, and Cast chains
whose intermediate type loses nothing the final type keeps.

The chain rules are onnxscript's; kiln names them in the report, keeps their "no" reasons and
validates the result."""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import pattern as orp
from onnxscript.rewriter.rules import common as common_rules

from kiln.passes.infra.contract import PassContext, PassResult
from kiln.passes.infra.rule_pass import RulePass

_SHAPE_RULES = (
    common_rules.transpose_transpose_rule,
    common_rules.reshape_reshape_rule,
    common_rules.unsqueeze_unsqueeze_rule,
    common_rules.squeeze_reshape_1d_rule,
    common_rules.slice_split_rule,
    common_rules.collapse_slice_rule,
    common_rules.collapse_slice2_rule,
    common_rules.cast_cast_rule,  # only float -> float16/bfloat16 chains, where it is exact
    common_rules.no_op_transpose_rule,
    common_rules.no_op_expand_rule,
)

_REASONS = {
    "Transpose": "consecutive Transposes compose into one permutation (or none)",
    "Reshape": "consecutive Reshapes: only the last shape matters",
    "Unsqueeze": "consecutive Unsqueezes merge into one",
    "Squeeze": "Squeeze then Reshape to 1-D is one Reshape",
    "Slice": "Slices of one tensor collapse (or form a Split)",
    "Cast": "the intermediate Cast loses nothing the final Cast keeps",
    "Expand": "expands to the shape it already has",
}


class CollapseLayoutChains(RulePass):
    """Collapse Transpose / Reshape / Unsqueeze / Squeeze / Slice / Cast chains (onnxscript's
    rules), then remove what they left unused."""

    name = "chain_collapse"

    def explain(self, removed: list[ir.Node], successors: list[ir.Value]) -> str:
        ops = [n.op_type for n in removed if n.op_type != "Constant"] or [n.op_type for n in removed]
        return "; ".join(sorted({_REASONS.get(op, f"{op} chain collapsed") for op in ops}))

    def rules(self, ctx: PassContext) -> list[orp.RewriteRule]:
        return list(_SHAPE_RULES)

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        result = super().call(model, ctx)
        result.modified = common_passes.RemoveUnusedNodesPass()(model).modified or result.modified
        return result
