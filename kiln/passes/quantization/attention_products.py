"""The MatMuls of two activations in attention, ``P = Softmax(Q K^T + mask)`` and ``P V``, in
static int8: each operand read through a fixed-scale QuantizeLinear / DequantizeLinear.

    Q -> QDQ ┐                                      V -> QDQ ┐
    K -> QDQ ┴ MatMul -> (scale, mask) -> Softmax -> QDQ ────┴ MatMul

An operand that takes negative values (Q, K, V) is quantized symmetrically to int8 (zero point
0, scale ``max|x| / 127``); one that does not (the probabilities P) to uint8 with zero point 0
(scale ``max x / 255``). Zero points of 0 are what OpenVINO's CPU plugin needs to run the
attention core as one int8 kernel; an asymmetric uint8 Q / K / V keeps it in fp32 and only adds
the quantization. The ranges come from the calibration inputs (`static_activations`).

Whether the int8 core is faster is measured on the target per core shape: the core's region
(the head-split Reshapes and Transposes, both MatMuls, the scores path and the heads' merge) is
timed as a small model in fp32 and with the four pairs (`alternatives`); the region leaves out
the linears around it, so the gains their int8 outputs bring are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from kiln.ir.edits import new_initializer, region_key, region_model
from kiln.ir.queries import constant_array, is_onnx, scores_path
from kiln.passes.quantization.static_activations import ActivationRange

__all__ = ["AttentionCore", "attention_core_of", "find_attention_cores", "operand_quantization",
           "quantize_attention_core", "alternatives"]

#: ops that only move or relabel data between a head split or merge and its MatMul
_LAYOUT = ("Transpose", "Reshape", "Squeeze", "Unsqueeze")


@dataclass(frozen=True)
class AttentionCore:
    """The two products of one attention: `node` (Q K^T), the scores path from it up to and
    including `context` (P V), and the region timed for it."""

    node: ir.Node
    context: ir.Node
    path: tuple[ir.Node, ...]
    region: tuple[ir.Node, ...]

    @property
    def name(self) -> str:
        return self.node.name or f"MatMul({self.node.inputs[0].name})"

    @property
    def operands(self) -> tuple[ir.Value, ir.Value, ir.Value, ir.Value]:
        """Q, K^T, P and V as the two MatMuls read them."""
        q, k = self.node.inputs[0], self.node.inputs[1]
        p, v = self.context.inputs[0], self.context.inputs[1]
        assert q is not None and k is not None and p is not None and v is not None
        return q, k, p, v

    @property
    def key(self) -> str:
        return "int8_attention_core:" + region_key(self.region)

    @property
    def static(self) -> bool:
        return all(v.shape is not None and all(isinstance(d, int) for d in v.shape) for v in self.operands)

    def __str__(self) -> str:
        q, k, _, v = self.operands
        return f"attention {'x'.join(map(str, q.shape or '?'))} @ {'x'.join(map(str, k.shape or '?'))}, " \
               f"V {'x'.join(map(str, v.shape or '?'))}"


def _is_activation(value: ir.Value | None) -> bool:
    return value is not None and constant_array(value) is None and value.dtype in (None, ir.DataType.FLOAT)


def _layout_chain(value: ir.Value, upstream: bool) -> list[ir.Node]:
    """The layout-only nodes next to an operand: its producers while each is a Transpose, Reshape,
    Squeeze or Unsqueeze read only by the next (upstream), or the readers of a MatMul's output
    while each is the sole reader of one of them (downstream)."""
    chain: list[ir.Node] = []
    while len(chain) < 4:
        if upstream:
            node = value.producer()
            if node is None or not is_onnx(node) or node.op_type not in _LAYOUT or value.is_graph_output() \
                    or len(value.uses()) != 1:
                break
            chain.append(node)
            value = node.inputs[0]
        else:
            users = [user for user, _ in value.uses()]
            if value.is_graph_output() or len(users) != 1 or not is_onnx(users[0]) or users[0].op_type not in _LAYOUT:
                break
            chain.append(users[0])
            value = users[0].outputs[0]
        if value is None:
            break
    return chain


def attention_core_of(node: ir.Node) -> AttentionCore | str:
    """`node` as the Q K^T MatMul of an attention core, or why it is not one."""
    if not is_onnx(node, "MatMul"):
        return f"{node.op_type} is not a MatMul"
    if not (_is_activation(node.inputs[0]) and _is_activation(node.inputs[1])):
        return "not a product of two float32 activations"
    path = scores_path(node)
    if path is None:
        return "a product of two activations without a scores path (a Softmax chain) to a second product"
    context = path[-1]
    if not any(is_onnx(n, "Softmax") for n in path[:-1]):
        return "a product of two activations without a scores path (a Softmax chain) to a second product"
    if context.inputs[0] is not path[-2].outputs[0]:
        return "the scores are not the left operand of the second product"
    if not _is_activation(context.inputs[1]):
        return "the second product's right operand is not an activation"
    core = AttentionCore(node, context, tuple(path), ())
    region: set[ir.Node] = {node, *path}
    for operand in (core.operands[0], core.operands[1], core.operands[3]):
        region.update(_layout_chain(operand, upstream=True))
    region.update(_layout_chain(context.outputs[0], upstream=False))
    graph = node.graph
    order = {n: i for i, n in enumerate(graph)} if graph is not None else {}
    return AttentionCore(node, context, tuple(path), tuple(sorted(region, key=lambda n: order.get(n, 0))))


def find_attention_cores(graph: ir.Graph) -> tuple[list[AttentionCore], dict[str, int]]:
    """The attention cores of `graph` (top level, in graph order) and, for the other products of
    two activations, how many were left for each reason."""
    cores: list[AttentionCore] = []
    left: dict[str, int] = {}
    contexts: set[ir.Node] = set()
    for node in graph:
        if not is_onnx(node, "MatMul") or node in contexts:
            continue
        if not (_is_activation(node.inputs[0]) and _is_activation(node.inputs[1])):
            continue
        core = attention_core_of(node)
        if isinstance(core, str):
            left[core] = left.get(core, 0) + 1
        else:
            cores.append(core)
            contexts.add(core.context)
    return cores, left


def operand_quantization(activation: ActivationRange) -> tuple[np.float32, np.ndarray]:
    """The scale and zero point (0) of an operand: int8 symmetric about 0 when its range holds
    negative values, else uint8 from 0."""
    low, high = float(activation.low), float(activation.high)
    if low < 0:
        bound = max(-low, high)
        return np.float32(bound / 127.0 if bound > 0 else 1.0), np.asarray(0, np.int8)
    return np.float32(high / 255.0 if high > 0 else 1.0), np.asarray(0, np.uint8)


def _read_through_pair(graph: ir.Graph, reader: ir.Node, index: int, scale: np.float32, zero_point: np.ndarray,
                       prefix: str) -> list[ir.Node]:
    """Make `reader` read its input `index` through a QuantizeLinear / DequantizeLinear pair at
    `scale` and `zero_point`, inserted before it; the new nodes."""
    x = reader.inputs[index]
    assert x is not None
    scale_value = new_initializer(graph, f"{prefix}.scale", np.asarray(scale, np.float32))
    zero_value = new_initializer(graph, f"{prefix}.zero_point", zero_point)
    quantize = ir.Node("", "QuantizeLinear", [x, scale_value, zero_value], name=f"{prefix}.quantize")
    dequantize = ir.Node("", "DequantizeLinear", [quantize.outputs[0], scale_value, zero_value],
                         name=f"{prefix}.dequantize")
    quantize.outputs[0].name, dequantize.outputs[0].name = f"{prefix}.int8", f"{prefix}.dequantized"
    quantize.outputs[0].dtype = ir.DataType.INT8 if zero_point.dtype == np.int8 else ir.DataType.UINT8
    dequantize.outputs[0].dtype = ir.DataType.FLOAT
    quantize.outputs[0].shape = dequantize.outputs[0].shape = x.shape
    graph.insert_before(reader, [quantize, dequantize])
    reader.replace_input_with(index, dequantize.outputs[0])
    return [quantize, dequantize]


_OPERANDS = ("q", "k", "p", "v")


def quantize_attention_core(graph: ir.Graph, core: AttentionCore, ranges: dict[str, ActivationRange]) -> list[ir.Node]:
    """Put the four operands of `core` behind fixed-scale pairs at their calibrated ranges
    (`operand_quantization`), in place; the nodes added."""
    added: list[ir.Node] = []
    for (reader, index), label, operand in zip(((core.node, 0), (core.node, 1), (core.context, 0), (core.context, 1)),
                                               _OPERANDS, core.operands):
        scale, zero_point = operand_quantization(ranges[operand.name or ""])
        added += _read_through_pair(graph, reader, index, scale, zero_point, f"{core.name}.{label}")
    return added


def alternatives(core: AttentionCore) -> tuple[ir.Model, ir.Model]:
    """(fp32, int8 static): the core's region as written, and with its four operands behind pairs
    (scales of a unit range: a kernel's time does not depend on them). Raises ValueError when the
    region cannot be a model of its own (an input without a static shape)."""
    baseline, _ = region_model(list(core.region), name="attention_fp32")
    candidate, copies = region_model(list(core.region), name="attention_int8")
    node, context = copies[core.node], copies[core.context]
    pairs = ((node, 0, True), (node, 1, True), (context, 0, False), (context, 1, True))
    for (reader, index, signed), label in zip(pairs, _OPERANDS):
        zero_point = np.asarray(0, np.int8 if signed else np.uint8)
        scale = np.float32(1.0 / (127.0 if signed else 255.0))
        _read_through_pair(candidate.graph, reader, index, scale, zero_point, label)
    return baseline, candidate
