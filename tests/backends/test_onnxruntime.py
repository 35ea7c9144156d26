"""ONNX Runtime backend: numpy and torch in/out, named inputs, clear input errors, benchmark."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln
from kiln.backends.onnxruntime import compile as ort_compile
from kiln.backends.onnxruntime import session_options
from kiln.errors import BackendError, ExecutionError, InputError


@pytest.fixture
def executable(mlp_model):
    return ort_compile(kiln.capture(mlp_model), kiln.Target(intra_op_threads=1))


def _expected(mlp_model, x):
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(mlp_model).run(None, {"x": x})[0]


def test_numpy_in_numpy_out(executable, mlp_model):
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    out = executable(x)
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, _expected(mlp_model, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(executable(x=x), out)


def test_torch_in_torch_out(executable, mlp_model):
    x = torch.randn(2, 4)
    out = executable(x)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), _expected(mlp_model, x.numpy()), rtol=1e-5, atol=1e-6)


def test_input_errors_are_clear(executable):
    with pytest.raises(InputError, match="expects dtype float32 but got float64"):
        executable(np.ones((2, 4)))
    with pytest.raises(InputError, match="expects rank 2"):
        executable(np.ones(4, np.float32))
    with pytest.raises(InputError, match="Missing model input"):
        executable()
    with pytest.raises(InputError, match="no input named 'y'"):
        executable(y=np.ones((2, 4), np.float32))


def test_benchmark_reports_sane_figures(executable):
    result = executable.benchmark(warmup=2, repeats=7)
    assert result.repeats == 7 and result.warmup == 2
    assert 0 < result.min_ms <= result.median_ms <= result.p90_ms
    assert "median" in str(result)


def test_session_options_follow_the_target():
    options = session_options(kiln.Target(intra_op_threads=2, inter_op_threads=1, graph_optimization_level="basic"))
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.graph_optimization_level.name == "ORT_ENABLE_BASIC"
    with pytest.raises(BackendError, match="Unknown graph_optimization_level"):
        session_options(kiln.Target(graph_optimization_level="max"))  # type: ignore[arg-type]
    entry = "session.intra_op.allow_spinning"
    assert session_options(kiln.Target(allow_spinning=False)).get_session_config_entry(entry) == "0"
    with pytest.raises(Exception):  # ORT's default (spinning) sets no entry
        session_options(kiln.Target()).get_session_config_entry(entry)


def test_an_unknown_backend_is_refused_when_the_target_is_built(mlp_model):
    with pytest.raises(BackendError, match=r"Unknown backend 'tvm'.*installed here: onnxruntime"):
        kiln.Target(backend="tvm")  # type: ignore[arg-type]
    with pytest.raises(BackendError, match="Unknown backend 'tvm'"):
        kiln.optimize(mlp_model, level=0, backend="tvm")


def test_optimized_model_saves_external_data_when_large(mlp_model, tmp_path, monkeypatch):
    from kiln.ir import serialization

    monkeypatch.setattr(serialization, "EXTERNAL_DATA_THRESHOLD_BYTES", 16)
    monkeypatch.setattr(serialization, "EXTERNAL_TENSOR_MIN_BYTES", 16)
    optimized = kiln.optimize(mlp_model, level=1)
    path = optimized.save(tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").stat().st_size >= 4 * 3 * 4
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(kiln.optimize(path, level=0)(x), optimized(x), rtol=1e-6)


def test_validation_runner_feeds_large_weights_without_copying():
    import onnx_ir as ir
    from conftest import make_model, tensor_info
    from onnx import helper, numpy_helper

    from kiln.backends.onnxruntime import run_model, weights_as_inputs

    w = np.random.default_rng(0).standard_normal((128, 256)).astype(np.float32)  # 128 KiB
    small = np.ones(256, np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])]
    proto = make_model(nodes, [tensor_info("x", [1, 128])], [tensor_info("y", [1, 256])],
                       [numpy_helper.from_array(w, "W"), numpy_helper.from_array(small, "b")])
    model = kiln.capture(proto)
    model.graph.initializers["W"].const_value = ir.tensor(w, name="W")  # numpy-backed, as from torch
    light, weights = weights_as_inputs(model)
    assert list(weights) == ["W"] and [v.name for v in light.graph.inputs] == ["x", "W"]
    assert np.shares_memory(weights["W"], w)
    assert "W" in model.graph.initializers, "the original model is left as it was"
    assert isinstance(light.graph.initializers["b"].const_value, ir.TensorProtocol)
    x = np.ones((1, 128), np.float32)
    np.testing.assert_allclose(run_model(model, {"x": x})[0], x @ w + small, rtol=1e-5, atol=1e-5)


def test_a_run_that_fails_on_its_inputs_is_an_execution_error():
    from conftest import make_model, tensor_info
    from onnx import helper, numpy_helper

    shape = numpy_helper.from_array(np.array([1, 64], np.int64), "shape")
    model = make_model([helper.make_node("Reshape", ["x", "shape"], ["y"], name="to_64")],
                       [tensor_info("x", [1, "seq"])], [tensor_info("y", [1, 64])], [shape])
    executable = ort_compile(kiln.capture(model))
    np.testing.assert_array_equal(executable(np.ones((1, 64), np.float32)), np.ones((1, 64), np.float32))
    with pytest.raises(ExecutionError, match="failed to run the model.*to_64") as raised:
        executable(np.ones((1, 32), np.float32))
    assert isinstance(raised.value, BackendError)
