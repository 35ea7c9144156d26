"""A corpus of one-operator models at sampled shapes: training kernels for the learned correction.

A correction fitted only on whole models learns the kernels those models happen to run (a
transformer zoo has no depthwise conv, no Slice of an NCHW map, no TopK) and misprices the rest
on a model it has not seen. Profiling-driven calibration measures the kernels themselves instead:
each `KernelCase` is one operator at one sampled shape, lowered and profiled by ONNX Runtime like
any model (a Conv comes back as ORT's NCHWc Conv with its reorders), so its kernels are priced and
fitted exactly like the zoo's.

The configurations are drawn with a seeded generator from per-operator shape grids that span the
sizes real models run, from launch-bound (a few thousand elements) to bandwidth- or compute-bound
(millions), so the same corpus comes back on every machine and only the measurements differ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["KernelCase", "OPS", "kernel_corpus"]

_OPSET = 17
#: a corpus model and the inputs it runs on
Built = tuple[onnx.ModelProto, dict[str, np.ndarray]]
Builder = Callable[[np.random.Generator], Built]


@dataclass(frozen=True)
class KernelCase:
    """One operator at one shape: the model (ONNX protobuf) and the inputs to run it on."""

    name: str
    model: onnx.ModelProto
    inputs: dict[str, np.ndarray]


def _model(nodes: list[onnx.NodeProto], inputs: dict[str, np.ndarray], outputs: list[str],
           initializers: dict[str, np.ndarray] | None = None) -> Built:
    for i, node in enumerate(nodes):  # profiled kernels are matched to nodes by name
        node.name = node.name or f"{node.op_type.lower()}_{i}"
    graph = helper.make_graph(
        nodes, "kernel",
        [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for name, a in inputs.items()],
        [helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None) for name in outputs],
        [numpy_helper.from_array(a, name) for name, a in (initializers or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    return onnx.shape_inference.infer_shapes(model, strict_mode=True), dict(inputs)


def _f32(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def _image(rng: np.random.Generator) -> tuple[int, int, int]:
    """(channels, height, width) of a feature map: fewer channels at high resolution, like a CNN."""
    side = int(rng.choice([8, 12, 16, 24, 32, 48, 56, 64, 96, 112]))
    channels = int(rng.choice([c for c in (3, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
                               if c * side * side <= 1_600_000]))
    return channels, side, max(side // int(rng.choice([1, 1, 2, 4])), 4)


def _conv(rng: np.random.Generator) -> Built:
    c, h, w = _image(rng)
    depthwise = rng.random() < 0.3
    kernel = int(rng.choice([1, 3, 3, 5] if not depthwise else [3, 3, 5]))
    stride = int(rng.choice([1, 1, 2]))
    out = c if depthwise else int(rng.choice([8, 16, 32, 48, 64, 96, 128, 256]))
    group = c if depthwise else 1
    x = _f32(rng, 1, c, h, w)
    weight = _f32(rng, out, c // group, kernel, kernel) * 0.1
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=group, strides=[stride, stride],
                            pads=[kernel // 2] * 4)
    return _model([node], {"x": x}, ["y"], {"w": weight, "b": _f32(rng, out)})


def _conv1d(rng: np.random.Generator) -> Built:
    c = int(rng.choice([1, 16, 32, 64, 128, 256]))
    length = int(rng.choice([256, 1000, 4000, 16000]))
    length = min(length, 2_000_000 // c)
    kernel, stride = int(rng.choice([3, 5, 10])), int(rng.choice([1, 2, 5]))
    out = int(rng.choice([16, 32, 64, 128, 256]))
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=[stride], pads=[kernel // 2] * 2)
    return _model([node], {"x": _f32(rng, 1, c, length)}, ["y"], {"w": _f32(rng, out, c, kernel) * 0.1})


def _feature_map(rng: np.random.Generator) -> np.ndarray:
    c, h, w = _image(rng)
    return _f32(rng, int(rng.choice([1, 1, 1, 2, 8])) if c * h * w < 200_000 else 1, c, h, w)


def _unary(op: str, **attrs: Any) -> Builder:
    def build(rng: np.random.Generator) -> Built:
        return _model([helper.make_node(op, ["x"], ["y"], **attrs)], {"x": _feature_map(rng)}, ["y"])
    return build


def _clip(rng: np.random.Generator) -> Built:
    limits = {"lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}
    return _model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], {"x": _feature_map(rng)}, ["y"], limits)


def _binary(op: str) -> Builder:
    def build(rng: np.random.Generator) -> Built:
        x = _feature_map(rng)
        kind = rng.choice(["same", "channel", "scalar"])
        if kind == "same":
            return _model([helper.make_node(op, ["x", "z"], ["y"])], {"x": x, "z": _f32(rng, *x.shape)}, ["y"])
        other = _f32(rng, 1, x.shape[1], 1, 1) if kind == "channel" else np.array(0.5, np.float32)
        return _model([helper.make_node(op, ["x", "z"], ["y"])], {"x": x}, ["y"], {"z": other})
    return build


def _batchnorm(rng: np.random.Generator) -> Built:
    x = _feature_map(rng)
    c = x.shape[1]
    params = {"s": _f32(rng, c), "b": _f32(rng, c), "m": _f32(rng, c), "v": np.abs(_f32(rng, c)) + 1}
    return _model([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])], {"x": x}, ["y"], params)


def _pool(op: str) -> Builder:
    def build(rng: np.random.Generator) -> Built:
        x = _feature_map(rng)
        if op == "GlobalAveragePool":
            node = helper.make_node(op, ["x"], ["y"])
        else:
            k = int(rng.choice([2, 3]))
            node = helper.make_node(op, ["x"], ["y"], kernel_shape=[k, k], strides=[2, 2])
        return _model([node], {"x": x}, ["y"])
    return build


def _resize(rng: np.random.Generator) -> Built:
    x = _feature_map(rng)
    mode = str(rng.choice(["nearest", "linear"]))
    scales = np.array([1, 1, 2, 2], np.float32)
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode)
    return _model([node], {"x": x}, ["y"], {"scales": scales})


def _concat(rng: np.random.Generator) -> Built:
    x = _feature_map(rng)
    axis = int(rng.choice([1, 3]))
    return _model([helper.make_node("Concat", ["x", "z"], ["y"], axis=axis)], {"x": x, "z": _f32(rng, *x.shape)}, ["y"])


def _split(rng: np.random.Generator) -> Built:
    x = _feature_map(rng)
    axis = int(rng.choice([1, 3]))
    half = max(x.shape[axis] // 2, 1)
    sizes = np.array([half, x.shape[axis] - half], np.int64)  # opset 17: sizes as an input
    return _model([helper.make_node("Split", ["x", "sizes"], ["y0", "y1"], axis=axis)], {"x": x}, ["y0", "y1"],
                  {"sizes": sizes})


def _slice(rng: np.random.Generator) -> Built:
    x = _feature_map(rng)
    axis = int(rng.choice([1, 2, 3]))
    start = int(rng.integers(0, max(1, x.shape[axis] // 2)))
    params = {"starts": np.array([start], np.int64), "ends": np.array([x.shape[axis]], np.int64),
              "axes": np.array([axis], np.int64)}
    return _model([helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"])], {"x": x}, ["y"], params)


def _transpose(rng: np.random.Generator) -> Built:
    if rng.random() < 0.5:
        x, perm = _feature_map(rng), [0, 2, 3, 1]
    else:
        heads, seq = int(rng.choice([4, 8, 12])), int(rng.choice([32, 64, 128, 256]))
        x, perm = _f32(rng, 1, seq, heads, int(rng.choice([32, 64]))), [0, 2, 1, 3]
    return _model([helper.make_node("Transpose", ["x"], ["y"], perm=perm)], {"x": x}, ["y"])


def _gather(rng: np.random.Generator) -> Built:
    rows, width = int(rng.choice([100, 1000, 30000])), int(rng.choice([64, 128, 384, 768]))
    count = int(rng.choice([1, 16, 128, 512]))
    table = _f32(rng, rows, width)
    indices = rng.integers(0, rows, size=(1, count), dtype=np.int64)
    return _model([helper.make_node("Gather", ["t", "i"], ["y"], axis=0)], {"i": indices}, ["y"], {"t": table})


def _matmul(rng: np.random.Generator) -> Built:
    m = int(rng.choice([1, 8, 32, 64, 128, 256]))
    k, n = int(rng.choice([32, 64, 128, 256, 512, 768])), int(rng.choice([16, 64, 128, 256, 512, 1024]))
    if rng.random() < 0.3:  # activation x activation, as in attention
        b = int(rng.choice([1, 4, 12]))
        return _model([helper.make_node("MatMul", ["a", "b"], ["y"])],
                      {"a": _f32(rng, b, m, k), "b": _f32(rng, b, k, n)}, ["y"])
    return _model([helper.make_node("MatMul", ["a", "w"], ["y"])], {"a": _f32(rng, 1, m, k)}, ["y"],
                  {"w": _f32(rng, k, n) * 0.05})


def _gemm(rng: np.random.Generator) -> Built:
    m = int(rng.choice([1, 8, 32, 128]))
    k, n = int(rng.choice([64, 256, 512, 1280])), int(rng.choice([10, 64, 256, 1000]))
    return _model([helper.make_node("Gemm", ["a", "w", "c"], ["y"], transB=1)], {"a": _f32(rng, m, k)}, ["y"],
                  {"w": _f32(rng, n, k) * 0.05, "c": _f32(rng, n)})


def _rows(rng: np.random.Generator) -> np.ndarray:
    heads = int(rng.choice([1, 4, 12]))
    seq, width = int(rng.choice([8, 32, 64, 128, 256])), int(rng.choice([8, 64, 128, 256, 384, 768]))
    return _f32(rng, 1, heads, seq, width)


def _softmax(rng: np.random.Generator) -> Built:
    return _model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], {"x": _rows(rng)}, ["y"])


def _layernorm(rng: np.random.Generator) -> Built:
    x = _rows(rng)[0]
    width = x.shape[-1]
    node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-5)
    return _model([node], {"x": x}, ["y"], {"g": _f32(rng, width), "b": _f32(rng, width)})


def _reduce(op: str) -> Builder:
    def build(rng: np.random.Generator) -> Built:
        x = _rows(rng) if rng.random() < 0.5 else _feature_map(rng)
        node = helper.make_node(op, ["x"], ["y"], axes=[-1], keepdims=1)  # opset 17: axes an attribute
        return _model([node], {"x": x}, ["y"])
    return build


def _topk(rng: np.random.Generator) -> Built:
    n = int(rng.choice([100, 1000, 6400, 20000, 100000]))
    k = np.array([min(n, int(rng.choice([1, 10, 100, 300])))], np.int64)
    return _model([helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1)], {"x": _f32(rng, 1, n)}, ["v", "i"], {"k": k})


def _where(rng: np.random.Generator) -> Built:
    x = _rows(rng)
    mask = rng.random(x.shape) < 0.5
    return _model([helper.make_node("Where", ["m", "x", "z"], ["y"])], {"m": mask, "x": x}, ["y"],
                  {"z": np.array(-1e4, np.float32)})


def _expand(rng: np.random.Generator) -> Built:
    rows = _rows(rng)
    x = rows[:, :, :1, :]
    shape = np.array(rows.shape, np.int64)
    return _model([helper.make_node("Expand", ["x", "s"], ["y"])], {"x": np.ascontiguousarray(x)}, ["y"], {"s": shape})


def _recurrent(op: str) -> Builder:
    gates = {"LSTM": 4, "GRU": 3}[op]

    def build(rng: np.random.Generator) -> Built:
        seq, width = int(rng.choice([16, 32, 64, 128])), int(rng.choice([32, 64, 128, 256]))
        hidden = int(rng.choice([32, 64, 128, 256]))
        direction = str(rng.choice(["forward", "bidirectional"]))
        dirs = 2 if direction == "bidirectional" else 1
        params = {"w": _f32(rng, dirs, gates * hidden, width) * 0.1, "r": _f32(rng, dirs, gates * hidden, hidden) * 0.1,
                  "b": _f32(rng, dirs, 2 * gates * hidden) * 0.1}
        node = helper.make_node(op, ["x", "w", "r", "b"], ["y"], hidden_size=hidden, direction=direction)
        return _model([node], {"x": _f32(rng, seq, 1, width)}, ["y"], params)
    return build


#: Operator -> builder of one sampled configuration (a one-node model).
OPS: dict[str, Builder] = {
    "Conv": _conv, "Conv1d": _conv1d, "BatchNormalization": _batchnorm,
    "Relu": _unary("Relu"), "Sigmoid": _unary("Sigmoid"), "Tanh": _unary("Tanh"), "Exp": _unary("Exp"),
    "Clip": _clip, "Add": _binary("Add"), "Mul": _binary("Mul"), "Div": _binary("Div"),
    "MaxPool": _pool("MaxPool"), "AveragePool": _pool("AveragePool"), "GlobalAveragePool": _pool("GlobalAveragePool"),
    "Resize": _resize, "Concat": _concat, "Split": _split, "Slice": _slice, "Transpose": _transpose,
    "Gather": _gather, "MatMul": _matmul, "Gemm": _gemm, "Softmax": _softmax, "LayerNormalization": _layernorm,
    "ReduceMean": _reduce("ReduceMean"), "ReduceMax": _reduce("ReduceMax"), "TopK": _topk, "Where": _where,
    "Expand": _expand, "LSTM": _recurrent("LSTM"), "GRU": _recurrent("GRU"),
}


def kernel_corpus(per_op: int, seed: int = 0, ops: list[str] | None = None) -> Iterator[KernelCase]:
    """`per_op` sampled configurations of each operator of `OPS` (or of `ops`), the same for a seed."""
    unknown = sorted(set(ops or []) - set(OPS))
    if unknown:
        raise ValueError(f"no corpus builder for {unknown}; known: {sorted(OPS)}")
    for op in ops or OPS:
        # one generator per operator: adding an operator leaves the others' configurations alone
        rng = np.random.default_rng([seed, *op.encode()])
        for i in range(per_op):
            model, inputs = OPS[op](rng)
            yield KernelCase(f"{op.lower()}-{i}", model, inputs)
