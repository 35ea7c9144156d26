"""Place a Reshape's size-1 dims so the Transpose after it is one a MatMul reads in place.

Attention splits heads with ``Transpose(Reshape(x, [1, S, H, D]), perm=[0, 2, 1, 3])`` and
feeds the result to a MatMul. At batch 1 the leading 1 may sit anywhere in the Reshape target
without moving a byte, and with ``[S, 1, H, D]`` the same Transpose is ``perm=[1, 2, 0, 3]``:
a "batch transpose" (the matrix rows move behind the batch dims, which stay in order), which
ONNX Runtime's MatMul-Transpose fusion folds into ``FusedMatMul(transBatchA/B)`` and reads
with strides instead of copying. The perm with the last two axes swapped as well (the keys
``[0, 2, 3, 1]``) becomes ``[1, 2, 3, 0]`` (transBatch and trans): the copy of the split heads
goes and the attention MatMuls take the same time.

Exact: the Transpose's output shape and values are unchanged; only the Reshape's unit dims
move. Static shapes only. Applied when every reader of the Transpose is a MatMul whose other
operand has the same rank (ORT fuses a batch transpose only then); a plain graph pass, named
`batch_transpose` in the report.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from kiln.ir.edits import new_initializer
from kiln.ir.queries import is_onnx, resolved_reshape_shape, sole_reader, static_shape
from kiln.passes.infra.graph_rules import GraphRule, GraphRulePass
from kiln.passes.infra.recording import node_ref
from kiln.report.model import Rewrite

RULE = "batch_transpose"


def batch_transpose_perms(rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The perms of `rank` a MatMul input can absorb as a batch transpose: axis 0 moves to the
    matrix-row position (rank - 2), or behind the last axis (rows and columns swapped too)."""
    middle = tuple(range(1, rank - 1))
    return (*middle, 0, rank - 1), (*middle, rank - 1, 0)


def _last_two_swapped(perm: Sequence[int]) -> bool:
    rank = len(perm)
    return list(perm[:-2]) == list(range(rank - 2)) and list(perm[-2:]) == [rank - 1, rank - 2]


def relayout_for_batch_transpose(shape: Sequence[int], perm: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """A (new shape, new perm) pair with the same Transpose output, where the new shape only
    moves `shape`'s size-1 dims and the new perm is a batch transpose; None when there is none.

    The element order depends only on the non-unit axes: a layout is equivalent when they keep
    their order in the input and each output position reads the same one of them."""
    rank = len(shape)
    if rank < 3 or 0 in shape or 1 not in shape or sorted(perm) != list(range(rank)):
        return None
    out = [shape[p] for p in perm]
    kept = [d for d in shape if d != 1]
    rank_of = {axis: i for i, axis in enumerate(a for a in range(rank) if shape[a] != 1)}
    for target in batch_transpose_perms(rank):
        new_shape = [0] * rank
        for j, axis in enumerate(target):
            new_shape[axis] = out[j]
        if [d for d in new_shape if d != 1] != kept:
            continue
        new_rank_of = {axis: i for i, axis in enumerate(a for a in range(rank) if new_shape[a] != 1)}
        if all(new_rank_of[target[j]] == rank_of[perm[j]] for j in range(rank) if out[j] != 1):
            return tuple(new_shape), target
    return None


def _matmul_readers_of_equal_rank(value: ir.Value) -> bool:
    """Every reader of `value` is a MatMul whose other operand has `value`'s (static) rank."""
    users = [user for user, _ in value.uses()]
    if not users or value.is_graph_output():
        return False
    rank = len(value.shape) if value.shape is not None else None
    for user in users:
        if not is_onnx(user, "MatMul") or len(user.inputs) != 2:
            return False
        others = [v for v in user.inputs if v is not value] or [value]  # x @ x reads it twice
        if others[0] is None or others[0].shape is None or len(others[0].shape) != rank:
            return False
    return True


def _relayout(transpose: ir.Node, targets: dict[tuple[int, ...], ir.Value]) -> Rewrite | None:
    reshape = transpose.inputs[0].producer() if transpose.inputs and transpose.inputs[0] is not None else None
    if reshape is None or not is_onnx(reshape, "Reshape") or reshape.graph is not transpose.graph:
        return None
    middle = reshape.outputs[0]
    source_shape = static_shape(reshape.inputs[0])
    perm_attr = transpose.attributes.get("perm")
    if source_shape is None or perm_attr is None or not sole_reader(middle, transpose):
        return None
    shape = resolved_reshape_shape(reshape, source_shape)
    perm = tuple(int(p) for p in perm_attr.value)
    if shape is None or len(perm) != len(shape) or perm == tuple(range(len(perm))):
        return None
    if perm in batch_transpose_perms(len(perm)) or _last_two_swapped(perm):
        return None  # already a form a MatMul absorbs
    if not _matmul_readers_of_equal_rank(transpose.outputs[0]):
        return None
    found = relayout_for_batch_transpose(shape, perm)
    if found is None:
        return None
    new_shape, new_perm = found
    ref = node_ref(transpose)
    if new_shape not in targets:  # one constant per shape: the head splits of every layer share it
        targets[new_shape] = new_initializer(reshape.graph, f"{reshape.name or middle.name or 'reshape'}_batch_layout",
                                             np.asarray(new_shape, np.int64))
    reshape.replace_input_with(1, targets[new_shape])
    reshape.attributes.pop("allowzero", None)  # the new target has no 0 to copy
    middle.shape = ir.Shape(list(new_shape))
    transpose.attributes["perm"] = ir.AttrInt64s("perm", list(new_perm))
    return Rewrite(
        rule=RULE, nodes=[node_ref(reshape), ref],
        reason=f"the Reshape's size-1 dims can sit anywhere: {list(shape)} -> {list(new_shape)} makes "
               f"perm {list(perm)} the batch transpose {list(new_perm)}, which the MatMul reads in place",
        result=f"Transpose {transpose.name} perm {list(new_perm)} (same output {list(static_shape(transpose.outputs[0]) or [])})",
    )


class ExposeBatchTransposes(GraphRulePass):
    """Lay out Reshape -> Transpose pairs feeding MatMuls as batch transposes (see the module
    docstring); the head splits of every layer share one shape constant per layout."""

    name = "batch_transpose"
    graph_rules = (GraphRule(RULE, frozenset({"Transpose"}),
                             lambda node, state: _relayout(node, state.setdefault("targets", {}))),)
