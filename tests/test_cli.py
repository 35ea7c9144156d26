"""The kiln command: optimize writes a model and a JSON report; inspect prints a summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

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


def _chain_model() -> onnx.ModelProto:
    """z = Identity((x @ W1 @ W2) @ x2): a chain the cost model merges, a MatMul by an input the
    merge rule matches but refuses (a near miss), and an Identity to remove."""
    from conftest import make_model, tensor_info
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 64)).astype(np.float32), "W1")
    w2 = numpy_helper.from_array(rng.standard_normal((64, 8)).astype(np.float32), "W2")
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="/enc/fc1/MatMul"),
             helper.make_node("MatMul", ["h", "W2"], ["g"], name="/enc/fc2/MatMul"),
             helper.make_node("MatMul", ["g", "x2"], ["y"], name="/head/MatMul"),
             helper.make_node("Identity", ["y"], ["z"], name="/head/Identity")]
    return make_model(nodes, [tensor_info("x", [4, 16]), tensor_info("x2", [8, 8])], [tensor_info("z", [4, 8])],
                      [w1, w2])


def _optimize_chain(tmp_path, capsys, *flags: str) -> tuple[int, str, str]:
    src = tmp_path / "chain.onnx"
    onnx.save(_chain_model(), src)
    code = main(["optimize", str(src), "-o", str(tmp_path / "out.onnx"), "--level", "2", *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_optimize_explain_lists_rewrites_near_misses_and_decisions(tmp_path, capsys):
    code, out, _ = _optimize_chain(tmp_path, capsys, "--explain")
    assert code == 0
    rewrite = next(line for line in out.splitlines() if "merge_matmul_chain" in line and "consecutive" in line)
    assert "linear_chain_merging" in rewrite and "/enc/fc1/MatMul, /enc/fc2/MatMul" in rewrite  # origin
    assert "both weights must be constant 2-D float initializers" in out  # the near miss of /head/MatMul
    assert "linear_chain_merging: decisions" in out and "merge consecutive" in out  # the question
    assert "weight_elements 1536" in out and "cost_model" in out


def test_optimize_without_explain_is_a_compact_table_with_one_row_per_decision(tmp_path, capsys):
    code, out, _ = _optimize_chain(tmp_path, capsys)
    assert code == 0
    assert "passes unchanged" in out and "predicted ms (as written)" in out
    row = next(line for line in out.splitlines() if "W1 @ W2" in line)
    assert "merged" in row and "chain " in row and " / merged " in row
    assert "rewrites, by pass" not in out and "near misses" not in out and "weight_elements" not in out


def test_optimize_no_validate_says_why_in_the_total_row(tmp_path, capsys):
    code, out, _ = _optimize_chain(tmp_path, capsys, "--no-validate")
    total = next(line for line in out.splitlines() if "total" in line)
    assert code == 0 and "not validated: validation is off" in total


@pytest.fixture
def optimize_kwargs(monkeypatch):
    """The keyword arguments `kiln optimize` hands `kiln.optimize`, recorded call after call."""
    import kiln.api

    seen: dict = {}
    real = kiln.api.optimize

    def spy(model, **kwargs):
        seen.update(kwargs)
        return real(model, **kwargs)

    monkeypatch.setattr(kiln.api, "optimize", spy)
    return seen


def test_optimize_threads_sets_the_target(tmp_path, capsys, optimize_kwargs):
    seen = optimize_kwargs
    code, _, _ = _optimize_chain(tmp_path, capsys, "--threads", "1")
    assert code == 0 and seen["target"] == kiln.Target(intra_op_threads=1)


def test_optimize_strict_exits_1_naming_the_failed_pass(tmp_path, capsys, monkeypatch):
    from kiln.passes.cleanup.identity_elimination import EliminateIdentityAndNoOps

    def broken(self, model, ctx):
        raise RuntimeError("boom")

    monkeypatch.setattr(EliminateIdentityAndNoOps, "call", broken)
    code, out, _ = _optimize_chain(tmp_path, capsys)
    assert code == 0 and "failed" in out  # without --strict a rolled-back failure still exits 0
    code, _, err = _optimize_chain(tmp_path, capsys, "--strict")
    assert code == 1
    assert "identity_elimination (failed: raised RuntimeError: boom; rolled back)" in err


def test_global_options_before_bench_pass_its_arguments_through(monkeypatch):
    import logging
    import subprocess

    calls, levels = [], []
    monkeypatch.setattr(subprocess, "call", lambda command, cwd: calls.append(command) or 0)
    monkeypatch.setattr(logging, "basicConfig", lambda level, format: levels.append(level))
    assert main(["-v", "bench", "--quick", "--models", "bert-tiny"]) == 0
    assert main(["bench", "--help"]) == 0
    assert calls == [[sys.executable, "-m", "benchmarks", "-v", "run", "--quick", "--models", "bert-tiny"],
                     [sys.executable, "-m", "benchmarks", "run", "--help"]]
    assert levels == [logging.INFO, logging.WARNING]


def test_shape_flags_parse_names_sizes_and_colons_in_names():
    from kiln.cli import build_parser, shape_binding_kwargs

    args = build_parser().parse_args(["optimize", "m.onnx", "-o", "o.onnx", "--input-shape", "x:1,3,48,192",
                                      "--input-shape", "ns:ids:2,5", "--input-shape", "k:", "--dim", "image_width=160",
                                      "--fix-shapes"])
    assert args.fix_shapes
    assert shape_binding_kwargs(args) == {"input_shapes": {"x": (1, 3, 48, 192), "ns:ids": (2, 5), "k": ()},
                                          "dim_values": {"image_width": 160}}
    assert shape_binding_kwargs(build_parser().parse_args(["optimize", "m.onnx", "-o", "o.onnx"])) == {}


@pytest.mark.parametrize("flag, text, message", [
    ("--input-shape", "x", "write an input shape as NAME:D0,D1,... e.g. x:1,3,48,192"),
    ("--input-shape", "x:1,a", "write an input shape as NAME:D0,D1"),
    ("--input-shape", "x:1,-1", "write an input shape as NAME:D0,D1"),
    ("--input-shape", ":1,2", "write an input shape as NAME:D0,D1"),
    ("--dim", "batch", "write a dim as NAME=SIZE, e.g. batch=1"),
    ("--dim", "batch=-1", "write a dim as NAME=SIZE"),
    ("--dim", "=3", "write a dim as NAME=SIZE"),
])
def test_bad_shape_flag_text_is_a_clean_argparse_error(flag, text, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["optimize", "m.onnx", flag, text])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"argument {flag}" in err and message in err and "Traceback" not in err


def _symbolic_model(tmp_path) -> Path:
    from conftest import shape_sum_model

    src = tmp_path / "symbolic.onnx"
    onnx.save(shape_sum_model(), src)
    return src


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_fix_shapes_writes_static_shapes_and_the_default_keeps_them_symbolic(tmp_path, capsys):
    src = _symbolic_model(tmp_path)
    kept, fixed = tmp_path / "kept.onnx", tmp_path / "fixed.onnx"
    assert main(["optimize", str(src), "-o", str(kept), "--input-shape", "x:3,4"]) == 0
    assert "x [3, 4] (kept symbolic in the saved model)" in capsys.readouterr().out
    assert main(["optimize", str(src), "-o", str(fixed), "--dim", "batch=3", "--fix-shapes"]) == 0
    assert "x [3, 4] (written into the model (--fix-shapes))" in capsys.readouterr().out
    kept_model, fixed_model = onnx.load(kept), onnx.load(fixed)
    assert _dims(kept_model.graph.input[0]) == ["batch", 4] and len(kept_model.graph.node) == 4
    assert _dims(fixed_model.graph.input[0]) == [3, 4] and _dims(fixed_model.graph.output[0]) == [3, 4]
    assert [n.op_type for n in fixed_model.graph.node] == ["Add"]


def test_the_report_names_the_guessed_dims_and_the_flags_that_bind_them(tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main(["optimize", str(_symbolic_model(tmp_path)), "-o", str(tmp_path / "o.onnx"),
                 "--report", str(report)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "input shapes validated and priced at: x [1, 4] (kept symbolic in the saved model)" in out
    assert "warning: guessed batch = 1 (batch). Bind them with --dim NAME=SIZE or --input-shape" in out
    data = json.loads(report.read_text())
    assert data["input_shapes"] == "x [1, 4]" and data["shape_warnings"] == ["batch guessed 1 (batch)"]
    assert data["shapes_fixed"] is False


def test_a_minus_one_dim_model_optimizes_end_to_end(tmp_path, capsys):
    from conftest import make_model, tensor_info
    from onnx import helper

    src = tmp_path / "minus_one.onnx"
    model = make_model([helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Identity", ["h"], ["y"])],
                       [tensor_info("x", [-1, 3, -1, -1])], [tensor_info("y", [-1, 3, -1, -1])])
    onnx.save(model, src)
    out_path = tmp_path / "o.onnx"
    assert main(["optimize", str(src), "-o", str(out_path), "--dim", "x_dim2=8", "--dim", "x_dim3=8"]) == 0
    captured = capsys.readouterr()
    assert "negative dimensions" not in captured.err and "validated" in captured.out
    assert "x [1, 3, 8, 8]" in captured.out and "x_dim0 = 1" in " ".join(captured.out.split())
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(kiln.optimize(out_path, level=0)(x), np.maximum(x, 0))


def test_binding_errors_exit_2_naming_what_to_fix(tmp_path, capsys):
    src = _symbolic_model(tmp_path)
    out = str(tmp_path / "o.onnx")
    assert main(["optimize", str(src), "-o", out, "--input-shape", "x:1,4", "--input-shape", "x:2,4"]) == 2
    assert "--input-shape binds ['x'] more than once" in capsys.readouterr().err
    assert main(["optimize", str(src), "-o", out, "--input-shape", "x:1,5"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "sets axis 1 to 5, but the model declares it static 4: (batch, 4)" in err and "Traceback" not in err
    assert main(["optimize", str(src), "-o", out, "--dim", "seq=3"]) == 2
    assert "which no input declares" in capsys.readouterr().err


def test_an_input_kiln_cannot_make_up_names_itself_and_sample_inputs(tmp_path, capsys):
    from conftest import reshape_by_input_model

    src = tmp_path / "reshape.onnx"
    onnx.save(reshape_by_input_model(), src)
    assert main(["optimize", str(src), "-o", str(tmp_path / "o.onnx")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Input 'target' sets the target shape of a Reshape" in err and "--sample-inputs inputs.npz" in err
    npz = tmp_path / "inputs.npz"
    np.savez(npz, x=np.arange(6, dtype=np.float32), target=np.array([3, 2], np.int64))
    assert main(["optimize", str(src), "-o", str(tmp_path / "o.onnx"), "--sample-inputs", str(npz)]) == 0
    assert "x [6], target [2]" in capsys.readouterr().out


def test_inspect_prints_symbolic_dims_and_errors_keep_their_brackets(tmp_path, capsys):
    from conftest import make_model, tensor_info
    from onnx import helper

    src = tmp_path / "dynamic.onnx"
    onnx.save(make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor_info("x", ["batch", 4])],
                         [tensor_info("y", ["batch", 4])]), src)
    assert main(["inspect", str(src)]) == 0
    assert "[batch, 4]" in capsys.readouterr().out
    assert main(["optimize", str(src), "-o", str(tmp_path / "o.onnx"), "--input-shape", "x:1,2,3"]) == 2
    assert "the input is declared (batch, 4) (rank 2)" in " ".join(capsys.readouterr().err.split())


def test_optimize_backend_chooses_the_runtime(tmp_path, capsys, optimize_kwargs):
    pytest.importorskip("openvino")
    seen = optimize_kwargs
    code, out, _ = _optimize_chain(tmp_path, capsys, "--backend", "openvino", "--threads", "1")
    assert code == 0 and seen["target"] == kiln.Target(backend="openvino", intra_op_threads=1)
    assert "on openvino" in out
    code, out, _ = _optimize_chain(tmp_path, capsys, "--backend", "auto")
    assert code == 0 and seen["backend"] == "auto" and "backend: " in out and "fastest median" in out
