"""Which values an integer graph input may hold, read off what the graph does with it: indices of a
Gather stay within the table, classes of a OneHot within its depth, masks are ones, segment ids
zeros, positions count up, a switch compared with constants holds one of them; an input that sets
a shape, a size or a trip count cannot be made up.

Only the input's own readers are read, through ops that pass values on unchanged (Cast, Reshape,
Unsqueeze, ...); the ranges of several readers intersect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from kiln.ir.queries import constant_array, is_onnx, static_shape

__all__ = ["IntegerRange", "integer_range"]

# ops whose output holds the input's values (possibly fewer, reshaped or repeated): follow them
_PASS_THROUGH = frozenset({"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand", "Transpose",
                           "Tile", "Concat", "Slice", "Gather", "Split", "Abs"})
# (op, input index) -> what the input sets there: a value kiln cannot invent
_SHAPE_LIKE = {
    ("Reshape", 1): "the target shape of a Reshape", ("Expand", 1): "the shape of an Expand",
    ("Tile", 1): "the repeats of a Tile", ("ConstantOfShape", 0): "the shape of a ConstantOfShape",
    ("Range", 0): "the start of a Range", ("Range", 1): "the limit of a Range", ("Range", 2): "the delta of a Range",
    ("Slice", 1): "the starts of a Slice", ("Slice", 2): "the ends of a Slice", ("Slice", 3): "the axes of a Slice",
    ("Slice", 4): "the steps of a Slice", ("TopK", 1): "k of a TopK", ("Resize", 3): "the sizes of a Resize",
    ("Pad", 1): "the pads of a Pad", ("Unsqueeze", 1): "the axes of an Unsqueeze",
    ("Squeeze", 1): "the axes of a Squeeze", ("Split", 1): "the split sizes of a Split",
    ("Loop", 0): "the trip count of a Loop", ("NonMaxSuppression", 2): "max_output_boxes_per_class",
    ("ReduceSum", 1): "the axes of a reduction", ("ReduceMean", 1): "the axes of a reduction",
    ("ReduceMax", 1): "the axes of a reduction", ("OneHot", 1): "the depth of a OneHot",
    ("Trilu", 1): "the diagonal of a Trilu", ("CumSum", 1): "the axis of a CumSum",
}
_MAX_DEPTH = 8


@dataclass(frozen=True)
class IntegerRange:
    """Values in [low, high) (or one `fill` value, or positions 0, 1, ... along the last axis), and
    why; `unsampleable` names what the input sets when no value can be made up."""

    low: int = 0
    high: int = 2
    reason: str = "no reader bounds it: [0, 2)"
    fill: int | None = None
    positions: bool = False
    unsampleable: str | None = None
    choices: tuple[int, ...] = ()  # the constants the input is compared with: one of them is what it holds


def _name_rule(name: str) -> IntegerRange | None:
    lowered = name.lower()
    if "mask" in lowered:
        return IntegerRange(fill=1, reason="a mask: ones")
    if re.search(r"token_?type|segment", lowered):
        return IntegerRange(fill=0, reason="segment ids: zeros")
    if re.search(r"position|pos_ids", lowered):
        return IntegerRange(positions=True, reason="positions: 0, 1, ... along the last axis")
    return None


def _constant(value: ir.Value | None) -> np.ndarray | None:
    """The array of an initializer, a folded constant or a Constant node's output, else None."""
    array = constant_array(value)
    producer = value.producer() if value is not None else None
    if array is None and producer is not None and is_onnx(producer, "Constant"):
        attr = producer.attributes.get("value")
        if attr is not None and attr.type == ir.AttributeType.TENSOR:
            array = attr.value.numpy()
    return array


def _compared_constants(value: ir.Value) -> tuple[tuple[int, ...], str]:
    """The integer constants `value` is tested for equality with (a sample-rate or mode switch:
    `If(Equal(sr, 16000))`), and the first such node's name."""
    found: list[int] = []
    where = ""
    for node, index in value.uses():
        if not is_onnx(node, "Equal") or len(node.inputs) != 2:
            continue
        other = _constant(node.inputs[1 - index])
        if other is not None and other.size and np.issubdtype(other.dtype, np.integer):
            found.extend(int(v) for v in other.reshape(-1))
            where = where or (node.name or "Equal")
    return tuple(dict.fromkeys(found)), where


def _bounds(value: ir.Value, depth: int, seen: set[int]) -> tuple[int | None, list[str], str | None]:
    """(exclusive upper bound from the readers of `value` or None, reasons, what it sets if shape-like)."""
    if depth > _MAX_DEPTH or id(value) in seen:
        return None, [], None
    seen.add(id(value))
    high: int | None = None
    reasons: list[str] = []
    for node, index in value.uses():
        if not is_onnx(node):
            continue
        what = _SHAPE_LIKE.get((node.op_type, index))
        if what is not None:
            return None, [], f"{what} ({node.name})"
        bound: int | None = None
        if node.op_type in ("Gather", "GatherElements") and index == 1:
            data = static_shape(node.inputs[0])
            if data is None and node.inputs[0] is not None and node.inputs[0].const_value is not None:
                data = tuple(node.inputs[0].const_value.shape)
            axis = node.attributes.get_int("axis", 0)
            if data is not None and -len(data) <= axis < len(data):
                bound = data[axis]
                reasons.append(f"indices of {node.op_type} {node.name} into {bound} rows")
        elif node.op_type == "OneHot" and index == 0:
            depth_array = constant_array(node.inputs[1])
            if depth_array is not None and depth_array.size == 1:
                bound = int(depth_array.reshape(()))
                reasons.append(f"classes of OneHot {node.name} (depth {bound})")
        elif node.op_type in _PASS_THROUGH and (index == 0 or node.op_type == "Concat"):
            for output in node.outputs:
                sub_high, sub_reasons, sub_shape = _bounds(output, depth + 1, seen)
                if sub_shape is not None:
                    return None, [], sub_shape
                if sub_high is not None:
                    bound = sub_high if bound is None else min(bound, sub_high)
                    reasons.extend(sub_reasons)
        if bound is not None:
            high = bound if high is None else min(high, bound)
    return high, reasons, None


def integer_range(value: ir.Value) -> IntegerRange:
    """The values to sample for the integer graph input `value` (see the module doc)."""
    high, reasons, sets = _bounds(value, 0, set())
    if sets is not None:
        return IntegerRange(unsampleable=sets, reason=f"it sets {sets}")
    named = _name_rule(value.name or "")
    if named is not None:
        return named
    choices, where = _compared_constants(value)
    if choices:
        return IntegerRange(choices=choices, reason=f"compared with {list(choices)} by {where}: one of them")
    if high is not None:
        return IntegerRange(0, max(high, 1), "; ".join(dict.fromkeys(reasons)))
    return IntegerRange()
