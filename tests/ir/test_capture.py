"""Capture of every supported input kind, provenance from nn.Module paths, clear CaptureErrors."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from conftest import make_model, run_pass, tensor_info
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.errors import CaptureError
from kiln.ir.provenance import get_provenance
from kiln.passes.folding.constant_folding import FoldConstants


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)
        self.norm = torch.nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.relu(self.proj(x)) + x)


class TwoBlocks(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(), Block()])
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


@pytest.fixture(scope="module")
def module_and_input():
    torch.manual_seed(0)
    return TwoBlocks().eval(), torch.randn(2, 8)


def _module_paths(model: ir.Model) -> set[str]:
    return {o.module for n in model.graph for o in get_provenance(n)}


def test_capture_nn_module_records_module_paths(module_and_input):
    module, x = module_and_input
    model = kiln.capture(module, (x,))
    assert isinstance(model, ir.Model)
    assert all(get_provenance(n) for n in model.graph)
    assert {"blocks.0.proj", "blocks.1.norm", "head"} <= _module_paths(model)


def test_capture_graph_module_and_exported_program(module_and_input):
    module, x = module_and_input
    expected = module(x).detach().numpy()
    gm = torch.fx.symbolic_trace(module)
    exported = torch.export.export(module, (x,))
    for source, inputs in ((gm, (x,)), (exported, None)):
        optimized = kiln.optimize(source, inputs)
        np.testing.assert_allclose(optimized(x.numpy()), expected, atol=1e-5)


def test_capture_onnx_path_proto_ir_and_bytes(tmp_path, mlp_model):
    path = tmp_path / "m.onnx"
    onnx.save(mlp_model, path)
    x = np.ones((2, 4), np.float32)
    outputs = []
    for source in (path, str(path), mlp_model, kiln.capture(mlp_model), mlp_model.SerializeToString()):
        model = kiln.capture(source)
        assert isinstance(model, ir.Model)
        assert {str(o) for n in model.graph for o in get_provenance(n)} >= {"matmul_a", "relu"}
        outputs.append(kiln.optimize(model, level=0)(x))
    for out in outputs[1:]:
        np.testing.assert_array_equal(out, outputs[0])


def test_module_in_training_mode_is_captured_in_eval_and_restored():
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5)).train()
    x = torch.randn(3, 4)
    optimized = kiln.optimize(module, (x,))
    assert module.training, "the user's module must be left in the mode it was in"
    module.eval()
    np.testing.assert_allclose(optimized(x).numpy(), module(x).detach().numpy(), atol=1e-6)


def test_kwargs_example_inputs_and_torch_in_torch_out():
    class TwoInputs(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return a * 2 + b, a - b

    a, b = torch.randn(3), torch.randn(3)
    optimized = kiln.optimize(TwoInputs(), {"a": a, "b": b})
    first, second = optimized(a=a, b=b)
    assert isinstance(first, torch.Tensor)
    torch.testing.assert_close(first, a * 2 + b)
    torch.testing.assert_close(second, a - b)
    assert optimized.report.sample_inputs == "the example inputs"


def test_data_dependent_control_flow_gives_capture_error():
    class Branchy(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:
                return x * 2
            return x - 1

    with pytest.raises(CaptureError) as info:
        kiln.capture(Branchy(), (torch.randn(4),))
    err = info.value
    assert err.construct == "data-dependent control flow or shape"
    assert "torch.cond" in str(err) and "torch.export.export failed" in str(err)


def test_missing_example_inputs_and_unknown_objects():
    with pytest.raises(CaptureError, match="needs example inputs"):
        kiln.capture(torch.nn.Linear(2, 2))
    with pytest.raises(CaptureError, match="cannot capture an object of type builtins.dict"):
        kiln.capture({"not": "a model"})


def test_sdpa_failure_is_explained():
    from kiln.ir.capture import explain_export_failure

    cause = RuntimeError("Unsupported: aten._scaled_dot_product_flash_attention_for_cpu.default")
    try:
        raise ValueError("Failed to convert the exported program") from cause
    except ValueError as exc:
        error = explain_export_failure(exc, stage="torch.onnx.export")
    assert 'attn_implementation="eager"' in str(error)
    assert error.construct and "aten._scaled_dot_product_flash_attention_for_cpu" in error.construct


def _growing_loop_model() -> onnx.ModelProto:
    """A Loop appending x to a state three times, the state declared [0, 3] in the body as the
    legacy exporter writes it (the initial value's shape), though it grows every iteration."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Concat", ["rows_in", "x"], ["rows_out"], axis=0)],
        "body",
        [tensor_info("i", [], TensorProto.INT64), tensor_info("cond_in", [], TensorProto.BOOL),
         tensor_info("rows_in", [0, 3])],
        [tensor_info("cond_out", [], TensorProto.BOOL), tensor_info("rows_out", ["rows", 3])],
    )
    initializers = [numpy_helper.from_array(np.array(3, np.int64), "trips"),
                    numpy_helper.from_array(np.array(True), "cond"),
                    numpy_helper.from_array(np.zeros((0, 3), np.float32), "empty")]
    loop = helper.make_node("Loop", ["trips", "cond", "empty"], ["rows"], body=body)
    return make_model([loop], [tensor_info("x", [1, 3])], [tensor_info("rows", ["n", 3])], initializers, opset=13)


def test_loop_state_keeps_only_the_dims_its_update_keeps():
    model = kiln.capture(_growing_loop_model())
    body = next(iter(model.graph)).attributes["body"].as_graph()
    state = body.inputs[2]
    assert state.shape[1] == 3 and not isinstance(state.shape[0], int)


def test_folding_does_not_drop_a_loop_state_declared_empty():
    x = np.arange(3, dtype=np.float32).reshape(1, 3)
    optimized, report = run_pass(FoldConstants(), _growing_loop_model(), feeds={"x": x})
    assert report.status in ("applied", "unchanged")
    result = kiln.optimize(optimized, level=0)(x)
    np.testing.assert_array_equal(result, np.repeat(x, 3, axis=0))
