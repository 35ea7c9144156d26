"""Fold a multiplication by a scalar constant into the weights of the linear layer it scales.

    Mul(f(x @ W (+ b)), s) -> f(x @ (s W) (+ s b))

where f is a chain of layout ops (Reshape, Transpose, Squeeze, Unsqueeze, Flatten) and at most
one MatMul by another activation: all are linear in the operand that comes from the weight, so
the scalar commutes through them. The case it is for is attention's score scaling,
``MatMul(Q, K^T) * 1/sqrt(d)``, and a query projection scaled directly (Whisper), which end up in
the query weights.

Exact to float rounding (a power-of-two scale, such as 1/8 for 64-wide heads, is bit-exact).
Everything on the path must be read only by the next op on it, and the weight and bias only by
their layer, so nothing else sees the scaled values. One Mul goes; ONNX Runtime, which would
have fused the scale into the MatMul kernel (FusedMatMul), runs a plain MatMul instead.
Plain graph pass (the path has no fixed length); one rewrite per Mul, named `scale_folding`.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from kiln.ir.provenance import get_provenance, merge_provenance
from kiln.ir.queries import FLOAT_TYPES, constant_scalar, initializer_array, is_onnx, sole_reader
from kiln.passes.infra.graph_rules import GraphRule, GraphRulePass
from kiln.passes.infra.recording import node_ref
from kiln.report.model import Rewrite

RULE = "scale_folding"

_LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten"})
# Longest layout chain followed back from the Mul (attention: Transpose, Reshape, Transpose...).
_MAX_PATH = 8


def _private_float(value: ir.Value | None, reader: ir.Node) -> np.ndarray | None:
    """The value of a float initializer that only `reader` reads, else None."""
    if value is None or value.dtype not in FLOAT_TYPES:
        return None
    return initializer_array(value, private_to=reader)


def _scalar(value: ir.Value | None) -> float | None:
    return constant_scalar(value) if value is not None and value.dtype in FLOAT_TYPES else None


def _weights(value: ir.Value, depth: int = 0) -> list[ir.Value] | None:
    """The private constants to scale so that `value` is scaled: the weight (and bias) of the
    linear layer it comes from through single-reader layout ops and activation MatMuls."""
    node = value.producer()
    if node is None or depth > _MAX_PATH or len(node.outputs) != 1:
        return None
    if is_onnx(node, "Add") and len(node.inputs) == 2:  # a bias: the MatMul before it and the bias
        for product, bias in (node.inputs, reversed(node.inputs)):
            if product is not None and _private_float(bias, node) is not None and sole_reader(product, node):
                found = _weights(product, depth + 1)  # s (p + b) = s p + s b
                if found is not None:
                    return [*found, bias]
        return None
    if is_onnx(node, "MatMul") and len(node.inputs) == 2:
        weight = node.inputs[1]
        matrix = _private_float(weight, node)
        if matrix is not None and matrix.ndim == 2:
            return [weight]
        for operand in node.inputs:  # activation x activation: scale one side
            if operand is not None and sole_reader(operand, node):
                found = _weights(operand, depth + 1)
                if found is not None:
                    return found
        return None
    if node.op_type in _LAYOUT_OPS and is_onnx(node) and node.inputs[0] is not None:
        data = node.inputs[0]
        return _weights(data, depth + 1) if sole_reader(data, node) else None
    return None


def _fold(graph: ir.Graph, mul: ir.Node) -> Rewrite | None:
    for scaled, factor in (mul.inputs, reversed(mul.inputs)):
        scale = _scalar(factor)
        if scaled is None or scale is None or scaled.dtype != factor.dtype or not sole_reader(scaled, mul):
            continue
        if mul.outputs[0].is_graph_output() or scaled.shape is None or len(scaled.shape) < 1:
            continue
        weights = _weights(scaled)
        if weights is None:
            continue
        for weight in weights:
            array = weight.const_value.numpy()
            weight.const_value = ir.tensor((array.astype(np.float64) * scale).astype(array.dtype), name=weight.name)
        layer = weights[0].uses()[0][0]
        merge_provenance(layer, get_provenance(mul))
        ir.convenience.replace_all_uses_with(mul.outputs[0], scaled)
        graph.remove(mul, safe=True)
        return Rewrite(rule=RULE, nodes=[node_ref(mul)],
                       reason=f"multiplies by the scalar {scale:g} a value that is linear in the weights of {layer.name}",
                       result=f"{', '.join(w.name or '?' for w in weights)} scaled by {scale:g}")
    return None


class FoldScalesIntoWeights(GraphRulePass):
    """Fold scalar multiplications into the weights of the linear layer they scale (see the
    module docstring)."""

    name = "scale_folding"
    graph_rules = (GraphRule(RULE, frozenset({"Mul"}),
                             lambda mul, state: _fold(mul.graph, mul) if len(mul.inputs) == 2 else None),)
