"""Static int8 convolutions (OpenVINO): which Convs are found, per-filter weight scales, the Conv
kept with its attributes behind QuantizeLinear / DequantizeLinear, the measured speed choice and
the budget's fallback to fp32."""

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
from kiln.passes.quantization.convs import find_convs
from kiln.passes.quantization.static_activations import ActivationRange
from kiln.passes.quantization.static_convs import ConvShape
from kiln.passes.quantization.weights import quantize_weight

RNG = np.random.default_rng(11)
X = RNG.standard_normal((1, 8, 16, 16)).astype(np.float32)
CALIBRATION = [{"x": RNG.standard_normal((1, 8, 16, 16)).astype(np.float32)} for _ in range(3)]


def _cnn(*, filters_as_input: bool = False) -> onnx.ModelProto:
    """Conv (bias, pads) -> Relu -> strided grouped Conv -> Relu -> 1x1 Conv without bias; with
    `filters_as_input` the last Conv's filters are a graph input (left)."""
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2], group=4),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["y"], name="conv3"),
    ]
    shapes = {"w1": (16, 8, 3, 3), "b1": (16,), "w2": (16, 4, 3, 3), "b2": (16,), "w3": (8, 16, 1, 1)}
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.2).astype(np.float32), n) for n, s in shapes.items()
             if not (filters_as_input and n == "w3")]
    inputs = [tensor_info("x", [1, 8, 16, 16])] + ([tensor_info("w3", [8, 16, 1, 1])] if filters_as_input else [])
    return make_model(nodes, inputs, [tensor_info("y", [1, 8, 8, 8])], inits)


def _reference(proto: onnx.ModelProto, x: np.ndarray = X) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _optimize(timer: FakeTimer, quantize: str | QuantConfig = "static-int8"):
    return optimize_static_int8_on_openvino(_cnn(), X, CALIBRATION, timer, quantize)


def test_convs_with_constant_filters_are_found_and_the_rest_is_explained():
    convs, left = find_convs(ir.serde.deserialize_model(_cnn(filters_as_input=True)).graph)
    assert [c.name for c in convs] == ["conv1", "conv2"]
    assert [c.biased for c in convs] == [True, True]
    assert left == {"the filters are not a constant": 1}


@pytest.mark.parametrize("per_channel", [True, False])
def test_filters_round_to_within_half_a_step_with_one_scale_per_filter(per_channel):
    w = (RNG.standard_normal((6, 3, 3, 3)) * np.arange(1, 7).reshape(6, 1, 1, 1)).astype(np.float32)
    q = quantize_weight(w, per_channel=per_channel, axis=0)
    assert q.values.dtype == np.int8 and q.values.shape == w.shape and q.axis == 0
    assert q.scale.shape == ((6,) if per_channel else ())
    step = q.scale.reshape(-1, 1, 1, 1) if per_channel else q.scale
    assert np.all(np.abs(q.dequantized() - w) <= step / 2 + 1e-7)
    if per_channel:  # each filter's largest weight maps to +-127
        assert np.array_equal(np.abs(q.values).reshape(6, -1).max(axis=1), np.full(6, 127))


def test_shape_keys_tell_convolutions_of_different_strides_or_groups_apart():
    graph = ir.serde.deserialize_model(_cnn()).graph
    keys = {ConvShape.of(c).key for c in find_convs(graph)[0]}
    assert len(keys) == 3
    assert any("strides=2x2" in k and "group=4" in k for k in keys)


def test_static_int8_convs_read_a_fixed_scale_input_and_int8_filters_where_measured_faster():
    pytest.importorskip("openvino")
    optimized = _optimize(FakeTimer(0.5))
    report = quant_pass(optimized)
    assert report.status == "applied" and "3 of 3 convolutions in static int8" in report.message, report.message
    convs = [d for d in report.decisions if d.question == "quantize convolution to static int8"]
    assert [d.chosen for d in convs] == ["int8 static"] * 3
    assert all("joint cosine" in d.reason for d in convs)
    graph = optimized.model.graph
    ops = [n.op_type for n in graph]
    assert ops.count("Conv") == 3 and ops.count("QuantizeLinear") == 3 and ops.count("DequantizeLinear") == 6
    conv2 = next(n for n in graph if n.name == "conv2")
    assert conv2.attributes["group"].as_int() == 4 and list(conv2.attributes["strides"].as_ints()) == [2, 2]
    filters = conv2.inputs[1].producer()
    assert filters.op_type == "DequantizeLinear" and filters.attributes["axis"].as_int() == 0
    assert filters.inputs[0].const_value.numpy().dtype == np.int8
    # conv1 reads x at the range x took on the calibration inputs, widened to hold 0
    low = min(float(f["x"].min()) for f in CALIBRATION)
    high = max(float(f["x"].max()) for f in CALIBRATION)
    assert graph.initializers["conv1.activation_scale"].const_value.numpy() == pytest.approx(
        ActivationRange(low, high).scale)
    assert "w1" not in graph.initializers  # the fp32 filters had no other reader
    assert cosine_similarity(_reference(_cnn()), optimized(x=X)) > 0.99
    assert "min cosine" in optimized.report.backend_check


def test_convolutions_measured_no_faster_or_past_the_budget_stay_fp32():
    pytest.importorskip("openvino")
    slower = _optimize(FakeTimer(1.2))
    assert quant_pass(slower).status == "unchanged"
    assert "QuantizeLinear" not in [n.op_type for n in slower.model.graph]
    strict = _optimize(FakeTimer(0.5), QuantConfig(scheme="static-int8", budget=CosineBudget(min_cosine=0.9999999)))
    report = quant_pass(strict)
    assert report.status == "unchanged" and "budget" in report.message, report.message
    convs = [d for d in report.decisions if d.question == "quantize convolution to static int8"]
    assert convs and all(d.chosen == "fp32" and d.decided_by == "budget" for d in convs)
    assert all("solo_cosine" in d.alternative("int8 static").metrics for d in convs)
