"""Joining parallel MatMuls (kiln.passes.fusion.parallel_matmul_joining) as the measured choice says:
the rewrite keeps outputs to float tolerance, reports its ratio and provenance, and happens only
when the joined form was measured clearly faster. The timer is fake; nothing depends on speed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import FakeTimer, fake_measured_choices, make_model, tensor_info
from onnx import helper, numpy_helper

import kiln
from kiln.ir.analysis import op_histogram
from kiln.passes.fusion.parallel_matmul_joining import JoinParallelMatMuls

RNG = np.random.default_rng(3)
MEASURE_EVERYTHING = {"measured_choice_min_ms": 0}


def _choices(ratio: float):
    return fake_measured_choices(FakeTimer(ratio))


def _attention_inputs(biased: tuple[bool, ...], layers: int = 1, share_weight: bool = False) -> onnx.ModelProto:
    """Per layer l, input x{l} [1, 6, 8] and projections x{l} @ W (+ b), a bias where `biased`
    says; outputs: every projection."""
    nodes, inits, outputs = [], [], []
    for layer in range(layers):
        for i, has_bias in enumerate(biased):
            w = "W_0_0" if share_weight else f"W_{layer}_{i}"
            if not share_weight or (layer, i) == (0, 0):
                inits.append(numpy_helper.from_array(RNG.standard_normal((8, 8)).astype(np.float32), w))
            product = f"m_{layer}_{i}"
            nodes.append(helper.make_node("MatMul", [f"x{layer}", w], [product], name=f"mm_{layer}_{i}"))
            if has_bias:
                inits.append(numpy_helper.from_array(RNG.standard_normal(8).astype(np.float32), f"b_{layer}_{i}"))
                nodes.append(helper.make_node("Add", [f"b_{layer}_{i}", product], [f"p_{layer}_{i}"],
                                              name=f"add_{layer}_{i}"))
                product = f"p_{layer}_{i}"
            outputs.append(tensor_info(product, [1, 6, 8]))
    return make_model(nodes, [tensor_info(f"x{layer}", [1, 6, 8]) for layer in range(layers)], outputs, inits)


def _check_outputs(model: onnx.ModelProto, optimized: kiln.OptimizedModel) -> None:
    feeds = {i.name: RNG.standard_normal((1, 6, 8)).astype(np.float32) for i in model.graph.input}
    got, want = optimized(**feeds), kiln.optimize(model, level=0)(**feeds)
    assert len(got) == len(want) == len(model.graph.output)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def _merging(optimized: kiln.OptimizedModel):
    return next(p for p in optimized.report.passes if p.name == "parallel_matmul_joining")


@pytest.mark.parametrize("biased", [(True, True, True), (False, False), (True, False, True)],
                         ids=["all-biased", "no-bias", "key-without-bias"])
def test_a_group_measured_faster_joined_becomes_one_matmul_and_a_split(biased):
    model = _attention_inputs(biased)
    optimized = kiln.optimize(model, passes=[JoinParallelMatMuls()], measured_choices=_choices(0.8),
                              options=MEASURE_EVERYTHING)
    assert op_histogram(optimized.model) == {"MatMul": 1, "Split": 1, **({"Add": 1} if any(biased) else {})}
    assert [v.name for v in optimized.model.graph.outputs] == [o.name for o in model.graph.output]
    (rewrite,) = _merging(optimized).rewrites
    assert rewrite.rule == "parallel_matmul_joining" and len(rewrite.nodes) == len(biased) + sum(biased)
    assert "joined/separate time 0.800" in rewrite.reason and "30 pairs" in rewrite.reason
    split = next(n for n in optimized.model.graph if n.op_type == "Split")
    assert "kiln.provenance" in split.metadata_props
    _check_outputs(model, optimized)


@pytest.mark.parametrize("ratio", [1.2, 0.97])
def test_a_group_measured_slower_or_within_the_noise_stays_apart(ratio):
    model = _attention_inputs((True, True, True))
    optimized = kiln.optimize(model, passes=[JoinParallelMatMuls()], measured_choices=_choices(ratio),
                              options=MEASURE_EVERYTHING)
    assert op_histogram(optimized.model) == {"MatMul": 3, "Add": 3}
    merging = _merging(optimized)
    (decision,) = merging.decisions
    assert merging.status == "unchanged" and f"joined/separate time {ratio:.3f}" in decision.reason
    assert decision.chosen == "separate" and decision.decided_by == "measurement"
    assert decision.alternative("separate").predicted_ms > 0 and decision.alternative("joined").measured_ms > 0


def test_the_threshold_is_an_option():
    model = _attention_inputs((True, True))
    optimized = kiln.optimize(model, passes=[JoinParallelMatMuls()], measured_choices=_choices(0.97),
                              options={**MEASURE_EVERYTHING, "measured_choice_max_ratio": 0.99})
    assert op_histogram(optimized.model)["Split"] == 1


def test_layers_of_one_shape_are_measured_once():
    choices = _choices(0.8)
    model = _attention_inputs((True, False, True), layers=3)
    optimized = kiln.optimize(model, passes=[JoinParallelMatMuls()], measured_choices=choices, options=MEASURE_EVERYTHING)
    assert choices.timer.calls == choices.trials and len(_merging(optimized).rewrites) == 3
    (decision,) = _merging(optimized).decisions
    assert decision.count == 3 and decision.chosen == "joined"
    assert op_histogram(optimized.model)["Split"] == 3
    _check_outputs(model, optimized)


def test_without_measured_choices_or_with_a_shared_weight_nothing_is_joined():
    model = _attention_inputs((True, True))
    optimized = kiln.optimize(model, passes=[JoinParallelMatMuls()], measured_choices=None, options=MEASURE_EVERYTHING)
    assert "Split" not in op_histogram(optimized.model)
    assert "no measured choices" in _merging(optimized).decisions[0].reason
    shared = _attention_inputs((False, False), share_weight=True)  # joining would copy the shared weight
    optimized = kiln.optimize(shared, passes=[JoinParallelMatMuls()], measured_choices=_choices(0.5),
                              options=MEASURE_EVERYTHING)
    assert op_histogram(optimized.model) == {"MatMul": 2}


def test_a_joined_group_survives_the_level_2_pipeline():
    # After joining, linear_to_gemm and the shape passes rewrite the MatMul + Add; outputs hold.
    model = _attention_inputs((True, False, True))
    optimized = kiln.optimize(model, level=2, measured_choices=_choices(0.8), options=MEASURE_EVERYTHING)
    assert op_histogram(optimized.model) == {"Reshape": 2, "Gemm": 1, "Split": 1}
    assert _merging(optimized).status == "applied"
    _check_outputs(model, optimized)
