"""Render an OptimizationReport as a rich table, as plain text, or as JSON."""

from __future__ import annotations

import io
from typing import Any

from kiln.report.model import OptimizationReport, PassReport


def format_bytes(n: int) -> str:
    """Binary units, labelled as such: 435238084 -> '415.1 MiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _error_text(report: PassReport) -> str:
    if report.error is None:
        return "-"
    return f"{report.error.max_abs:.2e}"


def _rules_text(report: PassReport, limit: int = 4) -> str:
    counts = sorted(report.rule_counts().items(), key=lambda kv: -kv[1])
    text = ", ".join(f"{rule} x{n}" for rule, n in counts[:limit])
    if len(counts) > limit:
        text += f", +{len(counts) - limit} more"
    if report.message:
        text = f"{text}; {report.message}" if text else report.message
    return text


def report_table(report: OptimizationReport) -> Any:
    """A rich Table: one row per pass, then a total row."""
    from rich.table import Table

    pipeline = "custom passes" if report.level is None else f"level {report.level}"
    title = f"kiln report: {report.model_name or 'model'} ({pipeline})"
    table = Table(title=title, show_lines=False)
    for column, justify in (
        ("pass", "left"), ("status", "left"), ("nodes", "right"), ("params", "right"),
        ("max abs err", "right"), ("predicted ms", "right"), ("time s", "right"), ("rewrites", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for p in report.passes:
        style = {"rolled_back": "red", "failed": "red", "applied": "green"}.get(p.status, "")
        table.add_row(
            p.name,
            p.status,
            f"{p.nodes_before} -> {p.nodes_after}",
            f"{format_bytes(p.parameter_bytes_before)} -> {format_bytes(p.parameter_bytes_after)}",
            _error_text(p),
            _predicted_text(p.predicted_ms_before, p.predicted_ms_after),
            f"{p.seconds:.2f}",
            _rules_text(p),
            style=style,
        )
    final = report.final_error
    table.add_section()
    table.add_row(
        "total",
        "validated" if report.validated else "not validated",
        f"{report.nodes_before} -> {report.nodes_after}",
        f"{format_bytes(report.parameter_bytes_before)} -> {format_bytes(report.parameter_bytes_after)}",
        f"{final.max_abs:.2e}" if final else "-",
        _predicted_text(report.predicted_ms_before, report.predicted_ms_after),
        f"{report.seconds:.2f}",
        f"validation {report.validation_seconds:.2f} s on {report.sample_inputs}" if report.validated else "",
    )
    if report.predicted_compiled_ms_before is not None and report.predicted_compiled_ms_after is not None:
        table.add_row("predicted, as ORT runs it", "", "", "", "",
                      _predicted_text(report.predicted_compiled_ms_before, report.predicted_compiled_ms_after),
                      "", report.compiled_cost_model)
    if report.measured_ms_before is not None and report.measured_ms_after is not None:
        table.add_row("measured", "", "", "", "",
                      _predicted_text(report.measured_ms_before, report.measured_ms_after), "", "")
    if report.cost_model:
        table.caption = f"predicted ms: the model as written, by {report.cost_model}"
    return table


def decision_table(report: PassReport) -> Any:
    """A rich Table of the decisions a pass took: each subject, its alternatives with their
    predicted (and measured) cost and other figures, the choice and why."""
    from rich.table import Table

    table = Table(title=f"{report.name}: decisions")
    for column, justify in (("subject", "left"), ("alternative", "left"), ("predicted ms", "right"),
                            ("measured ms", "right"), ("figures", "left"), ("chosen", "left"), ("reason", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]

    def figure(value: float | None) -> str:
        return "-" if value is None else f"{value:.4g}"

    for decision in report.decisions:
        for index, alternative in enumerate(decision.alternatives):
            chosen = alternative.name == decision.chosen
            figures = ", ".join(f"{k} {v:.6g}" for k, v in alternative.metrics.items())
            table.add_row(decision.subject if index == 0 else "", alternative.name, figure(alternative.predicted_ms),
                          figure(alternative.measured_ms), figures, "yes" if chosen else "",
                          f"{decision.reason} ({decision.decided_by})" if index == 0 else "",
                          style="green" if chosen else "")
    return table


def report_renderables(report: OptimizationReport) -> list[Any]:
    """The pass table, then a decision table for every pass that took decisions."""
    return [report_table(report), *(decision_table(p) for p in report.passes if p.decisions)]


def _predicted_text(before: float | None, after: float | None) -> str:
    """"12.3 -> 11.0" for a prediction (or measurement) before and after, "-" without one."""
    if before is None or after is None:
        return "-"
    return f"{before:.1f} -> {after:.1f}" if before >= 10 else f"{before:.2f} -> {after:.2f}"


def render_text(report: OptimizationReport, width: int = 160) -> str:
    """The rich table rendered to plain text (no colour codes)."""
    from rich.console import Console

    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, force_terminal=False).print(*report_renderables(report))
    return buffer.getvalue()
