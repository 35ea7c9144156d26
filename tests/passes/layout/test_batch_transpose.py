"""Batch-transpose layouts (kiln.passes.layout.batch_transpose): moving a Reshape's unit dims keeps every
Transpose output, at batch 1 ONNX Runtime then reads the attention head splits in place, and the
relayout happens only where the attention core measured faster so. The timer is fake; nothing depends
on speed."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from conftest import FakeTimer, fake_measured_choices, make_model, optimize_with, tensor_info
from onnx import helper, numpy_helper

import kiln
from kiln.cost_model.measure.choices import MeasuredChoices
from kiln.passes.folding.constant_folding import FoldConstants
from kiln.passes.layout.batch_transpose import ExposeBatchTransposes, relayout_for_batch_transpose

RNG = np.random.default_rng(0)
MEASURE_EVERYTHING = {"measured_choice_min_ms": 0}


def _measured(ratio: float) -> tuple[MeasuredChoices, FakeTimer]:
    timer = FakeTimer(ratio)
    return fake_measured_choices(timer), timer


def _optimize(model, ratio: float = 0.8):
    choices, timer = _measured(ratio)
    optimized = optimize_with(model, FoldConstants(), ExposeBatchTransposes(), measured_choices=choices,
                              options=MEASURE_EVERYTHING)
    return optimized, timer


def test_head_split_perms_become_batch_transposes():
    assert relayout_for_batch_transpose((1, 128, 12, 64), (0, 2, 1, 3)) == ((128, 1, 12, 64), (1, 2, 0, 3))
    assert relayout_for_batch_transpose((1, 128, 12, 64), (0, 2, 3, 1)) == ((128, 1, 12, 64), (1, 2, 3, 0))


def test_no_relayout_without_a_unit_dim():
    assert relayout_for_batch_transpose((2, 128, 12, 64), (0, 2, 1, 3)) is None


@pytest.mark.parametrize("shape", [(1, 3, 4, 5), (3, 1, 4, 5), (1, 3, 1, 5), (1, 3, 4), (1, 1, 3, 4, 5), (3, 4, 1)])
def test_every_relayout_keeps_the_transpose_output(shape):
    """Exhaustive over perms: whenever a relayout is offered, it computes the same tensor."""
    x = np.arange(int(np.prod(shape)), dtype=np.float32)
    offered = 0
    for perm in itertools.permutations(range(len(shape))):
        found = relayout_for_batch_transpose(shape, perm)
        if found is None:
            continue
        new_shape, new_perm = found
        assert sorted(d for d in new_shape if d != 1) == sorted(d for d in shape if d != 1)
        np.testing.assert_array_equal(np.transpose(x.reshape(new_shape), new_perm), np.transpose(x.reshape(shape), perm))
        offered += 1
    assert offered > 0


def _attention_scores(batch: int = 1, key_reader: str = "MatMul", layers: int = 1) -> onnx.ModelProto:
    """scores = softmax(Q K^T / s + mask) V for heads split by Reshape + Transpose, as torch's exporter
    writes them, `layers` times in a row."""
    seq, heads, dim = 6, 2, 4
    hidden = heads * dim
    nodes = []
    x = "x"
    for layer in range(layers):
        p = f"l{layer}_"
        for name, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
            nodes += [helper.make_node("MatMul", [x, f"{p}W{name}"], [f"{p}{name}_lin"]),
                      helper.make_node("Reshape", [f"{p}{name}_lin", "heads"], [f"{p}{name}_r"]),
                      helper.make_node("Transpose", [f"{p}{name}_r"], [f"{p}{name}_t"], perm=perm)]
        if key_reader != "MatMul":  # the keys also go elsewhere: their Transpose must stay as it is
            nodes.append(helper.make_node(key_reader, [f"{p}k_t"], [f"{p}k_out"]))
        nodes += [helper.make_node("MatMul", [f"{p}q_t", f"{p}k_t"], [f"{p}s"]),
                  helper.make_node("Div", [f"{p}s", "scale"], [f"{p}s_scaled"]),
                  helper.make_node("Add", [f"{p}s_scaled", "mask"], [f"{p}s_masked"]),
                  helper.make_node("Softmax", [f"{p}s_masked"], [f"{p}p"], axis=-1),
                  helper.make_node("MatMul", [f"{p}p", f"{p}v_t"], [f"{p}ctx"]),
                  helper.make_node("Transpose", [f"{p}ctx"], [f"{p}ctx_t"], perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", [f"{p}ctx_t", "merge"], [f"{p}y"])]
        x = f"{p}y"
    inits = [numpy_helper.from_array(RNG.standard_normal((hidden, hidden)).astype(np.float32), f"l{layer}_W{n}")
             for layer in range(layers) for n in "qkv"]
    inits += [numpy_helper.from_array(np.array([batch, seq, heads, dim], np.int64), "heads"),
              numpy_helper.from_array(np.array([batch, seq, hidden], np.int64), "merge"),
              numpy_helper.from_array(np.array(2.0, np.float32), "scale")]
    outputs = [tensor_info(x, [batch, seq, hidden])]
    if key_reader != "MatMul":
        outputs.append(tensor_info("l0_k_out", [batch, heads, dim, seq]))
    inputs = [tensor_info("x", [batch, seq, hidden]), tensor_info("mask", [batch, 1, 1, seq])]
    return make_model(nodes, inputs, outputs, inits)


def _feeds(batch: int = 1) -> dict[str, np.ndarray]:
    return {"x": RNG.standard_normal((batch, 6, 8)).astype(np.float32),
            "mask": np.where(RNG.random((batch, 1, 1, 6)) < 0.3, -1e4, 0.0).astype(np.float32)}


def _relayouts(optimized: kiln.OptimizedModel) -> int:
    shapes = next(p for p in optimized.report.passes if p.name == "batch_transpose")
    return sum(r.rule == "batch_transpose" for r in shapes.rewrites)


def _ort_op_types(model: onnx.ModelProto | ir.Model, tmp_path: Path) -> list[str]:
    if isinstance(model, ir.Model):
        model = ir.serde.serialize_model(model)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "ort.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "ort.onnx")).graph.node]


def _decisions(optimized: kiln.OptimizedModel):
    return next(p for p in optimized.report.passes if p.name == "batch_transpose").decisions


def test_ort_reads_the_head_splits_in_place_at_batch_one(tmp_path):
    model = _attention_scores()
    optimized, _ = _optimize(model)
    assert _relayouts(optimized) == 3
    assert sum(name.endswith("_batch_layout") for name in optimized.model.graph.initializers) == 1  # shared
    feeds = _feeds()
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(optimized(**feeds), want, rtol=1e-5, atol=1e-6)
    # Only the output merge's Transpose is left for ORT to run; the three head splits are read by FusedMatMul.
    assert _ort_op_types(optimized.model, tmp_path).count("Transpose") == 1
    assert _ort_op_types(model, tmp_path).count("Transpose") == 4


def test_the_attention_core_is_timed_in_both_layouts_and_both_compute_the_same():
    _, timer = _optimize(_attention_scores())
    baseline, candidate = (onnx.load_from_string(m) if isinstance(m, bytes) else m for m in timer.models[0])
    ops = sorted(n.op_type for n in baseline.graph.node)
    # the three head splits, both MatMuls, the scores path and the heads' merge; not the projections
    assert ops == sorted(["Reshape"] * 3 + ["Transpose"] * 4 + ["MatMul", "Div", "Add", "Softmax", "MatMul"])
    assert {i.name for i in baseline.graph.input} == {"l0_q_lin", "l0_k_lin", "l0_v_lin", "mask"}
    perms = sorted(tuple(a.ints) for n in candidate.graph.node if n.op_type == "Transpose" for a in n.attribute)
    assert perms == [(0, 2, 1, 3), (1, 2, 0, 3), (1, 2, 0, 3), (1, 2, 3, 0)]
    feeds = {i.name: RNG.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in baseline.graph.input}
    outs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
            for m in (baseline, candidate)]
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("ratio", [0.97, 1.1])
def test_a_core_measured_slower_or_within_the_noise_keeps_its_layout(ratio):
    optimized, _ = _optimize(_attention_scores(), ratio)
    assert _relayouts(optimized) == 0
    (decision,) = _decisions(optimized)
    assert decision.chosen == "as written" and decision.decided_by == "measurement"
    assert decision.alternative("batch transposes").measured_ms == pytest.approx(ratio)
    assert decision.alternative("as written").predicted_ms > 0


def test_layers_of_one_shape_share_one_measurement():
    optimized, timer = _optimize(_attention_scores(layers=2))
    assert _relayouts(optimized) == 6
    (decision,) = _decisions(optimized)
    assert decision.count == 2 and decision.chosen == "batch transposes"
    assert len({id(m[0]) for m in timer.models}) == 1  # the trials of one measurement


def test_without_measured_choices_the_layout_stays():
    optimized = optimize_with(_attention_scores(), FoldConstants(), ExposeBatchTransposes(), measured_choices=None)
    assert _relayouts(optimized) == 0
    assert "no measured choices" in _decisions(optimized)[0].reason


def test_batch_two_is_left_as_it_is():
    optimized, timer = _optimize(_attention_scores(batch=2))
    assert _relayouts(optimized) == 0 and not timer.models


def test_a_transpose_read_by_another_op_is_left_as_it_is():
    optimized, _ = _optimize(_attention_scores(key_reader="Relu"))
    assert _relayouts(optimized) == 2  # queries and values; the keys' Transpose also feeds the Relu
    perms = {tuple(n.attributes["perm"].value) for n in optimized.model.graph if n.op_type == "Transpose"}
    assert (0, 2, 3, 1) in perms
