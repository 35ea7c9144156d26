"""Input shapes (kiln.ir.shapes): the model's static sizes, then the user's whole shapes and named
dims, then documented defaults by name and by place; -1 / 0 / unnamed input dims read as unknown;
bad bindings are InputErrors that say what is wrong; only user-bound sizes are ever written."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from conftest import make_model, tensor_info
from onnx import TensorProto, helper

from kiln.errors import InputError
from kiln.ir.capture import capture
from kiln.ir.shapes import (
    ShapeBinding,
    bind_shapes,
    default_for_axis,
    default_for_name,
    fix_input_shapes,
    normalize_unknown_dims,
)


def tensor(name: str, dims, dtype: ir.DataType = ir.DataType.FLOAT) -> ir.Value:
    """A graph input of `dims` (ints, symbol names, or None for an unnamed dim)."""
    shape = ir.Shape([d if isinstance(d, int) else ir.SymbolicDim(d) for d in dims]) if dims is not None else None
    return ir.Value(name=name, type=ir.TensorType(dtype), shape=shape)


@pytest.mark.parametrize("name, size, rule", [
    ("batch", 1, "batch"), ("batch_size", 1, "batch"), ("N", 1, "batch"), ("batchSize", 1, "batch"),
    ("sequence_length", 128, "sequence"), ("seqLen", 128, "sequence"), ("n_tokens", 128, "sequence"),
    ("image_width", 224, "image side"), ("height", 224, "image side"), ("W", 224, "image side"),
    ("num_samples", 16000, "audio samples"),
    ("past_sequence_length", 0, "past sequence"), ("cache_len", 0, "past sequence"),
])
def test_symbol_names_pick_their_documented_default(name, size, rule):
    assert default_for_name(name) == (size, rule)


@pytest.mark.parametrize("name", ["s0", "unk__3", "dim", "x_dim0"])
def test_names_that_say_nothing_have_no_name_default(name):
    assert default_for_name(name) is None


def test_axis_defaults_batch_then_image_sides_then_sequence():
    assert default_for_axis(0, 4, ir.DataType.FLOAT)[0] == 1
    assert default_for_axis(2, 4, ir.DataType.FLOAT)[0] == 224 and default_for_axis(3, 4, ir.DataType.FLOAT)[0] == 224
    assert default_for_axis(1, 4, ir.DataType.FLOAT)[0] == 128  # channels of NCHW: not an image side
    assert default_for_axis(2, 4, ir.DataType.INT64)[0] == 128  # 4-D integers are not images
    assert default_for_axis(1, 2, ir.DataType.INT64)[0] == 128


def test_static_dims_are_kept_and_nothing_is_guessed():
    bound = bind_shapes([tensor("x", [2, 3])])
    assert bound.shape("x") == (2, 3) and bound.warnings == [] and bound.inputs["x"].sources == ("model", "model")


def test_defaults_are_guessed_once_per_symbol_and_warned():
    bound = bind_shapes([tensor("ids", ["batch", "sequence"], ir.DataType.INT64),
                         tensor("mask", ["batch", "sequence"], ir.DataType.INT64)])
    assert bound.shape("ids") == bound.shape("mask") == (1, 128)
    assert bound.dims == {"batch": 1, "sequence": 128}
    assert bound.warnings == ["batch guessed 1 (batch)", "sequence guessed 128 (sequence)"]
    assert bound.inputs["ids"].guessed and bound.summary() == "ids [1, 128], mask [1, 128]"


def test_unnamed_dims_are_guessed_by_place_and_warned_per_axis():
    bound = bind_shapes([tensor("image", [None, 3, None, None])])
    assert bound.shape("image") == (1, 3, 224, 224)
    assert bound.warnings[0] == "image axis 0 (unnamed) guessed 1 (batch: axis 0)"


def test_a_symbol_shared_by_two_inputs_is_bound_through_one_of_them():
    inputs = [tensor("x", ["batch", "seq", 8]), tensor("mask", ["batch", "seq"], ir.DataType.INT64)]
    bound = bind_shapes(inputs, ShapeBinding(input_shapes={"x": (2, 5, 8)}))
    assert bound.shape("mask") == (2, 5) and bound.warnings == []
    assert bound.inputs["mask"].sources == ("input_shapes", "input_shapes")


def test_dim_values_bind_by_name_and_whole_shapes_win_for_their_input():
    inputs = [tensor("x", ["batch", "image_height", "image_width"]), tensor("y", ["batch"])]
    bound = bind_shapes(inputs, ShapeBinding(dim_values={"image_width": 160, "batch": 1}))
    assert bound.shape("x") == (1, 224, 160) and bound.shape("y") == (1,)
    assert bound.warnings == ["image_height guessed 224 (image side)"]


def test_rank_zero_inputs_bind_to_scalars():
    bound = bind_shapes([tensor("k", [], ir.DataType.INT64)], ShapeBinding(input_shapes={"k": ()}))
    assert bound.shape("k") == () and bound.warnings == []


def test_an_input_without_a_declared_shape_takes_a_whole_shape():
    assert "x" not in bind_shapes([tensor("x", None)]).inputs
    bound = bind_shapes([tensor("x", None)], ShapeBinding(input_shapes={"x": (2, 3)}))
    assert bound.shape("x") == (2, 3)


def test_sequence_and_optional_inputs_are_not_bound_and_cannot_take_a_shape():
    seq = ir.Value(name="s", type=ir.SequenceType(ir.TensorType(ir.DataType.FLOAT)))
    assert bind_shapes([seq, tensor("x", [2])]).shape("x") == (2,)
    with pytest.raises(InputError, match=r"input_shapes\['s'\].*SequenceType.*--sample-inputs"):
        bind_shapes([seq], ShapeBinding(input_shapes={"s": (2,)}))


@pytest.mark.parametrize("binding, message", [
    (ShapeBinding(input_shapes={"y": (1,)}), r"input_shapes names \['y'\], which the model does not have; its "
                                             r"inputs are \['x'\]"),
    (ShapeBinding(dim_values={"time": 3}), r"dim_values names \['time'\], which no input declares; the inputs' "
                                           r"symbolic dims are \['batch'\]"),
    (ShapeBinding(input_shapes={"x": (1, 4)}), r"rank 2 \[1, 4\], but the input is declared \(batch, 4, 3\)"),
    (ShapeBinding(input_shapes={"x": (1, 5, 3)}), r"sets axis 1 to 5, but the model declares it static 4"),
    (ShapeBinding(input_shapes={"x": (2, 4, 3)}, dim_values={"batch": 1}),
     r"'batch' is bound to both 1 \(dim_values\) and 2 \(input_shapes\['x'\]\); bind it once"),
])
def test_bad_bindings_say_what_is_wrong(binding, message):
    with pytest.raises(InputError, match=message):
        bind_shapes([tensor("x", ["batch", 4, 3])], binding)


@pytest.mark.parametrize("kwargs, message", [
    ({"input_shapes": {"x": 5}}, r"input_shapes\['x'\] = 5: give a tuple of sizes >= 0, e.g. "
                                 r"input_shapes=\{'x': \(1, 3, 224, 224\)\}"),
    ({"input_shapes": {"x": (1, -1)}}, r"input_shapes\['x'\] = \(1, -1\)"),
    ({"input_shapes": {"x": "1,2"}}, r"input_shapes\['x'\] = '1,2'"),
    ({"input_shapes": {"x": np.array(3)}}, r"input_shapes\['x'\] = array\(3\)"),
    ({"input_shapes": [(1, 2)]}, r"give a mapping from input name to a tuple of sizes"),
    ({"dim_values": {"batch": 1.5}}, r"dim_values\['batch'\] = 1.5: give an integer >= 0, e.g. "
                                     r"dim_values=\{'batch': 1\}"),
    ({"dim_values": {"batch": True}}, r"dim_values\['batch'\] = True"),
    ({"dim_values": 3}, r"give a mapping from symbol name to an integer"),
])
def test_malformed_bindings_are_input_errors_not_type_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        ShapeBinding(**kwargs)


def test_numpy_sizes_are_accepted_as_ints():
    binding = ShapeBinding(input_shapes={"x": np.array([1, 3])}, dim_values={"batch": np.int64(2)})
    assert binding.input_shapes == {"x": (1, 3)} and binding.dim_values == {"batch": 2}
    assert all(type(d) is int for d in binding.input_shapes["x"])


def _unknown_dims_model():
    """An input declared [-1, 0, 3] (with an unnamed dim written by hand), an intermediate value info
    and an output with -1 dims."""
    model = make_model([helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Neg", ["h"], ["y"])],
                       [tensor_info("x", [-1, 0, 3])], [tensor_info("y", [-1, 2, 3])])
    model.graph.value_info.append(tensor_info("h", [-1, -1, 3]))
    return model


def test_minus_one_and_zero_input_dims_become_bindable_symbols_at_capture():
    captured = capture(_unknown_dims_model())
    x = captured.graph.inputs[0]
    assert [str(d) for d in x.shape] == ["x_dim0", "x_dim1", "3"]
    assert all(not isinstance(d, int) or d >= 0 for v in captured.graph.outputs for d in v.shape)
    h = captured.graph.node(0).outputs[0]
    assert h.shape is not None and h.shape[2] == 3 and not isinstance(h.shape[0], int)
    bound = bind_shapes(captured.graph.inputs, ShapeBinding(dim_values={"x_dim1": 2}))
    # the made-up names default by place, not by the input's name
    assert bound.shape("x") == (1, 2, 3) and bound.warnings == ["x_dim0 guessed 1 (batch: axis 0)"]


def test_a_generated_name_does_not_default_by_the_input_name():
    model = ir.Model(ir.Graph([tensor("image", [None, 3, None, None])], [], nodes=[], opset_imports={"": 20}),
                     ir_version=10)
    normalize_unknown_dims(model)
    assert bind_shapes(model.graph.inputs).shape("image") == (1, 3, 224, 224)


def test_normalizing_says_what_it_read_as_unknown_and_leaves_known_dims():
    model = ir.Model(ir.Graph([tensor("x", [-1, 4]), tensor("z", ["batch", 4])], [], nodes=[],
                              opset_imports={"": 20}), ir_version=10)
    notes = normalize_unknown_dims(model)
    assert notes == ["x declared (?, 4): dim(s) [0] read as unknown, named ['x_dim0']"]
    assert [str(d) for d in model.graph.inputs[1].shape] == ["batch", "4"]


def test_fixing_writes_user_bound_sizes_everywhere_the_symbol_is_and_keeps_guesses_symbolic():
    model = capture(make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor_info("x", ["batch", "seq", 4])],
                               [tensor_info("y", ["batch", "seq", 4])]))
    bound = bind_shapes(model.graph.inputs, ShapeBinding(dim_values={"seq": 6}, fix=True))
    fix_input_shapes(model, bound)
    assert [str(d) for d in model.graph.inputs[0].shape] == ["batch", "6", "4"]
    assert [str(d) for d in model.graph.outputs[0].shape] == ["batch", "6", "4"]


def test_an_integer_model_input_declared_zero_is_read_as_unknown_too():
    model = make_model([helper.make_node("Identity", ["ids"], ["y"])], [tensor_info("ids", [0], TensorProto.INT64)],
                       [tensor_info("y", [0], TensorProto.INT64)])
    assert bind_shapes(capture(model).graph.inputs).shape("ids") == (1,)
