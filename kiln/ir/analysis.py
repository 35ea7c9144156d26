"""Whole-model analyses used by reports and the CLI: node counts, parameter bytes, op histogram."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import onnx_ir as ir

from kiln.ir.queries import is_onnx, op_key


def iter_nodes(model: ir.Model) -> list[ir.Node]:
    """All nodes of the main graph and of its subgraphs (If/Loop/Scan bodies)."""
    return list(ir.traversal.RecursiveGraphIterator(model.graph))


def count_nodes(model: ir.Model) -> int:
    """Number of nodes, subgraphs included."""
    return sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph))


def _tensor_nbytes(value: ir.Value) -> int:
    tensor = value.const_value
    if tensor is None:
        return 0
    try:
        return int(tensor.nbytes)
    except (AttributeError, TypeError, ValueError):
        return 0


def parameter_bytes(model: ir.Model) -> int:
    """Bytes held by initializers and Constant nodes (main graph and subgraphs)."""
    total = sum(_tensor_nbytes(v) for v in model.graph.initializers.values())
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if is_onnx(node, "Constant"):
            attr = node.attributes.get("value")
            if attr is not None and attr.type == ir.AttributeType.TENSOR:
                try:
                    total += int(attr.value.nbytes)
                except (AttributeError, TypeError, ValueError):
                    pass
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                total += sum(_tensor_nbytes(v) for v in attr.value.initializers.values())
    return total


def op_histogram(model: ir.Model) -> Counter[str]:
    """How many nodes of each op (domain-qualified outside the default domain)."""
    counts: Counter[str] = Counter()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        counts[op_key(node)] += 1
    return counts


@dataclass(frozen=True)
class ValueInfo:
    """A graph input or output as a report shows it."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...] | None

    @classmethod
    def of(cls, value: ir.Value) -> ValueInfo:
        shape = None
        if value.shape is not None:
            shape = tuple(d if isinstance(d, int) else (str(d) if d.value else None) for d in value.shape)
        dtype = value.dtype.name.lower() if value.dtype is not None else "unknown"
        return cls(value.name or "", dtype, shape)

    def shape_text(self) -> str:
        if self.shape is None:
            return "?"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


@dataclass(frozen=True)
class ModelSummary:
    """What `kiln inspect` prints."""

    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    node_count: int
    parameter_bytes: int
    op_histogram: dict[str, int]
    opsets: dict[str, int]
    ir_version: int
    producer: str

    @classmethod
    def of(cls, model: ir.Model) -> ModelSummary:
        return cls(
            inputs=[ValueInfo.of(v) for v in model.graph.inputs],
            outputs=[ValueInfo.of(v) for v in model.graph.outputs],
            node_count=count_nodes(model),
            parameter_bytes=parameter_bytes(model),
            op_histogram=dict(op_histogram(model).most_common()),
            opsets=dict(model.opset_imports),
            ir_version=model.ir_version,
            producer=" ".join(p for p in (model.producer_name, model.producer_version) if p),
        )
