"""Mul by a Reciprocal folds into one Div (kiln.passes.folding.reciprocal_folding); and with a norm scale
that is not all ones, ONNX Runtime then fuses the RMSNorm the exporter writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from conftest import make_model, optimize_with, tensor_info
from onnx import helper, numpy_helper

from kiln.ir.analysis import op_histogram
from kiln.passes.folding.constant_folding import FoldConstants
from kiln.passes.folding.reciprocal_folding import FoldReciprocal

RNG = np.random.default_rng(0)


def _rms_norm(reciprocal_readers: int = 1, scale: float | None = 1.5) -> onnx.ModelProto:
    """y = x * Reciprocal(Sqrt(mean(x^2) + eps)) [* scale], as torch exports an RMSNorm."""
    nodes = [helper.make_node("Pow", ["x", "two"], ["sq"]),
             helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1),
             helper.make_node("Add", ["ms", "eps"], ["v"]),
             helper.make_node("Sqrt", ["v"], ["root"]),
             helper.make_node("Reciprocal", ["root"], ["inv"]),
             helper.make_node("Mul", ["x", "inv"], ["normed"])]
    inits = [numpy_helper.from_array(np.array(2.0, np.float32), "two"), numpy_helper.from_array(np.array([-1], np.int64), "axes"),
             numpy_helper.from_array(np.array(1e-6, np.float32), "eps")]
    outputs = [tensor_info("y", [1, 5, 8])]
    if scale is not None:
        nodes.append(helper.make_node("Mul", ["normed", "gamma"], ["y"]))
        inits.append(numpy_helper.from_array(np.full(8, scale, np.float32), "gamma"))
    else:
        nodes[-1].output[0] = "y"
    if reciprocal_readers > 1:
        nodes.append(helper.make_node("Neg", ["inv"], ["inv_out"]))
        outputs.append(tensor_info("inv_out", [1, 5, 1]))
    return make_model(nodes, [tensor_info("x", [1, 5, 8])], outputs, inits)


def _ort_op_types(model: ir.Model, tmp_path: Path) -> list[str]:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "ort.onnx")
    ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "ort.onnx")).graph.node]


def test_mul_by_reciprocal_becomes_div_and_ort_fuses_the_norm(tmp_path):
    model = _rms_norm()
    optimized = optimize_with(model, FoldConstants(), FoldReciprocal())
    histogram = op_histogram(optimized.model)
    assert "Reciprocal" not in histogram and histogram["Div"] == 1
    report = next(p for p in optimized.report.passes if p.name == "reciprocal_folding")
    assert [r.rule for r in report.rewrites] == ["reciprocal_folding"]
    x = RNG.standard_normal((1, 5, 8)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(optimized(x), want, rtol=1e-6, atol=1e-6)
    assert _ort_op_types(optimized.model, tmp_path) == ["SimplifiedLayerNormalization"]


def test_a_broadcast_reciprocal_without_a_norm_scale_stays():
    # One reciprocal per row times every element is cheaper than a divide per element.
    optimized = optimize_with(_rms_norm(scale=None), FoldConstants(), FoldReciprocal())
    assert op_histogram(optimized.model)["Reciprocal"] == 1
    assert not next(p for p in optimized.report.passes if p.name == "reciprocal_folding").rewrites


def test_a_same_shape_reciprocal_becomes_div():
    nodes = [helper.make_node("Reciprocal", ["y"], ["inv"]), helper.make_node("Mul", ["inv", "x"], ["z"])]
    model = make_model(nodes, [tensor_info("x", [3, 4]), tensor_info("y", [3, 4])], [tensor_info("z", [3, 4])])
    optimized = optimize_with(model, FoldConstants(), FoldReciprocal())
    assert op_histogram(optimized.model) == {"Div": 1}
    x, y = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(optimized(x, y), x / y, rtol=1e-6)


def test_a_reciprocal_read_elsewhere_stays():
    optimized = optimize_with(_rms_norm(reciprocal_readers=2), FoldConstants(), FoldReciprocal())
    assert op_histogram(optimized.model)["Reciprocal"] == 1
    assert not next(p for p in optimized.report.passes if p.name == "reciprocal_folding").rewrites
