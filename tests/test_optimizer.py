"""The front door and its wiring (kiln.optimize, kiln.optimizer.Optimizer): the caller's model is
never modified, every input kind passes the same checks, options are typed, and the report says
why it is or is not validated."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from conftest import make_model, tensor_info
from onnx import helper

import kiln
from kiln.errors import InvalidModelError, PassError, UnsupportedOperatorError
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
