"""Small edits rewrites share: adding a constant initializer under a name not yet taken, removing
the ones a rewrite left unread, and
sketching the nodes an alternative would add, outside the graph, to price it before deciding."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from kiln.ir.queries import static_shape


def new_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """Register `array` as an initializer of `graph` named `name` (suffixed until unique)."""
    unique, counter = name, 1
    while unique in graph.initializers:
        unique, counter = f"{name}_{counter}", counter + 1
    tensor = ir.tensor(array, name=unique)
    value = ir.Value(name=unique, type=ir.TensorType(tensor.dtype), shape=ir.Shape(array.shape), const_value=tensor)
    graph.register_initializer(value)
    return value


def remove_unused_initializers(graph: ir.Graph, values: Iterable[ir.Value | None]) -> None:
    """Remove the initializers of `graph` among `values` that nothing reads any more (a rewrite's
    replaced weights); graph inputs and outputs stay."""
    for value in values:
        if value is None or value.uses() or value.is_graph_input() or value.is_graph_output():
            continue
        if value.name and graph.initializers.get(value.name) is value:
            graph.initializers.pop(value.name)


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


def constant_value(name: str, array: np.ndarray) -> ir.Value:
    """A constant named `name` holding `array`, in no graph: an initializer of a standalone model."""
    return ir.Value(name=name, const_value=ir.tensor(array, name=name))


def standalone_model(inputs: Sequence[ir.Value], outputs: Sequence[ir.Value], nodes: Sequence[ir.Node], *,
                     initializers: Sequence[ir.Value] = (), name: str = "alternative",
                     opset_imports: dict[str, int] | None = None) -> ir.Model:
    """`nodes` as a model of their own (default ONNX domain at `STANDALONE_OPSET` unless
    `opset_imports` says otherwise): one form of a choice, to time it."""
    graph = ir.Graph(list(inputs), list(outputs), nodes=list(nodes), initializers=list(initializers),
                     opset_imports=dict(opset_imports or {"": STANDALONE_OPSET}), name=name)
    # an opset newer than the IR version knows is refused by ONNX Runtime's checker
    ir_version = max(STANDALONE_IR_VERSION, onnx.helper.find_min_ir_version_for(
        [onnx.helper.make_opsetid(domain, version) for domain, version in graph.opset_imports.items()],
        ignore_unknown=True))
    return ir.Model(graph, ir_version=ir_version)


def region_key(nodes: Sequence[ir.Node]) -> str:
    """What timing a region of `nodes` depends on: their ops, perms, input shapes and output
    types, in order (a key for measured choices; values do not enter it)."""
    parts = []
    for node in nodes:
        shapes = ",".join("x".join(map(str, static_shape(v) or ("?",))) if v is not None else "-" for v in node.inputs)
        perm = node.attributes.get("perm")
        dtype = node.outputs[0].dtype
        parts.append(f"{node.op_type}{list(perm.value) if perm is not None else ''}({shapes}){dtype or ''}")
    return ";".join(parts)


def region_model(nodes: Sequence[ir.Node], *, name: str = "region") -> tuple[ir.Model, dict[ir.Node, ir.Node]]:
    """A copy of `nodes` (of one graph, no subgraph attributes) as a model of their own, to time a
    region of a graph in one form or another: what they read from outside becomes an initializer
    when its data is known and a graph input otherwise; what is read outside them (or is a graph
    output) becomes a graph output. Returns the model and the copy of each node. Raises ValueError
    when a graph input would have no static shape (the region cannot be run at a fixed size). The
    region keeps its graph's opset imports."""
    inside = set(nodes)
    order = sorted(nodes, key=list(nodes[0].graph).index) if nodes and nodes[0].graph is not None else list(nodes)
    copies: dict[ir.Node, ir.Node] = {}
    values: dict[ir.Value, ir.Value] = {}
    inputs: list[ir.Value] = []
    initializers: list[ir.Value] = []

    def outer(value: ir.Value) -> ir.Value:
        if value in values:
            return values[value]
        if value.const_value is not None:
            copy = ir.Value(name=value.name, type=value.type, shape=value.shape, const_value=value.const_value)
            initializers.append(copy)
        else:
            shape = value.shape
            if shape is None or not all(isinstance(d, int) for d in shape) or value.dtype is None:
                raise ValueError(f"{value.name!r} has no static shape and element type")
            copy = tensor_input(value.name or f"input_{len(inputs)}", list(shape), value.dtype)
            inputs.append(copy)
        values[value] = copy
        return copy

    for node in order:
        if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
            raise ValueError(f"{node.op_type} {node.name!r} has subgraphs")
        wired = [None if v is None else values.get(v) or outer(v) for v in node.inputs]
        attributes = [ir.Attr(a.name, a.type, a.value) for a in node.attributes.values()]
        copy = ir.Node(node.domain, node.op_type, wired, attributes=attributes, num_outputs=len(node.outputs),
                       name=node.name)
        for old, new in zip(node.outputs, copy.outputs):
            new.name, new.type, new.shape = old.name, old.type, old.shape
            values[old] = new
        copies[node] = copy
    outputs = [values[v] for node in order for v in node.outputs
               if v.is_graph_output() or any(user not in inside for user, _ in v.uses())]
    graph = nodes[0].graph if nodes else None
    opsets = dict(graph.opset_imports) if graph is not None and graph.opset_imports else None
    model = standalone_model(inputs, outputs, [copies[n] for n in order], initializers=initializers, name=name,
                             opset_imports=opsets)
    return model, copies
