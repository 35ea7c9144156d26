"""The cheaper fixed costs of a pipeline keep their guarantees: checkpoints reused across
unchanged passes still roll back exactly, sampled deduplication still compares every byte, and
the default save still round-trips."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from conftest import make_model, tensor_info
from onnx import helper, numpy_helper

import kiln
from kiln.ir import serialization
from kiln.passes.cleanup.initializer_deduplication import DeduplicateInitializers
from kiln.passes.infra.contract import Pass, PassContext, PassResult
from kiln.passes.infra.instruments import StructuralCheck
from kiln.passes.infra.manager import PassManager


class _Unchanged(Pass):
    name = "unchanged"

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        return PassResult(model, False)


class _Breaks(Pass):
    """Makes the model read a value before it is defined (the structural check rolls it back)."""

    name = "breaks"

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        first, second = list(model.graph)[:2]
        first.replace_input_with(0, second.outputs[0])
        return PassResult(model, True)


def _chain() -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["y"])]
    return make_model(nodes, [tensor_info("x", [2])], [tensor_info("y", [2])])


def test_unchanged_passes_share_one_checkpoint(monkeypatch):
    clones = []
    original = ir.Model.clone
    monkeypatch.setattr(ir.Model, "clone", lambda self: clones.append(1) or original(self))
    model = kiln.capture(_chain())
    PassManager([_Unchanged(), _Unchanged(), _Unchanged()], [StructuralCheck()]).run(model)
    assert len(clones) == 1


def test_rollback_after_unchanged_passes_restores_the_model():
    model = kiln.capture(_chain())
    result, report = PassManager([_Unchanged(), _Unchanged(), _Breaks(), _Unchanged()], [StructuralCheck()]).run(model)
    assert [p.status for p in report.passes] == ["unchanged", "unchanged", "rolled_back", "unchanged"]
    relu, neg = list(result.graph)
    assert relu.inputs[0] is result.graph.inputs[0] and neg.inputs[0] is relu.outputs[0]


def _two_weights(a: np.ndarray, b: np.ndarray) -> onnx.ModelProto:
    nodes = [helper.make_node("MatMul", ["x", "A"], ["p"]), helper.make_node("MatMul", ["x", "B"], ["q"]),
             helper.make_node("Sub", ["p", "q"], ["y"])]
    return make_model(nodes, [tensor_info("x", [1, a.shape[0]])], [tensor_info("y", [1, a.shape[1]])],
                      [numpy_helper.from_array(a, "A"), numpy_helper.from_array(b, "B")])


def test_deduplication_compares_every_byte_not_just_the_sample():
    a = np.arange(200 * 4, dtype=np.float32).reshape(200, 4)
    b = a.copy()
    b[1, 1] += 1  # element 5 of 800: between the sampled positions 0 and ~12.7
    optimized = kiln.optimize(_two_weights(a, b), passes=[DeduplicateInitializers()])
    assert optimized.report.passes[0].status == "unchanged"
    assert len(optimized.model.graph.initializers) == 2


def test_deduplication_merges_identical_weights():
    a = np.random.default_rng(0).standard_normal((200, 4)).astype(np.float32)
    optimized = kiln.optimize(_two_weights(a, a.copy()), passes=[DeduplicateInitializers()])
    assert len(optimized.model.graph.initializers) == 1
    np.testing.assert_array_equal(optimized(np.ones((1, 200), np.float32)), np.zeros((1, 4), np.float32))


def test_large_weights_save_to_external_data_and_reload(tmp_path, monkeypatch):
    monkeypatch.setattr(serialization, "SAVE_EXTERNAL_DATA_THRESHOLD_BYTES", 1024)
    a = np.random.default_rng(1).standard_normal((200, 4)).astype(np.float32)
    optimized = kiln.optimize(_two_weights(a, 2 * a), level=0)
    path = optimized.save(tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx.data").stat().st_size >= 2 * a.nbytes
    single = optimized.save(tmp_path / "single.onnx", external_data=False)
    assert not (tmp_path / "single.onnx.data").exists()
    x = np.ones((1, 200), np.float32)
    for saved in (path, single):
        np.testing.assert_allclose(kiln.optimize(str(saved), level=0)(x), x @ a - x @ (2 * a), rtol=1e-5)
