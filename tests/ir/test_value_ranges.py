"""Integer input ranges (kiln.ir.value_ranges): read off the input's readers, through value-keeping
ops; tables bound indices, names say masks, segments and positions; inputs that set shapes,
sizes or trip counts are named as unsampleable."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_model, tensor_info
from onnx import TensorProto, helper, numpy_helper

from kiln.ir.capture import capture
from kiln.ir.value_ranges import integer_range

INT64 = TensorProto.INT64


def table(name: str, rows: int, cols: int = 4):
    return numpy_helper.from_array(np.zeros((rows, cols), np.float32), name)


def const(name: str, array):
    return numpy_helper.from_array(np.asarray(array), name)


def input_range(nodes, inputs, outputs, initializers=(), name: str | None = None, dims=None):
    """The range of the graph input `name` (the first one by default) of the model built from the args."""
    model = capture(make_model(nodes, inputs, outputs, initializers))
    value = next(v for v in model.graph.inputs if name is None or v.name == name)
    return integer_range(value, dims)


def test_an_input_nothing_bounds_takes_zero_or_one():
    allowed = input_range([helper.make_node("Neg", ["ids"], ["y"])], [tensor_info("ids", [3], INT64)],
                          [tensor_info("y", [3], INT64)])
    assert (allowed.low, allowed.high, allowed.fill, allowed.unsampleable) == (0, 2, None, None)


def test_gather_indices_stay_within_the_table_through_cast_and_unsqueeze():
    nodes = [helper.make_node("Cast", ["ids"], ["c"], to=INT64), helper.make_node("Unsqueeze", ["c", "ax"], ["u"]),
             helper.make_node("Gather", ["table", "u"], ["y"], name="embed")]
    allowed = input_range(nodes, [tensor_info("ids", ["batch", "seq"], TensorProto.INT32)],
                          [tensor_info("y", ["batch", 1, "seq", 4])], [table("table", 10), const("ax", [1])])
    assert (allowed.low, allowed.high) == (0, 10) and "Gather embed into 10 rows" in allowed.reason


def test_gather_along_an_axis_reads_that_axis_even_when_another_is_symbolic():
    nodes = [helper.make_node("Gather", ["data", "ids"], ["y"], axis=1)]
    allowed = input_range(nodes, [tensor_info("ids", [5], INT64), tensor_info("data", ["b", 7])],
                          [tensor_info("y", ["b", 5])])
    assert allowed.high == 7


def test_a_symbolic_table_axis_is_bounded_by_its_bound_size():
    nodes = [helper.make_node("Gather", ["data", "ids"], ["y"], axis=1)]
    inputs = [tensor_info("ids", [5], INT64), tensor_info("data", ["b", "rows"])]
    outputs = [tensor_info("y", ["b", 5])]
    assert input_range(nodes, inputs, outputs).high == 2
    assert input_range(nodes, inputs, outputs, dims={"rows": 9}).high == 9


def test_a_table_behind_a_constant_node_or_a_cast_bounds_indices():
    nodes = [helper.make_node("Constant", [], ["t"], value=table("t", 6)),
             helper.make_node("Cast", ["t"], ["tc"], to=TensorProto.FLOAT),
             helper.make_node("Gather", ["tc", "ids"], ["y"])]
    assert input_range(nodes, [tensor_info("ids", [3], INT64)], [tensor_info("y", [3, 4])]).high == 6


def test_several_readers_intersect():
    nodes = [helper.make_node("Gather", ["big", "ids"], ["y1"]), helper.make_node("Gather", ["small", "ids"], ["y2"])]
    allowed = input_range(nodes, [tensor_info("ids", [3], INT64)],
                          [tensor_info("y1", [3, 4]), tensor_info("y2", [3, 4])], [table("big", 10), table("small", 4)])
    assert allowed.high == 4 and allowed.reason.count("indices of Gather") == 2


def test_onehot_classes_stay_below_the_depth():
    nodes = [helper.make_node("OneHot", ["cls", "depth", "values"], ["y"], name="onehot")]
    allowed = input_range(nodes, [tensor_info("cls", ["b"], INT64)], [tensor_info("y", ["b", 5])],
                          [const("depth", np.array(5, np.int64)), const("values", np.array([0, 1], np.float32))])
    assert allowed.high == 5 and "depth 5" in allowed.reason


def test_gather_nd_indices_stay_within_the_axes_they_index():
    nodes = [helper.make_node("GatherND", ["data", "idx"], ["y"])]
    allowed = input_range(nodes, [tensor_info("idx", [3, 2], INT64)], [tensor_info("y", [3, 4])],
                          [numpy_helper.from_array(np.zeros((6, 5, 4), np.float32), "data")])
    assert allowed.high == 5


@pytest.mark.parametrize("name, fill", [("attention_mask", 1), ("token_type_ids", 0), ("segment_ids", 0)])
def test_names_say_masks_are_ones_and_segments_zeros(name, fill):
    allowed = input_range([helper.make_node("Neg", [name], ["y"])], [tensor_info(name, [1, 4], INT64)],
                          [tensor_info("y", [1, 4], INT64)])
    assert allowed.fill == fill


def test_position_ids_count_up_and_wrap_at_their_table():
    nodes = [helper.make_node("Gather", ["pos_table", "position_ids"], ["y"])]
    allowed = input_range(nodes, [tensor_info("position_ids", ["b", "s"], INT64)], [tensor_info("y", ["b", "s", 4])],
                          [table("pos_table", 64)])
    assert allowed.positions and allowed.high == 64 and "wrapping at 64" in allowed.reason
    unbounded = input_range([helper.make_node("Neg", ["position_ids"], ["y"])],
                            [tensor_info("position_ids", [1, 4], INT64)], [tensor_info("y", [1, 4], INT64)])
    assert unbounded.positions and unbounded.high is None


def test_a_mask_used_as_indices_stays_within_the_table():
    nodes = [helper.make_node("Gather", ["tiny", "input_mask"], ["y"])]
    allowed = input_range(nodes, [tensor_info("input_mask", [3], INT64)], [tensor_info("y", [3, 4])],
                          [table("tiny", 1)])
    assert allowed.fill == 0


@pytest.mark.parametrize("node, index, what", [
    (helper.make_node("Reshape", ["x", "n"], ["y"]), 1, "the target shape of a Reshape"),
    (helper.make_node("Range", ["zero", "n", "one"], ["y"]), 1, "the limit of a Range"),
    (helper.make_node("TopK", ["x", "n"], ["y", "i"]), 1, "k of a TopK"),
    (helper.make_node("Tile", ["x", "n"], ["y"]), 1, "the repeats of a Tile"),
    (helper.make_node("ReduceSum", ["x", "n"], ["y"]), 1, "the axes of a reduction"),
])
def test_inputs_that_set_a_shape_or_a_size_are_unsampleable(node, index, what):
    outputs = [tensor_info(o, ["o"], INT64 if o == "i" or node.op_type == "Range" else TensorProto.FLOAT)
               for o in node.output]
    model = make_model([node], [tensor_info("x", [4]), tensor_info("n", [1], INT64)], outputs,
                       [const("zero", np.array(0, np.int64)), const("one", np.array(1, np.int64))])
    allowed = integer_range(next(v for v in capture(model).graph.inputs if v.name == "n"))
    assert allowed.unsampleable is not None and allowed.unsampleable.startswith(what)


def test_a_shape_computed_from_an_input_still_comes_from_it():
    nodes = [helper.make_node("Add", ["n", "one"], ["n1"]), helper.make_node("Concat", ["n1", "minus1"], ["shp"], axis=0),
             helper.make_node("Reshape", ["x", "shp"], ["y"], name="reshape")]
    allowed = input_range(nodes, [tensor_info("n", [1], INT64), tensor_info("x", [6])], [tensor_info("y", ["a", "b"])],
                          [const("one", np.array([1], np.int64)), const("minus1", np.array([-1], np.int64))])
    assert allowed.unsampleable == "the target shape of a Reshape (reshape)"


def test_a_loop_trip_count_is_unsampleable():
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Neg", ["acc"], ["acc_out"])],
        "body", [tensor_info("i", [], INT64), tensor_info("cond_in", [], TensorProto.BOOL), tensor_info("acc", [1])],
        [tensor_info("cond_out", [], TensorProto.BOOL), tensor_info("acc_out", [1])])
    allowed = input_range([helper.make_node("Loop", ["trips", "", "x"], ["y"], body=body, name="loop")],
                          [tensor_info("trips", [], INT64), tensor_info("x", [1])], [tensor_info("y", [1])])
    assert allowed.unsampleable == "the trip count of a Loop (loop)"
