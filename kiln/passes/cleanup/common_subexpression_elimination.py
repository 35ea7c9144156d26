"""Common-subexpression elimination: merge nodes computing the same op on the same inputs with
the same attributes (onnx-ir's pass; kiln adds the report and validation)."""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from kiln.passes.infra.contract import Pass, PassContext, PassResult
from kiln.passes.infra.recording import describe_value
from kiln.passes.infra.rule_pass import run_ir_passes


class EliminateCommonSubexpressions(Pass):
    """Merge nodes that compute the same op on the same inputs with the same attributes."""

    name = "common_subexpression_elimination"
    rule = "merge_duplicate_node"

    def explain(self, removed: list[ir.Node], successors: list[ir.Value]) -> str:
        if successors:
            return "computes the same as " + ", ".join(describe_value(v) for v in successors[:2])
        return "duplicate computation"

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        size_limit = ctx.options.cse_constant_size_limit
        return run_ir_passes(model, [
            common_passes.CommonSubexpressionEliminationPass(size_limit=size_limit),
            common_passes.RemoveUnusedNodesPass(),
        ])
