"""What the renderers say about a report, without rich: pass-table rows (runs of unchanged or
skipped passes collapsed, fixed-point rounds named), rewrite origins and top near misses."""

from __future__ import annotations

from dataclasses import dataclass

from kiln.report.model import Alternative, Decision, NearMiss, PassReport, Rewrite

#: Statuses whose consecutive passes share one row of the pass table.
COLLAPSIBLE = ("unchanged", "skipped")


@dataclass
class PassRow:
    """One row of the pass table: a single pass, or a run of consecutive passes that all left
    the model alone the same way (same status, same message)."""

    passes: list[PassReport]

    @property
    def first(self) -> PassReport:
        return self.passes[0]

    @property
    def last(self) -> PassReport:
        return self.passes[-1]

    @property
    def label(self) -> str:
        if len(self.passes) == 1:
            return pass_label(self.first)
        return collapsed_label(self.passes)

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.passes)


def pass_rows(passes: list[PassReport]) -> list[PassRow]:
    """The pass table's rows: consecutive passes with the same collapsible status and message
    become one row, every other pass is a row of its own."""
    rows: list[PassRow] = []
    for report in passes:
        previous = rows[-1].last if rows else None
        if previous is not None and report.status in COLLAPSIBLE and \
                (previous.status, previous.message) == (report.status, report.message):
            rows[-1].passes.append(report)
        else:
            rows.append(PassRow([report]))
    return rows


def pass_label(report: PassReport) -> str:
    """'name', or 'name (group round N)' for a pass run inside a fixed-point group."""
    return f"{report.name} ({report.group} round {report.round})" if report.group else report.name


def collapsed_label(passes: list[PassReport], shown: int = 4) -> str:
    """'6 passes unchanged (level1_cleanup rounds 1-2): a, b, c, d, ...' for a run of passes."""
    names = list(dict.fromkeys(p.name for p in passes))
    listed = ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")
    groups = group_rounds(passes)
    where = f" ({groups})" if groups else ""
    return f"{len(passes)} passes {passes[0].status}{where}: {listed}"


def group_rounds(passes: list[PassReport]) -> str:
    """The fixed-point groups and rounds a run of passes ran in: 'g round 2', 'g rounds 1-2'."""
    rounds: dict[str, list[int]] = {}
    for report in passes:
        if report.group:
            rounds.setdefault(report.group, []).append(report.round)
    parts = []
    for group, numbers in rounds.items():
        low, high = min(numbers), max(numbers)
        parts.append(f"{group} round {low}" if low == high else f"{group} rounds {low}-{high}")
    return ", ".join(parts)


def rewrite_origin(rewrite: Rewrite, shown: int = 6) -> str:
    """Where a rewrite's nodes came from: their provenance entries (module paths, original node
    names), each once, else the node names; at most `shown`, then '+N more'."""
    origins = list(dict.fromkeys(entry for node in rewrite.nodes for entry in (node.provenance or [node.name])))
    text = ", ".join(origins[:shown])
    return text + (f", +{len(origins) - shown} more" if len(origins) > shown else "")


def top_near_misses(passes: list[PassReport], limit: int = 5) -> list[tuple[PassReport, list[NearMiss]]]:
    """Per pass name, the `limit` most frequent near misses of its last run (what still stood
    when it last looked), in pipeline order; passes without near misses are left out."""
    last_index = {report.name: index for index, report in enumerate(passes)}
    return [(passes[index], sorted(passes[index].near_misses, key=lambda miss: -miss.count)[:limit])
            for index in sorted(last_index.values()) if passes[index].near_misses]


def format_ms(value: float | None) -> str:
    """Three significant figures of milliseconds ('0.00404', '1.23', '12.3'), '-' without one."""
    return "-" if value is None else f"{value:.3g}"


def alternative_costs(alternative: Alternative) -> str:
    """'merged 0.002', with ' (measured 0.0019)' when it was measured."""
    text = f"{alternative.name} {format_ms(alternative.predicted_ms)}"
    if alternative.measured_ms is not None:
        text += f" (measured {format_ms(alternative.measured_ms)})"
    return text


def decision_costs(decision: Decision) -> str:
    """Every alternative with its predicted ms: 'chain 0.00404 / merged 0.002'."""
    return " / ".join(alternative_costs(a) for a in decision.alternatives)


def decision_subject(decision: Decision) -> str:
    """The subject, with '(xN)' when N subjects of one shape share the row."""
    return decision.subject if decision.count == 1 else f"{decision.subject} (x{decision.count})"


def grouped_decisions(decisions: list[Decision]) -> list[tuple[Decision, int]]:
    """Consecutive decisions that chose alike for alike reasons at alike prices (the nine norms of
    one model) as one (first decision, how many) pair: the compact table's rows."""
    groups: list[tuple[Decision, int]] = []
    for decision in decisions:
        key = (decision.question, decision.chosen, decision.reason, decision_costs(decision))
        if groups:
            first, count = groups[-1]
            if (first.question, first.chosen, first.reason, decision_costs(first)) == key:
                groups[-1] = (first, count + 1)
                continue
        groups.append((decision, 1))
    return groups


def truncate(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, ending in '...' when cut."""
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."
