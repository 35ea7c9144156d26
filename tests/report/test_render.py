"""The text report: collapsed pass rows, fixed-point rounds, the prediction's header and caption,
the validation reason, compact and full decision tables, rewrites with origins, near misses, JSON."""

from __future__ import annotations

import json

from kiln.report.model import (
    REPORT_SCHEMA_VERSION,
    Alternative,
    Decision,
    ErrorStats,
    NearMiss,
    NodeRef,
    OptimizationReport,
    PassReport,
    Rewrite,
)
from kiln.report.render import render_text
from kiln.report.summary import pass_rows, rewrite_origin, top_near_misses


def _unchanged(name: str, group: str = "", round_: int = 0) -> PassReport:
    return PassReport(name=name, exact=True, status="unchanged", nodes_before=4, nodes_after=4, group=group,
                      round=round_)


def _merge_decision(count: int = 1) -> Decision:
    return Decision(subject="W1 @ W2", question="merge consecutive linear maps", chosen="merged",
                    reason="merged is predicted 50.4% faster than chain; " + "and more words " * 10,
                    alternatives=[Alternative("chain", predicted_ms=1.234, measured_ms=1.5,
                                              metrics={"weight_elements": 1536.0}),
                                  Alternative("merged", predicted_ms=0.98, metrics={"weight_elements": 128.0})],
                    pass_name="linear_chain_merging", count=count)


def _applied(name: str, **fields) -> PassReport:
    return PassReport(name=name, exact=True, status="applied", nodes_before=5, nodes_after=4,
                      error=ErrorStats(max_abs=1e-6), predicted_ms_before=2.0, predicted_ms_after=1.5, **fields)


def _report(passes: list[PassReport], **fields) -> OptimizationReport:
    return OptimizationReport(model_name="m.onnx", level=2, passes=passes, nodes_before=5, nodes_after=4,
                              cost_model="CostModel('test')", predicted_ms_before=2.0, predicted_ms_after=1.5,
                              **fields)


def _rewrite() -> Rewrite:
    return Rewrite(rule="merge_matmul_chain", reason="consecutive linear maps", result="now from MatMul m0",
                   nodes=[NodeRef("fc1", "MatMul", ["/enc/fc1", "fc1_orig"]), NodeRef("fc2", "MatMul", []),
                          NodeRef("fc1b", "MatMul", ["/enc/fc1"])])


def _explained_report() -> OptimizationReport:
    misses = [NearMiss("fold_bn", f"reason {i}", count=i) for i in range(1, 8)]
    return _report([
        _applied("linear_chain_merging", rewrites=[_rewrite()], decisions=[_merge_decision(count=3)]),
        PassReport(name="layer_folding", exact=True, near_misses=[NearMiss("fold_bn", "stale", 99)]),
        PassReport(name="layer_folding", exact=True, near_misses=misses),
    ])


def test_consecutive_unchanged_passes_collapse_into_one_row():
    passes = [_unchanged(n) for n in ("a", "b", "c", "d", "e", "f")] + [_applied("g"), _unchanged("h")]
    rows = pass_rows(passes)
    assert [len(r.passes) for r in rows] == [6, 1, 1]
    assert rows[0].label == "6 passes unchanged: a, b, c, d, ..."
    assert rows[2].label == "h"  # a lone unchanged pass keeps its own row
    text = render_text(_report(passes), width=250)
    assert "6 passes unchanged: a, b, c, d, ..." in text and "| e " not in text


def test_skipped_passes_collapse_when_they_share_a_reason_and_messages_stay():
    skip = [PassReport(name=n, exact=True, status="skipped", message="no float weights") for n in ("a", "b")]
    noted = PassReport(name="block_dropping", exact=False, message="5 blocks scored")
    rows = pass_rows([*skip, noted, _unchanged("c")])
    assert [r.label for r in rows] == ["2 passes skipped: a, b", "block_dropping", "c"]
    text = render_text(_report([*skip, noted, _unchanged("c")]), width=250)
    assert "2 passes skipped: a, b" in text and "no float weights" in text and "5 blocks scored" in text


def test_passes_in_a_fixed_point_group_show_their_round():
    passes = [_applied("identity_elimination", group="cleanup", round=1),
              _unchanged("dead_node_elimination", "cleanup", 1), _unchanged("identity_elimination", "cleanup", 2)]
    text = render_text(_report(passes), width=250)
    assert "identity_elimination (cleanup round 1)" in text
    assert "2 passes unchanged (cleanup rounds 1-2): dead_node_elimination, identity_elimination" in text


def test_prediction_column_says_what_it_predicts_and_measured_row_where():
    text = render_text(_report([_applied("a")], measured_ms_before=3.0, measured_ms_after=2.5), width=250)
    assert "predicted ms" in text and "(as written)" in text
    assert "predicted ms (as written): CostModel('test')" in text  # the caption names the cost model
    assert "measured on the target" in text and "3.00 -> 2.50" in text


def test_total_row_shows_why_the_run_is_not_validated():
    reason = "not validated: validation is off (validate=False, --no-validate)"
    text = render_text(_report([_applied("a")], validation=reason), width=250)
    total = next(line for line in text.splitlines() if "total" in line)
    assert reason in total


def test_compact_output_has_one_row_per_decision_with_each_alternatives_prediction():
    text = render_text(_report([_applied("linear_chain_merging", decisions=[_merge_decision(count=3)])]),
                       width=250)
    row = next(line for line in text.splitlines() if "W1 @ W2" in line)
    assert "W1 @ W2 (x3)" in row and "merged" in row and "chain 1.23 (measured 1.5) / merged 0.98" in row
    assert "merged is predicted 50.4% faster" in row and "..." in row  # the long reason is cut
    assert "weight_elements" not in text and "rewrites, by pass" not in text  # full figures only with explain


def test_compact_output_has_no_decision_table_without_decisions():
    assert "decisions" not in render_text(_report([_applied("a")]), width=250)


def test_explain_lists_rewrites_with_rule_reason_and_origin():
    text = render_text(_explained_report(), width=250, explain=True)
    row = next(line for line in text.splitlines() if "merge_matmul_chain" in line and "consecutive" in line)
    assert "linear_chain_merging" in row and "now from MatMul m0" in row
    assert "/enc/fc1, fc1_orig, fc2" in row  # provenance once each, the node name when it has none
    assert rewrite_origin(_rewrite(), shown=2) == "/enc/fc1, fc1_orig, +1 more"


def test_explain_lists_the_top_five_near_misses_of_each_rule_pass_last_run():
    report = _explained_report()
    (entry, misses), = top_near_misses(report.passes)
    assert entry is report.passes[2] and [m.count for m in misses] == [7, 6, 5, 4, 3]
    text = render_text(report, width=250, explain=True)
    assert "near misses" in text and "reason 7" in text and "reason 3" in text
    assert "reason 2" not in text and "stale" not in text


def test_explain_shows_every_decision_row_in_full():
    text = render_text(_explained_report(), width=250, explain=True)
    assert "linear_chain_merging: decisions" in text
    chain = next(line for line in text.splitlines() if "| chain " in line.replace("│", "|"))
    for cell in ("W1 @ W2 (x3)", "merge consecutive linear maps", "1.23", "1.5", "weight_elements 1536",
                 "cost_model"):
        assert cell in chain
    merged = next(line for line in text.splitlines() if "weight_elements 128" in line)
    assert "| merged " in merged.replace("│", "|") and "0.98" in merged and "yes" in merged
    assert "and more words and more words" in text  # the reason is not cut


def test_json_carries_schema_version_and_round_trips_decisions():
    data = json.loads(_explained_report().to_json())
    assert data["schema_version"] == REPORT_SCHEMA_VERSION
    decision = data["passes"][0]["decisions"][0]
    assert decision["subject"] == "W1 @ W2" and decision["chosen"] == "merged" and decision["count"] == 3
    assert decision["alternatives"][0] == {"name": "chain", "predicted_ms": 1.234, "measured_ms": 1.5,
                                           "metrics": {"weight_elements": 1536.0}}
    assert data["passes"][2]["near_misses"][0] == {"rule": "fold_bn", "reason": "reason 1", "count": 1}
    assert Decision(**{**decision, "alternatives": [Alternative(**a) for a in decision["alternatives"]]}) \
        == _merge_decision(count=3)


def test_alike_decisions_share_one_row_in_the_compact_table():
    def norm(i: int) -> Decision:
        return Decision(f"norm_{i}", "fold Reciprocal into Div", [Alternative("reciprocal_mul", 0.0106),
                        Alternative("div", 0.00856)], "reciprocal_mul", "below the timing's resolution", "precondition")

    other = Decision("mm", "merge", [Alternative("chain", 2.0), Alternative("merged", 1.0)], "merged", "faster")
    report = OptimizationReport(passes=[PassReport(name="p", exact=True, decisions=[norm(0), norm(1), norm(2), other])])
    text = render_text(report)
    assert "norm_0 and 2 more alike" in text and "norm_1" not in text and "mm" in text
    assert "norm_1" in render_text(report, explain=True)  # --explain keeps every row


def test_the_shapes_line_says_what_ran_where_it_went_and_what_was_guessed():
    report = OptimizationReport(model_name="m", passes=[_unchanged("a")], sample_inputs="random inputs",
                                input_shapes="x [1, 3, 224, 224]",
                                shape_warnings=["x_dim2 guessed 224 (image side: axis 2 or 3 of a 4-D float input)"])
    text = " ".join(render_text(report).split())
    assert "input shapes validated and priced at: x [1, 3, 224, 224] (kept symbolic in the saved model)" in text
    assert "warning: guessed x_dim2 = 224 (image side: axis 2 or 3 of a 4-D float input). Bind them with --dim" in text
    report.shapes_fixed = True
    assert "(written into the model (--fix-shapes); guessed sizes stay symbolic)" in " ".join(render_text(report).split())
    report.shape_warnings, report.sample_inputs = [], ""
    text = " ".join(render_text(report).split())
    assert "input shapes priced at: x [1, 3, 224, 224] (written into the model (--fix-shapes))" in text
    assert "warning" not in text
    assert "input shapes" not in render_text(OptimizationReport(model_name="m", passes=[_unchanged("a")]))
