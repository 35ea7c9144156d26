"""`python -m benchmarks folding`: kiln's exact folding (level 2) beside onnxsim, onnxslim and
onnxoptimizer on the zoo (batch 1): node count, folding wall time, ORT ENABLE_ALL latency of
each result, and max abs diff against PyTorch.

Latency is measured in two phases in one process, so that picking the fastest peer does not
bias the ratio against kiln:

1. selection: the four results run round-robin; each tool's median fills the table's ORT ms
   column and the peer with the lowest median is "the fastest peer";
2. confirmation: a fresh run alternates kiln and that peer call by call (A, B, A, B ...);
   ``latency_vs_best_peer`` is the median of those per-pair ratios kiln / peer.

Taking the ratio from the selection rounds would compare kiln with the minimum of three noisy
medians, which favours the peers even when ORT runs the same kernels for all four.

Prints a table and, per model, one line
``MODEL kiln_nodes=<n> best_peer_nodes=<n> time_vs_onnxsim=<ratio> latency_vs_best_peer=<ratio>``.
"""

from __future__ import annotations

import gc
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.accuracy import max_abs_diff
from benchmarks.base import MAX_SECONDS, MIN_ROUNDS, MIN_SECONDS, SLOW_CALL_MS
from kiln.backends.timing import Clock, PairedTiming, alternate, round_robin

logger = logging.getLogger(__name__)

PHASES_NOTE = ("ORT ms: median of the selection phase (all four tools round-robin), which picks the fastest peer. "
               "latency_vs_best_peer: median of the per-pair ratios kiln / fastest peer in a separate phase that "
               "alternates only those two, call by call. 95 % CI: bootstrap interval of that median (pairs "
               "resampled); the verdict is \"kiln faster\" or \"peer faster\" only when it excludes 1, else \"tie\".")

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
    latency_vs_best_peer: float | None = None  # median of per-pair ratios kiln / fastest peer (confirmation)
    best_peer: str = ""
    confirmation: PairedTiming | None = None  # kiln (a) alternated with the fastest peer (b)

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


@dataclass(frozen=True)
class LatencyPhases:
    """The two timing phases: round-robin selection over every tool, then kiln alternated
    with the peer the selection found fastest."""

    selection_ms: dict[str, list[float]]  # tool -> ms of its round-robin calls
    best_peer: str  # "" when no peer ran
    confirmation: PairedTiming | None  # kiln (a) vs best_peer (b); None without kiln or a peer

    @property
    def latency_vs_best_peer(self) -> float | None:
        return statistics.median(self.confirmation.ratios) if self.confirmation else None


def time_phases(runners: Mapping[str, Callable[[], Any]], *, warmup: int = 5, repeats: int = 30,
                min_seconds: float = MIN_SECONDS, clock: Clock = time.perf_counter) -> LatencyPhases:
    """Time `runners` (tool name -> one inference) round-robin, pick the peer with the lowest
    median, then alternate kiln with it in a fresh phase (see the module docstring)."""
    names = list(runners)
    times = round_robin([runners[n] for n in names], warmup=warmup, repeats=repeats, min_seconds=min_seconds,
                        max_seconds=MAX_SECONDS, min_rounds=MIN_ROUNDS, slow_call_ms=SLOW_CALL_MS, clock=clock)
    selection = dict(zip(names, times))
    peers = [p for p in PEERS if p in selection]
    best = min(peers, key=lambda p: statistics.median(selection[p])) if peers else ""
    confirmation = None
    if KILN in runners and best:
        logger.info("fastest peer in the selection phase: %s; alternating it with %s", best, KILN)
        confirmation = alternate(runners[KILN], runners[best], warmup=warmup, repeats=repeats, min_seconds=min_seconds,
                                 max_seconds=MAX_SECONDS, min_rounds=MIN_ROUNDS, slow_call_ms=SLOW_CALL_MS, clock=clock)
    return LatencyPhases(selection, best, confirmation)


def _fresh_runners(case: Any, paths: Mapping[str, Path]) -> dict[str, Callable[[], Any]]:
    """One inference per tool, from sessions opened on the saved files only after every tool ran.

    A session opened right after its tool keeps weights placed among that tool's allocations,
    and the first tool's session then lives through the others' runs: equal kernels then time
    measurably apart (benchmarks/results/notes.md)."""
    from benchmarks.configs import ort_runner

    return {name: ort_runner(case, path) for name, path in paths.items()}


def compare(model: str, *, warmup: int = 5, repeats: int = 30, min_seconds: float = MIN_SECONDS) -> FoldingComparison:
    """Fold `model` (batch 1) with kiln and each peer, then time the results (`time_phases`)."""
    from benchmarks import zoo
    from benchmarks.configs import CONFIGS

    case = zoo.load_case(model, 1, calibration_samples=0)
    result = FoldingComparison(model)
    paths: dict[str, Path] = {}  # tool -> its saved model, timed once every tool ran
    with tempfile.TemporaryDirectory(prefix="kiln-folding-") as workdir:
        for tool in (KILN, *PEERS):
            entry = ToolResult(tool)
            result.tools.append(entry)
            try:
                ready = CONFIGS[tool].prepare(case, Path(workdir))
            except Exception as exc:  # a failing peer is a table entry, not a crash
                entry.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
                continue
            entry.nodes, entry.seconds = ready.node_count, ready.optimize_seconds
            entry.max_abs_diff = max_abs_diff(case.reference, np.asarray(ready.outputs(), np.float32))
            if ready.model_path is not None:
                paths[tool] = ready.model_path
            del ready  # its session goes before the timed ones open
        gc.collect()
        phases = time_phases(_fresh_runners(case, paths), warmup=warmup, repeats=repeats, min_seconds=min_seconds)
    for entry in result.tools:
        if entry.tool in phases.selection_ms:
            entry.median_ms = statistics.median(phases.selection_ms[entry.tool])
    result.best_peer, result.confirmation = phases.best_peer, phases.confirmation
    result.latency_vs_best_peer = phases.latency_vs_best_peer
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
    lines += ["", PHASES_NOTE, "",
              "| model | fastest peer | pairs | kiln ms | peer ms | median ratio | 95 % CI | ratio p10-p90 | verdict |",
              "|---|---|---:|---:|---:|---:|---|---|---|"]
    for r in results:
        if r.confirmation is not None:
            c = r.confirmation
            p10, p90 = np.percentile(c.ratios, [10, 90])
            low, high = c.median_ratio_interval()
            verdict = {"A faster": "kiln faster", "B faster": "peer faster"}.get(c.verdict(), "tie")
            lines.append(f"| {r.model} | {r.best_peer} | {len(c.ratios)} | {statistics.median(c.a_ms):.2f} | "
                         f"{statistics.median(c.b_ms):.2f} | {statistics.median(c.ratios):.3f} | "
                         f"{low:.3f}-{high:.3f} | {p10:.3f}-{p90:.3f} | {verdict} |")
    return "\n".join(lines + [""] + [r.summary_line() for r in results])
