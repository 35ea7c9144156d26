"""Read-only questions rewrites ask of a graph: is a node a standard ONNX op, is a node a value's
only reader, what array does a constant initializer hold; which element types are floats."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

# The floating-point element types the float-only rewrites accept.
FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16})


def is_onnx(node: ir.Node, op_type: str | None = None) -> bool:
    """`node` is in the default ONNX domain (and of `op_type`, when given)."""
    return node.domain in ("", "ai.onnx") and (op_type is None or node.op_type == op_type)


def op_key(node: ir.Node) -> str:
    """The op's name as kiln keys it: "MatMul", or "domain::Op" outside the default domain."""
    return node.op_type if is_onnx(node) else f"{node.domain}::{node.op_type}"


def sole_reader(value: ir.Value, node: ir.Node) -> bool:
    """Only `node` reads `value`, and it is not a graph output: a rewrite of `node` may change it."""
    return not value.is_graph_output() and all(user is node for user, _ in value.uses())


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The array of any value whose data is known (an initializer or a folded constant), else None."""
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def constant_scalar(value: ir.Value | None, *, max_rank: int = 1) -> float | None:
    """The number a one-element constant of rank <= `max_rank` holds, else None."""
    array = constant_array(value)
    if array is None or array.size != 1 or array.ndim > max_rank:
        return None
    return float(array.reshape(()))


def initializer_array(value: ir.Value | None, private_to: ir.Node | None = None) -> np.ndarray | None:
    """The array of a constant initializer that is neither a graph input nor a graph output (and
    that only `private_to` reads, when given), else None."""
    if value is None or value.const_value is None or not value.is_initializer():
        return None
    if value.is_graph_input() or value.is_graph_output():
        return None
    if private_to is not None and not sole_reader(value, private_to):
        return None
    return constant_array(value)


def static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The shape of `value` when every dim is a known int, else None."""
    if value is None or value.shape is None or not all(isinstance(d, int) for d in value.shape):
        return None
    return tuple(int(d) for d in value.shape)


def has_symbolic_inputs(model: ir.Model) -> bool:
    """Some graph input has a dim that is not a known int (a symbol, or unknown)."""
    return any(v.shape is not None and not v.shape.is_static() for v in model.graph.inputs)


def reshape_target(node: ir.Node) -> np.ndarray | None:
    """The constant target shape of a Reshape, flattened to int64, else None."""
    if len(node.inputs) < 2 or node.inputs[1] is None or node.inputs[1].const_value is None:
        return None
    return node.inputs[1].const_value.numpy().astype(np.int64).reshape(-1)


def resolved_reshape_shape(node: ir.Node, input_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The shape a Reshape with a constant target gives an input of `input_shape`."""
    target = reshape_target(node)
    if target is None:
        return None
    allow_zero = node.attributes.get("allowzero")
    dims = [input_shape[i] if d == 0 and not (allow_zero and allow_zero.value) and i < len(input_shape) else int(d)
            for i, d in enumerate(target)]
    if dims.count(-1) > 1:
        return None
    total = int(np.prod(input_shape))
    if -1 in dims:
        known = int(np.prod([d for d in dims if d != -1]))
        if known == 0 or total % known:
            return None
        dims[dims.index(-1)] = total // known
    return tuple(dims) if int(np.prod(dims)) == total else None


def scores_path(matmul: ir.Node) -> list[ir.Node] | None:
    """The nodes from `matmul`'s output, each the sole reader of the one before, up to and
    including the next MatMul (scale, mask, Softmax on attention scores); None when the chain
    branches, leaves the graph or ends first."""
    path: list[ir.Node] = []
    value = matmul.outputs[0]
    while True:
        users = [user for user, _ in value.uses()]
        if value.is_graph_output() or len(users) != 1 or len(users[0].outputs) != 1:
            return None
        node = users[0]
        path.append(node)
        if is_onnx(node, "MatMul"):
            return path
        value = node.outputs[0]
