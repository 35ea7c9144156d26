"""Render an OptimizationReport as rich tables or plain text: the pass table (runs of passes
that changed nothing collapsed), a compact decision table, and with `explain` every rewrite,
near miss and decision in full (`kiln.report.explain`)."""

from __future__ import annotations

import io
from typing import Any

from kiln.report.explain import explain_renderables
from kiln.report.model import OptimizationReport, PassReport
from kiln.report.summary import (
    PassRow,
    decision_costs,
    decision_subject,
    grouped_decisions,
    pass_label,
    pass_rows,
    truncate,
)

#: What the per-pass prediction is of: the cost model's price of the model's own nodes.
PREDICTED_COLUMN = "predicted ms (as written)"
MEASURED_LABEL = "measured on the target"
# the header of the prediction column, on two lines to leave the width to the pass names
PREDICTED_HEADER = PREDICTED_COLUMN.replace(" (", "\n(")
PASS_COLUMNS = ("pass", "status", "nodes", "params", "max abs err", PREDICTED_HEADER, "time s", "rewrites")
NUMERIC_COLUMNS = ("nodes", "params", "max abs err", PREDICTED_HEADER, "time s")


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


def _predicted_text(before: float | None, after: float | None) -> str:
    """"12.3 -> 11.0" for a prediction (or measurement) before and after, "-" without one."""
    if before is None or after is None:
        return "-"
    return f"{before:.1f} -> {after:.1f}" if before >= 10 else f"{before:.2f} -> {after:.2f}"


def _change_text(before: int, after: int, bytes_: bool = False) -> str:
    show = format_bytes if bytes_ else str
    return f"{show(before)} -> {show(after)}"


def _pass_cells(row: PassRow) -> list[str]:
    """The pass table's cells for one pass, or for a collapsed run of passes."""
    first, last = row.first, row.last
    single = len(row.passes) == 1
    return [
        row.label,
        first.status,
        _change_text(first.nodes_before, last.nodes_after),
        _change_text(first.parameter_bytes_before, last.parameter_bytes_after, bytes_=True),
        _error_text(first) if single else "-",
        _predicted_text(first.predicted_ms_before, last.predicted_ms_after),
        f"{row.seconds:.2f}",
        _rules_text(first) if single else first.message,
    ]


def _row_style(row: PassRow) -> str:
    if len(row.passes) > 1:
        return "dim"
    return {"rolled_back": "red", "failed": "red", "applied": "green"}.get(row.first.status, "")


def validation_text(report: OptimizationReport) -> str:
    """Why the run is validated or not ('validated on random inputs (0.01 s)', 'not validated:
    validation is off (...)'), from `report.validation`, else from the flags."""
    text = report.validation or (f"validated on {report.sample_inputs or 'the sample inputs'}"
                                 if report.validated else "not validated")
    return f"{text} ({report.validation_seconds:.2f} s)" if report.validated else text


def _total_rows(table: Any, report: OptimizationReport) -> None:
    """The total row (with the validation reason), then the compiled prediction and the
    measurement when there are any."""
    final = report.final_error
    table.add_section()
    table.add_row(
        "total", "validated" if report.validated else "not validated",
        _change_text(report.nodes_before, report.nodes_after),
        _change_text(report.parameter_bytes_before, report.parameter_bytes_after, bytes_=True),
        f"{final.max_abs:.2e}" if final else "-",
        _predicted_text(report.predicted_ms_before, report.predicted_ms_after),
        f"{report.seconds:.2f}", validation_text(report),
    )
    if report.backend_error is not None:
        table.add_row(f"on {report.target.split(',')[0]}", "validated", "", "", f"{report.backend_error.max_abs:.2e}",
                      "", "", report.backend_check)
    if report.predicted_compiled_ms_before is not None and report.predicted_compiled_ms_after is not None:
        table.add_row("predicted, as ORT runs it", "", "", "", "",
                      _predicted_text(report.predicted_compiled_ms_before, report.predicted_compiled_ms_after),
                      "", report.compiled_cost_model)
    if report.measured_ms_before is not None and report.measured_ms_after is not None:
        table.add_row(MEASURED_LABEL, "", "", "", "",
                      _predicted_text(report.measured_ms_before, report.measured_ms_after), "",
                      "median ms, input and optimized model timed in turn")


def _caption(report: OptimizationReport) -> str:
    """Names what the prediction column predicts, and with what."""
    if not report.cost_model:
        return f"{PREDICTED_COLUMN}: no cost model ran"
    return (f"{PREDICTED_COLUMN}: {report.cost_model}'s latency for the model's own nodes, "
            "before the runtime's fusions")


def report_table(report: OptimizationReport) -> Any:
    """A rich Table: one row per pass (a run of passes that changed nothing the same way is one
    row), then the total row."""
    from rich.table import Table

    pipeline = "custom passes" if report.level is None else f"level {report.level}"
    if report.target:
        pipeline += f", for {report.target}"
    table = Table(title=f"kiln report: {report.model_name or 'model'} ({pipeline})", caption=_caption(report))
    for column in PASS_COLUMNS:
        numeric = column in NUMERIC_COLUMNS  # a name too long for its column folds instead of being cut
        table.add_column(column, justify="right" if numeric else "left", overflow="ellipsis" if numeric else "fold")
    for row in pass_rows(report.passes):
        table.add_row(*_pass_cells(row), style=_row_style(row))
    _total_rows(table, report)
    return table


def decision_summary_table(report: OptimizationReport, reason_limit: int = 70) -> Any:
    """One row per decision: the pass, the subject, what was chosen, each alternative's
    predicted ms ('chain 0.004 / merged 0.002') and the reason, cut to `reason_limit`."""
    from rich.table import Table

    table = Table(title="decisions (kiln optimize --explain for every figure)")
    for column in ("pass", "subject", "chosen", "predicted ms", "reason"):
        table.add_column(column, overflow="fold")
    for p in report.passes:
        for decision, alike in grouped_decisions(p.decisions):
            subject = decision_subject(decision) + (f" and {alike - 1} more alike" if alike > 1 else "")
            table.add_row(pass_label(p), subject, decision.chosen, decision_costs(decision),
                          truncate(decision.reason, reason_limit))
    return table


def shape_lines(report: OptimizationReport) -> list[Any]:
    """'input shapes ...: x [1, 3, 224, 224] (kept symbolic in the saved model)', then a warning line
    naming every size kiln guessed and the flags that bind it (one renderable, or none)."""
    from rich.text import Text

    if not report.input_shapes:
        return []
    where = "kept symbolic in the saved model"
    if report.shapes_fixed:
        where = "written into the model (--fix-shapes)" + ("; guessed sizes stay symbolic" if report.shape_warnings
                                                            else "")
    used = "validated and priced" if report.sample_inputs else "priced"
    text = Text(f"input shapes {used} at: {report.input_shapes} ({where})")
    if report.shape_warnings:
        text.append("\nwarning: guessed " + "; ".join(w.replace(" guessed ", " = ") for w in report.shape_warnings)
                    + ". Bind them with --dim NAME=SIZE or --input-shape INPUT:D0,D1,... "
                    "(input_shapes= / dim_values= in kiln.optimize).", style="yellow")
    return [text]


def report_renderables(report: OptimizationReport, explain: bool = False) -> list[Any]:
    """The pass table, the input shapes used (with a warning for guessed sizes), then either the
    compact decision table (when any pass decided anything) or, with `explain`, the rewrites, near
    misses and decisions in full; with ``backend="auto"``, the backend kept and every one's time."""
    from rich.text import Text

    backend = [Text(f"backend: {report.backend_decision.chosen}, {report.backend_decision.reason}")] \
        if report.backend_decision is not None else []
    if explain:
        return [report_table(report), *shape_lines(report), *backend, *explain_renderables(report)]
    return [report_table(report), *shape_lines(report), *backend,
            *([decision_summary_table(report)] if report.decisions else [])]


def render_text(report: OptimizationReport, width: int = 160, explain: bool = False) -> str:
    """The report's tables rendered to plain text (no colour codes)."""
    from rich.console import Console

    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, force_terminal=False).print(
        *report_renderables(report, explain=explain))
    return buffer.getvalue()
