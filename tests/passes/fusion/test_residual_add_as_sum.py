"""Writing the Add before a LayerNormalization as Sum (kiln.passes.fusion.residual_add_as_sum):
the model computes the same function, the rewrite happens only when the Sum form was measured
clearly faster, once per shape, and the two forms handed to the timer are the region as it is in
the graph. The timer is fake except in the test that checks what ONNX Runtime does with each form;
nothing depends on speed."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import FakeTimer, fake_measured_choices, make_model, tensor_info
from onnx import helper, numpy_helper

import kiln
from kiln.ir.analysis import op_histogram
from kiln.ir.serialization import to_proto
from kiln.passes.fusion import residual_add_as_sum

RNG = np.random.default_rng(11)
MEASURE_EVERYTHING = {"measured_choice_min_ms": 0}
SHAPE = [2, 5, 16]


def _choices(ratio: float, timer: FakeTimer | None = None):
    return fake_measured_choices(timer or FakeTimer(ratio))


def _post_norm_layers(layers: int = 2, residual_read_twice: bool = False, shape=SHAPE) -> onnx.ModelProto:
    """x -> per layer: h = LayerNorm(h @ W + h) (a post-norm residual block); with
    `residual_read_twice`, the last sum is also a graph output."""
    hidden = shape[-1]
    nodes, inits = [], []
    h = "x"
    for layer in range(layers):
        inits += [numpy_helper.from_array((RNG.standard_normal((hidden, hidden)) * 0.3).astype(np.float32), f"w{layer}"),
                  numpy_helper.from_array(RNG.standard_normal(hidden).astype(np.float32), f"g{layer}"),
                  numpy_helper.from_array(RNG.standard_normal(hidden).astype(np.float32), f"b{layer}")]
        nodes += [helper.make_node("MatMul", [h, f"w{layer}"], [f"m{layer}"], name=f"mm{layer}"),
                  helper.make_node("Add", [f"m{layer}", h], [f"s{layer}"], name=f"residual{layer}"),
                  helper.make_node("LayerNormalization", [f"s{layer}", f"g{layer}", f"b{layer}"], [f"h{layer}"],
                                   axis=-1, epsilon=1e-5, name=f"ln{layer}")]
        h = f"h{layer}"
    outputs = [tensor_info(h, shape)] + ([tensor_info(f"s{layers - 1}", shape)] if residual_read_twice else [])
    return make_model(nodes, [tensor_info("x", shape)], outputs, inits)


def _check_outputs(model: onnx.ModelProto, optimized: kiln.OptimizedModel) -> None:
    """The same function: bit for bit under the ONNX reference evaluator (Sum of two is Add);
    to float rounding on ONNX Runtime, which runs a different LayerNormalization kernel."""
    from onnx.reference import ReferenceEvaluator

    feeds = {"x": RNG.standard_normal(SHAPE).astype(np.float32)}
    rewritten = to_proto(optimized.model)
    for got, want in zip(ReferenceEvaluator(rewritten).run(None, feeds), ReferenceEvaluator(model).run(None, feeds)):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(optimized(**feeds), kiln.optimize(model, level=0)(**feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _pass(optimized: kiln.OptimizedModel):
    return next(p for p in optimized.report.passes if p.name == "residual_add_as_sum")


def test_measured_faster_the_adds_become_sums_and_compute_the_same():
    model = _post_norm_layers()
    timer = FakeTimer(0.5)
    optimized = kiln.optimize(model, level=2, measured_choices=_choices(0.5, timer), options=MEASURE_EVERYTHING)
    histogram = op_histogram(optimized.model)
    assert histogram.get("Sum") == 2 and "Add" not in histogram, histogram
    _check_outputs(model, optimized)
    entry = _pass(optimized)
    assert entry.status == "applied" and entry.message == "2 of 2 Adds before a LayerNormalization written as Sum"
    # one shape, measured once (3 trials), recorded once for both layers
    assert timer.calls == 3 and len(entry.decisions) == 1 and entry.decisions[0].count == 2
    decision = entry.decisions[0]
    assert decision.chosen == "Sum" and decision.decided_by == "measurement"
    assert decision.alternative("Add").predicted_ms > 0 and decision.alternative("Sum").measured_ms > 0
    assert [r.nodes[0].name for r in entry.rewrites] == ["residual0", "residual1"]


@pytest.mark.parametrize("ratio", [1.1, 0.97])
def test_measured_slower_or_within_the_noise_the_adds_stay(ratio):
    optimized = kiln.optimize(_post_norm_layers(), level=2, measured_choices=_choices(ratio),
                              options=MEASURE_EVERYTHING)
    assert "Sum" not in op_histogram(optimized.model)
    entry = _pass(optimized)
    assert entry.status == "unchanged" and entry.decisions[0].chosen == "Add"
    assert f"{ratio:.3f}" in entry.decisions[0].reason


def test_without_measured_choices_or_below_the_timing_resolution_nothing_is_rewritten():
    optimized = kiln.optimize(_post_norm_layers(), level=2, measured_choices=None, options=MEASURE_EVERYTHING)
    assert "Sum" not in op_histogram(optimized.model)
    assert "no measured choices" in _pass(optimized).decisions[0].reason
    timer = FakeTimer(0.5)
    optimized = kiln.optimize(_post_norm_layers(), level=2, measured_choices=_choices(0.5, timer))
    assert timer.calls == 0 and "below" in _pass(optimized).decisions[0].reason


def test_a_sum_with_another_reader_is_measured_as_its_own_shape_with_that_reader_kept():
    model = _post_norm_layers(residual_read_twice=True)
    timer = FakeTimer(0.5)
    optimized = kiln.optimize(model, level=2, measured_choices=_choices(0.5, timer), options=MEASURE_EVERYTHING)
    decisions = _pass(optimized).decisions
    assert len(decisions) == 2 and timer.calls == 6 and all(d.count == 1 for d in decisions)
    _check_outputs(model, optimized)
    assert [o.name for o in optimized.model.graph.outputs] == ["h1", "s1"]


def test_the_timed_forms_are_the_region_as_in_the_graph_and_onnx_runtime_fuses_only_the_add(tmp_path):
    """The mechanism the pass exists for: ORT (level all) fuses the Add form into
    SkipLayerNormalization and leaves the Sum form as Sum + LayerNormalization; the region keeps
    the sum's other reader as an output."""
    graph = kiln.optimize(_post_norm_layers(layers=1), level=1).model.graph  # shapes inferred
    candidate = residual_add_as_sum._candidates(graph)[0]
    with_add, with_sum = residual_add_as_sum._alternatives(candidate)
    assert [n.op_type for n in with_add.graph] == ["Add", "LayerNormalization"]
    assert [n.op_type for n in with_sum.graph] == ["Sum", "LayerNormalization"]
    fused = {}
    for name, form in (("add", with_add), ("sum", with_sum)):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(tmp_path / f"{name}.onnx")
        ort.InferenceSession(to_proto(form).SerializeToString(), options, providers=["CPUExecutionProvider"])
        fused[name] = [n.op_type for n in onnx.load(tmp_path / f"{name}.onnx").graph.node]
    assert fused["add"] == ["SkipLayerNormalization"]
    assert fused["sum"] == ["Sum", "LayerNormalization"]


def test_symbolic_shapes_keep_the_add_and_say_why():
    model = _post_norm_layers(layers=1, shape=["batch", 5, 16])
    optimized = kiln.optimize(model, level=2, measured_choices=_choices(0.5), options=MEASURE_EVERYTHING)
    decisions = _pass(optimized).decisions
    assert "Sum" not in op_histogram(optimized.model)
    assert decisions and all(d.chosen == "Add" and "not static" in d.reason for d in decisions)
