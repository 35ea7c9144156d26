"""Batch-transpose layouts (kiln.passes.layout.batch_transpose): moving a Reshape's unit dims keeps every
Transpose output, and at batch 1 ONNX Runtime then reads the attention head splits in place."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from conftest import make_model, optimize_with, tensor_info
from onnx import helper, numpy_helper

import kiln
from kiln.passes.folding.constant_folding import FoldConstants
from kiln.passes.layout.batch_transpose import ExposeBatchTransposes, relayout_for_batch_transpose

RNG = np.random.default_rng(0)


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


def _attention_scores(batch: int = 1, key_reader: str = "MatMul") -> onnx.ModelProto:
    """scores = softmax(Q K^T) V for heads split by Reshape + Transpose, as torch's exporter writes them."""
    seq, heads, dim = 6, 2, 4
    hidden = heads * dim
    nodes = []
    for name, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [helper.make_node("MatMul", ["x", f"W{name}"], [f"{name}_lin"]),
                  helper.make_node("Reshape", [f"{name}_lin", "heads"], [f"{name}_r"]),
                  helper.make_node("Transpose", [f"{name}_r"], [f"{name}_t"], perm=perm)]
    if key_reader != "MatMul":  # the keys also go elsewhere: their Transpose must stay as it is
        nodes.append(helper.make_node(key_reader, ["k_t"], ["k_out"]))
    nodes += [helper.make_node("MatMul", ["q_t", "k_t"], ["s"]),
              helper.make_node("Softmax", ["s"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "v_t"], ["ctx"]),
              helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ctx_t", "merge"], ["y"])]
    inits = [numpy_helper.from_array(RNG.standard_normal((hidden, hidden)).astype(np.float32), f"W{n}") for n in "qkv"]
    inits += [numpy_helper.from_array(np.array([batch, seq, heads, dim], np.int64), "heads"),
              numpy_helper.from_array(np.array([batch, seq, hidden], np.int64), "merge")]
    outputs = [tensor_info("y", [batch, seq, hidden])]
    if key_reader != "MatMul":
        outputs.append(tensor_info("k_out", [batch, heads, dim, seq]))
    return make_model(nodes, [tensor_info("x", [batch, seq, hidden])], outputs, inits)


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


def test_ort_reads_the_head_splits_in_place_at_batch_one(tmp_path):
    model = _attention_scores()
    optimized = optimize_with(model, FoldConstants(), ExposeBatchTransposes())
    assert _relayouts(optimized) == 3
    assert sum(name.endswith("_batch_layout") for name in optimized.model.graph.initializers) == 1  # shared
    x = RNG.standard_normal((1, 6, 8)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(optimized(x), want, rtol=1e-5, atol=1e-6)
    # Only the output merge's Transpose is left for ORT to run; the three head splits are read by FusedMatMul.
    assert _ort_op_types(optimized.model, tmp_path).count("Transpose") == 1
    assert _ort_op_types(model, tmp_path).count("Transpose") == 4


def test_batch_two_is_left_as_it_is():
    optimized = optimize_with(_attention_scores(batch=2), FoldConstants(), ExposeBatchTransposes())
    assert _relayouts(optimized) == 0


def test_a_transpose_read_by_another_op_is_left_as_it_is():
    optimized = optimize_with(_attention_scores(key_reader="Relu"), FoldConstants(), ExposeBatchTransposes())
    assert _relayouts(optimized) == 2  # queries and values; the keys' Transpose also feeds the Relu
    perms = {tuple(n.attributes["perm"].value) for n in optimized.model.graph if n.op_type == "Transpose"}
    assert (0, 2, 3, 1) in perms
