"""Remove Reshapes that only move data between layouts an op does not care about.

- **Reshape around an elementwise region**: y = Reshape(x) feeds only elementwise ops (with
  scalar constants or each other as other operands), and every value leaving the region goes
  through a Reshape back to x's shape. Elementwise ops commute with Reshape, so the region runs
  on x directly and both Reshapes go (GPT-2's tanh-GELU between two Gemms on flattened rows).
- **Reshape before a Split**: Split(Reshape(x), axis) where the Reshape leaves the split axis
  and every axis after it as they are, and each piece is only reshaped again: split x itself
  (the pieces are the same data) and let the Reshapes after the Split read its pieces.

Exact (data is moved, never recomputed), static shapes only (symbolic dims stay symbolic), and
node count strictly decreases. Plain graph rules (a region has no fixed pattern); one rewrite
each, named `sink_reshape_through_elementwise` / `sink_reshape_through_split`.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

from kiln.ir.provenance import get_provenance, merge_provenance
from kiln.ir.queries import is_onnx, reshape_target, resolved_reshape_shape, static_shape
from kiln.passes.infra.graph_rules import GraphRule, GraphRulePass
from kiln.passes.infra.recording import node_ref
from kiln.report.model import Rewrite

ELEMENTWISE_RULE = "sink_reshape_through_elementwise"
SPLIT_RULE = "sink_reshape_through_split"

# Ops computing each output element from the same-position input elements only.
_ELEMENTWISE_OPS = frozenset({
    "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Relu", "Sigmoid", "Tanh", "Erf", "Gelu",
    "Softplus", "Softsign", "Sin", "Cos", "Floor", "Ceil", "Round", "Sign", "Not", "IsNaN", "IsInf",
    "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu", "Mish", "Identity", "Cast", "Clip",
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Equal", "Less", "LessOrEqual", "Greater",
    "GreaterOrEqual", "And", "Or", "Xor",
})


def _scalar_constant(value: ir.Value, rank: int) -> bool:
    """A one-element constant of rank <= `rank`: broadcasting it never changes a shape."""
    tensor = value.const_value
    return tensor is not None and tensor.size == 1 and len(tensor.shape) <= rank


def _no_graph_output(values: Sequence[ir.Value]) -> bool:
    return not any(v.is_graph_output() for v in values)


def _elementwise_region(reshape: ir.Node) -> tuple[list[ir.Node], list[ir.Node]] | None:
    """(region nodes, Reshapes leaving it) when `reshape` starts a removable region, else None."""
    source, start = reshape.inputs[0], reshape.outputs[0]
    outer, inner = static_shape(source), static_shape(start)
    if outer is None or inner is None or outer == inner or not _no_graph_output([start]):
        return None
    rank = min(len(outer), len(inner))
    region: dict[int, ir.Node] = {}
    exits: dict[int, ir.Node] = {}
    values = {id(start): start}
    stack = [start]
    while stack:
        value = stack.pop()
        for user, _ in value.uses():
            if id(user) in region or id(user) in exits:
                continue
            if user.graph is not reshape.graph or not is_onnx(user):
                return None
            if user.op_type == "Reshape" and user.inputs[0] is value and resolved_reshape_shape(user, inner) == outer:
                if not _no_graph_output(user.outputs) or any(v is not None and id(v) in values for v in user.inputs[1:]):
                    return None
                exits[id(user)] = user
                continue
            if user.op_type not in _ELEMENTWISE_OPS or len(user.outputs) != 1:
                return None
            output = user.outputs[0]
            if static_shape(output) != inner or not _no_graph_output([output]):
                return None
            for operand in user.inputs:
                if operand is None or id(operand) in values:
                    continue
                if not _scalar_constant(operand, rank):
                    # Another operand may be a region value reached later; check it at the end.
                    if operand.producer() is None or static_shape(operand) != inner:
                        return None
            region[id(user)] = user
            values[id(output)] = output
            stack.append(output)
    # Every non-constant operand of the region must be a region value.
    for node in region.values():
        for operand in node.inputs:
            if operand is not None and id(operand) not in values and not _scalar_constant(operand, rank):
                return None
    if not exits or not region:
        return None
    return list(region.values()), list(exits.values())


def _sink_through_elementwise(reshape: ir.Node) -> Rewrite | None:
    found = _elementwise_region(reshape)
    if found is None:
        return None
    region, exits = found
    source, start = reshape.inputs[0], reshape.outputs[0]
    outer = source.shape
    graph = reshape.graph
    origins = [o for n in [reshape, *exits] for o in get_provenance(n)]
    removed = [node_ref(reshape)] + [node_ref(n) for n in exits]
    for node in region:
        for index, operand in enumerate(node.inputs):
            if operand is start:
                node.replace_input_with(index, source)
        node.outputs[0].shape = ir.Shape(list(outer))
    for node in exits:
        ir.convenience.replace_all_uses_with(node.outputs[0], node.inputs[0])
    graph.remove([reshape, *exits], safe=True)
    for node in region:
        merge_provenance(node, origins)
    return Rewrite(
        rule=ELEMENTWISE_RULE, nodes=removed,
        reason=f"{len(region)} elementwise op(s) between a Reshape and Reshape(s) back to {list(outer)}: "
               "they run on the original layout",
        result=f"now {len(region)} elementwise op(s) on {source.name}",
    )


def _split_axis(split: ir.Node, rank: int) -> int | None:
    attr = split.attributes.get("axis")
    axis = int(attr.value) if attr is not None else 0
    axis = axis + rank if axis < 0 else axis
    return axis if 0 <= axis < rank else None


def _sink_through_split(reshape: ir.Node) -> Rewrite | None:
    source, middle = reshape.inputs[0], reshape.outputs[0]
    outer, inner = static_shape(source), static_shape(middle)
    users = [user for user, _ in middle.uses()]
    if outer is None or inner is None or len(users) != 1 or middle.is_graph_output():
        return None
    split = users[0]
    if not is_onnx(split, "Split") or split.inputs[0] is not middle or split.graph is not reshape.graph:
        return None
    axis = _split_axis(split, len(inner))
    kept = len(inner) - axis if axis is not None else 0
    if axis is None or kept > len(outer) or outer[len(outer) - kept:] != inner[axis:]:
        return None  # the Reshape changes the split axis or an axis after it
    reshapes = []
    for piece in split.outputs:
        piece_users = [user for user, _ in piece.uses()]
        if piece.is_graph_output() or len(piece_users) != 1 or not is_onnx(piece_users[0], "Reshape"):
            return None
        after = piece_users[0]
        target, allow_zero = reshape_target(after), after.attributes.get("allowzero")
        if after.inputs[0] is not piece or target is None or (0 in target and not (allow_zero and allow_zero.value)):
            return None  # a 0 in the target copies an input dim, which the sink would change
        reshapes.append(after)
    new_axis = len(outer) - kept
    split.attributes["axis"] = ir.AttrInt64("axis", new_axis)
    split.replace_input_with(0, source)
    for piece in split.outputs:
        shape = static_shape(piece)
        piece.shape = ir.Shape(list(outer[:new_axis]) + [shape[axis] if shape else None] + list(outer[new_axis + 1:]))
    origins = get_provenance(reshape)
    ref = node_ref(reshape)
    reshape.graph.remove(reshape, safe=True)
    merge_provenance(split, origins)
    return Rewrite(
        rule=SPLIT_RULE, nodes=[ref],
        reason=f"the Reshape before Split {split.name} keeps the split axis and the axes after it; "
               "the Reshapes after the Split already give each piece its shape",
        result=f"now Split {split.name} of {source.name}",
    )


def _with_data(rule):
    """`rule` on Reshapes that have a data input."""
    return lambda node, state: rule(node) if node.inputs and node.inputs[0] is not None else None


class SinkReshapes(GraphRulePass):
    """Remove Reshapes before Splits and around elementwise regions (see the module docstring)."""

    name = "reshape_sinking"
    graph_rules = (
        GraphRule(SPLIT_RULE, frozenset({"Reshape"}), _with_data(_sink_through_split)),
        GraphRule(ELEMENTWISE_RULE, frozenset({"Reshape"}), _with_data(_sink_through_elementwise)),
    )
