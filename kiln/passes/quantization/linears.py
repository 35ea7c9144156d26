"""The linears a weight quantizer can take: a MatMul or Gemm whose weight is a constant matrix.

A linear is ``y = alpha * (A @ W) + bias`` with W a K x N constant. Found forms:

- ``MatMul(A, W)``, W an initializer or a folded constant;
- ``MatMul(A, Transpose(W'))`` with W' constant: GPT-2's LM head reads its tied embedding table
  transposed in the graph, which weight quantizers that only look at initializers miss;
- ``Gemm(A, B, C)`` with transA=0 and B constant (transB read), C absent or one value per
  output column; alpha and beta are kept exactly (alpha scales the product, beta the bias).

Everything else (MatMuls of two activations, as in attention; Gemms with a per-row C) is left,
with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from kiln.ir.edits import remove_unused_initializers
from kiln.ir.queries import constant_array, is_onnx

__all__ = ["Linear", "find_linears", "linear_of", "remove_replaced_weights"]


@dataclass(frozen=True)
class Linear:
    """One quantizable linear: its node, activation input, K x N weight, bias ([N] or None),
    product scale, and the Transpose that produced the weight in the graph (or None)."""

    node: ir.Node
    activation: ir.Value
    weight: np.ndarray
    bias: np.ndarray | None
    alpha: float
    transpose: ir.Node | None = None

    @property
    def name(self) -> str:
        return self.node.name or f"{self.node.op_type}({self.activation.name})"


def _weight(value: ir.Value | None) -> tuple[np.ndarray | None, ir.Node | None]:
    """The constant matrix `value` holds, directly or through a 2-D Transpose of a constant."""
    array = constant_array(value)
    if array is not None or value is None:
        return array, None
    producer = value.producer()
    if producer is not None and is_onnx(producer, "Transpose"):
        source = constant_array(producer.inputs[0])
        perm = producer.attributes.get("perm")
        if source is not None and source.ndim == 2 and (perm is None or list(perm.as_ints()) == [1, 0]):
            return source.T, producer
    return None, None


def linear_of(node: ir.Node) -> Linear | str:
    """`node` as a `Linear`, or why it is not one."""
    if not (is_onnx(node, "MatMul") or is_onnx(node, "Gemm")):
        return f"{node.op_type} is not a MatMul or Gemm"
    activation = node.inputs[0]
    # MatMul and Gemm take one element type for both inputs: a float32 weight means a float32
    # activation even where its type was not inferred
    if activation is None or activation.dtype not in (None, ir.DataType.FLOAT):
        return "the activation is not float32"
    weight, transpose = _weight(node.inputs[1] if len(node.inputs) > 1 else None)
    if weight is None:
        return "the second input is not a constant (a product of two activations, as in attention)"
    if weight.ndim != 2 or weight.dtype != np.float32:
        return f"the weight is {weight.dtype} of rank {weight.ndim}, not a float32 matrix"
    if is_onnx(node, "MatMul"):
        if activation.shape is not None and len(activation.shape) < 2:
            return "the activation is a vector"
        return Linear(node, activation, weight, None, 1.0, transpose)
    attrs = node.attributes
    if attrs.get("transA") is not None and attrs["transA"].as_int():
        return "Gemm with transA=1"
    if attrs.get("transB") is not None and attrs["transB"].as_int():
        weight = weight.T
    alpha = attrs["alpha"].as_float() if attrs.get("alpha") is not None else 1.0
    beta = attrs["beta"].as_float() if attrs.get("beta") is not None else 1.0
    bias = None
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        c = constant_array(node.inputs[2])
        columns = weight.shape[1]
        if c is None or c.size not in (1, columns) or (c.ndim == 2 and c.shape[0] != 1) or c.ndim > 2:
            return "Gemm's C is not a constant with one value per output column"
        bias = (np.broadcast_to(c.reshape(-1), (columns,)) * np.float32(beta)).astype(np.float32)
    return Linear(node, activation, np.ascontiguousarray(weight), bias, float(alpha), transpose)


def find_linears(graph: ir.Graph) -> tuple[list[Linear], dict[str, int]]:
    """The quantizable linears of `graph` (top level, in graph order) and, for the MatMuls and
    Gemms left, how many were left for each reason."""
    found: list[Linear] = []
    left: dict[str, int] = {}
    for node in graph:
        if not (is_onnx(node, "MatMul") or is_onnx(node, "Gemm")):
            continue
        linear = linear_of(node)
        if isinstance(linear, str):
            left[linear] = left.get(linear, 0) + 1
        else:
            found.append(linear)
    return found, left


def remove_replaced_weights(graph: ir.Graph, linear: Linear, old_weights: list[ir.Value]) -> ir.Node | None:
    """After `linear` was rewritten: remove the Transpose that produced its weight once nothing
    reads it, and the initializers among `old_weights` (and the Transpose's constant) nothing
    reads any more; the Transpose removed, or None."""
    transpose = linear.transpose
    removed = None
    if transpose is not None and not transpose.outputs[0].uses() and not transpose.outputs[0].is_graph_output():
        old_weights = [*old_weights, transpose.inputs[0]]
        graph.remove(transpose, safe=True)
        removed = transpose
    remove_unused_initializers(graph, old_weights)
    return removed
