"""The kiln command: optimize writes a model and a JSON report; inspect prints a summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

import kiln
from kiln.cli import main


def test_optimize_writes_model_and_report(tmp_path, mlp_model, capsys):
    src = tmp_path / "in.onnx"
    onnx.save(mlp_model, src)
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    assert main(["optimize", str(src), "-o", str(out), "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "common_subexpression_elimination" in printed and "validated" in printed
    data = json.loads(report.read_text())
    assert data["nodes_before"] == 8 and data["nodes_after"] == 4 and data["validated"] is True
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(kiln.optimize(out, level=0)(x), kiln.optimize(src, level=0)(x), atol=1e-6)


def test_inspect_prints_io_ops_and_params(tmp_path, mlp_model, capsys):
    src = tmp_path / "in.onnx"
    onnx.save(mlp_model, src)
    assert main(["inspect", str(src)]) == 0
    printed = capsys.readouterr().out
    assert "MatMul" in printed and "8 nodes" in printed and "[2, 4]" in printed and "ai.onnx=20" in printed


def test_bad_input_exits_2_with_a_message(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert main(["inspect", str(bad)]) == 2
    assert "error:" in capsys.readouterr().err


def test_console_script_is_installed(tmp_path, mlp_model):
    src = tmp_path / "in.onnx"
    onnx.save(mlp_model, src)
    script = Path(sys.executable).parent / "kiln"
    result = subprocess.run([str(script), "inspect", str(src)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "MatMul" in result.stdout


def test_optimize_validates_on_given_sample_inputs(tmp_path, mlp_model):
    src = tmp_path / "in.onnx"
    onnx.save(mlp_model, src)
    npz = tmp_path / "inputs.npz"
    np.savez(npz, x=np.full((2, 4), 0.5, np.float32))
    report = tmp_path / "r.json"
    assert main(["optimize", str(src), "-o", str(tmp_path / "o.onnx"), "--sample-inputs", str(npz),
                 "--report", str(report)]) == 0
    assert json.loads(report.read_text())["sample_inputs"] == "the given sample inputs"
