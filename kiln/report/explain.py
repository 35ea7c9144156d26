"""The `--explain` part of a report, as rich tables: every rewrite with its rule, reason and origin,
each rule pass's most frequent near misses, and every decision with all its alternatives."""

from __future__ import annotations

from typing import Any

from kiln.report.model import Decision, OptimizationReport, PassReport
from kiln.report.summary import decision_subject, format_ms, pass_label, rewrite_origin, top_near_misses


def _table(title: str, *columns: str, right: tuple[str, ...] = ()) -> Any:
    """A rich Table with these columns, the `right` ones right-justified (numbers)."""
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left", overflow="fold")
    return table


def rewrite_table(report: OptimizationReport) -> Any | None:
    """Every rewrite, grouped by pass: its rule, why, what it produced, and the original nodes
    (provenance: module paths, original node names) it came from. None without rewrites."""
    passes = [p for p in report.passes if p.rewrites]
    if not passes:
        return None
    table = _table("rewrites, by pass", "pass", "rule", "reason", "result", "origin")
    for p in passes:
        for index, rewrite in enumerate(p.rewrites):
            table.add_row(pass_label(p) if index == 0 else "", rewrite.rule, rewrite.reason, rewrite.result,
                          rewrite_origin(rewrite))
        table.add_section()
    return table


def near_miss_table(report: OptimizationReport, limit: int = 5) -> Any | None:
    """Per rule pass, the `limit` most frequent reasons its rules matched a pattern but did not
    rewrite (from the pass's last run). None when no rule said no."""
    misses = top_near_misses(report.passes, limit)
    if not misses:
        return None
    title = f"near misses: a rule's pattern matched, its check said no (top {limit} per pass)"
    table = _table(title, "pass", "rule", "reason", "count", right=("count",))
    for p, rows in misses:
        for index, miss in enumerate(rows):
            table.add_row(pass_label(p) if index == 0 else "", miss.rule, miss.reason, str(miss.count))
        table.add_section()
    return table


def decision_table(report: PassReport) -> Any:
    """Every decision a pass took: subject and question, each alternative with its predicted and
    measured ms and other figures, which was chosen, why, and what decided it."""
    table = _table(f"{pass_label(report)}: decisions", "subject", "question", "alternative", "predicted ms",
                   "measured ms", "figures", "chosen", "reason", "decided by",
                   right=("predicted ms", "measured ms"))
    for decision in report.decisions:
        _add_decision(table, decision)
        table.add_section()
    return table


def _add_decision(table: Any, decision: Decision) -> None:
    for index, alternative in enumerate(decision.alternatives):
        chosen = alternative.name == decision.chosen
        first = index == 0
        figures = ", ".join(f"{k} {v:.6g}" for k, v in alternative.metrics.items())
        table.add_row(decision_subject(decision) if first else "", decision.question if first else "",
                      alternative.name, format_ms(alternative.predicted_ms), format_ms(alternative.measured_ms),
                      figures, "yes" if chosen else "", decision.reason if first else "",
                      decision.decided_by if first else "", style="green" if chosen else "")


def explain_renderables(report: OptimizationReport) -> list[Any]:
    """The rewrite table, the near-miss table and a decision table per deciding pass (each
    present only when it has rows)."""
    tables = [rewrite_table(report), near_miss_table(report)]
    tables += [decision_table(p) for p in report.passes if p.decisions]
    return [t for t in tables if t is not None]
