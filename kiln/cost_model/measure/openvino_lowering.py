"""Pricing a model as OpenVINO runs it: one estimate per kernel of OpenVINO's runtime graph.

OpenVINO's CPU plugin fuses differently from ONNX Runtime (element-wise chains and attention
into "Subgraph" snippets, bias and activations into FullyConnected and Convolution) and folds
constant subgraphs at compile time, so the kernels priced are the ones a run reports executed
(`kiln.backends.openvino.kernels`). A kernel is priced as the group of ONNX nodes OpenVINO says
it runs (its ``originalLayersNames``): their FLOPs, the group's boundary tensors and one launch,
at the shapes one ONNX Runtime run observed. A kernel that names no ONNX node (a layout reorder,
an inserted conversion, a node of OpenVINO's own decomposition, or an ONNX node another kernel
already accounts for) is priced from its own tensors as data movement or element-wise work. A
Convolution or FullyConnected kernel whose named nodes hold no Conv or MatMul (OpenVINO renames a
Conv it folded a BatchNorm into) is priced from its own tensors as that product.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from kiln.backends.openvino.kernels import RuntimeKernel, TensorFacts, runtime_kernels
from kiln.cost_model.analytical import model_cost as analytical_model_cost
from kiln.cost_model.analytical import set_shapes
from kiln.cost_model.measure.observed import observe
from kiln.cost_model.model import CostModel, ModelEstimate, peak_memory_bytes
from kiln.cost_model.hardware import HardwareProfile
from kiln.cost_model.roofline import Estimate, group_estimate, node_estimate, op_class, roofline
from kiln.ir.edits import sketch_node
from kiln.ir.inputs import Feeds
from kiln.target import Target

logger = logging.getLogger(__name__)

__all__ = ["DOMAIN", "openvino_model_cost"]

#: the domain of the nodes that stand for OpenVINO's kernels in a `ModelEstimate`
DOMAIN = "ai.openvino"

#: OpenVINO layer types that move data without arithmetic (priced by the bytes they read and write)
_DATA_MOVEMENT = frozenset({"Reorder", "Transpose", "Concatenation", "Split", "Gather", "GatherND", "Convert",
                            "Broadcast", "StridedSlice", "Pad", "Tile", "ScatterUpdate", "Interpolate"})
_VIEWS = frozenset({"Reshape", "Squeeze", "Unsqueeze"})

_ELEMENT_TYPES = {"f32": ir.DataType.FLOAT, "f16": ir.DataType.FLOAT16, "bf16": ir.DataType.BFLOAT16,
                  "f64": ir.DataType.DOUBLE, "i64": ir.DataType.INT64, "i32": ir.DataType.INT32,
                  "i8": ir.DataType.INT8, "u8": ir.DataType.UINT8, "boolean": ir.DataType.BOOL,
                  "i16": ir.DataType.INT16, "u16": ir.DataType.UINT16}


def _value(facts: TensorFacts, name: str) -> ir.Value:
    dtype = _ELEMENT_TYPES.get(facts.element_type, ir.DataType.FLOAT)
    return ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(list(facts.shape)) if facts.shape else None)


def _inputs(kernel: RuntimeKernel) -> list[ir.Value]:
    return [_value(t, f"{kernel.name}:in{i}") for i, t in enumerate(kernel.inputs)]


def _outputs(kernel: RuntimeKernel) -> list[tuple[list[int] | None, ir.DataType | None]]:
    return [(list(t.shape) if t.shape else None, _ELEMENT_TYPES.get(t.element_type)) for t in kernel.outputs]


def _stand_in(kernel: RuntimeKernel) -> ir.Node:
    """The node a `ModelEstimate` lists for `kernel`: named like it, of its layer type."""
    node = sketch_node(kernel.layer_type or "Kernel", _inputs(kernel), _outputs(kernel), domain=DOMAIN)
    node.name = kernel.name
    return node


#: OpenVINO's product kernels and the op class their FLOPs belong to
_PRODUCTS = {"Convolution": "conv", "GroupConvolution": "conv", "Deconvolution": "conv",
             "FullyConnected": "gemm", "MatMul": "gemm"}


def _product_estimate(kernel: RuntimeKernel, profile: HardwareProfile, resident: bool) -> Estimate | None:
    """A Conv or GEMM kernel priced from its tensors: 2 x output elements x the multiply-adds per
    output element (a Conv's weight elements over its output channels; a GEMM's inner dim)."""
    if len(kernel.inputs) < 2 or not kernel.outputs or kernel.outputs[0].shape is None:
        return None
    x, w, out = kernel.inputs[0], kernel.inputs[1], kernel.outputs[0]
    if x.shape is None or w.shape is None or len(out.shape) < 2:
        return None
    product = _PRODUCTS[kernel.layer_type]
    out_numel = int(np.prod(out.shape, dtype=np.int64))
    if product == "conv":
        channels = out.shape[1] or 1
        per_output = int(np.prod(w.shape, dtype=np.int64)) // channels
    else:
        per_output = x.shape[-1]
    weights = sum(t.nbytes for t in kernel.inputs[1:])  # weights and bias (OpenVINO folded them to constants)
    activations = x.nbytes + out.nbytes
    return roofline(profile, op_class=product, precision="fp32", flops=2 * out_numel * per_output,
                    activation_bytes=activations, weight_bytes=weights, weights_resident=resident,
                    op=kernel.layer_type, output_bytes=out.nbytes)


def _own_estimate(kernel: RuntimeKernel, cost_model: CostModel, resident: bool) -> Estimate:
    """A kernel with no ONNX node of its own, priced from its tensors: a view, data movement
    (a Concat over its inputs) or element-wise work (a Sum over its inputs)."""
    op = "Reshape" if kernel.layer_type in _VIEWS else "Concat" if kernel.layer_type in _DATA_MOVEMENT else "Sum"
    inputs = _inputs(kernel)
    attributes = [ir.AttrInt64("axis", 0)] if op == "Concat" else []
    node = sketch_node(op, inputs[:1] if op == "Reshape" else inputs, _outputs(kernel)[:1], attributes=attributes)
    return node_estimate(node, cost_model.profile, weights_resident=resident)


def _onnx_node(name: str, by_name: Mapping[str, ir.Node]) -> ir.Node | None:
    """The ONNX node an OpenVINO name stands for: the name itself, else the name without the
    suffixes OpenVINO's decompositions append ("conv/WithoutBiases", "MatMul_48/transpose_b")."""
    while name:
        if name in by_name:
            return by_name[name]
        if "/" not in name:
            return None
        name = name.rsplit("/", 1)[0]
    return None


def openvino_model_cost(cost_model: CostModel, model: ir.Model, feeds: Feeds, *,
                        dims: Mapping[str, int] | None = None, kernels: Sequence[RuntimeKernel] | None = None,
                        target: Target | None = None) -> ModelEstimate:
    """Predicted latency of `model` run by OpenVINO on `feeds`: every kernel OpenVINO executes
    (`kernels`, else compiled and run once here with `target`, by default the CPU at the cost
    model's thread count) priced by `cost_model` (see the module doc). Each entry of `per_node`
    is a stand-in node in the `DOMAIN` domain named like its kernel; `facts` are the shapes the
    ONNX Runtime run observed."""
    threads = cost_model.profile.threads
    if kernels is None:
        target = target or Target(backend="openvino", intra_op_threads=threads)
        kernels = runtime_kernels(model, feeds, target, repeats=1)
    priced = model.clone()  # shapes are set on a copy; the caller's model is not modified
    facts = observe(priced, feeds, threads=threads)
    set_shapes(priced, facts.shapes, facts.dtypes)
    costs = analytical_model_cost(priced, dims=dims, facts=facts)
    cost_of = dict(costs.per_node)
    by_name: dict[str, ir.Node] = {}
    for node in priced.graph:
        for key in (node.name, *(v.name for v in node.outputs)):
            if key:
                by_name.setdefault(key, node)
    peak, weights = peak_memory_bytes(priced.graph, dims)
    profile = cost_model.profile
    resident = profile.holds_weights(weights)
    taken: set[ir.Node] = set()
    per_node: list[tuple[ir.Node, Estimate]] = []
    unmatched: Counter[str] = Counter()
    for kernel in kernels:
        nodes = []
        for name in kernel.original_names:
            node = _onnx_node(name, by_name)
            if node is not None and node not in taken and node in cost_of:
                nodes.append(node)
                taken.add(node)
        product = _PRODUCTS.get(kernel.layer_type)
        if product is not None and not any(op_class(n) == product for n in nodes):
            estimate = _product_estimate(kernel, profile, resident)  # the product's own node went unnamed
            if estimate is not None:
                unmatched[kernel.layer_type] += 1
                per_node.append((_stand_in(kernel), estimate))
                continue
        if not nodes:
            unmatched[kernel.layer_type] += 1
            estimate = _own_estimate(kernel, cost_model, resident)
        elif len(nodes) == 1:
            estimate = node_estimate(nodes[0], profile, cost=cost_of[nodes[0]], weights_resident=resident, dims=dims)
        else:
            estimate = group_estimate(nodes, profile, costs=cost_of, weights_resident=resident, dims=dims)
        per_node.append((_stand_in(kernel), estimate))
    if unmatched:
        logger.debug("OpenVINO kernels priced from their own tensors: %s", dict(unmatched))
    return ModelEstimate.of(costs, per_node, latency_ms=sum(e.ms for _, e in per_node), peak=peak, weights=weights,
                            resident=resident, corrected=False, compiled=True, facts=facts)
