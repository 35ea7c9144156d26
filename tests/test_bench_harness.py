"""Benchmark harness pieces: the alternating protocol, accuracy figures, the markdown table."""

from __future__ import annotations

import numpy as np

from benchmarks.accuracy import cosine, max_abs_diff, min_row_cosine
from benchmarks.harness import Cell, ModelFacts, Run
from benchmarks.results import render_markdown
from benchmarks.timing import alternate


def test_alternate_interleaves_calls_and_pairs_ratios():
    order: list[str] = []
    timing = alternate(lambda: order.append("a"), lambda: order.append("b"), warmup=2, repeats=5, min_seconds=0.0)
    assert order[:8] == ["a", "b", "a", "b", "a", "b", "b", "a"]  # 2 warm-up pairs, then A, B / B, A
    assert order.count("a") == order.count("b") == 7  # 2 warm-up + 5 timed each
    assert len(timing.a_ms) == len(timing.b_ms) == len(timing.ratios) == 5
    summary = timing.summary()
    assert summary["calls"] == 5 and summary["median_ms"] >= 0


def test_ratio_is_median_of_per_pair_ratios():
    from benchmarks.timing import PairedTiming

    timing = PairedTiming(a_ms=[2.0, 4.0, 30.0], b_ms=[1.0, 4.0, 10.0])
    assert timing.ratios == [2.0, 1.0, 3.0]
    assert timing.summary()["ratio_vs_baseline"] == 2.0


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


def test_round_robin_keeps_three_rounds_unless_a_runner_is_too_slow_for_them():
    from benchmarks.timing import round_robin

    calls: list[int] = []
    fns = [lambda: calls.append(0), lambda: calls.append(1)]
    # max_seconds=0: the time budget is spent at once, so only the minimum number of rounds runs
    assert [len(t) for t in round_robin(fns, warmup=0, repeats=30, min_seconds=0.0, max_seconds=0.0)] == [3, 3]
    assert [len(t) for t in round_robin(fns, warmup=0, repeats=30, min_seconds=0.0, max_seconds=0.0,
                                        min_rounds=1)] == [1, 1]
