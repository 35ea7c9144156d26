"""The cost oracle passes ask (kiln.cost_model.decisions.CostOracle): it prices alternatives built
outside the graph without touching the graph, takes the cheapest, keeps the existing form inside
its resolution, and prices a fused group as one kernel."""

from __future__ import annotations

import onnx_ir as ir
import pytest

from kiln.cost_model.decisions import CostOracle, Fused
from kiln.cost_model.hardware import preset
from kiln.cost_model.model import CostModel
from kiln.errors import KilnError
from kiln.ir.edits import placeholder_weight, sketch_node

F32 = ir.DataType.FLOAT


def _chain(rows: int = 256, width: int = 512):
    """x -> Relu -> Exp -> Neg in a graph; returns (graph, x, nodes)."""
    x = ir.Value(name="x", type=ir.TensorType(F32), shape=ir.Shape([rows, width]))
    nodes = []
    value = x
    for op in ("Relu", "Exp", "Neg"):
        nodes.append(ir.Node("", op, [value]))
        value = nodes[-1].outputs[0]
        value.shape, value.dtype = ir.Shape([rows, width]), F32
    graph = ir.Graph([x], [value], nodes=nodes)
    return graph, x, nodes


@pytest.fixture
def oracle() -> CostOracle:
    return CostOracle(CostModel(preset("generic-avx2", threads=2)))


def test_a_sketched_alternative_adds_no_use_to_the_graph(oracle):
    graph, x, nodes = _chain()
    uses = len(x.uses())
    one = sketch_node("Relu", [x], [((256, 512), F32)])
    assert len(x.uses()) == uses and one.graph is None
    assert oracle.price([one]) == pytest.approx(oracle.price(nodes[:1]))


def test_fewer_kernels_win_and_a_fused_group_costs_less_than_its_parts(oracle):
    _, x, nodes = _chain()
    decision = oracle.choose("chain", "fuse", {"separate": nodes, "fused": Fused(nodes)}, keep="separate")
    assert decision.chosen == "fused" and decision.decided_by == "cost_model"
    fused, separate = decision.alternative("fused").predicted_ms, decision.alternative("separate").predicted_ms
    assert 0 < fused < separate and "faster than separate" in decision.reason


def test_inside_the_resolution_the_existing_form_stays(oracle):
    _, x, nodes = _chain()
    coarse = CostOracle(oracle.cost_model, resolution=0.99)
    decision = coarse.choose("chain", "fuse", {"separate": nodes, "fused": Fused(nodes)}, keep="separate")
    assert decision.chosen == "separate" and "within the cost model's resolution" in decision.reason
    with pytest.raises(KilnError, match="keep="):
        oracle.choose("chain", "fuse", {"separate": nodes}, keep="other")
    with pytest.raises(KilnError, match="resolution"):
        CostOracle(oracle.cost_model, resolution=1.5)


def test_a_placeholder_weight_is_priced_as_a_weight_without_memory(oracle):
    x = ir.Value(name="x", type=ir.TensorType(F32), shape=ir.Shape([1, 4096]))
    big = placeholder_weight("w", (4096, 4096), F32)
    small = placeholder_weight("v", (4096, 16), F32)
    assert big.const_value.nbytes == 4096 * 4096 * 4
    wide = sketch_node("MatMul", [x, big], [((1, 4096), F32)])
    narrow = sketch_node("MatMul", [x, small], [((1, 16), F32)])
    assert oracle.price([wide]) > 10 * oracle.price([narrow])  # one row: the weight bytes decide
