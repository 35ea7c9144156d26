"""Structural no-ops onnxscript has no rule for: Reshape to the shape it already has, Pad by
zeros, Slice of everything, Concat of one input, and Add/Sub of an all-zero tensor or Mul/Div by
an all-one tensor that does not broadcast the other input (onnxscript matches scalars only; the
tensor may be a constant or a Where on constants, such as an attention mask that masks nothing).
Each is turned into an Identity of the input it forwards, which the (guarded) Identity
elimination then removes, keeping graph outputs intact."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from kiln.ir.queries import constant_array, is_onnx, resolved_reshape_shape, static_shape

# Largest Where on constants whose value is computed to see whether it is all zero / all one.
_MAX_COMPUTED_ELEMENTS = 1 << 22


def _known_value(value: ir.Value | None) -> np.ndarray | None:
    """The value of a constant, or of a Where on constants (a mask select the constant folder
    leaves alone because its result is larger than its inputs), else None."""
    known = constant_array(value)
    if known is not None or value is None:
        return known
    producer = value.producer()
    if producer is None or not is_onnx(producer, "Where"):
        return None
    arrays = [constant_array(v) for v in producer.inputs]
    if len(arrays) != 3 or any(a is None for a in arrays):
        return None
    if int(np.prod(np.broadcast_shapes(*(a.shape for a in arrays)))) > _MAX_COMPUTED_ELEMENTS:
        return None
    return np.where(*arrays)


def _reshape_is_no_op(node: ir.Node) -> bool:
    shape = static_shape(node.inputs[0])
    return shape is not None and resolved_reshape_shape(node, shape) == shape


def _pad_is_no_op(node: ir.Node) -> bool:
    pads = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if pads is None:
        attr = node.attributes.get("pads")  # opset < 11
        pads = np.asarray(attr.value) if attr is not None else None
    return pads is not None and pads.size > 0 and not np.any(pads)


def _slice_is_no_op(node: ir.Node) -> bool:
    shape = static_shape(node.inputs[0])
    if shape is None or len(node.inputs) < 3:
        return False
    starts, ends = constant_array(node.inputs[1]), constant_array(node.inputs[2])
    if starts is None or ends is None:
        return False
    # Optional inputs: absent means all axes in order and steps of one.
    axes = constant_array(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else np.arange(len(starts))
    steps = constant_array(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else np.ones_like(starts)
    if axes is None or steps is None:
        return False
    for start, end, axis, step in zip(starts, ends, axes, steps):
        dim = shape[int(axis)]
        start = int(start) + dim if start < 0 else int(start)
        end = int(end) + dim if end < 0 else int(end)
        if int(step) != 1 or start > 0 or end < dim:
            return False
    return True


def _concat_is_no_op(node: ir.Node) -> bool:
    return len(node.inputs) == 1 and node.inputs[0] is not None


def _keeps_shape(data: ir.Value, constant: np.ndarray) -> bool:
    """True when broadcasting `constant` against `data` leaves data's shape as it is."""
    if data.shape is None or constant.ndim > len(data.shape):
        return False
    for data_dim, const_dim in zip(reversed(list(data.shape)), reversed(constant.shape)):
        if const_dim != 1 and not (isinstance(data_dim, int) and data_dim == const_dim):
            return False
    return True


def _identity_operand(node: ir.Node, neutral: float, commutative: bool) -> ir.Value | None:
    """The input `node` forwards unchanged when its other input is all `neutral`, else None."""
    if len(node.inputs) != 2 or None in node.inputs:
        return None
    positions = ((0, 1), (1, 0)) if commutative else ((0, 1),)
    for data_index, const_index in positions:
        data, constant = node.inputs[data_index], _known_value(node.inputs[const_index])
        if constant is None or constant.size == 0 or data.const_value is not None:
            continue
        if np.all(constant == neutral) and _keeps_shape(data, constant) and node.outputs[0].dtype in (None, data.dtype):
            return data
    return None


def _forwarded(check: Callable[[ir.Node], bool]) -> Callable[[ir.Node], ir.Value | None]:
    return lambda node: node.inputs[0] if check(node) else None


_CHECKS: dict[str, tuple[Callable[[ir.Node], ir.Value | None], str]] = {
    "Reshape": (_forwarded(_reshape_is_no_op), "Reshape to the shape it already has"),
    "Pad": (_forwarded(_pad_is_no_op), "Pad by zeros"),
    "Slice": (_forwarded(_slice_is_no_op), "Slice of the whole tensor"),
    "Concat": (_forwarded(_concat_is_no_op), "Concat of one input"),
    "Add": (lambda n: _identity_operand(n, 0.0, commutative=True), "adds an all-zero tensor"),
    "Sub": (lambda n: _identity_operand(n, 0.0, commutative=False), "subtracts an all-zero tensor"),
    "Mul": (lambda n: _identity_operand(n, 1.0, commutative=True), "multiplies by an all-one tensor"),
    "Div": (lambda n: _identity_operand(n, 1.0, commutative=False), "divides by an all-one tensor"),
}

REASONS = {op: reason for op, (_, reason) in _CHECKS.items()}


def replace_structural_no_ops(model: ir.Model) -> int:
    """Turn each structural no-op into an Identity of its data input. Returns how many."""
    replaced = 0
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        check = _CHECKS.get(node.op_type)
        if check is None or not is_onnx(node) or len(node.outputs) != 1 or not node.inputs:
            continue
        try:
            source = check[0](node)
        except (ValueError, TypeError, IndexError):
            source = None
        output = node.outputs[0]
        if source is None or (source.dtype is not None and output.dtype not in (None, source.dtype)):
            continue
        identity = ir.Node("", "Identity", [source], name=node.name, metadata_props=dict(node.metadata_props))
        ir.convenience.replace_nodes_and_values(node.graph, node, [node], [identity], [output], identity.outputs)
        replaced += 1
    return replaced
