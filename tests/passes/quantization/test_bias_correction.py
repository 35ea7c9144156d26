"""Bias correction of static int8 linears: the fake quantization matches QuantizeLinear /
DequantizeLinear, the corrected bias leaves no mean error on the rows it was fitted on, and the
pass applies it only where a leave-one-out measurement says it helps, with its decision row."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import FakeTimer, make_model, optimize_static_int8_on_openvino, quant_pass, tensor_info
from onnx import helper, numpy_helper

from kiln.backends.reference import run_model
from kiln.passes.quantization import QuantConfig
from kiln.passes.quantization.bias_correction import activation_means, bias_shift, fake_quantize
from kiln.passes.quantization.quantize_int8 import _quantize
from kiln.passes.quantization.linears import find_linears
from kiln.passes.quantization.static_activations import ActivationRange
from kiln.passes.quantization.weights import quantize_weight

ROWS, K, N = 64, 256, 256  # big enough for the cost model to price the linear faster in int8
STEP = np.float32(0.02)
RNG = np.random.default_rng(23)


def _off_grid(rng: np.random.Generator) -> np.ndarray:
    """Activations on the lowest four levels of the uint8 grid [0, 255 * STEP] plus 0.45 of a
    step, its two ends included in the first row so that the range is exactly that grid: their
    rounding error is systematic (every value rounds down) and large next to them, the case bias
    correction is for."""
    x = (rng.integers(0, 4, (ROWS, K)) + 0.45).astype(np.float32) * STEP
    x[0, 0], x[0, 1] = 0.0, 255 * STEP
    return x


def _linear() -> onnx.ModelProto:
    rng = np.random.default_rng(4)  # the same weights on every call
    w = (rng.standard_normal((K, N)) * 0.1 + 0.05).astype(np.float32)  # columns of nonzero sum
    b = rng.standard_normal(N).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"), helper.make_node("Add", ["h", "b"], ["y"])]
    return make_model(nodes, [tensor_info("x", [ROWS, K])], [tensor_info("y", [ROWS, N])],
                      [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])


def test_fake_quantize_is_what_quantize_and_dequantize_linear_compute():
    x = np.concatenate([RNG.standard_normal(500) * 2, np.arange(-3, 3, 0.25), [-50.0, 50.0]]).astype(np.float32)
    for activation in (ActivationRange(-1.5, 2.5), ActivationRange(0.2, 3.0), ActivationRange(-4.0, -1.0)):
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
        proto = make_model(nodes, [tensor_info("x", [x.size])], [tensor_info("y", [x.size])],
                           [numpy_helper.from_array(np.asarray(activation.scale, np.float32), "s"),
                            numpy_helper.from_array(np.asarray(activation.zero_point, np.uint8), "z")])
        expected = run_model(ir.from_proto(proto), {"x": x})[0]
        np.testing.assert_array_equal(fake_quantize(x, activation), expected)
    # no range: the tensor's own, as DynamicQuantizeLinear takes it
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    proto = make_model(nodes, [tensor_info("x", [x.size])], [tensor_info("y", [x.size])])
    for values in (x, np.abs(x) + 0.5, -np.abs(x)):
        np.testing.assert_allclose(fake_quantize(values, None), run_model(ir.from_proto(proto), {"x": values})[0],
                                   rtol=0, atol=1e-6)


def test_the_corrected_bias_leaves_no_mean_error_on_the_rows_it_was_fitted_on():
    model = ir.from_proto(_linear())
    feeds = [{"x": _off_grid(np.random.default_rng(seed))} for seed in range(3)]
    activation = ActivationRange(0.0, 255 * float(STEP))
    means = activation_means(model, run_model, feeds, model.graph.inputs, {"x": activation})
    assert means["x"].rows.tolist() == [ROWS] * 3
    [linear], _ = find_linears(model.graph)
    q = quantize_weight(linear.weight, per_channel=True)
    shift = bias_shift(linear, q, means["x"])

    def static(with_shift: bool) -> ir.Model:  # the MatMul at position 0 static, its bias Add corrected or not
        trial = ir.from_proto(_linear())
        _quantize(trial, [0], per_channel=True, reduce_range=False, form="compressed", static={0},
                  ranges={"x": activation}, bias_shifts={0: shift} if with_shift else None)
        assert [n.op_type for n in trial.graph].count("QuantizeLinear") == 1
        return trial

    def mean_error(trial: ir.Model) -> np.ndarray:
        errors = [run_model(trial, f)[0] - run_model(model, f)[0] for f in feeds]
        return np.concatenate(errors).mean(axis=0)
    uncorrected, corrected = mean_error(static(False)), mean_error(static(True))
    # every value but two rounds 0.45 of a step down, and the weights round too
    mean_x = np.concatenate([f["x"] for f in feeds]).mean(axis=0)
    expected = -0.45 * STEP * q.dequantized().sum(axis=0) + mean_x @ (q.dequantized() - linear.weight)
    np.testing.assert_allclose(uncorrected, expected, rtol=0.05)
    np.testing.assert_allclose(uncorrected, shift, rtol=1e-4, atol=1e-6)
    assert np.abs(corrected).max() < 1e-3 * np.abs(uncorrected).max()


def test_a_mask_row_is_left_out_of_the_means():
    model = ir.from_proto(_linear())
    x = _off_grid(np.random.default_rng(0))
    masked = x.copy()
    masked[5, 3] = np.finfo(np.float32).min
    activation = ActivationRange(0.0, 255 * float(STEP))
    plain, with_mask = (activation_means(model, run_model, [{"x": v}], model.graph.inputs, {"x": activation})["x"]
                        for v in (x, masked))
    assert with_mask.rows.tolist() == [ROWS - 1]
    np.testing.assert_allclose(with_mask.sums[0], plain.sums[0] - x[5], rtol=1e-6)


def _calibration() -> list[dict[str, np.ndarray]]:
    return [{"x": _off_grid(np.random.default_rng(100 + k))} for k in range(3)]


def test_the_pass_corrects_static_biases_when_feeds_it_was_not_fitted_on_say_so():
    pytest.importorskip("openvino")
    optimized = optimize_static_int8_on_openvino(_linear(), _off_grid(np.random.default_rng(9)), _calibration(),
                                                 FakeTimer(0.5), QuantConfig(scheme="static-int8"))
    report = quant_pass(optimized)
    [row] = [d for d in report.decisions if d.question.startswith("take the mean error")]
    uncorrected, corrected = (row.alternative(name).metrics["cosine"] for name in ("uncorrected", "corrected"))
    assert row.decided_by == "measurement" and row.subject == "1 static int8 linears with a bias"
    assert corrected > uncorrected and row.chosen == "corrected", row.reason
    assert "each of the 3 calibration feeds scored with the shifts fitted on the others" in row.reason
    assert "1 with their biases corrected" in report.message, report.message
    # the bias Add in the model reads the original less the shift fitted on every calibration feed
    model = ir.from_proto(_linear())
    [linear], _ = find_linears(model.graph)
    means = activation_means(model, run_model, _calibration(), model.graph.inputs,
                             {"x": ActivationRange(0.0, 255 * float(STEP))})
    expected = numpy_helper.to_array(_linear().graph.initializer[1]) - bias_shift(linear, quantize_weight(linear.weight, per_channel=True), means["x"])
    bias = optimized.model.graph.initializers["fc.bias_corrected"].const_value.numpy()
    np.testing.assert_allclose(bias, expected, rtol=1e-5, atol=1e-6)
    assert "b" not in optimized.model.graph.initializers  # the uncorrected bias had no other reader


def test_onnx_runtime_dynamic_linears_are_corrected_at_each_calls_own_range():
    """Dynamic int8 quantizes each call at its tensor's range: the off-grid activations span exactly
    the grid, so their rounding is as systematic as under a fixed scale."""
    import kiln

    optimized = kiln.optimize(_linear(), level=1, sample_inputs={"x": _off_grid(np.random.default_rng(9))},
                              quantize="int8", calibration=_calibration())
    report = quant_pass(optimized)
    [row] = [d for d in report.decisions if d.question.startswith("take the mean error")]
    assert row.subject == "1 dynamic int8 linears with a bias" and row.chosen == "corrected", row.reason
    assert row.alternative("corrected").metrics["cosine"] > row.alternative("uncorrected").metrics["cosine"]
    assert [n.op_type for n in optimized.model.graph].count("DynamicQuantizeMatMul") == 1
    model = ir.from_proto(_linear())
    [linear], _ = find_linears(model.graph)
    means = activation_means(model, run_model, _calibration(), model.graph.inputs)
    q = quantize_weight(linear.weight, per_channel=True, reduce_range="7-bit weights" in report.message)
    expected = numpy_helper.to_array(_linear().graph.initializer[1]) - bias_shift(linear, q, means["x"])
    bias = optimized.model.graph.initializers["fc.bias_corrected"].const_value.numpy()
    np.testing.assert_allclose(bias, expected, rtol=1e-5, atol=1e-6)


def test_bias_correction_can_be_turned_off():
    pytest.importorskip("openvino")
    optimized = optimize_static_int8_on_openvino(_linear(), _off_grid(np.random.default_rng(9)), _calibration(),
                                                 FakeTimer(0.5), QuantConfig(scheme="static-int8", bias_correction=False))
    report = quant_pass(optimized)
    assert not [d for d in report.decisions if d.question.startswith("take the mean error")]
    assert "biases corrected" not in report.message
    assert "fc.bias_corrected" not in optimized.model.graph.initializers
    bias = optimized.model.graph.initializers["b"].const_value.numpy()
    np.testing.assert_array_equal(bias, numpy_helper.to_array(_linear().graph.initializer[1]))


def test_the_cli_turns_bias_correction_off_only_when_quantizing(tmp_path, capsys):
    from kiln.cli import _optimize_kwargs, build_parser, main

    path = tmp_path / "linear.onnx"
    onnx.save(_linear(), path)
    args = build_parser().parse_args(["optimize", str(path), "-o", str(tmp_path / "out.onnx"), "--quantize", "static-int8",
                                       "--no-bias-correction"])
    config = _optimize_kwargs(args)["quantize"]
    assert isinstance(config, QuantConfig) and config.scheme == "static-int8" and not config.bias_correction
    assert main(["optimize", str(path), "-o", str(tmp_path / "out.onnx"), "--no-bias-correction"]) != 0
    assert "--no-bias-correction is about --quantize's int8 linears" in capsys.readouterr().err
