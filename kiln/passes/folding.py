"""Constant folding: evaluate at compile time every node whose inputs are all known.

Wraps onnxscript's FoldConstantsPass (which also folds shape subgraphs when dims are static)
with its size guards, so a fold never blows the model up (Tile, Expand, ConstantOfShape...).
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.optimizer import _constant_folding

from kiln.passes.adapters import CapturedWarnings, run_ir_passes
from kiln.passes.base import Pass, PassContext, PassResult
from kiln.passes.tracking import describe_value

# Do not fold ops whose inputs are larger than this (elements), except shape ops.
DEFAULT_INPUT_SIZE_LIMIT = _constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT
# Do not store a folded result larger than this many elements.
DEFAULT_OUTPUT_SIZE_LIMIT = _constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT


class FoldConstants(Pass):
    """Replace subgraphs computable at compile time by their values.

    Options (``PassContext.options``): ``fold_input_size_limit`` and ``fold_output_size_limit``
    (elements) bound what is folded, so folding never inflates the model.
    """

    name = "constant_folding"
    rule = "fold_constant"

    def explain(self, removed: list[ir.Node], successors: list[ir.Value]) -> str:
        ops = sorted({n.op_type for n in removed})
        what = "; result " + ", ".join(describe_value(v) for v in successors[:2]) if successors else ""
        return f"inputs known at compile time ({', '.join(ops)}){what}"

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        cast_likes = _cast_like_to_cast(model)
        fold = _constant_folding.FoldConstantsPass(
            shape_inference=bool(ctx.options.get("fold_shape_inference", True)),
            input_size_limit=int(ctx.options.get("fold_input_size_limit", DEFAULT_INPUT_SIZE_LIMIT)),
            output_size_limit=int(ctx.options.get("fold_output_size_limit", DEFAULT_OUTPUT_SIZE_LIMIT)),
        )
        with CapturedWarnings(_constant_folding.__name__) as warnings:
            result = run_ir_passes(model, [
                fold,
                common_passes.RemoveUnusedNodesPass(),
                common_passes.LiftConstantsToInitializersPass(lift_all_constants=False),
            ])
        result.modified = result.modified or cast_likes > 0
        # Nodes the evaluator could not compute are left as they are; say so in the report.
        result.message = warnings.summary("left unfolded where evaluation failed")
        return result


def _cast_like_to_cast(model: ir.Model) -> int:
    """Turn CastLike with a known target dtype and a `saturate` or `round_mode` attribute into
    Cast carrying those attributes. onnxscript 0.7.2 folds CastLike into Cast itself but drops
    them (float8 casts then saturate where the model asked for NaN). Returns how many."""
    rewritten = 0
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        if node.op_type != "CastLike" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        like = node.inputs[1]
        if like is None or like.dtype is None or not ({"saturate", "round_mode"} & set(node.attributes)):
            continue
        graph = node.graph
        attributes = [ir.AttrInt64("to", like.dtype.value)] + [
            a for name, a in node.attributes.items() if name in ("saturate", "round_mode")
        ]
        cast = ir.Node("", "Cast", [node.inputs[0]], attributes, name=node.name, metadata_props=dict(node.metadata_props))
        old_output, new_output = node.outputs[0], cast.outputs[0]
        new_output.dtype, new_output.shape = like.dtype, old_output.shape
        graph.insert_before(node, cast)
        ir.convenience.replace_all_uses_with(old_output, new_output, replace_graph_outputs=True)
        name = old_output.name
        graph.remove(node, safe=True)
        new_output.name = name
        rewritten += 1
    return rewritten
