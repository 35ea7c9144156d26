"""Merge initializers that hold identical data (same dtype, shape and bytes) into one."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from kiln.passes.base import Pass, PassContext, PassResult
from kiln.passes.tracking import node_ref
from kiln.report.model import Rewrite


class DeduplicateInitializers(Pass):
    """Point every use of a duplicated initializer at one copy (onnx-ir's hashed pass, which
    does not hold tensor data in memory) and report which initializers were merged."""

    name = "initializer_deduplication"

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        _make_contiguous(model)
        before = {
            id(node): (node, tuple(node.inputs)) for node in ir.traversal.RecursiveGraphIterator(model.graph)
        }
        result = common_passes.DeduplicateHashedInitializersPass()(model)
        if not result.modified:
            return PassResult(model, False)
        merged: dict[tuple[str, str], list[ir.Node]] = {}
        for node, old_inputs in before.values():
            for old, new in zip(old_inputs, node.inputs):
                if old is not None and new is not None and old is not new and new.is_initializer() and not old.is_initializer():
                    merged.setdefault((old.name or "", new.name or ""), []).append(node)
        rewrites = [
            Rewrite(rule="merge_duplicate_initializer", nodes=[node_ref(n) for n in users],
                    reason=f"initializer {old} holds the same data as {new}", result=f"now reads {new}")
            for (old, new), users in merged.items()
        ]
        return PassResult(model, True, rewrites=rewrites)


def _make_contiguous(model: ir.Model) -> None:
    """Give numpy-backed initializers C-contiguous storage. Constant folding can leave views
    (a folded Transpose), which onnx-ir 1.1.0's hashed deduplication cannot hash."""
    for value in model.graph.initializers.values():
        tensor = value.const_value
        raw = getattr(tensor, "raw", None)
        if isinstance(tensor, ir.Tensor) and isinstance(raw, np.ndarray) and not raw.flags.c_contiguous:
            value.const_value = ir.Tensor(np.ascontiguousarray(raw), name=tensor.name)
