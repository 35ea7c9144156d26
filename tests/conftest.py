"""Shared fixtures: small ONNX models built with onnx.helper."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10
OPSET = 20


class FakeTimer:
    """A measured-choice timer that says the candidate took `ratio` of the baseline's
    `baseline_ms`; counts its calls and keeps the (baseline, candidate) models it was given."""

    def __init__(self, ratio: float, baseline_ms: float = 1.0):
        self.ratio, self.baseline_ms, self.calls, self.models = ratio, baseline_ms, 0, []

    def __call__(self, baseline, candidate, pairs):
        self.calls += 1
        self.models.append((baseline, candidate))
        return [(self.baseline_ms, self.baseline_ms * self.ratio)] * pairs


def fake_measured_choices(timer: FakeTimer):
    """kiln's measured choices on one thread, uncached, timed by `timer`."""
    import kiln
    from kiln.cost_model.measure.choices import MeasuredChoices

    return MeasuredChoices(kiln.Target(intra_op_threads=1), cache_path=None, timer=timer)


def optimize_static_int8_on_openvino(model, x, calibration, timer: FakeTimer, quantize="static-int8"):
    """kiln.optimize at level 1 for OpenVINO's static int8 on input `x`, every measured choice timed by `timer`."""
    import kiln

    return kiln.optimize(model, level=1, sample_inputs={"x": x}, quantize=quantize, backend="openvino",
                         calibration=calibration, measured_choices=fake_measured_choices(timer),
                         options={"measured_choice_min_ms": 0})


def quant_pass(optimized):
    """The report of the quantize_int8 pass in an optimize result."""
    return next(p for p in optimized.report.passes if p.name == "quantize_int8")


@pytest.fixture(autouse=True, scope="session")
def _private_measured_choices_cache(tmp_path_factory):
    """kiln.optimize remembers measured choices in ~/.cache/kiln; tests keep theirs in a temp file."""
    previous = os.environ.get("KILN_MEASURED_CHOICES")
    os.environ["KILN_MEASURED_CHOICES"] = str(tmp_path_factory.mktemp("kiln-cache") / "measured_choices.json")
    yield
    if previous is None:
        os.environ.pop("KILN_MEASURED_CHOICES", None)
    else:
        os.environ["KILN_MEASURED_CHOICES"] = previous


def make_model(nodes, inputs, outputs, initializers=(), opset: int = OPSET, name: str = "g") -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = IR_VERSION
    return model


def tensor_info(name: str, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


@pytest.fixture
def mlp_model() -> onnx.ModelProto:
    """y = Relu(x @ W + b) computed twice (a CSE target), with an Identity and a no-op Mul by 1."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["mm1"], name="matmul_a"),
        helper.make_node("MatMul", ["x", "W"], ["mm2"], name="matmul_b"),
        helper.make_node("Add", ["mm1", "b"], ["h1"], name="add_a"),
        helper.make_node("Add", ["mm2", "b"], ["h2"], name="add_b"),
        helper.make_node("Identity", ["h1"], ["h1_id"], name="identity"),
        helper.make_node("Mul", ["h2", "one"], ["h2_1"], name="mul_by_one"),
        helper.make_node("Add", ["h1_id", "h2_1"], ["s"], name="sum"),
        helper.make_node("Relu", ["s"], ["y"], name="relu"),
    ]
    return make_model(nodes, [tensor_info("x", [2, 4])], [tensor_info("y", [2, 3])], [w, b, one])



def shape_sum_model() -> onnx.ModelProto:
    """y = x + sum(shape(x)) with x [batch, 4]: constant folding removes the Shape chain only when it
    knows the batch size (a fixed input shape)."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["sf"], ["total"], keepdims=0), helper.make_node("Add", ["x", "total"], ["y"])]
    return make_model(nodes, [tensor_info("x", ["batch", 4])], [tensor_info("y", ["batch", 4])])


def reshape_by_input_model() -> onnx.ModelProto:
    """y = Reshape(x [6], target): the int64 input `target` sets a shape, which kiln cannot make up."""
    return make_model([helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape")],
                      [tensor_info("x", [6]), tensor_info("target", [2], TensorProto.INT64)],
                      [tensor_info("y", ["a", "b"])])


class FakeClock:
    """A clock for `kiln.backends.timing` whose seconds pass only when a fake runner spends them."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def spend(self, ms: float) -> None:
        self.now += ms / 1e3


def run_pass(pass_, model, *, feeds=None, strict: bool = True, **context):
    """Run one pass through the PassManager on a copy of `model` (ModelProto, path or ir.Model),
    validated against the original on `feeds` (random inputs by default), with the cost model
    of this CPU and no measured choices unless `context` says otherwise. Strict: a pass that
    raises, or that validation rolls back, fails the test instead of passing for "unchanged".
    Returns (model, the pass's PassReport)."""
    from kiln.backends import onnxruntime as ort_backend
    from kiln.cost_model.decisions import CostOracle
    from kiln.cost_model.model import CostModel
    from kiln.ir.capture import capture
    from kiln.ir.inputs import random_inputs
    from kiln.passes.infra import NumericValidation, PassContext, PassManager, StructuralCheck
    from kiln.target import Target

    captured = capture(model)
    feeds = feeds if feeds is not None else random_inputs([v for v in captured.graph.inputs if not v.is_initializer()])
    target = Target(intra_op_threads=2)
    context.setdefault("cost", CostOracle(CostModel.default(2, learned=False)))
    ctx = PassContext(target=target, sample_inputs=feeds, **context)
    runner = lambda m, f: ort_backend.run_model(m, f, Target(graph_optimization_level="disable"))
    manager = PassManager([pass_], [StructuralCheck(), NumericValidation(runner, feeds)], strict=strict)
    optimized, report = manager.run(captured, ctx)
    return optimized, report.passes[-1]


def optimize_with(model, *passes, cleanup: bool = True, **kwargs):
    """`kiln.optimize` running only `passes` (then, by default, the level-2 clean-ups to their
    fixed point): a test of these passes that a pass joining the levels later cannot break."""
    import kiln
    from kiln.passes.pipeline import cleanup_group

    steps = [*passes, cleanup_group("cleanup", deduplicate_initializers=True)] if cleanup else list(passes)
    return kiln.optimize(model, passes=steps, **kwargs)
