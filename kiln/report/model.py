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
    # smallest cosine similarity of a flattened output with the original's (filled when a cosine
    # budget was checked, i.e. for approximate passes and for the run's final error after one)
    min_cosine: float | None = None


@dataclass
class BlockDecision:
    """One residual block a block-dropping pass scored: alone, then (when tried) jointly with the
    blocks dropped before it. Errors are 1 - cosine of the outputs against the original model."""

    name: str
    add_node: str
    nodes: int  # nodes the drop removes (the branch and the Add)
    solo_cosine: float
    solo_max_abs: float
    dropped: bool = False
    reason: str = ""
    # after trying this block: sum of the solo errors of the dropped set (the additive
    # prediction) against the measured joint error and cosine; None when it was not tried
    predicted_error: float | None = None
    measured_error: float | None = None
    measured_cosine: float | None = None
    measured_max_abs: float | None = None


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
    # block dropping: every block scored, in the order they were considered
    blocks: list[BlockDecision] = field(default_factory=list)

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
    # with a measurement: the prediction for the graphs ONNX Runtime ran (after its fusions)
    compiled_cost_model: str = ""
    predicted_compiled_ms_before: float | None = None
    predicted_compiled_ms_after: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for report, entry in zip(self.passes, data["passes"]):
            entry["changed"] = report.changed
        return data

    def to_json(self, indent: int | None = 2) -> str:
        import json

        return json.dumps(self.to_dict(), indent=indent)

    def __rich__(self) -> Any:
        from rich.console import Group

        from kiln.report.render import report_renderables

        return Group(*report_renderables(self))

    def __str__(self) -> str:
        from kiln.report.render import render_text

        return render_text(self)
