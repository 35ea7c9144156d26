"""PassManager: validation, rollback, structural checks, reports, provenance through rewrites."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import make_model, tensor_info
from onnx import helper, numpy_helper

import kiln
from kiln.errors import InputError, ValidationError
from kiln.ir.provenance import get_provenance
from kiln.passes.infra import Pass, PassContext, PassResult, Tolerance
from kiln.passes.infra.instruments import StructuralCheck, check_structure
from kiln.passes.infra.manager import PassManager
from kiln.passes.infra.validation import compare_outputs


class ScaleFirstInitializer(Pass):
    """Deliberately broken: multiplies the first float initializer by `factor`."""

    name = "broken_scale"

    def __init__(self, factor: float = 2.0, exact: bool = True, budget: Tolerance | None = None):
        self.factor = factor
        self.exact = exact
        self.error_budget = budget

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        for value in model.graph.initializers.values():
            array = value.const_value.numpy()
            if array.dtype == np.float32 and array.size > 1:
                value.const_value = ir.tensor(array * np.float32(self.factor), name=value.name)
                return PassResult(model, True)
        return PassResult(model, False)


class RaisingPass(Pass):
    name = "raises"

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        model.graph.remove(next(iter(model.graph)), safe=False)  # damage it first
        raise RuntimeError("boom")


class DanglingInputPass(Pass):
    """Structurally broken: makes the first node read a value nothing defines."""

    name = "dangling"

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        ghost = ir.Value(name="ghost", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([2, 4]))
        next(iter(model.graph)).replace_input_with(0, ghost)
        return PassResult(model, True)


def _run(model_proto, passes, x):
    optimized = kiln.optimize(model_proto, passes=passes, sample_inputs={"x": x})
    return optimized, optimized.report.passes


def test_broken_pass_is_rolled_back_and_reported(mlp_model):
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    reference = kiln.optimize(mlp_model, level=0)(x)
    optimized, reports = _run(mlp_model, [ScaleFirstInitializer()], x)
    (report,) = reports
    assert report.status == "rolled_back"
    assert "differs by up to" in report.message
    assert report.error is not None and report.error.max_abs > 1e-3
    np.testing.assert_allclose(optimized(x), reference, rtol=0, atol=0)
    assert optimized.report.final_error is not None and optimized.report.final_error.max_abs == 0.0


def test_approximate_pass_within_budget_is_kept(mlp_model):
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    budget = Tolerance(atol=10.0, rtol=1.0)
    optimized, (report,) = _run(mlp_model, [ScaleFirstInitializer(1.001, exact=False, budget=budget)], x)
    assert report.status == "applied"
    assert report.tolerance == str(budget)
    assert 0 < report.error.max_abs < 10.0


def test_raising_pass_is_rolled_back(mlp_model):
    x = np.ones((2, 4), np.float32)
    optimized, (report,) = _run(mlp_model, [RaisingPass()], x)
    assert report.status == "failed"
    assert "RuntimeError: boom" in report.message
    assert report.nodes_after == report.nodes_before == 8
    assert len(list(optimized.model.graph)) == 8


def test_structurally_broken_pass_is_rolled_back(mlp_model):
    x = np.ones((2, 4), np.float32)
    optimized, (report,) = _run(mlp_model, [DanglingInputPass()], x)
    assert report.status == "rolled_back"
    assert "structural check failed" in report.message and "ghost" in report.message
    assert check_structure(optimized.model) is None


def test_rollback_off_raises(mlp_model):
    model = kiln.capture(mlp_model)
    with pytest.raises(kiln.errors.PassError, match="structural check"):
        PassManager([DanglingInputPass()], [StructuralCheck()], rollback=False).run(model)


def test_level1_report_lists_rewrites_with_provenance(mlp_model):
    optimized = kiln.optimize(mlp_model, level=1)
    report = optimized.report
    assert report.validated and report.sample_inputs == "random inputs"
    by_name: dict = {}
    for entry in report.passes:  # a fixed-point group runs a pass again: keep its first round
        by_name.setdefault(entry.name, entry)
    assert by_name["identity_elimination"].status == "applied"
    cse = by_name["common_subexpression_elimination"]
    assert cse.status == "applied"
    merged = {ref.name for rewrite in cse.rewrites for ref in rewrite.nodes}
    assert merged & {"matmul_a", "matmul_b"} and merged & {"add_a", "add_b"}
    assert all(r.reason and r.rule for p in report.passes for r in p.rewrites)
    assert report.nodes_before == 8 and report.nodes_after == 4  # MatMul, Add(b), Add(h, h), Relu
    data = json.loads(report.to_json())
    assert data["passes"][1]["changed"] is True
    assert {"name", "status", "seconds", "nodes_before", "nodes_after", "parameter_bytes_before",
            "parameter_bytes_after", "error", "rewrites"} <= set(data["passes"][0])
    text = str(report)
    assert "common_subexpression_elimination" in text and "validated" in text


def test_provenance_survives_a_rewrite(mlp_model):
    optimized = kiln.optimize(mlp_model, level=1)
    origins = {str(o) for node in optimized.model.graph for o in get_provenance(node)}
    # The surviving MatMul carries both original MatMuls; nothing original is lost.
    assert {"matmul_a", "matmul_b", "add_a", "add_b", "relu"} <= origins
    by_op = {n.op_type: n for n in optimized.model.graph}
    assert {str(o) for o in get_provenance(by_op["MatMul"])} == {"matmul_a", "matmul_b"}
    add_bias = next(n for n in optimized.model.graph if n.op_type == "Add" and n.inputs[1].name == "b")
    # The removed no-ops (Identity, Mul by 1) answer to the producer that now stands in for them.
    assert {str(o) for o in get_provenance(add_bias)} == {"add_a", "add_b", "identity", "mul_by_one"}
    # Provenance is saved with the model.
    reloaded = kiln.load(optimized.save(__import__("tempfile").mkdtemp() + "/m.onnx"))
    assert {str(o) for n in reloaded.graph for o in get_provenance(n)} == origins


def test_ir_dump_writes_one_file_per_pass(mlp_model, tmp_path):
    kiln.optimize(mlp_model, level=1, dump_ir=tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "00_input.onnx" and len(names) >= 2
    assert all(kiln.load(tmp_path / n) for n in names)


def test_validation_off_reports_not_validated(mlp_model):
    optimized = kiln.optimize(mlp_model, level=1, validate=False)
    assert not optimized.report.validated
    assert all(p.error is None for p in optimized.report.passes)


def test_compare_outputs_flags_shape_dtype_and_nan():
    a = np.array([1.0, np.nan], np.float32)
    stats, violation = compare_outputs(["y"], [a], [a.copy()], Tolerance())
    assert violation is None and stats.max_abs == 0
    _, violation = compare_outputs(["y"], [a], [np.array([1.0, 2.0], np.float32)], Tolerance())
    assert violation and "differs" in violation
    _, violation = compare_outputs(["y"], [a], [a.astype(np.float64)], Tolerance())
    assert violation and "dtype" in violation
    _, violation = compare_outputs(["y"], [a], [a[:1]], Tolerance())
    assert violation and "shape" in violation


def test_non_pass_objects_are_refused(mlp_model):
    with pytest.raises(kiln.errors.PassError, match="not a kiln Pass"):
        kiln.optimize(mlp_model, passes=[object()])
    with pytest.raises(kiln.errors.PassError, match="Unknown optimization level"):
        kiln.optimize(mlp_model, level=7)


class CountdownPass(Pass):
    """Reports a change `times` times, then none (a clean-up that enables another)."""

    name = "countdown"

    def __init__(self, times: int):
        self.left = times

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        self.left -= 1
        return PassResult(model, self.left >= 0, rewrites=[])


def test_a_fixed_point_group_repeats_until_a_round_changes_nothing(mlp_model):
    from kiln.passes.infra.manager import FixedPointGroup

    group = FixedPointGroup("group", (CountdownPass(2),), max_rounds=5)
    _, report = PassManager([group]).run(kiln.capture(mlp_model))
    assert [(p.group, p.round, p.status) for p in report.passes] == [
        ("group", 1, "applied"), ("group", 2, "applied"), ("group", 3, "unchanged")]
    capped = FixedPointGroup("capped", (CountdownPass(10),), max_rounds=2)
    _, report = PassManager([capped]).run(kiln.capture(mlp_model))
    assert [p.round for p in report.passes] == [1, 2]


def test_a_group_does_not_retry_a_pass_that_failed(mlp_model):
    from kiln.passes.infra.manager import FixedPointGroup

    group = FixedPointGroup("group", (RaisingPass(), CountdownPass(1)), max_rounds=3)
    _, report = PassManager([group]).run(kiln.capture(mlp_model))
    assert [(p.name, p.status) for p in report.passes] == [
        ("raises", "failed"), ("countdown", "applied"), ("countdown", "unchanged")]


def test_strict_mode_raises_where_rollback_would_hide_a_crash(mlp_model):
    with pytest.raises(RuntimeError):
        PassManager([RaisingPass()], strict=True).run(kiln.capture(mlp_model))
    with pytest.raises(kiln.errors.PassError, match="strict mode"):
        PassManager([DanglingInputPass()], [StructuralCheck()], strict=True).run(kiln.capture(mlp_model))


def test_decisions_land_in_the_pass_report_with_its_name(mlp_model):
    from kiln.report.model import Alternative, Decision

    class Deciding(Pass):
        name = "deciding"

        def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
            for _ in range(2):  # the same question asked twice is one row
                ctx.record(Decision("node", "q", [Alternative("a", 1.0), Alternative("b", 2.0)], "a", "cheaper"))
            return PassResult(model, False)

    _, report = PassManager([Deciding()]).run(kiln.capture(mlp_model))
    (decision,) = report.passes[0].decisions
    assert decision.pass_name == "deciding" and decision.chosen == "a" and report.decisions == [decision]


def _reshape_to_64() -> onnx.ModelProto:
    """x [1, seq] reshaped to [1, 64]: only seq = 64 runs, and kiln's default guess for seq is 128."""
    shape = numpy_helper.from_array(np.array([1, 64], np.int64), "shape")
    return make_model([helper.make_node("Reshape", ["x", "shape"], ["y"], name="to_64")],
                      [tensor_info("x", [1, "seq"])], [tensor_info("y", [1, 64])], [shape])


def test_an_original_that_does_not_run_on_made_up_inputs_is_an_input_error():
    with pytest.raises(InputError, match=r"x \[1, 128\] \(seq guessed 128 .*Reshape.*--dim NAME=SIZE"):
        kiln.optimize(_reshape_to_64(), level=1)
    assert kiln.optimize(_reshape_to_64(), level=1, dim_values={"seq": 64}).report.validated


def test_an_original_that_does_not_run_on_given_inputs_is_reported_not_validated():
    x = np.zeros((1, 32), np.float32)
    report = kiln.optimize(_reshape_to_64(), level=1, sample_inputs={"x": x}).report
    assert not report.validated
    assert report.validation.startswith("not validated: the original model does not run: ")
    assert "Reshape" in report.validation


def _dropout(training: bool) -> onnx.ModelProto:
    """Relu(Dropout(x)) with the training_mode input a constant, as a training-mode export writes it."""
    nodes = [helper.make_node("Constant", [], ["ratio"], value=numpy_helper.from_array(np.array(0.5, np.float32))),
             helper.make_node("Constant", [], ["training"], value=numpy_helper.from_array(np.array(training))),
             helper.make_node("Dropout", ["x", "ratio", "training"], ["d"], name="drop"),
             helper.make_node("Relu", ["d"], ["y"])]
    return make_model(nodes, [tensor_info("x", [4, 64])], [tensor_info("y", [4, 64])])


def test_an_original_whose_outputs_are_random_cannot_be_validated():
    with pytest.raises(ValidationError, match=r"change from run to run.*Dropout 'drop'.*validate=False"):
        kiln.optimize(_dropout(training=True), level=1)
    assert kiln.optimize(_dropout(training=False), level=1).report.validated
    assert not kiln.optimize(_dropout(training=True), level=1, validate=False).report.validated
