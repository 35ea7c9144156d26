"""Small edits rewrites share: adding a constant initializer under a name not yet taken, and
sketching the nodes an alternative would add, outside the graph, to price it before deciding."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir


def new_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """Register `array` as an initializer of `graph` named `name` (suffixed until unique)."""
    unique, counter = name, 1
    while unique in graph.initializers:
        unique, counter = f"{name}_{counter}", counter + 1
    tensor = ir.tensor(array, name=unique)
    value = ir.Value(name=unique, type=ir.TensorType(tensor.dtype), shape=ir.Shape(array.shape), const_value=tensor)
    graph.register_initializer(value)
    return value


def detached_copy(value: ir.Value) -> ir.Value:
    """A value with `value`'s name, type, shape and constant, in no graph: a node built on it
    adds no use to `value`, so a rewrite can be priced without touching the graph."""
    return ir.Value(name=value.name, type=value.type, shape=value.shape, const_value=value.const_value)


def placeholder_weight(name: str, shape: tuple[int, ...], dtype: ir.DataType) -> ir.Value:
    """A constant of `shape` and `dtype` whose data is one broadcast zero (no memory): stands for a
    weight a rewrite would compute, when only its size matters (pricing)."""
    data = np.broadcast_to(np.zeros((), dtype.numpy()), shape)
    return ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(shape), const_value=ir.Tensor(data, name=name))


# an output's shape (an ir.Shape or its dims; None when unknown) and dtype
OutputSpec = tuple[ir.Shape | Sequence[int | str | None] | None, ir.DataType | None]


def sketch_node(op_type: str, inputs: Sequence[ir.Value | None], output_shapes: Sequence[OutputSpec], *,
                attributes: Sequence[ir.Attr] = (), domain: str = "") -> ir.Node:
    """A node outside every graph with outputs of the given (shape, dtype): the form an
    alternative would take, to price it before deciding. It reads detached copies of the inputs
    that belong to a graph (so the graph's use lists stay as they are) and the outputs of other
    sketched nodes as they are (so a sketched group keeps its internal edges)."""
    wired = [detached_copy(v) if v is not None and v.graph is not None else v for v in inputs]
    node = ir.Node(domain, op_type, wired, attributes=list(attributes), num_outputs=len(output_shapes))
    for output, (shape, dtype) in zip(node.outputs, output_shapes):
        output.shape = ir.Shape(list(shape)) if shape is not None else None
        output.dtype = dtype
    return node


#: The opset and IR version of the small models alternatives are measured as (any ONNX Runtime
#: this project pins runs them).
STANDALONE_OPSET = 17
STANDALONE_IR_VERSION = 8


def tensor_input(name: str, shape: Sequence[int], dtype: ir.DataType) -> ir.Value:
    """A graph input of a static `shape` and `dtype`."""
    return ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(list(shape)))


def standalone_model(inputs: Sequence[ir.Value], outputs: Sequence[ir.Value], nodes: Sequence[ir.Node], *,
                     initializers: Sequence[ir.Value] = (), name: str = "alternative") -> ir.Model:
    """`nodes` as a model of their own (default ONNX domain): one form of a choice, to time it."""
    graph = ir.Graph(list(inputs), list(outputs), nodes=list(nodes), initializers=list(initializers),
                     opset_imports={"": STANDALONE_OPSET}, name=name)
    return ir.Model(graph, ir_version=STANDALONE_IR_VERSION)
