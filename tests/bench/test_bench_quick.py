"""`python -m benchmarks run --quick` runs end to end, so the harness cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.configs import CONFIGS

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_quick_benchmark_fills_every_cell(tmp_path):
    result = subprocess.run([sys.executable, "-m", "benchmarks", "run", "--quick", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((tmp_path / "run.json").read_text())
    cells = run["cells"]
    assert {c["config"] for c in cells} == set(CONFIGS)
    assert {c["model"] for c in cells} == {"bert-tiny", "resnet-tiny"}
    for cell in cells:
        # Every peer column is filled with figures or with an error text.
        if cell["status"] == "ok":
            assert cell["median_ms"] > 0 and cell["ratio_vs_baseline"] > 0 and cell["max_abs_diff"] is not None
        else:
            assert cell["error"], cell
    ok = {c["config"] for c in cells if c["status"] == "ok"}
    assert {"ort-all", "torch-eager", "kiln-l1"} <= ok, [c for c in cells if c["status"] != "ok"]
    for cell in cells:
        if cell["config"] in ("kiln-l0", "kiln-l1", "ort-all", "ort-disable") and cell["status"] == "ok":
            assert cell["max_abs_diff"] <= 1e-4, cell
    table = (tmp_path / "RESULTS.md").read_text()
    assert "## Machine" in table and "| kiln-l1 |" in table
