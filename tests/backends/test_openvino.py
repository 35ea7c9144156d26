"""The OpenVINO backend: the same Executable as ONNX Runtime's, every compile choice explicit,
clear errors for what OpenVINO cannot convert; and the backend registry."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import kiln
from kiln.backends import compile_model, installed_backends, known_backends, registry
from kiln.errors import BackendError, ExecutionError, InputError, UnsupportedOperatorError
from kiln.target import OpenVINOOptions, Target
from tests.conftest import make_model, tensor_info

pytest.importorskip("openvino")


def _ort(model, x):
    return compile_model(ir.from_proto(model), Target())(x)


def test_outputs_match_onnx_runtime_on_numpy_and_torch(mlp_model):
    torch = pytest.importorskip("torch")
    exe = compile_model(ir.from_proto(mlp_model), Target(backend="openvino", intra_op_threads=2))
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(exe(x), _ort(mlp_model, x), rtol=1e-5, atol=1e-6)
    out = exe(torch.from_numpy(x))
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), _ort(mlp_model, x), rtol=1e-5, atol=1e-6)
    assert exe.input_names == ["x"] and exe.output_names == ["y"]
    result = exe.benchmark(x, warmup=1, repeats=3)
    assert result.repeats == 3 and result.median_ms > 0


def test_threads_hint_precision_and_streams_are_set_explicitly(mlp_model):
    target = Target(backend="openvino", intra_op_threads=2,
                    openvino=OpenVINOOptions(performance_hint="THROUGHPUT", streams=2, inference_precision="f32"))
    exe = compile_model(ir.from_proto(mlp_model), target)
    assert exe.compiled.get_property("INFERENCE_NUM_THREADS") == 2
    assert exe.compiled.get_property("NUM_STREAMS") == 2
    assert str(exe.compiled.get_property("PERFORMANCE_HINT")).endswith("THROUGHPUT")
    assert "f32" in str(exe.compiled.get_property("INFERENCE_PRECISION_HINT")).lower() or \
        "float32" in str(exe.compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
    # "default" leaves OpenVINO's own choice: no precision property is passed
    default = compile_model(ir.from_proto(mlp_model), Target(backend="openvino",
                                                            openvino=OpenVINOOptions(inference_precision="default")))
    assert "INFERENCE_PRECISION_HINT" not in default.properties and "INFERENCE_NUM_THREADS" not in default.properties
    assert "DYNAMIC_QUANTIZATION_GROUP_SIZE" not in default.properties  # OpenVINO's own default
    grouped = compile_model(ir.from_proto(mlp_model), Target(
        backend="openvino", openvino=OpenVINOOptions(dynamic_quantization_group_size=128)))
    assert int(grouped.compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")) == 128


def test_bad_options_are_refused():
    with pytest.raises(InputError, match="inference_precision"):
        OpenVINOOptions(inference_precision="fp8")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="streams"):
        OpenVINOOptions(streams=0)
    with pytest.raises(InputError, match="dynamic_quantization_group_size"):
        OpenVINOOptions(dynamic_quantization_group_size=-1)


def test_an_operator_openvino_cannot_convert_is_named():
    nodes = [helper.make_node("StringNormalizer", ["x"], ["y"], case_change_action="LOWER")]
    model = make_model(nodes, [tensor_info("x", [2], TensorProto.STRING)], [tensor_info("y", [2], TensorProto.STRING)])
    with pytest.raises(UnsupportedOperatorError, match="cannot convert StringNormalizer") as caught:
        compile_model(ir.from_proto(model), Target(backend="openvino"))
    assert caught.value.op_types == ["StringNormalizer"]


def test_a_run_that_fails_is_an_execution_error(mlp_model):
    exe = compile_model(ir.from_proto(mlp_model), Target(backend="openvino"))
    with pytest.raises(ExecutionError, match="OpenVINO failed to run"):
        exe.run({"x": np.ones((3, 5), np.float32)})


def test_large_models_go_through_a_file_with_external_data(mlp_model, monkeypatch):
    from kiln.ir import serialization

    monkeypatch.setattr(serialization, "SAVE_EXTERNAL_DATA_THRESHOLD_BYTES", 16)
    monkeypatch.setattr(serialization, "EXTERNAL_TENSOR_MIN_BYTES", 16)
    exe = compile_model(ir.from_proto(mlp_model), Target(backend="openvino"))
    assert exe._tempdir is not None  # the weights file lives as long as the executable
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(exe(x), _ort(mlp_model, x), rtol=1e-5, atol=1e-6)


def test_kiln_optimize_compiles_for_openvino_and_validates_on_onnx_runtime(mlp_model):
    optimized = kiln.optimize(mlp_model, level=2, backend="openvino")
    assert optimized.target.backend == "openvino" and "openvino" in optimized.report.target
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(optimized(x), _ort(mlp_model, x), rtol=1e-4, atol=1e-4)


# --- registry ------------------------------------------------------------------------------------


def test_the_registry_lists_known_and_installed_backends():
    assert {"onnxruntime", "openvino"} <= set(known_backends())
    assert {"onnxruntime", "openvino"} <= set(installed_backends())


def test_a_registered_backend_whose_runtime_is_missing_is_refused_with_the_install_hint(monkeypatch):
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    registry.register_backend(registry.BackendInfo("nothing", "kiln.backends.nothing", "kiln_no_such_runtime",
                                                   "pip install kiln-nothing"))
    assert "nothing" in known_backends() and "nothing" not in installed_backends()
    with pytest.raises(BackendError, match=r"'nothing' is not installed.*pip install kiln-nothing.*onnxruntime"):
        Target(backend="nothing")  # type: ignore[arg-type]


def test_the_optimized_model_is_checked_on_the_target_backend_and_reported(mlp_model):
    from kiln.report.render import render_text

    optimized = kiln.optimize(mlp_model, level=2, backend="openvino")
    report = optimized.report
    assert report.backend_error is not None and report.backend_error.max_abs < 1e-5
    assert report.backend_check.startswith("openvino (f32) against the reference")
    text = render_text(report, width=250)
    assert "on openvino" in text and "openvino (f32) against the reference" in text


def test_backend_outputs_outside_the_tolerance_stop_the_run(mlp_model, monkeypatch):
    """Only the optimized model differs on the backend: a ValidationError (not the backend's
    numerics) naming the first node of the optimized model that differs."""
    import kiln.optimizer as optimizer_module
    from kiln.backends import onnxruntime as ort_backend
    from kiln.errors import BackendNumericsError, ValidationError

    class OffOnceOptimized:  # right on the original; 5 too high on any model CSE has merged
        inference_precision = "f32"

        def __init__(self, model, target):
            self.model = model

        def run(self, feeds):
            outputs = ort_backend.run_model(self.model, feeds)
            merged = "matmul_b" not in [node.name for node in self.model.graph]
            return [o + 5 if merged else o for o in outputs]

    monkeypatch.setattr(optimizer_module, "compile_model", OffOnceOptimized)
    with pytest.raises(ValidationError, match=r"compiled for openvino \(f32\) does not match the reference.*"
                                              r"the original does match on openvino.*In the optimized model: "
                                              r"openvino computes MatMul") as caught:
        kiln.optimize(mlp_model, level=1, backend="openvino")
    assert not isinstance(caught.value, BackendNumericsError)


def test_reduced_precisions_are_checked_within_their_own_floor(mlp_model):
    """bf16 is checked at bf16's floor; a CPU without bf16 (OpenVINO runs f32 there) is checked,
    and reported, as the f32 it ran."""
    import openvino as ov

    target = Target(backend="openvino", openvino=OpenVINOOptions(inference_precision="bf16"))
    optimized = kiln.optimize(mlp_model, level=1, target=target)
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert "(bf16)" in optimized.report.backend_check and "atol 0.03125" in optimized.report.backend_check
    else:
        assert "(f32)" in optimized.report.backend_check and "atol 0.0001" in optimized.report.backend_check


def test_auto_times_every_installed_backend_and_keeps_the_fastest(mlp_model):
    from kiln.report.render import render_text

    optimized = kiln.optimize(mlp_model, level=1, backend="auto")
    decision = optimized.report.backend_decision
    assert decision is not None and decision.decided_by == "measurement"
    medians = {a.name: a.measured_ms for a in decision.alternatives}
    assert set(medians) == set(installed_backends()) and all(ms and ms > 0 for ms in medians.values())
    assert decision.chosen == min(medians, key=medians.__getitem__) == optimized.target.backend
    assert optimized.report.target.startswith(f"{decision.chosen} (chosen by timing)")
    assert f"backend: {decision.chosen}, fastest median" in render_text(optimized.report, width=300)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(optimized(x), _ort(mlp_model, x), rtol=1e-4, atol=1e-4)
    with pytest.raises(BackendError, match="backend='auto' chooses the backend"):
        kiln.optimize(mlp_model, backend="auto", target=Target(backend="openvino"))


@pytest.mark.parametrize(("source", "target_type", "dtype"), [
    (TensorProto.BFLOAT16, TensorProto.FLOAT, "bfloat16"),  # a bfloat16 input
    (TensorProto.INT4, TensorProto.FLOAT, "int4"),          # a packed int4 input
    (TensorProto.FLOAT, TensorProto.BFLOAT16, "float32"),   # a bfloat16 output
    (TensorProto.FLOAT, TensorProto.INT4, "float32"),       # a packed int4 output
    (TensorProto.FLOAT, TensorProto.UINT4, "float32"),
])
def test_types_numpy_lacks_cross_the_boundary_as_onnx_runtime_gives_them(source, target_type, dtype):
    import ml_dtypes

    nodes = [helper.make_node("Cast", ["x"], ["y"], to=target_type)]
    model = ir.from_proto(make_model(nodes, [tensor_info("x", [2, 3], source)], [tensor_info("y", [2, 3], target_type)],
                                     opset=21))
    values = np.array([[-2.0, -1.0, 0.0], [1.0, 2.0, 3.0]] if target_type != TensorProto.UINT4 else [[0, 2, 4], [6, 8, 10]])
    x = values.astype(getattr(ml_dtypes, dtype) if dtype in ("bfloat16", "int4") else np.dtype(dtype))
    got = compile_model(model, Target(backend="openvino")).run({"x": x})[0]
    want = compile_model(model, Target()).run({"x": x})[0]
    assert got.dtype == want.dtype and got.shape == want.shape == (2, 3)
    np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))


def test_a_backend_computing_the_original_differently_names_the_first_node_that_differs(mlp_model, monkeypatch):
    """The original compiled for the backend differs too: a BackendNumericsError (a BackendError
    and a ValidationError) naming the first node whose output differs, found with every
    intermediate value exposed."""
    import kiln.optimizer as optimizer_module
    from kiln.backends import onnxruntime as ort_backend
    from kiln.errors import BackendNumericsError, ValidationError

    class AddOneOff:  # an ONNX Runtime whose Add kernel of 'add_a' is one too high, wherever it shows
        inference_precision = "f32"

        def __init__(self, model, target):
            self.model = model

        def run(self, feeds):
            names = [v.name for v in self.model.graph.outputs]
            outputs = ort_backend.run_model(self.model, feeds)
            return [o + 1 if name in ("h1", "y") else o for name, o in zip(names, outputs)]

    monkeypatch.setattr(optimizer_module, "compile_model", AddOneOff)
    with pytest.raises(BackendNumericsError, match=r"openvino computes Add 'add_a' \(output 'h1'") as caught:
        kiln.optimize(mlp_model, level=1, backend="openvino")
    assert isinstance(caught.value, BackendError) and isinstance(caught.value, ValidationError)
    assert (caught.value.op_type, caught.value.node) == ("Add", "add_a")
