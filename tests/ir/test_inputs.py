"""Sample inputs (kiln.ir.inputs.random_inputs): drawn at the bound shapes, with integer and boolean
values their readers accept; inputs kiln cannot make up are InputErrors naming the input and the
way to give real data."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from conftest import make_model, reshape_by_input_model, tensor_info
from onnx import TensorProto, helper, numpy_helper

from kiln.errors import InputError
from kiln.ir.capture import capture
from kiln.ir.inputs import random_inputs
from kiln.ir.shapes import ShapeBinding, bind_shapes

INT64 = TensorProto.INT64


def inputs_of(nodes, inputs, outputs, initializers=()):
    return capture(make_model(nodes, inputs, outputs, initializers)).graph.inputs


def test_symbolic_dims_sample_at_their_defaults_and_bindings():
    inputs = inputs_of([helper.make_node("Relu", ["x"], ["y"])], [tensor_info("x", ["batch", "sequence", 4])],
                       [tensor_info("y", ["batch", "sequence", 4])])
    assert random_inputs(inputs)["x"].shape == (1, 128, 4)
    bound = bind_shapes(inputs, ShapeBinding(dim_values={"sequence": 3, "batch": 2}))
    feeds = random_inputs(inputs, shapes=bound)
    assert feeds["x"].shape == (2, 3, 4) and feeds["x"].dtype == np.float32


def test_the_same_seed_gives_the_same_inputs():
    inputs = inputs_of([helper.make_node("Relu", ["x"], ["y"])], [tensor_info("x", [3])], [tensor_info("y", [3])])
    np.testing.assert_array_equal(random_inputs(inputs, seed=3)["x"], random_inputs(inputs, seed=3)["x"])


def test_token_ids_stay_within_the_vocabulary_and_masks_are_ones():
    vocab = numpy_helper.from_array(np.zeros((50, 4), np.float32), "vocab")
    nodes = [helper.make_node("Gather", ["vocab", "input_ids"], ["e"]),
             helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "ax"], ["mu"]), helper.make_node("Mul", ["e", "mu"], ["y"])]
    inputs = inputs_of(nodes, [tensor_info("input_ids", ["batch", "sequence"], INT64),
                               tensor_info("attention_mask", ["batch", "sequence"], INT64)],
                       [tensor_info("y", ["batch", "sequence", 4])],
                       [vocab, numpy_helper.from_array(np.array([2], np.int64), "ax")])
    feeds = random_inputs(inputs)
    ids = feeds["input_ids"]
    assert ids.shape == (1, 128) and ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 50
    assert len(np.unique(ids)) > 2  # not the old [0, 2)
    np.testing.assert_array_equal(feeds["attention_mask"], np.ones((1, 128), np.int64))


def test_position_ids_count_along_the_last_axis_within_their_table():
    positions = numpy_helper.from_array(np.zeros((64, 4), np.float32), "positions")
    inputs = inputs_of([helper.make_node("Gather", ["positions", "position_ids"], ["y"])],
                       [tensor_info("position_ids", ["batch", "sequence"], INT64)],
                       [tensor_info("y", ["batch", "sequence", 4])], [positions])
    ids = random_inputs(inputs, shapes=bind_shapes(inputs, ShapeBinding(dim_values={"batch": 2})))["position_ids"]
    assert ids.flags["C_CONTIGUOUS"] and ids.shape == (2, 128) and ids[1, 63] == 63 and ids[0, 64] == 0 and ids.max() == 63


def test_boolean_masks_are_all_true_and_other_booleans_random():
    nodes = [helper.make_node("And", ["key_padding_mask", "flags"], ["y"])]
    inputs = inputs_of(nodes, [tensor_info("key_padding_mask", [64], TensorProto.BOOL),
                               tensor_info("flags", [64], TensorProto.BOOL)], [tensor_info("y", [64], TensorProto.BOOL)])
    feeds = random_inputs(inputs)
    assert feeds["key_padding_mask"].dtype == np.bool_ and feeds["key_padding_mask"].all()
    assert 0 < feeds["flags"].sum() < 64


def test_rank_zero_inputs_are_scalars():
    inputs = inputs_of([helper.make_node("Add", ["position_ids", "k"], ["y"])],
                       [tensor_info("position_ids", [], INT64), tensor_info("k", [], INT64)], [tensor_info("y", [], INT64)])
    feeds = random_inputs(inputs)
    assert feeds["position_ids"].shape == () and feeds["position_ids"] == 0 and feeds["k"].shape == ()


def test_an_input_that_sets_a_shape_names_itself_and_the_flag():
    inputs = capture(reshape_by_input_model()).graph.inputs
    with pytest.raises(InputError, match=r"Input 'target' sets the target shape of a Reshape .*--sample-inputs"):
        random_inputs(inputs)


def test_sequence_inputs_and_unshaped_inputs_ask_for_sample_inputs():
    seq = ir.Value(name="s", type=ir.SequenceType(ir.TensorType(ir.DataType.FLOAT)))
    with pytest.raises(InputError, match=r"Input 's' is a SequenceType.*--sample-inputs"):
        random_inputs([seq])
    unshaped = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT))
    with pytest.raises(InputError, match=r"Input 'x' has no declared shape.*--input-shape x:D0,D1"):
        random_inputs([unshaped])
    bound = bind_shapes([unshaped], ShapeBinding(input_shapes={"x": (2, 5)}))
    assert random_inputs([unshaped], shapes=bound)["x"].shape == (2, 5)


def test_small_integer_types_stay_within_their_range():
    table = numpy_helper.from_array(np.zeros((1000, 2), np.float32), "table")
    inputs = inputs_of([helper.make_node("Cast", ["ids"], ["i"], to=INT64), helper.make_node("Gather", ["table", "i"], ["y"])],
                       [tensor_info("ids", [256], TensorProto.UINT8)], [tensor_info("y", [256, 2])], [table])
    ids = random_inputs(inputs)["ids"]
    assert ids.dtype == np.uint8 and ids.max() > 100  # the table allows more than the dtype: up to 254
