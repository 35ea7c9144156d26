"""Constant folding: evaluate at compile time every node whose inputs are all known.

Wraps onnxscript's FoldConstantsPass (which also folds shape subgraphs when dims are static)
with its size guards, so a fold never blows the model up (Tile, Expand, ConstantOfShape...).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from kiln.ir import compat
from kiln.ir.queries import constant_array, is_onnx
from kiln.passes.infra.contract import Pass, PassContext, PassResult
from kiln.passes.infra.options import PassOptions
from kiln.passes.infra.recording import describe_value
from kiln.passes.infra.rule_pass import CapturedWarnings, run_ir_passes

# Ops whose folded result can dwarf their inputs (a 2-element shape becoming megabytes).
_EXPANDING_OPS = frozenset({"Tile", "Expand", "ConstantOfShape", "Range", "Resize", "Upsample", "Pad", "OneHot"})


def _elements(shape: object) -> int:
    return int(np.prod([int(d) for d in shape])) if shape is not None else 0


def folded_elements(node: ir.Node) -> int | None:
    """How many elements folding `node` would store, from its constant inputs (None if unknown)."""
    values = [constant_array(v) for v in node.inputs]

    def known(count: int) -> bool:
        return len(values) >= count and all(v is not None for v in values[:count])

    try:
        if node.op_type == "ConstantOfShape" and known(1):
            return _elements(values[0])
        if node.op_type == "Expand" and known(2):
            return _elements(np.broadcast_shapes(values[0].shape, tuple(int(d) for d in values[1])))
        if node.op_type == "Tile" and known(2):
            return _elements(values[0].shape) * _elements(values[1])
        if node.op_type == "Gather" and known(2):
            axis = int(node.attributes["axis"].value) if "axis" in node.attributes else 0
            data_shape = list(values[0].shape)
            del data_shape[axis]
            return _elements(data_shape) * int(np.asarray(values[1]).size)
        if node.op_type == "Range" and known(3):
            start, limit, delta = (float(v) for v in values)
            return max(int(np.ceil((limit - start) / delta)), 0) if delta else None
    except (ValueError, TypeError, OverflowError):
        return None
    shape = node.outputs[0].shape if node.outputs else None
    if shape is not None and all(isinstance(d, int) for d in shape):
        return _elements(shape)
    return None


# Ops that pick a small part of a constant (an embedding row): folded whenever the result is
# small, even when the table exceeds onnxscript's input size limit.
_SELECTING_OPS = frozenset({"Gather", "Slice"})

# Ops whose every output element is an input element moved, picked or converted, or a
# logical combination of them: evaluating them at compile time is bit-exact.
_REARRANGING_OPS = frozenset({
    "Gather", "GatherElements", "GatherND", "Slice", "Transpose", "Reshape", "Squeeze", "Unsqueeze",
    "Flatten", "Concat", "Where", "Cast", "And", "Or", "Xor", "Not", "Equal",
})


def _sole_use_bytes(node: ir.Node) -> int:
    """Bytes of `node`'s constant inputs that nothing else reads (they go when it is folded)."""
    total = 0
    for value in node.inputs:
        if value is None or value.const_value is None or value.is_graph_input() or value.is_graph_output():
            continue
        if len({id(user) for user, _ in value.uses()}) == 1:
            total += value.const_value.nbytes
    return total


def folds_without_growth(node: ir.Node) -> bool:
    """True when `node` rearranges constants (see _REARRANGING_OPS) into a result no larger
    than the constant inputs only it reads: folding then cannot make the model bigger, however
    large the constants are (an all-true mask And-ed with a causal mask, a Where on a constant
    condition, an embedding Gather of every row in order)."""
    if node.op_type not in _REARRANGING_OPS or len(node.outputs) != 1:
        return False
    if any(v is not None and v.const_value is None for v in node.inputs):
        return False
    out_elements = folded_elements(node)
    dtype = node.outputs[0].dtype
    if out_elements is None or dtype is None:
        return False
    return out_elements * dtype.itemsize <= _sole_use_bytes(node)


class FoldPolicy:
    """onnxscript `should_fold` hook. Refuses to fold an expanding op whose stored result would
    exceed `max_ratio` times its inputs and `free_bytes` (counted for the report); asks to fold a
    selecting op on constants whose result has at most `select_max_elements` elements, and a
    rearranging op whose result is no larger than the constants it frees (any size)."""

    def __init__(self, max_ratio: float = PassOptions.fold_max_expansion,
                 free_bytes: int = PassOptions.fold_expansion_free_bytes,
                 select_max_elements: int = PassOptions.fold_output_size_limit):
        self.max_ratio = max_ratio
        self.free_bytes = free_bytes
        self.select_max_elements = select_max_elements
        self.kept: list[tuple[str, int]] = []  # (node name, bytes folding would have stored)

    def __call__(self, node: ir.Node) -> bool | None:
        if not is_onnx(node):
            return None
        if folds_without_growth(node):
            return True
        if node.op_type in _SELECTING_OPS:
            selected = folded_elements(node)
            return True if selected is not None and selected <= self.select_max_elements else None
        if node.op_type not in _EXPANDING_OPS:
            return None
        out_elements = folded_elements(node)
        if out_elements is None:
            return None
        in_elements = sum(_elements(v.const_value.shape) for v in node.inputs if v is not None and v.const_value is not None)
        dtype = node.outputs[0].dtype if node.outputs else None
        itemsize = dtype.itemsize if dtype is not None else 4
        out_bytes = int(out_elements * itemsize)
        if out_bytes > self.free_bytes and out_elements > self.max_ratio * max(in_elements, 1):
            self.kept.append((node.name or node.op_type, out_bytes))
            return False
        return None

    def summary(self) -> str:
        if not self.kept:
            return ""
        total = sum(b for _, b in self.kept)
        return f"kept {len(self.kept)} expanding node(s) unfolded (folding would store {total / 2**20:.1f} MiB)"


class FoldConstants(Pass):
    """Replace subgraphs computable at compile time by their values.

    Options (``PassContext.options``): ``fold_input_size_limit`` and ``fold_output_size_limit``
    (elements) bound what is folded (a Gather or Slice of a large constant folds whenever its
    result is within the output limit); ``fold_max_expansion`` (ratio) and
    ``fold_expansion_free_bytes`` stop Tile, Expand, ConstantOfShape, Range... from storing a
    result much larger than their inputs, so folding never inflates the model.
    """

    name = "constant_folding"
    rule = "fold_constant"

    def explain(self, removed: list[ir.Node], successors: list[ir.Value]) -> str:
        ops = sorted({n.op_type for n in removed})
        what = "; result " + ", ".join(describe_value(v) for v in successors[:2]) if successors else ""
        return f"inputs known at compile time ({', '.join(ops)}){what}"

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        cast_likes = _cast_like_to_cast(model)
        options = ctx.options
        guard = FoldPolicy(max_ratio=options.fold_max_expansion, free_bytes=options.fold_expansion_free_bytes,
                           select_max_elements=options.fold_output_size_limit)
        fold = compat.FoldConstantsPass(
            shape_inference=options.fold_shape_inference,
            input_size_limit=options.fold_input_size_limit,
            output_size_limit=options.fold_output_size_limit,
            should_fold=guard,
        )
        with CapturedWarnings(compat.CONSTANT_FOLDING_LOGGER) as warnings:
            result = run_ir_passes(model, [
                fold,
                common_passes.RemoveUnusedNodesPass(),
                common_passes.LiftConstantsToInitializersPass(lift_all_constants=False),
            ])
        result.modified = result.modified or cast_likes > 0
        # Nodes the evaluator could not compute are left as they are; say so in the report.
        result.message = "; ".join(m for m in (guard.summary(), warnings.summary("left unfolded where evaluation failed")) if m)
        return result


def _cast_like_to_cast(model: ir.Model) -> int:
    """Turn CastLike with a known target dtype and a `saturate` or `round_mode` attribute into
    Cast carrying those attributes. onnxscript 0.7.2 folds CastLike into Cast itself but drops
    them (float8 casts then saturate where the model asked for NaN). Returns how many."""
    rewritten = 0
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        if not is_onnx(node, "CastLike") or len(node.inputs) != 2:
            continue
        like = node.inputs[1]
        if like is None or like.dtype is None or not ({"saturate", "round_mode"} & set(node.attributes)):
            continue
        graph = node.graph
        attributes = [ir.AttrInt64("to", like.dtype.value)] + [
            a for name, a in node.attributes.items() if name in ("saturate", "round_mode")
        ]
        cast = ir.Node("", "Cast", [node.inputs[0]], attributes, name=node.name, metadata_props=dict(node.metadata_props))
        cast.outputs[0].dtype = like.dtype
        ir.convenience.replace_nodes_and_values(graph, node, [node], [cast], node.outputs, cast.outputs)
        rewritten += 1
    return rewritten
