"""Runs the benchmark grid: every (model, batch, configuration) cell in a fresh process, the
configuration alternated with ORT ENABLE_ALL on the same inputs; collects the cells into one
run (raw JSON) and a markdown table."""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.base import CACHE_DIR, MAX_SECONDS, MIN_ROUNDS, MIN_SECONDS, SLOW_CALL_MS, NotApplicable

logger = logging.getLogger(__name__)

BASELINE = "ort-all"
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RunSettings:
    """How hard to measure."""

    warmup: int = 5
    repeats: int = 30
    min_seconds: float = MIN_SECONDS
    max_seconds: float = MAX_SECONDS
    cell_timeout: float = 900.0
    calibration_samples: int = 16

    @classmethod
    def quick(cls) -> RunSettings:
        return cls(warmup=2, repeats=8, min_seconds=0.2, max_seconds=10.0, cell_timeout=300.0, calibration_samples=4)


@dataclass
class Cell:
    """One measured (model, batch, configuration)."""

    model: str
    batch: int
    config: str
    status: str = "ok"  # "ok" | "error" | "n/a"
    error: str = ""
    precision: str = "fp32"
    note: str = ""
    median_ms: float | None = None
    p90_ms: float | None = None
    baseline_median_ms: float | None = None
    ratio_vs_baseline: float | None = None
    calls: int = 0
    optimize_seconds: float | None = None
    node_count: int | None = None
    model_bytes: int | None = None
    peak_rss_bytes: int | None = None
    max_abs_diff: float | None = None
    cosine: float | None = None
    embedding_cosine: float | None = None
    wall_seconds: float = 0.0
    others_cpu_pct: float | None = None  # other processes' share of the machine while timing


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure_cell(model: str, batch: int, config_name: str, settings: RunSettings) -> Cell:
    """Measure one cell in this process (the harness calls it in a fresh one)."""
    import numpy as np

    from benchmarks import accuracy, zoo
    from benchmarks.configs import CONFIGS

    started = time.perf_counter()
    config = CONFIGS[config_name]
    cell = Cell(model=model, batch=batch, config=config_name, precision=config.precision)
    try:
        # The run's facts step validated the cached export; don't rebuild the module to check it.
        case = zoo.load_case(model, batch, calibration_samples=settings.calibration_samples, trust_cache=True)
        with tempfile.TemporaryDirectory(prefix=f"kiln-bench-{config_name}-") as workdir:
            prepared = config.prepare(case, Path(workdir))
            cell.peak_rss_bytes = _peak_rss_bytes()
            cell.optimize_seconds = prepared.optimize_seconds
            cell.node_count = prepared.node_count
            cell.model_bytes = prepared.model_bytes
            cell.note = prepared.note
            first_call = time.perf_counter()
            output = np.asarray(prepared.outputs(), np.float32)
            first_call = time.perf_counter() - first_call
            # A runner slower than a third of the timing budget (untuned TVM at batch 8 takes
            # minutes per call) cannot give 3 rounds inside the cell timeout: the accuracy call
            # is its warm-up and one timed round is all it gets; the note says so.
            slow = first_call > settings.max_seconds / 3
            cell.max_abs_diff = accuracy.max_abs_diff(case.reference, output)
            cell.cosine = accuracy.cosine(case.reference, output)
            if case.kind == "sentence-embedding":
                cell.embedding_cosine = accuracy.min_row_cosine(case.reference, output)
            baseline = CONFIGS[BASELINE].prepare(case, Path(workdir))
            from kiln.backends.timing import alternate

            timing = alternate(prepared.run, baseline.run, warmup=0 if slow else settings.warmup,
                               repeats=settings.repeats, min_seconds=settings.min_seconds,
                               max_seconds=settings.max_seconds, min_rounds=1 if slow else MIN_ROUNDS,
                               slow_call_ms=SLOW_CALL_MS)
            if slow:
                cell.note = "; ".join(filter(None, [cell.note, f"{first_call:.0f} s per call: warmed up by the "
                                                    "accuracy call, timed for one round"]))
            summary = timing.summary()
            cell.median_ms, cell.p90_ms = summary["median_ms"], summary["p90_ms"]
            cell.baseline_median_ms = summary["baseline_median_ms"]
            cell.ratio_vs_baseline, cell.calls = summary["ratio_vs_baseline"], int(summary["calls"])
            cell.others_cpu_pct = summary["other_cpu_pct"]
    except NotApplicable as exc:
        cell.status, cell.error = "n/a", str(exc) or "not applicable"
    except Exception as exc:  # a failing peer is a table entry, not a crash of the run
        cell.status = "error"
        cell.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
        logger.debug("Cell %s/%s/%s failed:\n%s", model, batch, config_name, traceback.format_exc())
    cell.wall_seconds = time.perf_counter() - started
    return cell


def run_cell_subprocess(model: str, batch: int, config: str, settings: RunSettings) -> Cell:
    """Measure one cell in a fresh Python process (clean memory and peak-RSS figures)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    command = [sys.executable, "-m", "benchmarks", "cell", "--model", model, "--batch", str(batch),
               "--config", config, "--out", str(out), "--settings", json.dumps(asdict(settings))]
    started = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=settings.cell_timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if result.returncode != 0 or not out.stat().st_size:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            return Cell(model, batch, config, status="error",
                        error=f"cell process exited with {result.returncode}: {tail[0][:300]}",
                        wall_seconds=time.perf_counter() - started)
        return Cell(**json.loads(out.read_text()))
    except subprocess.TimeoutExpired:
        return Cell(model, batch, config, status="error", error=f"timed out after {settings.cell_timeout:.0f} s",
                    wall_seconds=time.perf_counter() - started)
    finally:
        out.unlink(missing_ok=True)


@dataclass
class ModelFacts:
    """Graph facts of one export: FLOPs and bytes (analytic), node count."""

    model: str
    batch: int
    flops: int | None = None
    bytes: int | None = None
    nodes: int | None = None
    unknown_ops: dict[str, int] = field(default_factory=dict)
    error: str = ""


def model_facts(model: str, batch: int) -> ModelFacts:
    """FLOPs and bytes of the exported graph (runs in the cell process that exported it)."""
    import kiln
    from benchmarks import zoo
    from kiln.cost_model.analytical import model_cost
    from kiln.ir.analysis import count_nodes

    facts = ModelFacts(model, batch)
    try:
        case = zoo.load_case(model, batch, calibration_samples=0)
        ir_model = kiln.load(case.onnx_path)
        cost = model_cost(ir_model)
        facts.flops, facts.bytes, facts.nodes = cost.flops, cost.bytes, count_nodes(ir_model)
        facts.unknown_ops = dict(cost.unknown_ops)
    except Exception as exc:
        facts.error = f"{type(exc).__name__}: {str(exc)[:300]}"
    return facts


def model_facts_subprocess(model: str, batch: int, timeout: float) -> ModelFacts:
    command = [sys.executable, "-m", "benchmarks", "facts", "--model", model, "--batch", str(batch)]
    try:
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
        return ModelFacts(**json.loads(result.stdout.strip().splitlines()[-1]))
    except Exception as exc:
        return ModelFacts(model, batch, error=f"{type(exc).__name__}: {str(exc)[:200]}")


@dataclass
class Run:
    """A whole benchmark run: machine, versions, peaks, facts and cells."""

    command: str
    started: str
    quick: bool
    machine: dict[str, Any]
    peaks: dict[str, Any]
    facts: list[ModelFacts]
    cells: list[Cell]
    seconds: float = 0.0
    planned: int = 0  # cells in the grid; fewer in `cells` while the run is under way or cut short
    resumed: list[str] = field(default_factory=list)  # "when, on which CPU" for each resumption


def load_run(path: Path) -> Run:
    """A run saved by `save_run` (to resume it)."""
    data = json.loads(Path(path).read_text())
    data["facts"] = [ModelFacts(**f) for f in data["facts"]]
    data["cells"] = [Cell(**c) for c in data["cells"]]
    return Run(**data)


def run_grid(models: list[str], batches: list[int] | None, configs: list[str], settings: RunSettings,
             quick: bool, command: str, progress: Callable[[Run, Cell, int], None] | None = None,
             previous: Run | None = None) -> Run:
    """Measure every cell (one process each) and return the run. `progress(run, cell, total)` is
    called after each cell with the run so far, so a caller can save partial results. With
    `previous`, cells it already holds are kept and only the missing ones are measured."""
    from benchmarks import roofline, zoo

    started = time.perf_counter()
    machine = roofline.machine_info()
    if previous is None:
        run = Run(command=command, started=time.strftime("%Y-%m-%d %H:%M:%S %Z"), quick=quick, machine=machine,
                  peaks=asdict(roofline.load_or_calibrate(threads=2, quick=quick, cache_dir=CACHE_DIR)),
                  facts=[], cells=[])
    else:
        run = previous
        run.resumed.append(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} on {machine.get('cpu_model', '?')} "
                           f"(family {machine.get('cpu_family', '?')} model {machine.get('cpu_model_number', '?')}), "
                           f"kiln commit {machine.get('kiln_commit', 'unknown')}, from cell {len(run.cells) + 1}")
    elapsed_before = run.seconds
    # Batch-major order: every model at batch 1 before any at batch 8, so a cut-short run still
    # has complete tables for the smaller batch.
    wanted = sorted({b for m in models for b in (batches or zoo.ZOO[m].batches)})
    plan = [(m, b) for b in wanted for m in models if b in zoo.ZOO[m].batches]
    run.planned = len(plan) * len(configs)
    done = {(c.model, c.batch, c.config) for c in run.cells}
    known_facts = {(f.model, f.batch) for f in run.facts}
    for model, batch in plan:
        if all((model, batch, config) in done for config in configs):
            continue
        if (model, batch) not in known_facts:
            # The first process exports the model into the cache; later cells reuse it.
            run.facts.append(model_facts_subprocess(model, batch, timeout=settings.cell_timeout))
        for config in configs:
            if (model, batch, config) in done:
                continue
            cell = run_cell_subprocess(model, batch, config, settings)
            run.cells.append(cell)
            run.seconds = elapsed_before + time.perf_counter() - started
            if progress is not None:
                progress(run, cell, run.planned)
    return run


def save_run(run: Run, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "run.json"
    path.write_text(json.dumps(asdict(run), indent=2))
    return path
