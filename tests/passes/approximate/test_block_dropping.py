"""Block dropping under a cosine budget: scores, greedy decisions, measured joint error, the
validation of approximate passes (own budget; later exact passes against the dropped model),
the API and CLI option, and blocks found in a real transformer export."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from test_residual_blocks import residual_mlp

import kiln
from kiln.cli import main
from kiln.errors import InputError, PassError
from kiln.passes.approximate.block_dropping import BlockBudget, DropResidualBlocks
from kiln.passes.infra import Pass, PassContext, PassResult
from kiln.passes.infra.contract import CosineBudget
from kiln.passes.infra.validation import cosine_similarity
from kiln.passes.pipeline import passes_for_level

X = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
# block 0 is scaled to ~0 (dropping it changes nothing); block 1 carries the model
NEGLIGIBLE_AND_VITAL = (1e-6, 1.0)
# graded importance: solo errors grow with the scale
GRADED = (1e-6, 1.0, 0.05, 0.1, 0.2)


def _optimize(proto, budget: BlockBudget, level: int = 1, **kwargs):
    return kiln.optimize(proto, level=level, sample_inputs={"x": X}, drop_blocks=budget, **kwargs)


def _block_pass(optimized):
    return next(p for p in optimized.report.passes if p.name == "block_dropping")


@dataclass
class _Block:
    """One block's decision row, read back as the figures the tests check."""

    name: str
    dropped: bool
    nodes: int
    solo_cosine: float
    solo_max_abs: float
    measured_cosine: float | None
    measured_error: float | None
    predicted_error: float | None
    reason: str
    keep_ms: float | None

    @classmethod
    def of(cls, decision) -> _Block:
        drop = decision.alternative("drop").metrics
        return cls(decision.subject, decision.chosen == "drop", int(drop["nodes"]), drop["solo_cosine"],
                   drop["solo_max_abs"], drop.get("joint_cosine"), drop.get("measured_joint_error"),
                   drop.get("predicted_joint_error"), decision.reason, decision.alternative("keep").predicted_ms)


def _blocks(entry) -> list[_Block]:
    assert all(d.question == "drop residual block" and d.decided_by == "budget" for d in entry.decisions)
    return [_Block.of(d) for d in entry.decisions]


def _cosine(optimized, reference_proto) -> float:
    return cosine_similarity(kiln.optimize(reference_proto, level=0, validate=False)(X), optimized(X))


def test_negligible_block_is_dropped_and_vital_one_kept():
    proto = residual_mlp(NEGLIGIBLE_AND_VITAL)
    optimized = _optimize(proto, BlockBudget(min_cosine=0.99))
    entry = _block_pass(optimized)
    assert entry.status == "applied" and not entry.exact
    by_name = {b.name: b for b in _blocks(entry)}
    assert by_name["add_0"].dropped and by_name["add_0"].solo_cosine > 0.999999
    assert not by_name["add_1"].dropped and by_name["add_1"].solo_cosine < 0.99
    assert "breaks the budget" in by_name["add_1"].reason
    assert by_name["add_1"].keep_ms > 0  # the cost model prices what keeping the block costs
    (rewrite,) = entry.rewrites
    assert rewrite.rule == "block_dropping"
    assert {n.name for n in rewrite.nodes} == {"fc1_0", "relu_0", "fc2_0", "scale_0", "add_0"}
    assert "add_0" in rewrite.reason and "'h_0'" in rewrite.result and "'x'" in rewrite.result
    names = {n.name for n in optimized.model.graph}
    assert "fc1_0" not in names and "fc1_1" in names
    assert "w1_0" not in optimized.model.graph.initializers  # its weights went with it
    assert _cosine(optimized, proto) > 0.999999


def test_greedy_drops_least_important_first_and_stops_at_the_budget():
    proto = residual_mlp(GRADED)
    budget = BlockBudget(min_cosine=0.992)
    entry = _block_pass(_optimize(proto, budget))
    solo = [b.solo_cosine for b in _blocks(entry)]
    assert solo == sorted(solo, reverse=True)  # considered least important first
    dropped = [b for b in _blocks(entry) if b.dropped]
    tried_and_kept = [b for b in _blocks(entry) if not b.dropped and b.measured_cosine is not None]
    assert [b.name for b in dropped] == ["add_0", "add_2", "add_3"]
    # re-measured after every drop, never just summed
    for block in dropped:
        assert block.measured_cosine >= 0.992
        assert block.measured_error == pytest.approx(1 - block.measured_cosine)
        assert block.predicted_error == pytest.approx(sum(1 - b.solo_cosine for b in dropped[:dropped.index(block) + 1]))
    (refused,) = tried_and_kept
    assert refused.name == "add_4" and refused.measured_cosine < 0.992 <= refused.solo_cosine
    assert "joint cosine would be" in refused.reason
    assert not next(b for b in _blocks(entry) if b.name == "add_1").dropped
    assert entry.error.min_cosine == pytest.approx(dropped[-1].measured_cosine, abs=1e-6)
    assert "dropped 3 of 5 blocks" in entry.message


def test_looser_budget_drops_more_and_measured_cosine_is_the_real_one():
    proto = residual_mlp(GRADED)
    optimized = _optimize(proto, BlockBudget(min_cosine=0.98))
    entry = _block_pass(optimized)
    assert sum(b.dropped for b in _blocks(entry)) == 4
    assert _cosine(optimized, proto) == pytest.approx(optimized.report.final_error.min_cosine, abs=1e-6)
    assert optimized.report.final_error.min_cosine >= 0.98


def test_max_blocks_caps_the_drops():
    entry = _block_pass(_optimize(residual_mlp(GRADED), BlockBudget(min_cosine=0.98, max_blocks=1)))
    assert [b.name for b in _blocks(entry) if b.dropped] == ["add_0"]
    assert any("max_blocks=1" in b.reason for b in _blocks(entry))


def test_without_real_inputs_a_clear_error():
    with pytest.raises(InputError, match="sample_inputs"):
        kiln.optimize(residual_mlp(GRADED), drop_blocks=BlockBudget(min_cosine=0.99))


def test_pass_without_inputs_or_runner_says_what_to_do():
    model = kiln.capture(residual_mlp(GRADED))
    with pytest.raises(InputError, match="sample_inputs"):
        DropResidualBlocks(BlockBudget(), runner=lambda m, f: []).call(model, PassContext())
    with pytest.raises(PassError, match="runner"):
        DropResidualBlocks(BlockBudget()).call(model, PassContext(sample_inputs={"x": X}))


@pytest.mark.parametrize("bad", [{"min_cosine": 1.5}, {"min_cosine": 0.0}, {"max_abs": -1.0}, {"max_blocks": -1}])
def test_budget_is_checked(bad):
    with pytest.raises(PassError):
        BlockBudget(**bad)


@pytest.mark.parametrize("level", [1, 2])
def test_block_dropping_is_off_by_default(level):
    proto = residual_mlp(NEGLIGIBLE_AND_VITAL)
    assert not any(isinstance(p, DropResidualBlocks) for p in passes_for_level(level))
    optimized = kiln.optimize(proto, level=level, sample_inputs={"x": X})
    assert all(p.name != "block_dropping" for p in optimized.report.passes)
    reference = kiln.optimize(proto, level=0, validate=False)(X)
    np.testing.assert_allclose(optimized(X), reference, rtol=1e-5, atol=1e-5)
    assert "fc1_0" in {n.name for n in optimized.model.graph}


def test_exact_pass_after_the_drop_is_checked_against_the_dropped_model():
    proto = residual_mlp(GRADED)
    head = next(n for n in proto.graph.node if n.name == "head")
    head.output[0] = "pre_y"
    proto.graph.node.append(onnx.helper.make_node("Identity", ["pre_y"], ["y"], name="identity"))
    optimized = _optimize(proto, BlockBudget(min_cosine=0.98))
    reports = {p.name: p for p in optimized.report.passes}
    assert reports["block_dropping"].status == "applied"
    assert reports["block_dropping"].tolerance == "cosine>=0.98"
    assert not any(p.status in ("rolled_back", "failed") for p in optimized.report.passes)
    identity = next(p for p in optimized.report.passes if p.name == "identity_elimination")  # its first round
    assert identity.status == "applied" and identity.error.max_abs <= 1e-4
    assert identity.tolerance.endswith("against the model after block_dropping")
    final = optimized.report.final_error  # against the original, not the dropped model
    assert 0.98 <= final.min_cosine < 0.999 and final.max_abs > 1e-2


class ScaleOutput(Pass):
    """Approximate on purpose: scales the first float initializer (cosine-preserving when the
    initializer is a scalar multiplier, cosine-breaking when it is a weight matrix)."""

    name = "scale_weight"
    exact = False

    def __init__(self, initializer: str, factor: np.ndarray | float, budget: CosineBudget):
        self.initializer, self.factor, self.error_budget = initializer, factor, budget

    def call(self, model, ctx):
        value = model.graph.initializers[self.initializer]
        value.const_value = onnx_ir_tensor(value.const_value.numpy() * self.factor, self.initializer)
        return PassResult(model, True)


def onnx_ir_tensor(array: np.ndarray, name: str):
    import onnx_ir as ir

    return ir.tensor(array.astype(np.float32), name=name)


def test_cosine_budget_accepts_a_rescaling_and_rejects_a_distortion():
    proto = residual_mlp((1.0,), head=False)
    # doubling the whole output direction-preservingly is impossible here; scaling the head-less
    # model's residual branch a little keeps cosine high, scaling a weight's rows unevenly breaks it
    kept = kiln.optimize(proto, passes=[ScaleOutput("s_0", 1.01, CosineBudget(0.999))], sample_inputs={"x": X})
    assert kept.report.passes[0].status == "applied"
    assert kept.report.passes[0].error.min_cosine >= 0.999
    uneven = np.where(np.arange(8) % 2 == 0, -3.0, 1.0).astype(np.float32)
    broken = kiln.optimize(proto, passes=[ScaleOutput("w2_0", uneven, CosineBudget(0.999))], sample_inputs={"x": X})
    (report,) = broken.report.passes
    assert report.status == "rolled_back" and "cosine" in report.message
    np.testing.assert_allclose(broken(X), kiln.optimize(proto, level=0, validate=False)(X), rtol=1e-6)


def test_report_json_lists_every_block(tmp_path):
    optimized = _optimize(residual_mlp(GRADED), BlockBudget(min_cosine=0.99))
    data = json.loads(optimized.report.to_json())
    blocks = data["passes"][0]["decisions"]
    assert [b["subject"] for b in blocks][:1] == ["add_0"] and len(blocks) == 5
    assert [a["name"] for a in blocks[0]["alternatives"]] == ["keep", "drop"]
    drop = blocks[0]["alternatives"][1]["metrics"]
    assert {"solo_cosine", "solo_max_abs", "predicted_joint_error", "measured_joint_error", "nodes"} <= set(drop)
    assert data["passes"][1]["decisions"] == []
    assert "add_0" in str(optimized.report)


def test_cli_option(tmp_path, capsys):
    src, npz, report = tmp_path / "in.onnx", tmp_path / "x.npz", tmp_path / "r.json"
    onnx.save(residual_mlp(NEGLIGIBLE_AND_VITAL), src)
    np.savez(npz, x=X)
    assert main(["optimize", str(src), "-o", str(tmp_path / "out.onnx"), "--sample-inputs", str(npz),
                 "--drop-blocks-min-cosine", "0.99", "--report", str(report)]) == 0
    assert "block_dropping" in capsys.readouterr().out
    data = json.loads(report.read_text())
    assert [b["subject"] for b in data["passes"][0]["decisions"] if b["chosen"] == "drop"] == ["add_0"]
    assert main(["optimize", str(src), "-o", str(tmp_path / "o2.onnx"), "--drop-blocks-min-cosine", "0.99"]) == 2
    assert "sample" in capsys.readouterr().err


def test_blocks_are_found_and_dropped_in_a_real_bert_export():
    from models import bert

    module, inputs = bert()
    budget = BlockBudget(min_cosine=0.9)
    optimized = kiln.optimize(module, inputs, level=1, drop_blocks=budget)
    entry = _block_pass(optimized)
    assert {b.name for b in _blocks(entry)} == {"layer.0.attention", "layer.0.intermediate+output",
                                              "layer.1.attention", "layer.1.intermediate+output"}
    assert all(b.nodes >= 7 for b in _blocks(entry))  # an MLP block: 2 MatMuls, their Adds, GELU ..., the Add
    assert entry.status == "applied" and any(b.dropped for b in _blocks(entry))
    assert not any(p.status in ("rolled_back", "failed") for p in optimized.report.passes)
    expected = module(**inputs).detach().numpy()
    got = optimized(**{k: v.numpy() for k, v in inputs.items()})
    assert cosine_similarity(expected, got) >= 0.9
    assert cosine_similarity(expected, got) == pytest.approx(optimized.report.final_error.min_cosine, abs=1e-4)
