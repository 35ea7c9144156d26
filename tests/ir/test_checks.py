"""Hostile and malformed ONNX input gets a clear kiln.errors exception, never a deep trace."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from conftest import make_model, tensor_info
from onnx import TensorProto, helper

import kiln
from kiln.errors import InvalidModelError, UnsafeModelError, UnsupportedOperatorError


def _external_model(location: str, length: int = 64) -> onnx.ModelProto:
    """y = x + W where W lives in an external file at `location`."""
    w = TensorProto()
    w.name, w.data_type = "W", TensorProto.FLOAT
    w.dims.append(16)
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    node = helper.make_node("Add", ["x", "W"], ["y"])
    return make_model([node], [tensor_info("x", [16])], [tensor_info("y", [16])], [w])


def _write(path, proto: onnx.ModelProto):
    path.write_bytes(proto.SerializeToString())
    return path


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin"])
def test_external_data_path_traversal_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(np.arange(16, dtype=np.float32).tobytes())
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    path = _write(model_dir / "m.onnx", _external_model(location))
    with pytest.raises(UnsafeModelError, match=r"climbs out of the model's folder"):
        kiln.load(path)


def test_absolute_external_data_path_is_refused(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(16, dtype=np.float32).tobytes())
    path = _write(tmp_path / "m.onnx", _external_model(str(secret)))
    with pytest.raises(UnsafeModelError, match="absolute external-data path"):
        kiln.load(path)


def test_symlink_out_of_model_folder_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(np.arange(16, dtype=np.float32).tobytes())
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    os.symlink(outside / "secret.bin", model_dir / "weights.bin")
    path = _write(model_dir / "m.onnx", _external_model("weights.bin"))
    with pytest.raises(UnsafeModelError, match="symlink"):
        kiln.load(path)


def test_missing_and_truncated_external_data(tmp_path):
    path = _write(tmp_path / "m.onnx", _external_model("weights.bin"))
    with pytest.raises(InvalidModelError, match="missing"):
        kiln.load(path)
    (tmp_path / "weights.bin").write_bytes(b"\0" * 10)
    with pytest.raises(InvalidModelError, match="truncated"):
        kiln.load(path)


def test_valid_external_data_loads_and_runs(tmp_path):
    weights = np.arange(16, dtype=np.float32)
    (tmp_path / "weights.bin").write_bytes(weights.tobytes())
    path = _write(tmp_path / "m.onnx", _external_model("weights.bin"))
    optimized = kiln.optimize(path, level=1)
    x = np.ones(16, np.float32)
    np.testing.assert_allclose(optimized(x), x + weights)


def test_truncated_file_is_refused(tmp_path, mlp_model):
    data = mlp_model.SerializeToString()
    path = tmp_path / "m.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModelError, match="truncated"):
        kiln.load(path)


def test_empty_and_garbage_files_are_refused(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(InvalidModelError, match="empty"):
        kiln.load(empty)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff" * 100)
    with pytest.raises(InvalidModelError):
        kiln.load(garbage)
    with pytest.raises(InvalidModelError, match="does not exist"):
        kiln.load(tmp_path / "nope.onnx")


def test_cycle_is_refused(tmp_path):
    nodes = [
        helper.make_node("Add", ["x", "b"], ["a"], name="first"),
        helper.make_node("Relu", ["a"], ["b"], name="second"),
    ]
    model = make_model(nodes, [tensor_info("x", [2])], [tensor_info("b", [2])])
    with pytest.raises(InvalidModelError, match=r"cycle: (first|second) -> (first|second)"):
        kiln.capture(model)
    with pytest.raises(InvalidModelError, match="cycle"):
        kiln.load(_write(tmp_path / "cycle.onnx", model))


def test_out_of_order_acyclic_graph_is_reordered():
    nodes = [
        helper.make_node("Relu", ["a"], ["y"], name="second"),
        helper.make_node("Neg", ["x"], ["a"], name="first"),
    ]
    model = make_model(nodes, [tensor_info("x", [2])], [tensor_info("y", [2])])
    optimized = kiln.optimize(model, level=0)
    np.testing.assert_allclose(optimized(np.array([1.0, -2.0], np.float32)), [0.0, 2.0])
    assert [n.name for n in model.graph.node] == ["second", "first"], "the caller's proto must not change"


def test_unknown_op_is_refused():
    model = make_model(
        [helper.make_node("FrobnicateTensor", ["x"], ["y"])], [tensor_info("x", [2])], [tensor_info("y", [2])]
    )
    with pytest.raises(UnsupportedOperatorError, match="FrobnicateTensor") as info:
        kiln.capture(model)
    assert info.value.op_types == ["FrobnicateTensor"]


def test_unknown_custom_domain_op_fails_clearly_in_the_backend():
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    model = make_model([node], [tensor_info("x", [2])], [tensor_info("y", [2])])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    captured = kiln.capture(model)  # custom domains are the runtime's to judge
    from kiln.backends.onnxruntime import compile as ort_compile

    with pytest.raises(kiln.KilnError, match="Frobnicate"):
        ort_compile(captured)


def test_invalid_model_reports_checker_message():
    # A node with an input that nothing defines.
    model = make_model([helper.make_node("Relu", ["ghost"], ["y"])], [tensor_info("x", [2])], [tensor_info("y", [2])])
    with pytest.raises(InvalidModelError, match="not valid ONNX"):
        kiln.capture(model)


def test_kiln_errors_are_catchable_as_one_base():
    for cls in (InvalidModelError, UnsafeModelError, UnsupportedOperatorError, kiln.CaptureError):
        assert issubclass(cls, kiln.KilnError)
