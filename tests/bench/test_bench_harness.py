"""Benchmark harness pieces: accuracy figures, the markdown table, resuming a run (the timing
protocol itself is tested in test_timing.py)."""

from __future__ import annotations

import numpy as np

from benchmarks.accuracy import cosine, max_abs_diff, min_row_cosine
from benchmarks.harness import Cell, ModelFacts, Run
from benchmarks.results import render_markdown


def test_accuracy_figures():
    ref = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    assert max_abs_diff(ref, ref + 0.5) == 0.5
    assert abs(cosine(ref, ref * 3) - 1.0) < 1e-12
    assert min_row_cosine(ref, np.array([[1.0, 0.0], [2.0, 0.0]], np.float32)) == 0.0


def test_markdown_shows_figures_errors_and_machine():
    cells = [
        Cell("m", 1, "ort-all", median_ms=2.0, p90_ms=2.5, ratio_vs_baseline=1.0, calls=30, node_count=10,
             max_abs_diff=1e-6, cosine=1.0, model_bytes=2_000_000, peak_rss_bytes=300 * 2**20),
        Cell("m", 1, "onnxsim+ort", status="error", error="ValueError: boom | bad"),
        Cell("m", 1, "ort-transformers", status="n/a", error="no model type for a CNN"),
    ]
    run = Run(command="python -m benchmarks run --quick", started="now", quick=True,
              machine={"cpu_model": "Test CPU", "logical_cores": 2, "flags": {"avx512f": True, "amx": False},
                       "versions": {"onnxruntime": "1.32.0"}},
              peaks={"fp32_gflops_fma": 500.0, "fp32_gflops_gemm": 400.0, "int8_gops": 2000.0, "dram_gbps": 40.0,
                     "threads": 2, "seconds": 1.0},
              facts=[ModelFacts("m", 1, flops=4_000_000_000, bytes=10_000_000, nodes=12)], cells=cells)
    text = render_markdown(run)
    assert "Test CPU" in text and "avx512f" in text and "amx" not in text.split("flags:")[1].split("\n")[0]
    assert "onnxruntime 1.32.0" in text
    assert "## m, batch 1 (4.00 GFLOP, 12 nodes in the export)" in text
    row = next(line for line in text.splitlines() if line.startswith("| ort-all"))
    # roofline (fp32 uses the FMA peak, as BENCHMARKS.md's bounds do):
    # max(4e9 / 500e9 s, 1e7 / 40e9 s) = 8 ms -> 2 ms is 0.25 x the bound
    assert "| 2.00 | 2.50 | 1.000 | 0.25 |" in row and "| 300 |" in row
    assert "error: ValueError: boom / bad" in text and "n/a: no model type for a CNN" in text


def test_resume_measures_only_missing_cells(monkeypatch, tmp_path):
    from dataclasses import asdict

    from benchmarks import harness

    calls: list[tuple[str, int, str]] = []
    monkeypatch.setattr(harness, "run_cell_subprocess",
                        lambda m, b, c, s: calls.append((m, b, c)) or Cell(m, b, c, median_ms=1.0))
    monkeypatch.setattr(harness, "model_facts_subprocess", lambda m, b, timeout: ModelFacts(m, b))
    previous = Run(command="python -m benchmarks run", started="then", quick=False, machine={"cpu_model": "X"},
                   peaks={}, facts=[ModelFacts("bert-tiny", 1)], cells=[Cell("bert-tiny", 1, "ort-all")])
    harness.save_run(previous, tmp_path)
    loaded = harness.load_run(tmp_path / "run.json")
    assert asdict(loaded) == asdict(previous)
    run = harness.run_grid(["bert-tiny", "resnet-tiny"], [1], ["ort-all", "kiln-l1"], harness.RunSettings(),
                           quick=False, command="x", previous=loaded)
    assert calls == [("bert-tiny", 1, "kiln-l1"), ("resnet-tiny", 1, "ort-all"), ("resnet-tiny", 1, "kiln-l1")]
    assert run.planned == 4 and len(run.cells) == 4 and len(run.resumed) == 1
    assert [(f.model, f.batch) for f in run.facts] == [("bert-tiny", 1), ("resnet-tiny", 1)]


def test_incomplete_run_says_so():
    run = Run(command="c", started="s", quick=False, machine={}, peaks={}, facts=[],
              cells=[Cell("m", 1, "ort-all", median_ms=1.0, ratio_vs_baseline=1.0)], planned=3)
    assert "**Incomplete: 1 of 3 cells measured so far**" in render_markdown(run)

