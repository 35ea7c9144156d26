"""The front door and its wiring (kiln.optimize, kiln.optimizer.Optimizer): the caller's model is
never modified, every input kind passes the same checks, options are typed, and the report says
why it is or is not validated."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import make_model, reshape_by_input_model, shape_sum_model, tensor_info
from onnx import helper, numpy_helper

import kiln
from kiln.errors import InputError, InvalidModelError, PassError, UnsupportedOperatorError
from kiln.ir.analysis import count_nodes
from kiln.optimizer import CostConfig, Optimizer, PipelineConfig, ValidationConfig
from kiln.passes.infra.options import PassOptions


def test_an_onnx_ir_model_is_copied_not_rewritten(mlp_model):
    model = kiln.capture(mlp_model)
    names = [n.name for n in model.graph]
    optimized = kiln.optimize(model, level=1)
    assert optimized.report.nodes_after < optimized.report.nodes_before
    assert [n.name for n in model.graph] == names and count_nodes(model) == len(names)
    assert optimized.model is not model


def test_an_onnx_ir_model_is_checked_like_a_file():
    bad = make_model([helper.make_node("NoSuchOp", ["x"], ["y"])], [tensor_info("x", [2])], [tensor_info("y", [2])])
    with pytest.raises(UnsupportedOperatorError):
        kiln.optimize(bad)
    with pytest.raises(UnsupportedOperatorError):
        kiln.optimize(ir.serde.deserialize_model(bad))


def test_unknown_or_mistyped_options_are_errors_that_name_the_option(mlp_model):
    with pytest.raises(PassError, match="did you mean 'fold_output_size_limit'"):
        kiln.optimize(mlp_model, options={"fold_output_size_limt": 10})
    with pytest.raises(PassError, match="whole number"):
        PassOptions.from_mapping({"cse_constant_size_limit": 2.5})
    assert PassOptions.from_mapping({"fold_max_expansion": 2}).fold_max_expansion == 2.0


def test_the_report_says_why_it_is_or_is_not_validated(mlp_model):
    assert kiln.optimize(mlp_model, level=1).report.validation == "validated on random inputs"
    off = kiln.optimize(mlp_model, level=1, validate=False).report
    assert not off.validated and off.validation.startswith("not validated: validation is off")


def test_the_optimizer_is_the_shared_wiring(mlp_model):
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    optimizer = Optimizer(kiln.Target(intra_op_threads=1), pipeline=PipelineConfig(level=2),
                          validation=ValidationConfig(sample_inputs={"x": x}),
                          cost=CostConfig(measured_choices=None))
    run = optimizer.optimize(mlp_model)
    assert run.report.level == 2 and run.report.sample_inputs == "the given sample inputs"
    assert run.report.target == "onnxruntime, 1 intra-op threads" and "1 threads" in run.report.cost_model
    with pytest.raises(PassError, match="levels 0..2"):
        Optimizer(pipeline=PipelineConfig(level=7))


def test_a_bytes_model_goes_through_the_same_checks(mlp_model):
    assert kiln.optimize(mlp_model.SerializeToString(), level=1).report.nodes_after == \
        kiln.optimize(mlp_model, level=1).report.nodes_after
    with pytest.raises(InvalidModelError):
        kiln.optimize(b"not a model")


def test_bound_shapes_stay_symbolic_and_unfolded_unless_fixed():
    kept = kiln.optimize(shape_sum_model(), input_shapes={"x": (3, 4)})
    assert [str(d) for d in kept.model.graph.inputs[0].shape] == ["batch", "4"]
    assert count_nodes(kept.model) == 4  # folding did not see the bound batch
    assert kept.report.input_shapes == "x [3, 4]" and not kept.report.shapes_fixed and kept.report.validated
    fixed = kiln.optimize(shape_sum_model(), input_shapes={"x": (3, 4)}, fix_shapes=True)
    assert list(fixed.model.graph.inputs[0].shape) == [3, 4] and list(fixed.model.graph.outputs[0].shape) == [3, 4]
    assert [n.op_type for n in fixed.model.graph] == ["Add"] and fixed.report.shapes_fixed
    x = np.ones((3, 4), np.float32)
    np.testing.assert_allclose(fixed(x), x + 7)
    np.testing.assert_allclose(kept(np.ones((5, 4), np.float32)), np.full((5, 4), 10.0))  # still any batch


def test_unbound_dims_are_guessed_and_reported():
    report = kiln.optimize(shape_sum_model()).report
    assert report.input_shapes == "x [1, 4]" and report.shape_warnings == ["batch guessed 1 (batch)"]
    assert kiln.optimize(shape_sum_model(), dim_values={"batch": 2}).report.shape_warnings == []


def test_a_model_with_minus_one_dims_optimizes_and_validates():
    model = make_model([helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Identity", ["h"], ["y"])],
                       [tensor_info("x", [-1, 3, -1])], [tensor_info("y", [-1, 3, -1])])
    model.graph.value_info.append(tensor_info("h", [-1, 3, -1]))
    optimized = kiln.optimize(model, dim_values={"x_dim2": 5})
    assert optimized.report.validated and optimized.report.input_shapes == "x [1, 3, 5]"
    assert optimized.report.shape_warnings == ["x_dim0 guessed 1 (batch: axis 0)"]
    x = np.random.default_rng(0).standard_normal((2, 3, 7)).astype(np.float32)
    np.testing.assert_allclose(optimized(x), np.maximum(x, 0))


def test_sample_inputs_set_the_shapes_and_must_agree_with_the_binding():
    x = np.ones((2, 4), np.float32)
    report = kiln.optimize(shape_sum_model(), sample_inputs={"x": x}).report
    assert report.input_shapes == "x [2, 4]" and report.shape_warnings == []
    with pytest.raises(InputError, match=r"sample_inputs\['x'\] has shape \[2, 4\], but input_shapes binds it to "
                                         r"\[3, 4\]"):
        kiln.optimize(shape_sum_model(), sample_inputs={"x": x}, input_shapes={"x": (3, 4)})
    with pytest.raises(InputError, match=r"dim_values\['batch'\] = 5, but sample_inputs give it 2"):
        kiln.optimize(shape_sum_model(), sample_inputs={"x": x}, dim_values={"batch": 5})
    static = make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor_info("x", [3, 4])], [tensor_info("y", [3, 4])])
    with pytest.raises(InputError, match=r"sample_inputs\['x'\] = \[2, 4\] sets axis 0 to 2, but the model declares "
                                         r"it static 3"):
        kiln.optimize(static, sample_inputs={"x": x})


def test_bad_bindings_are_input_errors_before_any_pass_runs():
    with pytest.raises(InputError, match=r"input_shapes names \['z'\]"):
        kiln.optimize(shape_sum_model(), input_shapes={"z": (1,)})
    with pytest.raises(InputError, match="give a mapping from input name to a tuple of sizes"):
        kiln.optimize(shape_sum_model(), input_shapes=(1, 4))


def test_an_input_that_sets_a_shape_asks_for_sample_inputs():
    with pytest.raises(InputError, match=r"Input 'target' sets the target shape of a Reshape.*--sample-inputs"):
        kiln.optimize(reshape_by_input_model())
    feeds = {"x": np.arange(6, dtype=np.float32), "target": np.array([2, 3], np.int64)}
    assert kiln.optimize(reshape_by_input_model(), sample_inputs=feeds).report.validated


def test_predictions_are_priced_at_the_bound_shapes():
    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "W")
    model = make_model([helper.make_node("MatMul", ["x", "W"], ["y"])], [tensor_info("x", ["batch", 64])],
                       [tensor_info("y", ["batch", 64])], [weight])
    small = kiln.optimize(model, dim_values={"batch": 1}, validate=False).report
    large = kiln.optimize(model, dim_values={"batch": 4096}, validate=False).report
    assert large.predicted_ms_before > small.predicted_ms_before
    assert small.input_shapes == "x [1, 64]" and large.input_shapes == "x [4096, 64]"


def test_an_optional_input_given_a_tensor_is_fed_and_not_bound():
    optional = helper.make_optional_type_proto(helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, [3]))
    model = make_model([helper.make_node("OptionalGetElement", ["o"], ["t"]), helper.make_node("Add", ["t", "x"], ["y"])],
                       [helper.make_value_info("o", optional), tensor_info("x", ["n"])], [tensor_info("y", [3])])
    report = kiln.optimize(model, sample_inputs={"o": np.ones(3, np.float32), "x": np.ones(3, np.float32)}).report
    assert report.validated and report.input_shapes == "x [3]"
    with pytest.raises(InputError, match=r"Input 'o' is a OptionalType.*--sample-inputs"):
        kiln.optimize(model)


def test_the_optimizer_takes_a_shape_binding():
    run = Optimizer(shapes=kiln.ShapeBinding(dim_values={"batch": 2}, fix=True),
                    cost=CostConfig(measured_choices=None)).optimize(shape_sum_model())
    assert run.report.input_shapes == "x [2, 4]" and run.report.shapes_fixed
    assert list(run.model.graph.inputs[0].shape) == [2, 4]
