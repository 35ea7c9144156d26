"""The user zoo (`benchmarks/user_zoo.py`): models like users bring, mostly legacy exports with
dynamic axes. At levels 1 and 2 with default arguments, `kiln.optimize` either matches ONNX Runtime
on the original within 1e-4 at the shapes it bound (and the result still runs at other sizes), or
stops with a `kiln.errors.KilnError` naming the input or op and the fix; no other exception.

The zoo's own PyTorch kernels for NonMaxSuppression and RoiAlign are checked against ONNX Runtime
here too (fast); everything that loads a zoo model is `slow` (exports when the cache is cold).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import make_model, tensor_info
from onnx import TensorProto, helper

import kiln
from benchmarks.user_zoo import (
    USER_ZOO,
    USER_ZOO_DIR,
    UserCase,
    declared_dims,
    load_case,
    nms_reference,
    op_histogram,
    ort_vs_torch,
    roi_align_reference,
)
from kiln.errors import InputError, KilnError
from kiln.ir.inputs import random_inputs
from kiln.ir.shapes import bind_shapes

CACHE = Path(__file__).parents[1] / USER_ZOO_DIR
LEVELS = (1, 2)
TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}
# Entries kiln must refuse with default arguments (the default guess does not run on them), and why.
EXPECTED_TO_STOP = {"textcnn-max-len": "takes at most 64 tokens; the default sequence guess is 128"}
FIX_HINTS = ("input_shapes", "dim_values", "sample_inputs", "--", "Suggested fix")


@functools.cache
def case(name: str) -> UserCase:
    return load_case(name, cache_dir=CACHE)


@functools.cache
def optimized(name: str, level: int) -> kiln.OptimizedModel | KilnError:
    """kiln.optimize with default arguments, or the KilnError it raised (any other exception fails)."""
    try:
        return kiln.optimize(str(case(name).onnx_path), level=level)
    except KilnError as error:
        return error


def sample_feeds(path: Path) -> dict[str, np.ndarray]:
    """The sample inputs kiln validates on when given none: random, at the bound shapes."""
    model = kiln.load(path)
    inputs = [v for v in model.graph.inputs if not v.is_initializer()]
    return random_inputs(inputs, shapes=bind_shapes(inputs))


def as_list(outputs) -> list[np.ndarray]:
    return list(outputs) if isinstance(outputs, tuple) else [outputs]


def assert_outputs_close(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for index, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, f"output {index}: shape {g.shape} instead of {w.shape}"
        np.testing.assert_allclose(g, w, **TOLERANCE, err_msg=f"output {index}")


# ---------------------------------------------------------------------------------------------
# The zoo's PyTorch kernels against ONNX Runtime (fast: no export)


def _run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_nms_reference_matches_onnxruntime():
    gen = torch.Generator().manual_seed(0)
    corners = torch.rand(2, 60, 2, generator=gen) * 80
    boxes = torch.cat([corners, corners + 5 + torch.rand(2, 60, 2, generator=gen) * 30], -1)
    scores = torch.rand(2, 3, 60, generator=gen)
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "max", "iou", "threshold"], ["selected"])
    model = make_model([node], [tensor_info("boxes", [2, 60, 4]), tensor_info("scores", [2, 3, 60]),
                                tensor_info("max", [1], TensorProto.INT64), tensor_info("iou", [1]),
                                tensor_info("threshold", [1])],
                       [tensor_info("selected", ["n", 3], TensorProto.INT64)], opset=16)
    feeds = {"boxes": boxes.numpy(), "scores": scores.numpy(), "max": np.array([7]),
             "iou": np.array([0.3], np.float32), "threshold": np.array([0.2], np.float32)}
    expected = _run_ort(model, feeds)[0]
    got = nms_reference(boxes, scores, 7, 0.3, 0.2).numpy()
    assert len(got) > 20
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("mode", ["output_half_pixel", "half_pixel"])
def test_roi_align_reference_matches_onnxruntime(mode):
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, 4, 12, 15, generator=gen)
    start = torch.rand(9, 2, generator=gen) * 100 - 10  # some boxes leave the map
    rois = torch.cat([start, start + torch.rand(9, 2, generator=gen) * 60], -1)
    batch = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1])
    node = helper.make_node("RoiAlign", ["x", "rois", "batch"], ["y"], output_height=5, output_width=5,
                            sampling_ratio=2, spatial_scale=0.125, mode="avg", coordinate_transformation_mode=mode)
    model = make_model([node], [tensor_info("x", [2, 4, 12, 15]), tensor_info("rois", [9, 4]),
                                tensor_info("batch", [9], TensorProto.INT64)],
                       [tensor_info("y", [9, 4, 5, 5])], opset=16)
    expected = _run_ort(model, {"x": features.numpy(), "rois": rois.numpy(), "batch": batch.numpy()})[0]
    got = roi_align_reference(features, rois, batch, 0.125, 5, 2, mode == "half_pixel").numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# The zoo itself


@pytest.mark.slow
@pytest.mark.parametrize("name", list(USER_ZOO))
def test_export_matches_pytorch_on_two_sizes(name):
    assert ort_vs_torch(case(name)) < 1e-4


@pytest.mark.slow
def test_exports_have_the_structure_users_bring():
    protos = {name: case(name).proto() for name in USER_ZOO}
    ops = {name: op_histogram(proto) for name, proto in protos.items()}
    opsets = {name: next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
              for name, proto in protos.items()}
    assert {opsets[n] for n in ("crnn-captcha", "gru-tagger", "cnn-dynamic-hw", "bert-legacy-dynamic")} == {11, 12, 13}
    assert all(ops["detector"][op] >= 1 for op in ("Loop", "If", "NonMaxSuppression", "RoiAlign", "TopK"))
    assert ops["crnn-captcha"]["LSTM"] == 2 and ops["gru-tagger"]["GRU"] == 1
    assert ops["conv-bn-relu-bn"]["BatchNormalization"] == 4 and ops["fpn-resize"]["Resize"] == 2
    assert ops["early-exit-if"]["If"] == 1
    training = [n for n in protos["conv-bn-training-export"].graph.node if n.op_type == "BatchNormalization"]
    assert len(training) == 4 and all(helper.get_node_attr_value(n, "training_mode") == 1 for n in training)
    assert declared_dims(protos["ocr-cls-neg-dims"].graph.input[0]) == [-1, 3, None, None]
    assert declared_dims(protos["crnn-captcha"].graph.input[0]) == [1, 1, 64, "image_width"]
    assert [declared_dims(v) for v in protos["bert-legacy-dynamic"].graph.input] == [["batch", "sequence"]] * 3


@pytest.mark.slow
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", list(USER_ZOO))
def test_optimize_matches_ort_or_stops_with_a_kiln_error(name, level):
    result = optimized(name, level)
    if isinstance(result, KilnError):
        assert name in EXPECTED_TO_STOP, f"{name} level {level}: {type(result).__name__}: {result}"
        proto = case(name).proto()
        message = str(result)
        named = [v.name for v in proto.graph.input] + list(op_histogram(proto))
        assert any(word in message for word in named), message
        assert any(hint in message for hint in FIX_HINTS), message
        return
    assert name not in EXPECTED_TO_STOP, f"{name}: {EXPECTED_TO_STOP.get(name)}, yet kiln optimized it"
    report = result.report
    assert report.validated, report.validation
    troubled = [(p.name, p.status, p.message) for p in report.passes if p.status in ("failed", "rolled_back")]
    assert not troubled, troubled
    path = case(name).onnx_path
    feeds = sample_feeds(path)
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert_outputs_close(as_list(result(**feeds)), original)
    # the report says which shapes ran, and warns exactly when a size was guessed
    model = kiln.load(path)
    bound = bind_shapes([v for v in model.graph.inputs if not v.is_initializer()])
    assert report.input_shapes == bound.summary() != ""
    assert report.shape_warnings == bound.warnings
    assert bool(report.shape_warnings) == any(b.guessed for b in bound.inputs.values())


@pytest.mark.slow
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", [n for n in USER_ZOO if n not in EXPECTED_TO_STOP])
def test_optimized_model_still_runs_at_other_sizes(name, level):
    """Validation ran at one bound shape; the saved model keeps its dynamic axes and matches
    PyTorch on both of the zoo's input sets (other batch, sequence or image sizes)."""
    result = optimized(name, level)
    assert not isinstance(result, KilnError), result
    for inputs, reference in zip(case(name).input_sets, case(name).references):
        assert_outputs_close(as_list(result(**inputs)), reference)


@pytest.mark.slow
def test_guessed_dims_are_reported():
    warnings = {name: optimized(name, 1).report.shape_warnings for name in ("crnn-captcha", "ocr-cls-neg-dims")}
    assert warnings["crnn-captcha"] == ["image_width guessed 224 (image side)"]
    assert optimized("crnn-captcha", 1).report.input_shapes == "input1 [1, 1, 64, 224]"
    # Paddle's -1 batch and empty H, W: guessed by place
    paddle = warnings["ocr-cls-neg-dims"]
    assert len(paddle) == 3 and paddle[0].startswith("x_dim0 guessed 1")
    assert paddle[1].startswith("x_dim2 guessed 224") and paddle[2].startswith("x_dim3 guessed 224")
    assert optimized("conv-bn-relu-bn", 1).report.shape_warnings == ["batch guessed 1 (batch)"]


@pytest.mark.slow
@pytest.mark.parametrize("binding", [{"dim_values": {"image_width": 160}},
                                     {"input_shapes": {"input1": (1, 1, 64, 160)}}])
def test_crnn_bound_width_is_what_validation_runs(binding):
    report = kiln.optimize(str(case("crnn-captcha").onnx_path), level=2, **binding).report
    assert report.input_shapes == "input1 [1, 1, 64, 160]"
    assert report.shape_warnings == [] and report.validated and not report.shapes_fixed


@pytest.mark.slow
def test_crnn_contradicting_binding_names_the_input():
    with pytest.raises(InputError, match=r"input_shapes\['input1'\].* sets axis 2 to 32.*static 64"):
        kiln.optimize(str(case("crnn-captcha").onnx_path), level=1, input_shapes={"input1": (1, 1, 32, 160)})


@pytest.mark.slow
def test_crnn_fixed_shapes_are_saved_static(tmp_path):
    path = case("crnn-captcha").onnx_path
    result = kiln.optimize(str(path), level=2, dim_values={"image_width": 160}, fix_shapes=True)
    assert result.report.shapes_fixed
    saved = onnx.load(result.save(tmp_path / "crnn.onnx"))
    assert declared_dims(saved.graph.input[0]) == [1, 1, 64, 160]
    x = np.random.default_rng(1).standard_normal((1, 1, 64, 160)).astype(np.float32)
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input1": x})
    fixed = ort.InferenceSession(str(tmp_path / "crnn.onnx"), providers=["CPUExecutionProvider"])
    assert_outputs_close(fixed.run(None, {"input1": x}), original)


@pytest.mark.slow
def test_textcnn_default_sequence_stops_with_the_fix_and_a_bound_one_runs():
    error = optimized("textcnn-max-len", 1)
    assert isinstance(error, InputError)
    message = str(error)
    assert "input_ids [1, 128]" in message and "sequence guessed 128" in message
    assert "Gather" in message and "--dim NAME=SIZE" in message and "sample_inputs=" in message
    result = kiln.optimize(str(case("textcnn-max-len").onnx_path), level=2, dim_values={"sequence": 48})
    assert result.report.validated and result.report.input_shapes == "input_ids [1, 48]"


@pytest.mark.slow
def test_cli_stops_with_a_message_not_a_traceback(tmp_path, capsys):
    from kiln.cli import main

    path = case("textcnn-max-len").onnx_path
    assert main(["optimize", str(path), "-o", str(tmp_path / "out.onnx"), "--level", "2"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err and "--dim" in err
    assert main(["optimize", str(path), "-o", str(tmp_path / "out.onnx"), "--dim", "sequence=64"]) == 0
    assert (tmp_path / "out.onnx").exists()
