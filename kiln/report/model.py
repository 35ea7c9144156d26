"""Report dataclasses: what each pass did, why, and what it cost in accuracy.

Plain dataclasses so every layer can fill them; renderers live in `kiln.report.render`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

PassStatus = Literal["applied", "unchanged", "rolled_back", "failed", "skipped"]

#: Version of the JSON report's layout; bumped when a field is renamed, removed or changes meaning.
REPORT_SCHEMA_VERSION = 2


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


DecidedBy = Literal["cost_model", "measurement", "budget", "precondition"]


@dataclass
class Alternative:
    """One way a decision could go and what it was priced at: the cost model's predicted time,
    the measured time when it was measured, and any other figure the decision weighed
    (``metrics``: e.g. a cosine against the original, a weight's element count)."""

    name: str
    predicted_ms: float | None = None
    measured_ms: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Decision:
    """A trade-off a pass settled: about what (`subject`), which `alternatives` it priced, which
    it `chose`, why, and what decided it (the cost model, a measurement, an error budget, or a
    precondition that left one alternative). `count` subjects of one shape share one row."""

    subject: str
    question: str
    alternatives: list[Alternative]
    chosen: str
    reason: str
    decided_by: DecidedBy = "cost_model"
    pass_name: str = ""
    count: int = 1

    def alternative(self, name: str) -> Alternative | None:
        return next((a for a in self.alternatives if a.name == name), None)


@dataclass
class NearMiss:
    """A rule that matched a pattern but whose check said no, with the reason and how often."""

    rule: str
    reason: str
    count: int = 1


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
    # every trade-off the pass settled, and the rules' most frequent "no" reasons
    decisions: list[Decision] = field(default_factory=list)
    near_misses: list[NearMiss] = field(default_factory=list)
    # set when the pass ran inside a fixed-point group: the group's name and the round (from 1)
    group: str = ""
    round: int = 0

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
    # where the model is optimized for: backend, threads (what predictions and measurements assume)
    target: str = ""
    passes: list[PassReport] = field(default_factory=list)
    nodes_before: int = 0
    nodes_after: int = 0
    parameter_bytes_before: int = 0
    parameter_bytes_after: int = 0
    seconds: float = 0.0
    validation_seconds: float = 0.0
    validated: bool = False
    # why the run is or is not validated ("validated on the example inputs", "not validated:
    # --no-validate", "not validated: the original model does not run: ...")
    validation: str = ""
    sample_inputs: str = ""
    # the concrete input shapes validation and prediction used ("x [1, 3, 224, 224], ..."), one line
    # per size kiln guessed because nothing bound it, and whether the bound shapes were written
    # into the optimized model (`fix_shapes`)
    input_shapes: str = ""
    shape_warnings: list[str] = field(default_factory=list)
    shapes_fixed: bool = False
    final_error: ErrorStats | None = None
    # a target backend other than the reference (ONNX Runtime, optimizer off): the optimized
    # model compiled for it, against the reference on the sample inputs
    backend_error: ErrorStats | None = None
    backend_check: str = ""
    # backend="auto": every installed backend's measured median and the one kept
    backend_decision: Decision | None = None
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

    @property
    def decisions(self) -> list[Decision]:
        """Every decision of every pass, in order."""
        return [d for p in self.passes for d in p.decisions]

    def to_dict(self) -> dict[str, Any]:
        data = {"schema_version": REPORT_SCHEMA_VERSION, **asdict(self)}
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
