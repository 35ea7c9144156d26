"""Dead-node elimination: remove nodes, initializers, functions and opset imports that nothing
reaching a graph output uses (onnx-ir's passes; kiln adds the report and validation)."""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from kiln.passes.infra.contract import Pass, PassContext, PassResult
from kiln.passes.infra.rule_pass import run_ir_passes


class EliminateDeadNodes(Pass):
    """Remove nodes, initializers, functions and opset imports nothing reaches an output through."""

    name = "dead_node_elimination"
    rule = "remove_unused_node"

    def explain(self, removed: list[ir.Node], successors: list[ir.Value]) -> str:
        return "no output reaches a graph output"

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        return run_ir_passes(model, [
            common_passes.RemoveUnusedNodesPass(),
            common_passes.RemoveUnusedFunctionsPass(),
            common_passes.RemoveUnusedOpsetsPass(),
        ])
