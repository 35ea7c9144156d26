"""Which values an integer (or boolean) graph input may hold, read off what the graph does with it:
indices of a Gather stay within the table, classes of a OneHot within its depth, masks are ones,
segment ids zeros, positions count up, a switch compared with constants holds one of them; an input
that sets a shape, a size or a trip count cannot be made up.

Readers are followed through ops that pass values on unchanged (Cast, Reshape, Unsqueeze, ...), and,
to find what sets a shape, through integer arithmetic too (`n + 1` as a Reshape's shape is still
the user's to give); the ranges of several readers intersect. A table's size along the indexed axis
comes from its declared or constant shape, or from the bound size of its symbolic dim (`dims`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from kiln.ir.queries import constant_array, is_onnx

__all__ = ["IntegerRange", "integer_range"]

# ops whose output holds the input's values (possibly fewer, reshaped or repeated): follow them
_PASS_THROUGH = frozenset({"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand", "Transpose",
                           "Tile", "Concat", "Slice", "Gather", "Split", "Abs"})
# integer arithmetic: its result no longer holds the input's values, but a shape computed from them
# is still set by the input
_ARITHMETIC = frozenset({"Add", "Sub", "Mul", "Div", "Mod", "Neg", "Max", "Min", "ReduceMax", "ReduceMin",
                         "ReduceSum", "ReduceProd", "CumSum", "Clip"})
_REDUCTIONS = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
               "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
# (op, input index) -> what the input sets there: a value kiln cannot invent
_SHAPE_LIKE = {
    ("Reshape", 1): "the target shape of a Reshape", ("Expand", 1): "the shape of an Expand",
    ("Tile", 1): "the repeats of a Tile", ("ConstantOfShape", 0): "the shape of a ConstantOfShape",
    ("Range", 0): "the start of a Range", ("Range", 1): "the limit of a Range", ("Range", 2): "the delta of a Range",
    ("Slice", 1): "the starts of a Slice", ("Slice", 2): "the ends of a Slice", ("Slice", 3): "the axes of a Slice",
    ("Slice", 4): "the steps of a Slice", ("TopK", 1): "k of a TopK", ("Resize", 3): "the sizes of a Resize",
    ("Pad", 1): "the pads of a Pad", ("Pad", 3): "the axes of a Pad", ("Unsqueeze", 1): "the axes of an Unsqueeze",
    ("Squeeze", 1): "the axes of a Squeeze", ("Split", 1): "the split sizes of a Split",
    ("Loop", 0): "the trip count of a Loop", ("NonMaxSuppression", 2): "max_output_boxes_per_class",
    ("OneHot", 1): "the depth of a OneHot", ("Trilu", 1): "the diagonal of a Trilu",
    ("CumSum", 1): "the axis of a CumSum", ("CenterCropPad", 1): "the shape of a CenterCropPad",
    ("Col2Im", 1): "the image shape of a Col2Im", ("Col2Im", 2): "the block shape of a Col2Im",
    ("MaxUnpool", 2): "the output shape of a MaxUnpool", ("DFT", 1): "the length of a DFT",
    ("DFT", 2): "the axis of a DFT", ("STFT", 1): "the frame step of an STFT",
    ("STFT", 3): "the frame length of an STFT", ("SplitToSequence", 1): "the split sizes of a SplitToSequence",
    **{(op, 1): "the axes of a reduction" for op in _REDUCTIONS},
}
# indices into input 0 along the `axis` attribute
_INDEXED_ALONG_AXIS = ("Gather", "GatherElements", "ScatterElements")
_MAX_DEPTH = 8


@dataclass(frozen=True)
class IntegerRange:
    """Values in [low, high) (or one `fill` value, or `positions` 0, 1, ... along the last axis,
    wrapping at `high` when a reader bounds them, else None), and why; `unsampleable` names what
    the input sets when no value can be made up."""

    low: int = 0
    high: int | None = 2
    reason: str = "no reader bounds it: [0, 2)"
    fill: int | None = None
    positions: bool = False
    unsampleable: str | None = None
    choices: tuple[int, ...] = ()  # the constants the input is compared with: it holds one of them


def _constant(value: ir.Value | None) -> np.ndarray | None:
    """The array of an initializer, a folded constant or a Constant node's output, else None."""
    array = constant_array(value)
    producer = value.producer() if value is not None else None
    if array is None and producer is not None and is_onnx(producer, "Constant") and "value" in producer.attributes:
        array = producer.attributes["value"].as_tensor().numpy()
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


def _name_rule(name: str) -> IntegerRange | None:
    lowered = name.lower()
    if "mask" in lowered:
        return IntegerRange(fill=1, reason="a mask: ones")
    if re.search(r"token_?type|segment", lowered):
        return IntegerRange(fill=0, reason="segment ids: zeros")
    if re.search(r"position|pos_ids", lowered):
        return IntegerRange(high=None, positions=True, reason="positions: 0, 1, ... along the last axis")
    return None


def _known_shape(value: ir.Value | None, depth: int = 0) -> ir.Shape | None:
    """The declared shape of `value`, else that of the constant behind it (an initializer, a
    Constant, through Cast / Identity / DequantizeLinear)."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.shape
    if value.shape is not None:
        return value.shape
    producer = value.producer()
    if producer is None or depth > _MAX_DEPTH or not is_onnx(producer):
        return None
    if producer.op_type == "Constant" and "value" in producer.attributes:
        return producer.attributes["value"].as_tensor().shape
    if producer.op_type in ("Cast", "CastLike", "Identity", "DequantizeLinear"):
        return _known_shape(producer.inputs[0], depth + 1)
    return None


def _axis_size(data: ir.Value | None, axis: int, dims: Mapping[str, int]) -> int | None:
    """The size of `data` along `axis`: a static dim, or a symbol `dims` binds."""
    shape = _known_shape(data)
    if shape is None or not -len(shape) <= axis < len(shape):
        return None
    dim = shape[axis]
    if isinstance(dim, int):
        return dim if dim >= 0 else None
    return dims.get(str(dim.value)) if dim.value else None


def _index_bound(node: ir.Node, index: int, dims: Mapping[str, int]) -> tuple[int | None, str]:
    """(exclusive bound, reason) for values read as input `index` of `node`, or (None, "")."""
    if node.op_type in _INDEXED_ALONG_AXIS and index == 1:
        size = _axis_size(node.inputs[0], node.attributes.get_int("axis", 0), dims)
        if size is not None:
            return size, f"indices of {node.op_type} {node.name} into {size} rows"
    elif node.op_type in ("GatherND", "ScatterND") and index == 1:
        batch_dims = node.attributes.get_int("batch_dims", 0)
        indices = node.inputs[1].shape if node.inputs[1] is not None else None
        depth = indices[-1] if indices is not None and len(indices) else None
        if isinstance(depth, int) and depth > 0:
            sizes = [_axis_size(node.inputs[0], batch_dims + k, dims) for k in range(depth)]
            if all(s is not None for s in sizes):
                size = min(s for s in sizes if s is not None)
                return size, f"indices of {node.op_type} {node.name} into axes of {size} or more"
    elif node.op_type == "OneHot" and index == 0:
        depth_array = constant_array(node.inputs[1])
        if depth_array is not None and depth_array.size == 1:
            size = int(depth_array.reshape(()))
            return size, f"classes of OneHot {node.name} (depth {size})"
    return None, ""


@dataclass
class _Walk:
    """What the readers of an input say: the tightest bound, why, and what it sets if shape-like."""

    dims: Mapping[str, int]
    high: int | None = None
    sets: str | None = None
    reasons: list[str] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)

    def bound(self, size: int, reason: str) -> None:
        self.high = size if self.high is None else min(self.high, size)
        self.reasons.append(reason)

    def visit(self, value: ir.Value, depth: int, values_kept: bool) -> None:
        """Read the uses of `value`; `values_kept`: it still holds the input's values (not a sum)."""
        if depth > _MAX_DEPTH or id(value) in self.seen or self.sets is not None:
            return
        self.seen.add(id(value))
        for node, index in value.uses():
            if not is_onnx(node):
                continue
            what = _SHAPE_LIKE.get((node.op_type, index))
            if what is not None:
                self.sets = f"{what} ({node.name})"
                return
            if values_kept:
                size, reason = _index_bound(node, index, self.dims)
                if size is not None:
                    self.bound(size, reason)
                    continue
            passes = node.op_type in _PASS_THROUGH and (index == 0 or node.op_type == "Concat")
            if passes or node.op_type in _ARITHMETIC:
                for output in node.outputs:
                    self.visit(output, depth + 1, values_kept and passes)


def integer_range(value: ir.Value, dims: Mapping[str, int] | None = None) -> IntegerRange:
    """The values to sample for the integer graph input `value` (see the module doc); `dims` are
    the bound sizes of symbolic dims, for tables whose indexed axis is symbolic."""
    walk = _Walk(dict(dims or {}))
    walk.visit(value, 0, True)
    if walk.sets is not None:
        return IntegerRange(unsampleable=walk.sets, reason=f"it sets {walk.sets}")
    reasons = "; ".join(dict.fromkeys(walk.reasons))
    named = _name_rule(value.name or "")
    if named is not None and walk.high is not None:  # a name's values, kept within what the readers index
        if named.fill is not None:
            return IntegerRange(fill=min(named.fill, max(walk.high - 1, 0)), reason=f"{named.reason}; {reasons}")
        return IntegerRange(high=max(walk.high, 1), positions=True, reason=f"{named.reason}, wrapping at "
                            f"{walk.high}: {reasons}")
    if named is not None:
        return named
    choices, where = _compared_constants(value)
    if choices:
        return IntegerRange(choices=choices, reason=f"compared with {list(choices)} by {where}: one of them")
    if walk.high is not None:
        return IntegerRange(0, max(walk.high, 1), reasons)
    return IntegerRange()
