"""Block-Hadamard rotation of a linear's input: an exact rewrite that spreads an activation's
outlier channels over their neighbours before the activation is quantized (QuaRot's online
Hadamard, in blocks).

With H the orthonormal Hadamard matrix of order b (H @ H.T = I) and R = diag(H, ..., H) over the
K / b blocks of the activation's K channels,

    A @ W = (A @ R) @ (R.T @ W)

so the linear reads its activation rotated in every block of b channels and its weight rows
rotated back (folded into the constant). An outlier channel's value x is spread over the b
channels of its block (each gets +-x / sqrt(b)), so the range a per-tensor int8 quantizer takes
from the activation's largest value shrinks toward its typical size, and the step of every other
value with it. The activation's rotation is not foldable (the linear's input is not a constant):
it runs at every call, as ``Reshape -> MatMul(H) -> Reshape``, an fp32 product of b multiply-adds
per activation value, which is what the cost model prices against the accuracy it buys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from kiln.ir.edits import new_initializer, placeholder_weight, sketch_node
from kiln.passes.quantization.linears import Linear

__all__ = ["PeakObserver", "PeakRatios", "hadamard", "rotate_input", "rotation_blocks", "rotated_weight",
           "sketch_rotation"]


def hadamard(order: int) -> np.ndarray:
    """The orthonormal Sylvester-Hadamard matrix of `order` (a power of two), float32.

    Written here rather than taken from scipy.linalg.hadamard (the same Sylvester doubling):
    scipy is not a kiln dependency, and this is three lines."""
    if order < 1 or order & (order - 1):
        raise ValueError(f"a Sylvester-Hadamard matrix has a power-of-two order, not {order}")
    h = np.ones((1, 1), dtype=np.float64)
    while h.shape[0] < order:
        h = np.block([[h, h], [h, -h]])
    return (h / np.sqrt(order)).astype(np.float32)


def rotation_blocks(linear: Linear, blocks: Sequence[int]) -> tuple[tuple[int, ...], str]:
    """The block sizes among `blocks` that can rotate `linear`'s input (each divides its K and
    the activation's rank is known), and why the others cannot."""
    k = linear.weight.shape[0]
    shape = linear.activation.shape
    if shape is None:
        return (), "the activation's rank is unknown, so its channels cannot be reshaped into blocks"
    fitting = tuple(b for b in blocks if k % b == 0)
    if not fitting:
        return (), f"no block size of {tuple(blocks)} divides its {k} input channels"
    return fitting, ""


def rotated_weight(weight: np.ndarray, block: int) -> np.ndarray:
    """R.T @ W for the K x N `weight`: every block of `block` rows multiplied by H.T."""
    k, n = weight.shape
    h = hadamard(block).astype(np.float64)
    blocks = weight.astype(np.float64).reshape(k // block, block, n)
    return np.einsum("ji,bjn->bin", h, blocks).reshape(k, n).astype(np.float32)


def _shared_constant(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """The initializer `name` when it already holds `array` (one per shape or block size, shared by
    every rotation in the graph), else a new one."""
    existing = graph.initializers.get(name)
    if existing is not None and existing.const_value is not None and np.array_equal(existing.const_value.numpy(), array):
        return existing
    return new_initializer(graph, name, array)


def _shape_constant(graph: ir.Graph, dims: list[int]) -> ir.Value:
    return _shared_constant(graph, "hadamard_shape_" + "_".join(str(d) for d in dims), np.array(dims, dtype=np.int64))


def rotate_input(graph: ir.Graph, linear: Linear, block: int,
                 rotated: dict[tuple[str, int], ir.Value] | None = None) -> tuple[Linear, list[ir.Node]]:
    """Insert the rotation of `linear`'s activation right after the node that makes it (so every
    reader of the activation can read it; at the graph's start for a graph input) and return the
    linear as the quantizer should see it (reading the rotated activation, with the rotated
    weight; its node is not changed: the quantizer replaces it) and the nodes added. `rotated`
    holds the rotations made so far by (activation name, block): a second reader reuses one."""
    x = linear.activation
    assert x.shape is not None
    weight = rotated_weight(linear.weight, block)
    key = (x.name or linear.name, block)
    if rotated is not None and key in rotated:
        return dataclasses.replace(linear, activation=rotated[key], weight=weight), []
    rank, k = len(x.shape), linear.weight.shape[0]
    keep = [0] * (rank - 1)  # Reshape's 0 copies the input's dimension: leading dims stay symbolic
    split = ir.Node("", "Reshape", [x, _shape_constant(graph, [*keep, k // block, block])],
                    name=f"{linear.name}.hadamard_split")
    rotate = ir.Node("", "MatMul", [split.outputs[0], _shared_constant(graph, f"hadamard_{block}", hadamard(block))],
                     name=f"{linear.name}.hadamard_{block}")
    merge = ir.Node("", "Reshape", [rotate.outputs[0], _shape_constant(graph, [*keep, k])],
                    name=f"{linear.name}.hadamard_merge")
    blocked = ir.Shape([*list(x.shape)[:-1], k // block, block])
    for node, suffix, shape in ((split, "blocks", blocked), (rotate, "rotated_blocks", blocked),
                                (merge, "rotated", x.shape)):
        out = node.outputs[0]
        out.name, out.dtype, out.shape = f"{x.name or linear.name}.hadamard_{block}.{suffix}", ir.DataType.FLOAT, \
            ir.Shape(list(shape))
    nodes = [split, rotate, merge]
    producer = x.producer()
    if producer is not None and producer.graph is graph:
        graph.insert_after(producer, nodes)
    else:
        graph.insert_before(next(iter(graph)), nodes)
    if rotated is not None:
        rotated[key] = merge.outputs[0]
    return dataclasses.replace(linear, activation=merge.outputs[0], weight=weight), nodes


def sketch_rotation(linear: Linear, block: int) -> tuple[list[ir.Node], ir.Value]:
    """The rotation `rotate_input` would add, outside the graph (to price it), and the rotated
    activation it gives."""
    x = linear.activation
    assert x.shape is not None
    k = linear.weight.shape[0]
    blocked = [*list(x.shape)[:-1], k // block, block]
    split = sketch_node("Reshape", [x, placeholder_weight("shape", (len(blocked),), ir.DataType.INT64)],
                        [(blocked, ir.DataType.FLOAT)])
    rotate = sketch_node("MatMul", [split.outputs[0], placeholder_weight("hadamard", (block, block), ir.DataType.FLOAT)],
                         [(blocked, ir.DataType.FLOAT)])
    merge = sketch_node("Reshape", [rotate.outputs[0], placeholder_weight("shape", (len(x.shape),), ir.DataType.INT64)],
                        [(list(x.shape), ir.DataType.FLOAT)])
    return [split, rotate, merge], merge.outputs[0]


@dataclasses.dataclass(frozen=True)
class PeakRatios:
    """An activation's largest magnitude over its root-mean-square, as read and rotated: what a
    per-tensor int8 range pays for its outliers (the step is the peak / 127, the signal the RMS;
    a rotation keeps the RMS)."""

    plain: float
    rotated: float
    channel: int  # the channel of the largest magnitude, as read

    def __str__(self) -> str:
        return f"activation peak {self.plain:.1f}x its RMS (channel {self.channel}), {self.rotated:.1f}x rotated"


class PeakObserver:
    """`PeakRatios` of one activation, streamed over the arrays it takes (never holding them)."""

    def __init__(self, block: int) -> None:
        self.hadamard = hadamard(block)
        self.peak = self.rotated_peak = self.squares = 0.0
        self.count = self.channel = 0

    def observe(self, x: np.ndarray) -> None:
        rows = np.asarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
        if not rows.size:
            return
        magnitude = np.abs(rows)
        if magnitude.max() > self.peak:
            self.peak = float(magnitude.max())
            self.channel = int(np.unravel_index(int(magnitude.argmax()), magnitude.shape)[1])
        block = self.hadamard.shape[0]
        rotated = rows.reshape(len(rows), -1, block) @ self.hadamard
        self.rotated_peak = max(self.rotated_peak, float(np.abs(rotated).max()))
        self.squares += float(np.square(rows, dtype=np.float64).sum())
        self.count += rows.size

    def ratios(self) -> PeakRatios:
        rms = float(np.sqrt(self.squares / self.count)) if self.count else 0.0
        if rms == 0.0:
            return PeakRatios(0.0, 0.0, self.channel)
        return PeakRatios(self.peak / rms, self.rotated_peak / rms, self.channel)
