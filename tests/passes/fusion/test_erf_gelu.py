"""The erf GELU fusion rule: torch's exact GELU becomes one Gelu op where the cost model says so,
validated against the original; other constants or an old opset leave it as it is, with the reason."""

from __future__ import annotations

import numpy as np
from conftest import make_model, run_pass, tensor_info
from onnx import helper, numpy_helper

from kiln.passes.fusion.operator_fusion import FuseOperators


def _erf_gelu(opset: int = 20, sqrt2: float = float(np.sqrt(2))):
    constants = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("s", sqrt2), ("one", 1.0), ("half", 0.5))]
    nodes = [helper.make_node("Div", ["x", "s"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["x", "a"], ["m"]),
             helper.make_node("Mul", ["m", "half"], ["y"])]
    return make_model(nodes, [tensor_info("x", [64, 256])], [tensor_info("y", [64, 256])], constants, opset=opset)


def test_erf_gelu_becomes_one_gelu_op_priced_as_one_kernel():
    model, report = run_pass(FuseOperators(), _erf_gelu())
    assert [n.op_type for n in model.graph] == ["Gelu"] and report.status == "applied"
    assert [r.rule for r in report.rewrites] == ["erf_gelu"] and report.error.max_abs < 1e-5
    (decision,) = report.decisions
    assert decision.chosen == "fused" and decision.decided_by == "cost_model"
    assert decision.alternative("fused").predicted_ms < decision.alternative("separate").predicted_ms


def test_other_constants_or_an_old_opset_stay_with_the_reason():
    for model, reason in ((_erf_gelu(sqrt2=1.5), "not sqrt(2)"), (_erf_gelu(opset=18), "opset 20")):
        optimized, report = run_pass(FuseOperators(), model, options={"trace_near_misses": True})
        assert "Gelu" not in {n.op_type for n in optimized.graph} and report.status == "unchanged"
        assert any(reason in miss.reason for miss in report.near_misses)


def test_near_misses_are_traced_only_when_asked():
    _, report = run_pass(FuseOperators(), _erf_gelu(opset=18))
    assert report.near_misses == []
