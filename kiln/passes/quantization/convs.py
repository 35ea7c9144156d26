"""The convolutions a static int8 quantizer can take: a float32 ``Conv(X, W, B)`` whose filters W
and bias B are constants.

The Conv node itself stays: quantizing it only puts its input X and its filters W behind
DequantizeLinear (`static_convs`), so every attribute (strides, pads, dilations, groups,
auto_pad) is kept as it is. Anything else (filters computed in the graph, a bias that is not a
constant, ConvTranspose, other element types) is left, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from kiln.ir.queries import constant_array, is_onnx

__all__ = ["Convolution", "conv_of", "find_convs"]


@dataclass(frozen=True)
class Convolution:
    """One quantizable convolution: its node, input activation and O x I/group x k... filters."""

    node: ir.Node
    activation: ir.Value
    weight: np.ndarray

    @property
    def name(self) -> str:
        return self.node.name or f"Conv({self.activation.name})"

    @property
    def biased(self) -> bool:
        return len(self.node.inputs) > 2 and self.node.inputs[2] is not None


def conv_of(node: ir.Node) -> Convolution | str:
    """`node` as a `Convolution`, or why it is not one."""
    if not is_onnx(node, "Conv"):
        return f"{node.op_type} is not a Conv"
    activation = node.inputs[0]
    if activation is None or activation.dtype not in (None, ir.DataType.FLOAT):
        return "the convolution's input is not float32"
    weight = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None:
        return "the filters are not a constant"
    if weight.dtype != np.float32 or weight.ndim < 3:
        return f"the filters are {weight.dtype} of rank {weight.ndim}, not float32 of rank >= 3"
    if len(node.inputs) > 2 and node.inputs[2] is not None and constant_array(node.inputs[2]) is None:
        return "the bias is not a constant"
    return Convolution(node, activation, weight)


def find_convs(graph: ir.Graph) -> tuple[list[Convolution], dict[str, int]]:
    """The quantizable convolutions of `graph` (top level, in graph order) and, for the Convs
    left, how many were left for each reason."""
    found: list[Convolution] = []
    left: dict[str, int] = {}
    for node in graph:
        if not is_onnx(node, "Conv"):
            continue
        conv = conv_of(node)
        if isinstance(conv, str):
            left[conv] = left.get(conv, 0) + 1
        else:
            found.append(conv)
    return found, left
