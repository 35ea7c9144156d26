"""Merge initializers that hold identical data (same dtype, shape and bytes) into one."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from kiln.passes.infra.contract import Pass, PassContext, PassResult
from kiln.passes.infra.recording import node_ref
from kiln.report.model import Rewrite

logger = logging.getLogger(__name__)

# Elements read from each same-shaped initializer before comparing any of them in full.
_SAMPLE_ELEMENTS = 64


class DeduplicateInitializers(Pass):
    """Point every use of a duplicated initializer at one copy (the first) and report which
    initializers were merged.

    Equal data is established by comparing bytes, but only between candidates: initializers
    with the same dtype and shape whose evenly spaced sample of elements also matches. onnx-ir's
    DeduplicateHashedInitializersPass hashes every byte of every weight instead (a second per
    440 MB on BERT-base), although weights of one shape almost always differ in their first
    elements. Like onnx-ir's pass, it works per graph and skips graph inputs and outputs.
    """

    name = "initializer_deduplication"

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        _make_contiguous(model)
        before = {
            id(node): (node, tuple(node.inputs)) for node in ir.traversal.RecursiveGraphIterator(model.graph)
        }
        replaced = sum(_deduplicate(graph) for graph in model.graphs())
        if not replaced:
            return PassResult(model, False)
        merged: dict[tuple[str, str], list[ir.Node]] = {}
        for node, old_inputs in before.values():
            for old, new in zip(old_inputs, node.inputs):
                if old is not None and new is not None and old is not new and new.is_initializer() and not old.is_initializer():
                    merged.setdefault((old.name or "", new.name or ""), []).append(node)
        rewrites = [
            Rewrite(rule="merge_duplicate_initializer", nodes=[node_ref(n) for n in users],
                    reason=f"initializer {old} holds the same data as {new}", result=f"now reads {new}")
            for (old, new), users in merged.items()
        ]
        return PassResult(model, True, rewrites=rewrites)


def _flat_bytes(tensor: ir.TensorProtocol) -> np.ndarray:
    """The tensor's data as a flat array of bytes per element (strings padded to one width)."""
    if tensor.dtype.is_string():
        return np.array(tensor.string_data()).reshape(-1)
    array = np.ascontiguousarray(tensor.numpy()).reshape(-1)
    return array.view(np.uint8).reshape(array.size, -1) if array.size else array.view(np.uint8)


def _sample(tensor: ir.TensorProtocol) -> bytes:
    data = _flat_bytes(tensor)
    if len(data) <= _SAMPLE_ELEMENTS:
        return data.tobytes()
    return data[np.linspace(0, len(data) - 1, _SAMPLE_ELEMENTS).astype(np.int64)].tobytes()


def _deduplicate(graph: ir.Graph) -> int:
    """Merge the duplicated initializers of one graph; returns how many went."""
    by_shape: dict[tuple, list[ir.Value]] = {}
    for value in graph.initializers.values():
        tensor = value.const_value
        if tensor is None or value.is_graph_input() or value.is_graph_output():
            continue
        by_shape.setdefault((tensor.dtype, tuple(tensor.shape.numpy())), []).append(value)
    removed = 0
    for same_shape in by_shape.values():
        if len(same_shape) < 2:
            continue
        by_sample: dict[bytes, list[ir.Value]] = {}
        for value in same_shape:
            by_sample.setdefault(_sample(value.const_value), []).append(value)
        for candidates in by_sample.values():
            kept: list[tuple[ir.Value, np.ndarray]] = []
            for value in candidates:
                data = _flat_bytes(value.const_value) if len(candidates) > 1 else None
                twin = next((k for k, k_data in kept if data is not None and np.array_equal(k_data, data)), None)
                if twin is None:
                    kept.append((value, data))
                    continue
                value.replace_all_uses_with(twin)
                graph.initializers.pop(value.name)
                logger.info("Replaced initializer %r with the identical %r", value.name, twin.name)
                removed += 1
    return removed


def _make_contiguous(model: ir.Model) -> None:
    """Give numpy-backed initializers C-contiguous storage. Constant folding can leave views
    (a folded Transpose), which serializers and hashers of onnx-ir 1.1.0 cannot handle."""
    for value in model.graph.initializers.values():
        tensor = value.const_value
        raw = getattr(tensor, "raw", None)
        if isinstance(tensor, ir.Tensor) and isinstance(raw, np.ndarray) and not raw.flags.c_contiguous:
            value.const_value = ir.Tensor(np.ascontiguousarray(raw), name=tensor.name)
