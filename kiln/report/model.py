"""Report dataclasses: what each pass did, why, and what it cost in accuracy.

Plain dataclasses so every layer can fill them; renderers live in `kiln.report.render`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

PassStatus = Literal["applied", "unchanged", "rolled_back", "failed", "skipped"]


@dataclass
class NodeRef:
    """A node a rewrite touched, with the original nodes it came from."""

    name: str
    op_type: str
    provenance: list[str] = field(default_factory=list)


@dataclass
class Rewrite:
    """One change a pass made: the rule, the nodes it touched and why."""

    rule: str
    nodes: list[NodeRef]
    reason: str
    result: str = ""


@dataclass
class ErrorStats:
    """Largest deviation of the new model's outputs from the original's on sample inputs."""

    max_abs: float = 0.0
    max_rel: float = 0.0
    worst_output: str = ""


@dataclass
class PassReport:
    """What one pass did."""

    name: str
    exact: bool
    status: PassStatus = "unchanged"
    seconds: float = 0.0
    nodes_before: int = 0
    nodes_after: int = 0
    parameter_bytes_before: int = 0
    parameter_bytes_after: int = 0
    error: ErrorStats | None = None
    tolerance: str = ""
    message: str = ""
    rewrites: list[Rewrite] = field(default_factory=list)
    validation_seconds: float = 0.0
    # the cost model's predicted latency of the model before and after this pass (None without one)
    predicted_ms_before: float | None = None
    predicted_ms_after: float | None = None

    @property
    def changed(self) -> bool:
        return self.status == "applied"

    def rule_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rewrite in self.rewrites:
            counts[rewrite.rule] = counts.get(rewrite.rule, 0) + 1
        return counts


@dataclass
class OptimizationReport:
    """The whole run: model before/after and one PassReport per pass, in order."""

    model_name: str = ""
    level: int | None = 0  # None when a custom pass list ran
    passes: list[PassReport] = field(default_factory=list)
    nodes_before: int = 0
    nodes_after: int = 0
    parameter_bytes_before: int = 0
    parameter_bytes_after: int = 0
    seconds: float = 0.0
    validation_seconds: float = 0.0
    validated: bool = False
    sample_inputs: str = ""
    final_error: ErrorStats | None = None
    # cost model: what it is, its predicted latency and peak memory before and after, and (when
    # the caller measured it, e.g. `kiln optimize --measure`) the measured latency of both
    cost_model: str = ""
    predicted_ms_before: float | None = None
    predicted_ms_after: float | None = None
    predicted_peak_bytes_before: int | None = None
    predicted_peak_bytes_after: int | None = None
    measured_ms_before: float | None = None
    measured_ms_after: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for report, entry in zip(self.passes, data["passes"]):
            entry["changed"] = report.changed
        return data

    def to_json(self, indent: int | None = 2) -> str:
        import json

        return json.dumps(self.to_dict(), indent=indent)

    def __rich__(self) -> Any:
        from kiln.report.render import report_table

        return report_table(self)

    def __str__(self) -> str:
        from kiln.report.render import render_text

        return render_text(self)
