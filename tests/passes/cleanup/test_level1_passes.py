"""Level-1 passes on the cases where the reused onnx-ir/onnxscript passes needed guarding,
and validation of sequence, optional and low-precision outputs."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir
from conftest import make_model, tensor_info
from onnx import TensorProto, helper

import kiln
from kiln.ir.inputs import make_feeds
from kiln.passes.infra.contract import Tolerance
from kiln.passes.infra.validation import compare_outputs, tolerance_for


def test_identity_that_duplicates_a_graph_output_is_kept():
    # outputs [a, Identity(a)]: removing the Identity would leave outputs [b, b] and lose `a`.
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Identity", ["a"], ["b"])]
    model = make_model(nodes, [tensor_info("x", [3])], [tensor_info("a", [3]), tensor_info("b", [3])])
    optimized = kiln.optimize(model, level=1)
    assert [v.name for v in optimized.model.graph.outputs] == ["a", "b"]
    a, b = optimized(np.array([-1.0, 0.0, 2.0], np.float32))
    np.testing.assert_array_equal(a, [0, 0, 2])
    np.testing.assert_array_equal(b, [0, 0, 2])


def test_identity_returning_an_outer_scope_value_from_a_branch_is_kept():
    # The branch returns `h`, an intermediate of the enclosing graph (not a graph input).
    then_branch = helper.make_graph([helper.make_node("Identity", ["h"], ["t"])], "then", [], [tensor_info("t", [2])])
    else_branch = helper.make_graph([helper.make_node("Neg", ["h"], ["e"])], "else", [], [tensor_info("e", [2])])
    nodes = [helper.make_node("Relu", ["x"], ["h"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch)]
    model = make_model(nodes, [tensor_info("c", [], TensorProto.BOOL), tensor_info("x", [2])], [tensor_info("y", [2])])
    optimized = kiln.optimize(model, level=1)
    assert all(p.status in ("applied", "unchanged") for p in optimized.report.passes)
    x = np.array([1.0, -2.0], np.float32)
    np.testing.assert_array_equal(optimized(np.array(True), x), [1.0, 0.0])
    np.testing.assert_array_equal(optimized(np.array(False), x), [-1.0, 0.0])


def test_cast_like_keeps_saturate_when_folded():
    nodes = [helper.make_node("CastLike", ["x", "like"], ["y"], saturate=0)]
    model = make_model(nodes, [tensor_info("x", [2]), tensor_info("like", [1], TensorProto.FLOAT8E4M3FN)],
                       [tensor_info("y", [2], TensorProto.FLOAT8E4M3FN)], opset=19)
    optimized = kiln.optimize(model, level=1, sample_inputs={
        "x": np.array([1e6, 1.0], np.float32), "like": np.zeros(1, ml_dtypes.float8_e4m3fn)})
    cast = next(n for n in optimized.model.graph if n.op_type == "Cast")
    assert cast.attributes["saturate"].value == 0
    assert optimized.report.passes[2].status == "applied"


def test_compare_outputs_handles_sequences_optionals_and_ml_dtypes():
    a = np.ones(2, np.float32)
    stats, problem = compare_outputs(["s"], [[a, a[:1]]], [[a, a[:1]]], Tolerance())
    assert problem is None
    _, problem = compare_outputs(["s"], [[a, a]], [[a]], Tolerance())
    assert problem == "output 's' is a sequence of 1 instead of 2"
    _, problem = compare_outputs(["o"], [None], [a], Tolerance())
    assert problem and "empty optional" in problem
    f8 = np.array([448.0, np.nan], ml_dtypes.float8_e4m3fn)
    _, problem = compare_outputs(["f8"], [f8], [np.array([448.0, 448.0], ml_dtypes.float8_e4m3fn)], Tolerance())
    assert problem and "'f8' differs" in problem, "float8 outputs must be compared, not skipped"


def test_tolerance_floors_follow_output_precision():
    base = Tolerance(1e-4, 1e-4)
    assert tolerance_for(np.dtype(np.float32), base) == base
    assert tolerance_for(np.dtype(np.float16), base) == Tolerance(1e-3, 1e-3)
    assert tolerance_for(np.dtype(ml_dtypes.bfloat16), base) == Tolerance(1e-2, 1e-2)
    one_ulp = np.float16(0.5) + np.finfo(np.float16).eps / 2
    _, problem = compare_outputs(["h"], [np.array([0.5], np.float16)], [np.array([one_ulp], np.float16)], base)
    assert problem is None


def test_sequence_and_optional_inputs_are_fed_as_given():
    seq = ir.Value(name="s", type=ir.SequenceType(ir.TensorType(ir.DataType.FLOAT)))
    opt = ir.Value(name="o", type=ir.OptionalType(ir.TensorType(ir.DataType.FLOAT)))
    tensor = ir.Value(name="t", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([2]))
    feeds = make_feeds([seq, opt, tensor], ([np.ones(3, np.float32), np.ones(1, np.float32)], None,
                                             np.zeros(2, np.float32)), {})
    assert isinstance(feeds["s"], list) and len(feeds["s"]) == 2
    assert feeds["o"] is None and feeds["t"].shape == (2,)
