"""`python -m benchmarks block-dropping [--models minilm,bert-base] [--budgets 0.999,0.99,0.95]`:
kiln's approximate block dropping (batch 1) at several cosine budgets.

Blocks are scored and dropped on 4 calibration input sets (zoo seeds 1-4), then checked on 5
held-out sets (seed 0 and seeds 5-8): MiniLM by the smallest sentence-embedding cosine, other
models by the cosine of the flattened output. Latency: ORT ENABLE_ALL (2 threads, no spinning)
of the dropped model against the same level-1 pipeline without dropping, alternated A/B in one
process (`kiln.backends.timing.alternate`); the ratio is the median of per-pair ratios.

Prints one line per (model, budget) and a markdown table (also written with --out).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.accuracy import cosine, min_row_cosine

CALIBRATION_SEEDS = 4  # zoo calibration sets 1..4 score the blocks
HELD_OUT = 4  # zoo calibration sets 5..8 (and the main inputs) check the result
DEFAULT_MODELS = ("minilm", "bert-base")
DEFAULT_BUDGETS = (0.999, 0.99, 0.95, 0.9)
LEVEL = 1


@dataclass
class BudgetResult:
    model: str
    min_cosine: float
    blocks_total: int = 0
    dropped: list[str] = field(default_factory=list)
    nodes_before: int = 0
    nodes_after: int = 0
    latency_ratio: float | None = None  # dropped / undropped, median of paired ratios
    dropped_ms: float | None = None
    undropped_ms: float | None = None
    calibration_cosine: float | None = None  # what the pass measured (its budget applies here)
    held_out_cosine: float | None = None
    predicted_error: float | None = None  # sum of the dropped blocks' solo errors
    measured_error: float | None = None  # 1 - joint cosine, measured on the calibration sets
    optimize_seconds: float = 0.0
    blocks: list = field(default_factory=list)  # the pass's BlockDecisions, in the order considered

    def line(self) -> str:
        def fmt(value: float | None, spec: str = ".4f") -> str:
            return "n/a" if value is None else format(value, spec)

        return (f"{self.model} min_cosine={self.min_cosine:g} dropped={len(self.dropped)}/{self.blocks_total} "
                f"nodes={self.nodes_before}->{self.nodes_after} latency_ratio={fmt(self.latency_ratio, '.3f')} "
                f"held_out_cosine={fmt(self.held_out_cosine, '.5f')} predicted_err={fmt(self.predicted_error, '.3g')} "
                f"measured_err={fmt(self.measured_error, '.3g')}")


def _accuracy(kind: str, reference: np.ndarray, actual: np.ndarray) -> float:
    return min_row_cosine(reference, actual) if kind == "sentence-embedding" else cosine(reference, actual)


def run_model(name: str, budgets: list[float], *, repeats: int = 20, min_seconds: float = 2.0) -> list[BudgetResult]:
    """Optimize `name` (batch 1) at level 1 without and with block dropping at each budget."""
    import kiln
    from benchmarks import zoo
    from benchmarks.base import MAX_SECONDS, MIN_ROUNDS, SLOW_CALL_MS, THREADS
    from kiln.backends.timing import alternate
    from kiln.passes.approximate.block_dropping import BlockBudget, DropResidualBlocks
    from kiln.passes.pipeline import passes_for_level

    case = zoo.load_case(name, 1, calibration_samples=CALIBRATION_SEEDS + HELD_OUT)
    calibration = case.calibration[:CALIBRATION_SEEDS]
    held_out = [case.inputs, *case.calibration[CALIBRATION_SEEDS:]]
    target = kiln.Target(intra_op_threads=THREADS, graph_optimization_level="all", allow_spinning=False)
    baseline = kiln.optimize(case.onnx_path, level=LEVEL, sample_inputs=calibration[0], target=target,
                             cost_model=None)
    baseline_outputs = [baseline.executable.run(feeds)[0] for feeds in held_out]
    results = []
    for min_cosine in budgets:
        result = BudgetResult(name, min_cosine, nodes_before=baseline.report.nodes_after)
        started = time.perf_counter()
        passes = [DropResidualBlocks(BlockBudget(min_cosine=min_cosine), calibration=calibration),
                  *passes_for_level(LEVEL)]
        dropped = kiln.optimize(case.onnx_path, passes=passes, sample_inputs=calibration[0], target=target,
                                cost_model=None)
        result.optimize_seconds = time.perf_counter() - started
        entry = dropped.report.passes[0]
        result.blocks = list(entry.blocks)
        result.blocks_total = len(entry.blocks)
        result.dropped = [b.name for b in entry.blocks if b.dropped]
        result.nodes_after = dropped.report.nodes_after
        tried = [b for b in entry.blocks if b.dropped]
        if tried:
            result.predicted_error = tried[-1].predicted_error
            result.measured_error = tried[-1].measured_error
            result.calibration_cosine = tried[-1].measured_cosine
        else:
            result.predicted_error = result.measured_error = 0.0
            result.calibration_cosine = 1.0
        result.held_out_cosine = min(_accuracy(case.kind, ref, dropped.executable.run(feeds)[0])
                                     for ref, feeds in zip(baseline_outputs, held_out))
        if result.dropped:
            timing = alternate(lambda: dropped.executable.run(case.inputs), lambda: baseline.executable.run(case.inputs),
                               repeats=repeats, min_seconds=min_seconds, max_seconds=MAX_SECONDS,
                               min_rounds=MIN_ROUNDS, slow_call_ms=SLOW_CALL_MS)
            summary = timing.summary()
            result.latency_ratio = float(summary["ratio_vs_baseline"])
            result.dropped_ms, result.undropped_ms = float(summary["median_ms"]), float(summary["baseline_median_ms"])
        else:
            result.latency_ratio = 1.0
        results.append(result)
        print(result.line(), flush=True)
    return results


def render(results: list[BudgetResult], command: str) -> str:
    lines = [
        "# Block dropping (issue 4): cosine budget vs blocks, nodes, latency",
        "",
        f"Command: `{command}` (batch 1, ORT ENABLE_ALL, 2 threads). Blocks are scored and dropped on "
        f"{CALIBRATION_SEEDS} calibration input sets; the held-out cosine is measured on {HELD_OUT + 1} other sets "
        "(MiniLM: smallest sentence-embedding cosine; other models: cosine of the flattened output) against the "
        "undropped model. Latency ratio: dropped / undropped (same level-1 pipeline), alternated A/B in one process, "
        "median of per-pair ratios. Errors are 1 - cosine on the calibration sets: predicted = sum of the dropped "
        "blocks' solo errors (the additive LAPTOP-Diff assumption), measured = the joint drop.",
        "",
        "| model | min cosine | blocks dropped | nodes | latency ratio | ms (dropped / undropped) | cosine (calibration) "
        "| cosine (held out) | predicted joint err | measured joint err | dropped blocks |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for r in results:
        ms = f"{r.dropped_ms:.2f} / {r.undropped_ms:.2f}" if r.dropped_ms is not None else "-"
        lines.append(
            f"| {r.model} | {r.min_cosine:g} | {len(r.dropped)} / {r.blocks_total} | {r.nodes_before} -> {r.nodes_after} "
            f"| {fmt(r.latency_ratio, '.3f')} | {ms} | {fmt(r.calibration_cosine, '.5f')} | "
            f"{fmt(r.held_out_cosine, '.5f')} | {fmt(r.predicted_error, '.3g')} | {fmt(r.measured_error, '.3g')} | "
            f"{', '.join(r.dropped) or '-'} |")
    loosest = {}
    for r in results:
        if r.model not in loosest or r.min_cosine < loosest[r.model].min_cosine:
            loosest[r.model] = r
    for r in loosest.values():
        lines += ["", f"## {r.model} at min cosine {r.min_cosine:g}: every block, least important first", "",
                  "| block | nodes | solo cosine | solo max abs | dropped | predicted joint err | measured joint err "
                  "| joint cosine |", "|---|---|---|---|---|---|---|---|"]
        for b in r.blocks:
            lines.append(f"| {b.name} | {b.nodes} | {b.solo_cosine:.5f} | {b.solo_max_abs:.3g} | "
                         f"{'yes' if b.dropped else 'no'} | {fmt(b.predicted_error, '.4f')} | "
                         f"{fmt(b.measured_error, '.4f')} | {fmt(b.measured_cosine, '.5f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks block-dropping", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated zoo names")
    parser.add_argument("--budgets", default=",".join(str(b) for b in DEFAULT_BUDGETS),
                        help="comma-separated min cosines")
    parser.add_argument("--out", default="benchmarks/results/block_dropping.md", help="markdown file to write")
    parser.add_argument("--quick", action="store_true", help="fewer timed runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    budgets = [float(b) for b in args.budgets.split(",") if b]
    settings = {"repeats": 8, "min_seconds": 0.5} if args.quick else {}
    results: list[BudgetResult] = []
    for name in [m for m in args.models.split(",") if m]:
        results.extend(run_model(name, budgets, **settings))
    command = "python -m benchmarks block-dropping " + " ".join(argv if argv is not None else sys.argv[2:])
    table = render(results, command.strip())
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0
