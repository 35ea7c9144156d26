"""The graph ONNX Runtime will really run: the model after ORT's own graph optimizer.

Pricing a model node by node counts every Reshape and every bias Add as a kernel; ORT fuses
MatMul+Add into Gemm/FusedMatMul, LayerNorm and Gelu subgraphs into one op, and so on. The cost
model prices the lowered graph when asked for the latency a user will see (``compiled=True``),
and the profiler's kernels (`measure.py`) are the nodes of this same graph.

ORT only optimizes at session creation, so this builds a session (no inference runs) and reads
back the graph it saved (`SessionOptions.optimized_model_filepath`).
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

import onnx_ir as ir

from kiln.backends.onnxruntime import create_session, save_optimized_graph, session_options
from kiln.cost_model.analytical import RunFacts, set_shapes
from kiln.cost_model.measure.observed import observe
from kiln.ir.inputs import Feeds
from kiln.ir.serialization import save_model
from kiln.target import Target

logger = logging.getLogger(__name__)

__all__ = ["infer_nchwc_shapes", "observed_compiled_model", "ort_compiled_model"]

_NCHWC = "com.microsoft.nchwc"

def ort_compiled_model(model: ir.Model, *, threads: int = 2, level: str = "all") -> ir.Model:
    """`model` lowered by ONNX Runtime's graph optimizer at `level` for `threads` threads.

    The returned model is for pricing only: its large initializers keep their shape and dtype but
    their data was in a temporary file that is gone (reading it raises).
    """
    return _lower(model, threads, level, None)[0]


def observed_compiled_model(model: ir.Model, feeds: Feeds, *, threads: int = 2,
                            level: str = "all") -> tuple[ir.Model, RunFacts]:
    """`ort_compiled_model`, run once on `feeds` with every tensor observed (`observed.observe`),
    its values carrying the shapes and element types ORT really used, and the facts of that run.
    ORT does not save the shapes of most values it creates (NCHWc blocks, contrib ops), and ONNX
    shape inference does not know its contrib ops: without a run those nodes could not be priced."""
    compiled, facts = _lower(model, threads, level, feeds)
    assert facts is not None
    return compiled, facts


def _lower(model: ir.Model, threads: int, level: str, feeds: Feeds | None) -> tuple[ir.Model, RunFacts | None]:
    """The lowered graph and, with `feeds`, the facts of one observed run of it (inside the
    temporary folder that holds its weights)."""
    target = Target(intra_op_threads=threads, graph_optimization_level=level)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory(prefix="kiln-lower-") as tmp:
        source = save_model(model, Path(tmp, "model.onnx"))
        options = session_options(target)
        # large weights go to a side file that goes with the temporary folder: pricing needs
        # their shape and dtype, never their values
        save_optimized_graph(options, Path(tmp, "compiled.onnx"))
        create_session(source, target, options=options, purpose="to price it")
        compiled = ir.load(Path(tmp, "compiled.onnx"))
        facts = observe(compiled, feeds, threads=threads, workdir=Path(tmp)) if feeds is not None else None
    infer_nchwc_shapes(compiled)
    if facts is not None:
        set_shapes(compiled, facts.shapes, facts.dtypes)  # what peak memory reads off the graph
    logger.debug("lowered %d nodes to %d ORT kernels", len(list(model.graph)), len(list(compiled.graph)))
    return compiled, facts


def _spatial(size: int, kernel: int, stride: int, dilation: int, pad_begin: int, pad_end: int, auto_pad: str,
             ceil_mode: bool = False) -> int:
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return math.ceil(size / stride)
    span = size + pad_begin + pad_end - dilation * (kernel - 1) - 1
    if auto_pad == "VALID":
        span = size - dilation * (kernel - 1) - 1
    return (math.ceil(span / stride) if ceil_mode else span // stride) + 1


def _window_output(node: ir.Node, x: tuple[int, ...], channels: int, kernel: tuple[int, ...]) -> tuple[int, ...]:
    rank = len(kernel)
    strides = node.attributes.get_ints("strides", [1] * rank)
    dilations = node.attributes.get_ints("dilations", [1] * rank)
    pads = node.attributes.get_ints("pads", [0] * (2 * rank))
    auto_pad = node.attributes.get_string("auto_pad", "NOTSET")
    ceil_mode = bool(node.attributes.get_int("ceil_mode", 0))
    spatial = [_spatial(x[2 + i], kernel[i], strides[i], dilations[i], pads[i], pads[rank + i], auto_pad, ceil_mode)
               for i in range(rank)]
    return (x[0], channels, *spatial)


def _nchwc_output_shape(node: ir.Node) -> tuple[int, ...] | None:
    x_value = node.inputs[0] if node.inputs else None
    if x_value is None or x_value.shape is None or not x_value.shape.is_static():
        return None
    x = tuple(int(d) for d in x_value.shape)
    op = node.op_type
    if op == "Conv":
        w = node.inputs[1].shape if len(node.inputs) > 1 and node.inputs[1] is not None else None
        if w is None or not w.is_static():
            return None
        return _window_output(node, x, int(w[0]), tuple(int(d) for d in w[2:]))
    if op in ("MaxPool", "AveragePool"):
        return _window_output(node, x, x[1], tuple(node.attributes.get_ints("kernel_shape", [])))
    if op in ("GlobalMaxPool", "GlobalAveragePool"):
        return (x[0], x[1], *([1] * (len(x) - 2)))
    if op == "ReorderInput":
        return x
    if op == "ReorderOutput":
        channels = node.attributes.get_int("channels", x[1])
        spatial = x[2:]
        return (x[0], *spatial, channels) if node.attributes.get_int("channels_last", 0) else (x[0], channels, *spatial)
    if op == "Upsample":
        scales = node.attributes.get_ints("scales", [])
        return tuple(d * s for d, s in zip(x, scales)) if len(scales) == len(x) else None
    return None


def infer_nchwc_shapes(model: ir.Model) -> int:
    """Give the outputs of ORT's NCHWc layout ops (com.microsoft.nchwc: Conv, MaxPool, ...) their
    shapes: ORT does not save them and ONNX shape inference does not know these ops. Blocked
    tensors keep the logical NCHW shape (channel padding to the block size is not modelled).
    Returns how many values got a shape. Runs in node order, so chains of such ops resolve."""
    filled = 0
    for node in model.graph:
        if node.domain != _NCHWC or not node.outputs:
            continue
        output = node.outputs[0]
        if output.shape is not None and output.shape.is_static():
            continue
        shape = _nchwc_output_shape(node)
        if shape is None:
            continue
        output.shape = ir.Shape(shape)
        if output.dtype is None and node.inputs and node.inputs[0] is not None:
            output.dtype = node.inputs[0].dtype
        filled += 1
    return filled
