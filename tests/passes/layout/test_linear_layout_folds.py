"""MatMul + bias written as Gemm on rows (so the shape passes remove the Reshapes ONNX Runtime
would otherwise insert) and scalar Muls folded into the weights they scale. Each rule has cases
where it fires and cases where it must not."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import make_model, optimize_with, tensor_info
from onnx import helper, numpy_helper

import kiln
from kiln.ir.analysis import op_histogram
from kiln.passes.folding.constant_folding import FoldConstants
from kiln.passes.folding.scale_folding import FoldScalesIntoWeights
from kiln.passes.layout.chain_collapse import CollapseLayoutChains
from kiln.passes.layout.linear_to_gemm import LinearToGemm
from kiln.passes.layout.reshape_sinking import SinkReshapes

RNG = np.random.default_rng(1)


def _inits(**arrays: np.ndarray) -> list[onnx.TensorProto]:
    return [numpy_helper.from_array(np.asarray(a), name) for name, a in arrays.items()]


def _weight(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _check_outputs(model: onnx.ModelProto, optimized: kiln.OptimizedModel, x: np.ndarray) -> None:
    np.testing.assert_allclose(optimized(x), kiln.optimize(model, level=0)(x), rtol=1e-5, atol=1e-5)


def _mlp(x_shape: list, bias_shape: tuple[int, ...] = (16,)) -> onnx.ModelProto:
    """x + (Gelu(x @ W1 + b1) @ W2 + b2): a transformer feed-forward block."""
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Gelu", ["hb"], ["g"]), helper.make_node("MatMul", ["g", "W2"], ["o"]),
             helper.make_node("Add", ["b2", "o"], ["ob"]), helper.make_node("Add", ["ob", "x"], ["y"])]
    inits = _inits(W1=_weight(8, 16), b1=_weight(*bias_shape), W2=_weight(16, 8), b2=_weight(8))
    return make_model(nodes, [tensor_info("x", x_shape)], [tensor_info("y", x_shape)], inits)


def test_linears_with_bias_become_gemms_and_the_reshapes_around_the_gelu_go():
    model = _mlp([1, 6, 8])
    optimized = optimize_with(model, FoldConstants(), LinearToGemm(), CollapseLayoutChains(), SinkReshapes())
    assert op_histogram(optimized.model) == {"Reshape": 2, "Gemm": 2, "Gelu": 1, "Add": 1}
    gemm_pass = next(p for p in optimized.report.passes if p.name == "linear_to_gemm")
    assert {r.rule for r in gemm_pass.rewrites} == {"linear_to_gemm"} and len(gemm_pass.rewrites) == 2
    _check_outputs(model, optimized, RNG.standard_normal((1, 6, 8)).astype(np.float32))


def test_the_output_reshape_merges_with_a_split_heads_reshape():
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["hb"]),
             helper.make_node("Reshape", ["hb", "heads"], ["y"])]
    inits = _inits(W=_weight(8, 8), b=_weight(8), heads=np.array([1, 6, 2, 4], np.int64))
    model = make_model(nodes, [tensor_info("x", [1, 6, 8])], [tensor_info("y", [1, 6, 2, 4])], inits)
    optimized = optimize_with(model, FoldConstants(), LinearToGemm(), CollapseLayoutChains(), SinkReshapes())
    assert op_histogram(optimized.model) == {"Reshape": 2, "Gemm": 1}
    _check_outputs(model, optimized, RNG.standard_normal((1, 6, 8)).astype(np.float32))


@pytest.mark.parametrize("x_shape, bias_shape", [(["batch", 6, 8], (16,)), ([1, 6, 8], (6, 16))],
                         ids=["symbolic-rows", "bias-per-row"])
def test_linears_stay_matmul_add_without_static_rows_or_with_a_bias_that_is_not_per_column(x_shape, bias_shape):
    optimized = optimize_with(_mlp(x_shape, bias_shape), FoldConstants(), LinearToGemm(), CollapseLayoutChains(), SinkReshapes())
    # Symbolic rows: neither linear changes; a per-row bias: only the first stays.
    assert op_histogram(optimized.model)["MatMul"] == (2 if x_shape[0] == "batch" else 1)


def test_a_matmul_read_elsewhere_is_not_made_a_gemm():
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"]),
             helper.make_node("Relu", ["h"], ["z"])]
    model = make_model(nodes, [tensor_info("x", [6, 8])], [tensor_info("y", [6, 8]), tensor_info("z", [6, 8])],
                       _inits(W=_weight(8, 8), b=_weight(8)))
    assert op_histogram(optimize_with(model, FoldConstants(), LinearToGemm(), CollapseLayoutChains(), SinkReshapes()).model) == {"MatMul": 1, "Add": 1, "Relu": 1}


def _attention_scores(scale: float = 0.5, relu_scores: bool = False, share_scores: bool = False) -> onnx.ModelProto:
    """Softmax(((x Wq + bq) split in heads @ (x Wk) split in heads, transposed) * scale)."""
    scores = "scores_relu" if relu_scores else "scores"
    nodes = [
        helper.make_node("MatMul", ["x", "Wq"], ["q"]), helper.make_node("Add", ["q", "bq"], ["qb"]),
        helper.make_node("Reshape", ["qb", "heads"], ["qh"]), helper.make_node("Transpose", ["qh"], ["qt"], perm=[0, 2, 1, 3]),
        helper.make_node("MatMul", ["x", "Wk"], ["k"]), helper.make_node("Reshape", ["k", "heads"], ["kh"]),
        helper.make_node("Transpose", ["kh"], ["kt"], perm=[0, 2, 3, 1]), helper.make_node("MatMul", ["qt", "kt"], ["scores"]),
        *([helper.make_node("Relu", ["scores"], ["scores_relu"])] if relu_scores else []),
        helper.make_node("Mul", [scores, "scale"], ["scaled"]), helper.make_node("Softmax", ["scaled"], ["y"], axis=-1),
    ]
    outputs = [tensor_info("y", [1, 2, 6, 6])] + ([tensor_info("scores", [1, 2, 6, 6])] if share_scores else [])
    inits = _inits(Wq=_weight(8, 8), bq=_weight(8), Wk=_weight(8, 8), heads=np.array([1, 6, 2, 4], np.int64),
                   scale=np.array(scale, np.float32))
    return make_model(nodes, [tensor_info("x", [1, 6, 8])], outputs, inits)


@pytest.mark.parametrize("scale", [0.5, 0.3])
def test_attention_score_scaling_folds_into_the_query_weights(scale):
    model = _attention_scores(scale)
    optimized = optimize_with(model, FoldConstants(), FoldScalesIntoWeights())
    assert "Mul" not in op_histogram(optimized.model)
    folding = next(p for p in optimized.report.passes if p.name == "scale_folding")
    assert [r.rule for r in folding.rewrites] == ["scale_folding"]
    _check_outputs(model, optimized, RNG.standard_normal((1, 6, 8)).astype(np.float32))


def test_a_scaled_projection_folds_its_scale():
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Mul", ["s", "h"], ["hs"]),
             helper.make_node("Relu", ["hs"], ["y"])]
    model = make_model(nodes, [tensor_info("x", [1, 6, 8])], [tensor_info("y", [1, 6, 8])],
                       _inits(W=_weight(8, 8), s=np.array([0.125], np.float32)))
    optimized = optimize_with(model, FoldConstants(), FoldScalesIntoWeights())
    assert op_histogram(optimized.model) == {"MatMul": 1, "Relu": 1}
    _check_outputs(model, optimized, RNG.standard_normal((1, 6, 8)).astype(np.float32))


@pytest.mark.parametrize("case", ["relu-on-the-path", "value-on-the-path-read-elsewhere", "shared-weight"])
def test_a_scale_does_not_fold_through_a_nonlinearity_or_into_values_others_read(case):
    if case == "shared-weight":
        nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Mul", ["h", "s"], ["y"]),
                 helper.make_node("MatMul", ["x", "W"], ["z"])]
        model = make_model(nodes, [tensor_info("x", [6, 8])], [tensor_info("y", [6, 8]), tensor_info("z", [6, 8])],
                           _inits(W=_weight(8, 8), s=np.array(0.5, np.float32)))
        x = RNG.standard_normal((6, 8)).astype(np.float32)
    else:
        model = _attention_scores(relu_scores=case == "relu-on-the-path", share_scores=case != "relu-on-the-path")
        x = RNG.standard_normal((1, 6, 8)).astype(np.float32)
    optimized = optimize_with(model, FoldConstants(), FoldScalesIntoWeights())
    assert op_histogram(optimized.model)["Mul"] == 1
    got, want = optimized(x), kiln.optimize(model, level=0)(x)
    for g, w in zip(got if isinstance(got, (list, tuple)) else [got], want if isinstance(want, (list, tuple)) else [want]):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
