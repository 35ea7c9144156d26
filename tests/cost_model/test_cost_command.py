"""`kiln cost` on models with symbolic and unknown dims: priced at bound shapes, never at 0 GFLOP
for a Conv, MatMul or LSTM whose shapes are bound, with what was guessed or not exact listed."""

from __future__ import annotations

import re

import numpy as np
import onnx
from conftest import make_model, tensor_info
from onnx import helper, numpy_helper

from kiln.cli import main


def _conv_lstm_model(path):
    """Conv over a [1, 1, 16, width] image, then an LSTM over the width (a CRNN in miniature)."""
    rng = np.random.default_rng(0)
    hidden = 8
    nodes = [
        helper.make_node("Conv", ["x", "Wc"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("ReduceMean", ["r", "axes_h"], ["m"], keepdims=0),  # [1, 4, width]
        helper.make_node("Transpose", ["m"], ["seq"], perm=[2, 0, 1]),  # [width, 1, 4]
        helper.make_node("LSTM", ["seq", "W", "R"], ["y"], hidden_size=hidden),
    ]
    inits = [numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "Wc"),
             numpy_helper.from_array(np.array([2], np.int64), "axes_h"),
             numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, 4)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32), "R")]
    proto = make_model(nodes, [tensor_info("x", [1, 1, 16, "image_width"])], [tensor_info("y", ["image_width", 1, 1, hidden])], inits,
                       opset=18)
    onnx.save(proto, path)
    return path


def _gflop(out: str, op: str) -> float:
    row = next(line for line in out.splitlines() if re.match(rf"\W*{re.escape(op)}\W", line.strip("│ ")))
    return float(row.split("│")[3])


def test_cost_prices_bound_shapes_and_says_which(tmp_path, capsys):
    path = _conv_lstm_model(tmp_path / "m.onnx")
    assert main(["cost", str(path), "--as-written", "--dim", "image_width=64"]) == 0
    out = capsys.readouterr().out
    assert "input shapes: x [1, 1, 16, 64]" in out
    assert "guessed" not in out
    for op in ("Conv", "LSTM"):
        assert _gflop(out, op) > 0, out


def test_cost_warns_about_guessed_dims_and_lists_nothing_as_missing(tmp_path, capsys):
    path = _conv_lstm_model(tmp_path / "m.onnx")
    assert main(["cost", str(path), "--as-written"]) == 0
    out = capsys.readouterr().out
    assert "guessed: image_width guessed 224" in out
    assert "not exact" not in out
    assert _gflop(out, "Conv") > 0


def test_cost_rejects_a_binding_for_an_input_the_model_lacks(tmp_path, capsys):
    path = _conv_lstm_model(tmp_path / "m.onnx")
    assert main(["cost", str(path), "--input-shape", "image:1,1,16,64"]) == 2
    assert "does not have" in capsys.readouterr().err
