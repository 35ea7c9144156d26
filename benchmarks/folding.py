"""`python -m benchmarks folding`: kiln's exact folding (level 2) beside onnxsim, onnxslim and
onnxoptimizer on the zoo (batch 1): node count, folding wall time, ORT ENABLE_ALL latency of
each result (all four run round-robin in one process), and max abs diff against PyTorch.

Prints a table and, per model, one line
``MODEL kiln_nodes=<n> best_peer_nodes=<n> time_vs_onnxsim=<ratio> latency_vs_best_peer=<ratio>``.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.accuracy import max_abs_diff
from benchmarks.base import Prepared

KILN = "kiln-l2"
PEERS = ("onnxsim+ort", "onnxslim+ort", "onnxoptimizer+ort")


@dataclass
class ToolResult:
    tool: str
    nodes: int | None = None
    seconds: float | None = None  # load -> fold -> save wall time (kiln: validation excluded)
    median_ms: float | None = None
    max_abs_diff: float | None = None
    error: str = ""


@dataclass
class FoldingComparison:
    model: str
    tools: list[ToolResult] = field(default_factory=list)
    latency_vs_best_peer: float | None = None  # median of per-round ratios kiln / fastest peer
    best_peer: str = ""

    def tool(self, name: str) -> ToolResult:
        return next(t for t in self.tools if t.tool == name)

    def summary_line(self) -> str:
        kiln = self.tool(KILN)
        peers = [self.tool(p) for p in PEERS if not self.tool(p).error]
        best_nodes = min((p.nodes for p in peers if p.nodes is not None), default=None)
        onnxsim = self.tool("onnxsim+ort")
        time_ratio = (kiln.seconds / onnxsim.seconds) if kiln.seconds and onnxsim.seconds else None

        def fmt(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.3f}"

        return (f"{self.model} kiln_nodes={kiln.nodes if kiln.nodes is not None else 'n/a'} "
                f"best_peer_nodes={best_nodes if best_nodes is not None else 'n/a'} "
                f"time_vs_onnxsim={fmt(time_ratio)} latency_vs_best_peer={fmt(self.latency_vs_best_peer)}")


def compare(model: str, *, warmup: int = 5, repeats: int = 30, min_seconds: float = 3.0) -> FoldingComparison:
    """Fold `model` (batch 1) with kiln and each peer, then time the four results round-robin."""
    from benchmarks import zoo
    from benchmarks.configs import CONFIGS
    from benchmarks.timing import round_robin

    case = zoo.load_case(model, 1, calibration_samples=0)
    result = FoldingComparison(model)
    prepared: dict[str, Prepared] = {}
    with tempfile.TemporaryDirectory(prefix="kiln-folding-") as workdir:
        for tool in (KILN, *PEERS):
            entry = ToolResult(tool)
            result.tools.append(entry)
            try:
                ready = CONFIGS[tool].prepare(case, Path(workdir))
            except Exception as exc:  # a failing peer is a table entry, not a crash
                entry.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
                continue
            prepared[tool] = ready
            entry.nodes, entry.seconds = ready.node_count, ready.optimize_seconds
            entry.max_abs_diff = max_abs_diff(case.reference, np.asarray(ready.outputs(), np.float32))
        names = list(prepared)
        times = round_robin([prepared[n].run for n in names], warmup=warmup, repeats=repeats, min_seconds=min_seconds)
    by_tool = dict(zip(names, times))
    for entry in result.tools:
        if entry.tool in by_tool:
            entry.median_ms = statistics.median(by_tool[entry.tool])
    peers = [p for p in PEERS if p in by_tool]
    if KILN in by_tool and peers:
        result.best_peer = min(peers, key=lambda p: statistics.median(by_tool[p]))
        ratios = [k / p for k, p in zip(by_tool[KILN], by_tool[result.best_peer])]
        result.latency_vs_best_peer = statistics.median(ratios)
    return result


def render(results: list[FoldingComparison]) -> str:
    lines = ["| model | tool | nodes | fold s | ORT ms | max abs | error |", "|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        for t in r.tools:
            lines.append(
                f"| {r.model} | {t.tool}{' (fastest peer)' if t.tool == r.best_peer else ''} | "
                f"{'' if t.nodes is None else t.nodes} | {'' if t.seconds is None else f'{t.seconds:.2f}'} | "
                f"{'' if t.median_ms is None else f'{t.median_ms:.2f}'} | "
                f"{'' if t.max_abs_diff is None else f'{t.max_abs_diff:.1e}'} | {t.error.replace('|', '/')} |"
            )
    return "\n".join(lines + [""] + [r.summary_line() for r in results])
