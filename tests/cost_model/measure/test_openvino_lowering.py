"""Pricing what OpenVINO runs (kiln.backends.openvino.kernels, kiln.cost_model.measure.openvino_lowering):
the executed kernels of a run, each priced as the ONNX nodes it fuses, or from its own tensors when it
names none; an OpenVINO profile (`kiln calibrate --backend openvino`) and `kiln cost --backend openvino`."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import make_model, tensor_info
from onnx import helper, numpy_helper

pytest.importorskip("openvino")

from kiln.backends.openvino.kernels import runtime_kernels  # noqa: E402
from kiln.cli import main  # noqa: E402
from kiln.cost_model.hardware import default_profile_path, load, preset_for_this_cpu  # noqa: E402
from kiln.cost_model.measure.openvino_lowering import DOMAIN, openvino_model_cost  # noqa: E402
from kiln.cost_model.model import CostModel  # noqa: E402
from kiln.target import Target  # noqa: E402

RNG = np.random.default_rng(0)
TARGET = Target(backend="openvino", intra_op_threads=1)


def _conv_relu_fc() -> onnx.ModelProto:
    """Conv -> Relu -> Add(x) -> Flatten -> MatMul: OpenVINO fuses the Relu into the Conv and runs
    the Add as a snippet, with layout reorders around the blocked Conv."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "x"], ["a"], name="add"),
             helper.make_node("Reshape", ["a", "shape"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")]
    inits = [numpy_helper.from_array(RNG.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.1, "w"),
             numpy_helper.from_array(np.array([0, -1], np.int64), "shape"),
             numpy_helper.from_array(RNG.standard_normal((16 * 8 * 8, 10)).astype(np.float32), "fc")]
    return make_model(nodes, [tensor_info("x", ["batch", 16, 8, 8])], [tensor_info("y", ["batch", 10])], inits)


def _feeds(batch: int = 1) -> dict[str, np.ndarray]:
    return {"x": RNG.standard_normal((batch, 16, 8, 8)).astype(np.float32)}


def test_runtime_kernels_are_the_executed_ones_with_their_onnx_nodes_and_times():
    kernels = runtime_kernels(ir.from_proto(_conv_relu_fc()), _feeds(), TARGET, repeats=3)
    types = [k.layer_type for k in kernels]
    assert "Convolution" in types and "FullyConnected" in types
    assert not {"Const", "Input", "Output"} & set(types)
    conv = next(k for k in kernels if k.layer_type == "Convolution")
    assert "relu" in conv.original_names  # the activation runs inside the Conv kernel
    assert all(1 <= len(k.measured_us) <= 3 for k in kernels) and len(conv.measured_us) == 3
    assert all(t.shape is not None for k in kernels for t in k.inputs + k.outputs)  # fixed to the feeds'
    assert conv.inputs[0].shape == (1, 16, 8, 8)


def test_each_kernel_is_priced_as_the_onnx_nodes_it_fuses():
    model = ir.from_proto(_conv_relu_fc())
    feeds = _feeds(batch=2)
    kernels = runtime_kernels(model, feeds, TARGET, repeats=1)
    cost_model = CostModel(preset_for_this_cpu(1))
    estimate = openvino_model_cost(cost_model, model, feeds, kernels=kernels)
    assert [n.name for n, _ in estimate.per_node] == [k.name for k in kernels]
    assert all(n.domain == DOMAIN for n, _ in estimate.per_node)
    assert estimate.latency_ms == pytest.approx(sum(e.ms for _, e in estimate.per_node))
    by_type = {n.op_type: e for n, e in estimate.per_node}
    conv_flops = 2 * 2 * 16 * 8 * 8 * 16 * 9  # batch 2: the shapes of the run, not the declared symbol
    assert by_type["Convolution"].flops == conv_flops + 2 * 16 * 8 * 8  # and the fused Relu
    assert by_type["FullyConnected"].flops == 2 * 2 * 1024 * 10
    reorders = [e for n, e in estimate.per_node if n.op_type == "Reorder"]
    assert all(e.flops == 0 and e.bytes > 0 for e in reorders)  # no ONNX node: priced as data movement
    assert model.graph.inputs[0].shape[0] == ir.SymbolicDim("batch")  # the caller's model is untouched


def test_a_conv_renamed_by_a_folded_batchnorm_is_still_priced_as_a_conv():
    """OpenVINO folds a BatchNorm into the Conv and names the kernel after its Multiply, not the
    Conv: the kernel is priced from its own tensors as a Conv, not as the BatchNorm's arithmetic."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], name="bn"),
             helper.make_node("Relu", ["n"], ["y"], name="relu")]
    inits = [numpy_helper.from_array(RNG.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.1, "w")]
    inits += [numpy_helper.from_array(RNG.random(16).astype(np.float32) + 0.5, n) for n in "sbmv"]
    model = ir.from_proto(make_model(nodes, [tensor_info("x", [1, 16, 8, 8])], [tensor_info("y", [1, 16, 8, 8])], inits))
    feeds = _feeds()
    kernels = runtime_kernels(model, feeds, TARGET, repeats=1)
    estimate = openvino_model_cost(CostModel(preset_for_this_cpu(1)), model, feeds, kernels=kernels)
    (conv,) = [e for n, e in estimate.per_node if n.op_type == "Convolution"]
    assert conv.op_class == "conv" and conv.flops == 2 * 16 * 8 * 8 * 16 * 9


def test_a_model_cost_on_an_openvino_profile_prices_openvino_kernels():
    from dataclasses import replace

    cost_model = CostModel(replace(preset_for_this_cpu(1), backend="openvino"))
    estimate = cost_model.model_cost(ir.from_proto(_conv_relu_fc()), compiled=True, dims={"batch": 1})
    assert estimate.compiled and {n.domain for n, _ in estimate.per_node} == {DOMAIN}
    assert any(n.op_type == "Convolution" for n, _ in estimate.per_node)
    ort = CostModel(preset_for_this_cpu(1)).model_cost(ir.from_proto(_conv_relu_fc()), compiled=True,
                                                       dims={"batch": 1})
    assert DOMAIN not in {n.domain for n, _ in ort.per_node}


def test_each_backend_has_its_own_profile_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_HARDWARE_PROFILE", str(tmp_path / "hw.json"))
    assert default_profile_path() == tmp_path / "hw.json"
    assert default_profile_path("openvino") == tmp_path / "hw.openvino.json"
    assert CostModel.default(1, backend="openvino").profile.backend == "openvino"  # no file: the preset
    from dataclasses import replace

    replace(preset_for_this_cpu(1), backend="openvino").save(tmp_path / "hw.json")  # wrong backend in the file
    assert CostModel.default(1).profile.source.startswith("preset")


def test_quick_openvino_calibration_measures_through_openvino(tmp_path):
    from kiln.cost_model.measure.calibration import calibrate

    profile = calibrate(threads=1, quick=True, backend="openvino")
    assert profile.backend == "openvino" and "(openvino)" in profile.name
    assert profile.gemm_gflops["fp32"] > 0 and profile.gemm_gflops["int8"] > 0
    assert any(key.startswith("ov_matmul_fp32") for key in profile.details)
    assert not any(key.startswith("ort_") for key in profile.details)
    assert load(profile.save(tmp_path / "p.json")) == profile


def test_cli_cost_on_openvino_lists_its_kernels_and_measures_them(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KILN_HARDWARE_PROFILE", str(tmp_path / "hw.json"))
    onnx.save(_conv_relu_fc(), tmp_path / "m.onnx")
    assert main(["cost", str(tmp_path / "m.onnx"), "--backend", "openvino", "--measure", "--repeats", "3",
                 "--threads", "1", "--dim", "batch=1"]) == 0
    out = capsys.readouterr().out
    assert "as OpenVINO runs it" in out and "Convolution" in out and "FullyConnected" in out
    assert "measured" in out and "ratio" in out


def test_cli_cost_refuses_a_profile_of_another_backend(tmp_path, capsys):
    preset_for_this_cpu(1).save(tmp_path / "ort.json")
    onnx.save(_conv_relu_fc(), tmp_path / "m.onnx")
    assert main(["cost", str(tmp_path / "m.onnx"), "--backend", "openvino", "--profile", str(tmp_path / "ort.json")]) == 2
    assert "measured through onnxruntime, not openvino" in " ".join(capsys.readouterr().err.split())


def test_cli_cost_will_not_measure_openvino_nodes_as_written(tmp_path, capsys):
    onnx.save(_conv_relu_fc(), tmp_path / "m.onnx")
    assert main(["cost", str(tmp_path / "m.onnx"), "--backend", "openvino", "--as-written", "--measure"]) == 2
    assert "drop --as-written" in " ".join(capsys.readouterr().err.split())


def test_cli_calibrate_openvino_writes_beside_the_default(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KILN_HARDWARE_PROFILE", str(tmp_path / "hw.json"))
    assert main(["calibrate", "--backend", "openvino", "--quick", "--threads", "1"]) == 0
    assert load(tmp_path / "hw.openvino.json").backend == "openvino"
    assert not (tmp_path / "hw.json").exists()
    assert "OpenVINO GEMM fp32" in capsys.readouterr().out
