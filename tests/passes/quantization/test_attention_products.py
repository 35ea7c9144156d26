"""Attention products in static int8 (OpenVINO): which cores are found and what their timed
region holds, the operands' zero-point-0 scales, the rewrite on OpenVINO where measured faster,
and the fallbacks (measured no faster, excluded, past the budget)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import FakeTimer, make_model, optimize_static_int8_on_openvino, quant_pass, tensor_info
from onnx import helper, numpy_helper

from kiln.passes.infra.contract import CosineBudget
from kiln.passes.infra.validation import cosine_similarity
from kiln.passes.quantization import QuantConfig
from kiln.passes.quantization.attention_products import (
    alternatives,
    find_attention_cores,
    operand_quantization,
    quantize_attention_core,
)
from kiln.passes.quantization.static_activations import ActivationRange

SEQ, HEADS, DIM = 16, 2, 8
WIDTH = HEADS * DIM
RNG = np.random.default_rng(3)
X = RNG.standard_normal((1, SEQ, WIDTH)).astype(np.float32)
CALIBRATION = [{"x": RNG.standard_normal((1, SEQ, WIDTH)).astype(np.float32)} for _ in range(8)]
CORE_QUESTION = "quantize attention products to static int8"


def _attention(seq: int = SEQ) -> onnx.ModelProto:
    """One self-attention layer as exporters write it: Q, K, V linears, head splits (K's with the
    last two axes swapped), Q K^T, a scale, Softmax, P V, the heads' merge and an output linear."""
    rng = np.random.default_rng(9)
    nodes, inits = [], []
    for name in ("q", "k", "v", "o"):
        inits.append(numpy_helper.from_array((rng.standard_normal((WIDTH, WIDTH)) * 0.3).astype(np.float32), f"w_{name}"))
    inits += [numpy_helper.from_array(np.array([1, seq, HEADS, DIM], np.int64), "heads"),
              numpy_helper.from_array(np.array([1, seq, WIDTH], np.int64), "merged"),
              numpy_helper.from_array(np.array(DIM ** -0.5, np.float32), "scale")]
    for name, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [helper.make_node("MatMul", ["x", f"w_{name}"], [f"{name}_lin"], name=f"{name}_proj"),
                  helper.make_node("Reshape", [f"{name}_lin", "heads"], [f"{name}_heads"]),
                  helper.make_node("Transpose", [f"{name}_heads"], [name], perm=perm)]
    nodes += [helper.make_node("MatMul", ["q", "k"], ["scores"], name="scores"),
              helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
              helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1),
              helper.make_node("MatMul", ["probs", "v"], ["context"], name="context"),
              helper.make_node("Transpose", ["context"], ["context_t"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["context_t", "merged"], ["context_merged"]),
              helper.make_node("MatMul", ["context_merged", "w_o"], ["y"], name="o_proj")]
    return make_model(nodes, [tensor_info("x", [1, seq, WIDTH])], [tensor_info("y", [1, seq, WIDTH])], inits)


def _graph(proto: onnx.ModelProto) -> ir.Graph:
    model = ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(proto))
    return model.graph


def _optimize(timer: FakeTimer, quantize: QuantConfig | str = "static-int8"):
    return optimize_static_int8_on_openvino(_attention(), X, CALIBRATION, timer, quantize)


def _reference(x: np.ndarray = X) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(_attention().SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_a_core_is_found_with_the_region_its_time_depends_on():
    cores, left = find_attention_cores(_graph(_attention()))
    assert len(cores) == 1 and left == {}
    core = cores[0]
    assert (core.node.name, core.context.name) == ("scores", "context")
    assert [n.op_type for n in core.path] == ["Mul", "Softmax", "MatMul"]
    region = [n.op_type for n in core.region]
    # the head splits of Q, K and V, both products, the scores path and the heads' merge; no linear
    assert region.count("Transpose") == 4 and region.count("Reshape") == 4 and region.count("MatMul") == 2
    assert {"Softmax", "Mul"} <= set(region) and not any(n.name.endswith("_proj") for n in core.region)
    assert core.static
    other, _ = find_attention_cores(_graph(_attention(seq=SEQ * 2)))
    assert other[0].key != core.key  # another sequence length is another measurement


def test_a_product_of_two_activations_without_softmax_is_left_with_the_reason():
    nodes = [helper.make_node("MatMul", ["a", "b"], ["ab"], name="outer"),
             helper.make_node("MatMul", ["ab", "c"], ["y"], name="second")]
    proto = make_model(nodes, [tensor_info("a", [4, 4]), tensor_info("b", [4, 4]), tensor_info("c", [4, 4])],
                       [tensor_info("y", [4, 4])])
    cores, left = find_attention_cores(_graph(proto))
    assert cores == []
    assert sum(left.values()) == 2 and all("Softmax" in why for why in left)


@pytest.mark.parametrize(("low", "high", "dtype", "scale"), [(-3.0, 2.0, np.int8, 3.0 / 127), (-1.0, 4.0, np.int8, 4.0 / 127),
                                                             (0.0, 0.8, np.uint8, 0.8 / 255)])
def test_operands_are_quantized_about_zero(low, high, dtype, scale):
    got_scale, zero_point = operand_quantization(ActivationRange(low, high))
    assert zero_point.dtype == dtype and int(zero_point) == 0
    assert got_scale == pytest.approx(scale)


def test_the_int8_core_computes_the_fp32_one_within_its_rounding():
    """The rewrite puts Q, K, V (int8) and the probabilities (uint8) behind one pair each, and the
    model still computes attention up to the rounding the scales allow."""
    import onnxruntime as ort

    model = ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(_attention()))
    (core,) = find_attention_cores(model.graph)[0]
    ranges = {v.name: ActivationRange(-4.0, 4.0) for v in core.operands}
    ranges[core.operands[2].name] = ActivationRange(0.0, 1.0)
    added = quantize_attention_core(model.graph, core, ranges)
    quantizers = [n for n in added if n.op_type == "QuantizeLinear"]
    assert [n.outputs[0].dtype for n in quantizers] == [ir.DataType.INT8, ir.DataType.INT8, ir.DataType.UINT8,
                                                        ir.DataType.INT8]
    assert core.node.inputs[0].producer().op_type == "DequantizeLinear"
    assert core.context.inputs[0].producer().op_type == "DequantizeLinear"
    session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    assert cosine_similarity(_reference(), session.run(None, {"x": X})[0]) > 0.99


def test_the_timed_forms_are_the_region_in_fp32_and_with_four_pairs():
    import onnxruntime as ort

    (core,) = find_attention_cores(_graph(_attention()))[0]
    baseline, candidate = alternatives(core)
    ops = [n.op_type for n in candidate.graph]
    assert ops.count("QuantizeLinear") == 4 and "QuantizeLinear" not in [n.op_type for n in baseline.graph]
    assert [v.name for v in baseline.graph.inputs] == [v.name for v in candidate.graph.inputs]
    feeds = {v.name: RNG.standard_normal([int(d) for d in v.shape]).astype(np.float32) for v in baseline.graph.inputs}
    runs = [ort.InferenceSession(ir.serde.serialize_model(m).SerializeToString(),
                                 providers=["CPUExecutionProvider"]).run(None, feeds) for m in (baseline, candidate)]
    assert runs[0][0].shape == runs[1][0].shape == (1, SEQ, WIDTH)


def test_on_openvino_a_core_measured_faster_reads_its_operands_at_fixed_scales():
    pytest.importorskip("openvino")
    optimized = _optimize(FakeTimer(0.5))
    report = quant_pass(optimized)
    assert "1 of 1 attention cores with both products in static int8" in report.message, report.message
    assert "second input is not a constant" not in report.message  # the products are not "left"
    (core,) = [d for d in report.decisions if d.question == CORE_QUESTION]
    assert core.chosen == "int8 static" and "joint cosine" in core.reason
    graph = optimized.model.graph
    scores = next(n for n in graph if n.name == "scores")
    context = next(n for n in graph if n.name == "context")
    for product in (scores, context):
        for operand in product.inputs:
            dequantize = operand.producer()
            assert dequantize.op_type == "DequantizeLinear"
            assert int(dequantize.inputs[2].const_value.numpy()) == 0
    probabilities = context.inputs[0].producer().inputs[0]
    assert probabilities.dtype == ir.DataType.UINT8  # Softmax's output is never negative
    # P's scale is the largest probability the calibration inputs produced, over 255
    assert float(context.inputs[0].producer().inputs[1].const_value.numpy()) * 255 <= 1.0 + 1e-6
    assert any(r.rule == "quantize_int8" and "reading their operands at fixed scales" in r.result
               for r in report.rewrites)
    assert cosine_similarity(_reference(), optimized(x=X)) > 0.99


def test_a_core_measured_no_faster_excluded_or_past_the_budget_stays_fp32():
    pytest.importorskip("openvino")

    def core_row(optimized):
        return next(d for d in quant_pass(optimized).decisions if d.question == CORE_QUESTION)

    def product_inputs(optimized):
        scores = next(n for n in optimized.model.graph if n.name == "scores")
        return [v.producer().op_type for v in scores.inputs]

    slower = _optimize(FakeTimer(1.2))
    assert core_row(slower).chosen == "fp32" and core_row(slower).decided_by == "measurement"
    assert product_inputs(slower) == ["Transpose", "Transpose"]
    excluded = _optimize(FakeTimer(0.5), QuantConfig(scheme="static-int8", exclude=("context",)))
    assert core_row(excluded).chosen == "fp32" and "exclude" in core_row(excluded).reason
    strict = _optimize(FakeTimer(0.5), QuantConfig(scheme="static-int8",
                                                   budget=CosineBudget(min_cosine=0.9999999)))
    row = core_row(strict)
    assert row.chosen == "fp32" and row.decided_by == "budget"
    assert "solo_cosine" in row.alternative("int8 static").metrics
    assert product_inputs(strict) == ["Transpose", "Transpose"]
