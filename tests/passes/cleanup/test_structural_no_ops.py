"""Structural no-ops (Reshape to the same shape, zero Pad, full Slice, Concat of one) are removed;
look-alikes that change the tensor are kept."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_model, tensor_info
from onnx import helper, numpy_helper

import kiln
from kiln.ir.analysis import op_histogram


def _i64(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


# name: (nodes, initializers, output shape, removable)
CASES = {
    "reshape_same": ([helper.make_node("Reshape", ["x", "s"], ["h"])], [_i64("s", [2, -1])], [2, 6], True),
    "reshape_zero_copies_dim": ([helper.make_node("Reshape", ["x", "s"], ["h"])], [_i64("s", [0, 6])], [2, 6], True),
    "reshape_other": ([helper.make_node("Reshape", ["x", "s"], ["h"])], [_i64("s", [3, 4])], [3, 4], False),
    "pad_zero": ([helper.make_node("Pad", ["x", "p"], ["h"])], [_i64("p", [0, 0, 0, 0])], [2, 6], True),
    "pad_nonzero": ([helper.make_node("Pad", ["x", "p"], ["h"])], [_i64("p", [0, 1, 0, 0])], [2, 7], False),
    "slice_full": ([helper.make_node("Slice", ["x", "st", "en"], ["h"])],
                   [_i64("st", [0, 0]), _i64("en", [2, 9223372036854775807])], [2, 6], True),
    "slice_part": ([helper.make_node("Slice", ["x", "st", "en"], ["h"])], [_i64("st", [0, 1]), _i64("en", [2, 6])],
                   [2, 5], False),
    "concat_one": ([helper.make_node("Concat", ["x"], ["h"], axis=0)], [], [2, 6], True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_structural_no_ops(name):
    nodes, inits, out_shape, removable = CASES[name]
    op = nodes[0].op_type
    nodes = nodes + [helper.make_node("Relu", ["h"], ["y"])]
    model = make_model(nodes, [tensor_info("x", [2, 6])], [tensor_info("y", out_shape)], inits)
    optimized = kiln.optimize(model, level=1)
    assert (op not in op_histogram(optimized.model)) == removable
    x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    np.testing.assert_array_equal(optimized(x), kiln.optimize(model, level=0)(x))
    if removable:
        noop = next(p for p in optimized.report.passes if p.name == "identity_elimination")
        assert noop.rewrites and noop.rewrites[0].nodes[0].op_type == op


def test_no_op_feeding_a_graph_output_keeps_the_output_name():
    model = make_model([helper.make_node("Concat", ["x"], ["y"], axis=0)], [tensor_info("x", [2])], [tensor_info("y", [2])])
    optimized = kiln.optimize(model, level=1)
    assert [v.name for v in optimized.model.graph.outputs] == ["y"]
    np.testing.assert_array_equal(optimized(np.array([1.0, 2.0], np.float32)), [1.0, 2.0])


@pytest.mark.parametrize("op,const,removable", [
    ("Add", np.zeros(6, np.float32), True),           # a zero bias vector
    ("Mul", np.ones((1, 6), np.float32), True),
    ("Sub", np.zeros((2, 6), np.float32), True),
    ("Add", np.zeros((3, 2, 6), np.float32), False),  # broadcasts x up to [3, 2, 6]
    ("Add", np.array([0, 0, 0, 0, 0, 1e-3], np.float32), False),
    ("Div", np.ones(6, np.float32), True),
])
def test_identity_constants_of_any_shape(op, const, removable):
    out_shape = list(np.broadcast_shapes((2, 6), const.shape))
    model = make_model([helper.make_node(op, ["x", "c"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
                       [tensor_info("x", [2, 6])], [tensor_info("y", out_shape)], [numpy_helper.from_array(const, "c")])
    optimized = kiln.optimize(model, level=1)
    assert (op not in op_histogram(optimized.model)) == removable
    x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    np.testing.assert_array_equal(optimized(x), kiln.optimize(model, level=0)(x))
