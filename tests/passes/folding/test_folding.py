"""Level-2 exact folding: BatchNorm/affine into layers, layout chains, duplicate initializers,
and the size guard on constant folding."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import make_model, optimize_with, tensor_info
from onnx import helper, numpy_helper

import kiln
from kiln.ir.analysis import op_histogram
from kiln.ir.provenance import get_provenance
from kiln.passes.folding.layer_folding import FoldLayers
from kiln.passes.folding.linear_chain_merging import MergeLinearChains
from kiln.passes.layout.chain_collapse import CollapseLayoutChains
from kiln.passes.layout.linear_to_gemm import LinearToGemm


def _export(module: torch.nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    """A raw export (no exporter optimization), so the BatchNorms are still there."""
    program = torch.onnx.export(module.eval(), (x,), dynamo=True, optimize=False)
    return program.model_proto


class ConvBn(torch.nn.Module):
    def __init__(self, relu_between: bool):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.bn = torch.nn.BatchNorm2d(8)
        self.relu_between = relu_between
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 2)
            self.bn.bias.uniform_(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(torch.relu(y)) if self.relu_between else torch.relu(self.bn(y))


def test_batchnorm_folds_into_the_conv_before_it():
    torch.manual_seed(0)
    module, x = ConvBn(relu_between=False), torch.randn(2, 3, 12, 12)
    optimized = optimize_with(_export(module, x), FoldLayers())
    ops = op_histogram(optimized.model)
    assert "BatchNormalization" not in ops and ops["Conv"] == 1
    layer = next(p for p in optimized.report.passes if p.name == "layer_folding")
    assert layer.status == "applied" and layer.rewrites[0].rule == "fuse_batch_norm_into_conv"
    conv = next(n for n in optimized.model.graph if n.op_type == "Conv")
    assert {o.module for o in get_provenance(conv)} >= {"conv", "bn"}
    np.testing.assert_allclose(optimized(x.numpy()), module(x).detach().numpy(), atol=1e-5)


def test_batchnorm_after_relu_does_not_fold_into_the_conv_before_the_relu():
    torch.manual_seed(0)
    module, x = ConvBn(relu_between=True), torch.randn(2, 3, 12, 12)
    optimized = optimize_with(_export(module, x), FoldLayers())
    assert op_histogram(optimized.model)["BatchNormalization"] == 1
    np.testing.assert_allclose(optimized(x.numpy()), module(x).detach().numpy(), atol=1e-5)


def _conv_batchnorm_in_training_mode(opset: int) -> onnx.ModelProto:
    """Conv then BatchNormalization in training mode, as torch.onnx.export(training=TRAINING) writes
    it: `training_mode=1` (opset 14+), or the running and saved statistics as outputs (before 14)."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")]
    weights += [numpy_helper.from_array(rng.uniform(0.5, 2, 8).astype(np.float32), name)
                for name in ("scale", "bias", "mean", "var")]
    extra = {"training_mode": 1} if opset >= 14 else {}
    outputs = ["y", "running_mean", "running_var"] + (["saved_mean", "saved_var"] if opset < 14 else [])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], outputs, **extra)]
    return make_model(nodes, [tensor_info("x", [2, 3, 12, 12])], [tensor_info("y", [2, 8, 10, 10])], weights,
                      opset=opset)


@pytest.mark.parametrize("opset", [13, 15])
def test_batchnorm_in_training_mode_does_not_fold(opset):
    optimized = optimize_with(_conv_batchnorm_in_training_mode(opset), FoldLayers())
    layer = next(p for p in optimized.report.passes if p.name == "layer_folding")
    assert layer.status == "unchanged" and op_histogram(optimized.model)["BatchNormalization"] == 1


def test_transpose_pairs_cancel_and_reshape_chains_collapse():
    nodes = [
        helper.make_node("Transpose", ["x"], ["t1"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["t1"], ["t2"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["t2", "s1"], ["r1"]),
        helper.make_node("Reshape", ["r1", "s2"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array([2, 12], np.int64), "s1"),
             numpy_helper.from_array(np.array([4, 6], np.int64), "s2")]
    model = make_model(nodes, [tensor_info("x", [1, 2, 3, 4])], [tensor_info("y", [4, 6])], inits)
    optimized = optimize_with(model, CollapseLayoutChains())
    assert dict(op_histogram(optimized.model)) == {"Reshape": 1}
    rules = {r.rule for p in optimized.report.passes for r in p.rewrites}
    assert {"transpose_transpose", "reshape_reshape"} & rules
    x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    np.testing.assert_array_equal(optimized(x), x.reshape(4, 6))


def test_duplicate_initializers_are_merged_and_reported():
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    # Two parallel uses (not a chain, which linear-map merging would fold first).
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["a"]), helper.make_node("MatMul", ["z", "W2"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    model = make_model(nodes, [tensor_info("x", [2, 64]), tensor_info("z", [2, 64])], [tensor_info("y", [2, 64])],
                       [numpy_helper.from_array(w, "W1"), numpy_helper.from_array(w.copy(), "W2")])
    optimized = optimize_with(model)
    assert len(optimized.model.graph.initializers) == 1
    assert optimized.report.parameter_bytes_after == optimized.report.parameter_bytes_before // 2
    dedupe = next(p for p in optimized.report.passes if p.name == "initializer_deduplication")
    assert dedupe.status == "applied" and dedupe.rewrites[0].rule == "merge_duplicate_initializer"
    x, z = np.ones((2, 64), np.float32), np.full((2, 64), 0.5, np.float32)
    np.testing.assert_allclose(optimized(x, z), x @ w + z @ w, rtol=1e-5)


@pytest.mark.parametrize("level", [1, 2])
def test_constant_folding_does_not_inflate_the_model(level):
    # y = x + ConstantOfShape([512, 512]) (1 MiB of zeros from a 2-element shape) and a Tile.
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["zeros"],
                         value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Tile", ["row", "reps"], ["tiled"]),
        helper.make_node("Add", ["x", "zeros"], ["a"]),
        helper.make_node("Add", ["a", "tiled"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array([512, 512], np.int64), "shape"),
             numpy_helper.from_array(np.ones((1, 512), np.float32), "row"),
             numpy_helper.from_array(np.array([512, 1], np.int64), "reps")]
    model = make_model(nodes, [tensor_info("x", [512, 512])], [tensor_info("y", [512, 512])], inits)
    optimized = kiln.optimize(model, level=level)
    assert optimized.report.parameter_bytes_after <= optimized.report.parameter_bytes_before
    assert {"ConstantOfShape", "Tile"} <= set(op_histogram(optimized.model))
    folding = next(p for p in optimized.report.passes if p.name == "constant_folding")
    assert "kept 2 expanding node(s) unfolded" in folding.message
    x = np.zeros((512, 512), np.float32)
    np.testing.assert_allclose(optimized(x), np.full((512, 512), 1.5, np.float32))


def test_small_expansions_still_fold():
    nodes = [helper.make_node("Tile", ["row", "reps"], ["c"]), helper.make_node("Mul", ["x", "c"], ["y"])]
    model = make_model(nodes, [tensor_info("x", [4, 4])], [tensor_info("y", [4, 4])],
                       [numpy_helper.from_array(np.full((1, 4), 2.0, np.float32), "row"),
                        numpy_helper.from_array(np.array([4, 1], np.int64), "reps")])
    optimized = optimize_with(model)
    assert "Tile" not in op_histogram(optimized.model)
    np.testing.assert_allclose(optimized(np.ones((4, 4), np.float32)), np.full((4, 4), 2.0))


def test_gemm_batchnorm_folds():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.BatchNorm1d(6)).eval()
    with torch.no_grad():
        module[1].running_mean.uniform_(-1, 1)
        module[1].running_var.uniform_(0.5, 2)
    x = torch.randn(4, 8)
    optimized = optimize_with(_export(module, x), FoldLayers())
    assert "BatchNormalization" not in op_histogram(optimized.model)
    np.testing.assert_allclose(optimized(x.numpy()), module(x).detach().numpy(), atol=1e-5)


def test_unknown_level_names_the_range():
    with pytest.raises(kiln.errors.PassError, match="levels 0..2"):
        kiln.optimize(make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor_info("x", [1])],
                                 [tensor_info("y", [1])]), level=3)


def test_deduplication_handles_views_left_by_constant_folding():
    import onnx_ir as ir

    from kiln.passes.cleanup.initializer_deduplication import DeduplicateInitializers

    w = np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "A"], ["a"]), helper.make_node("MatMul", ["x", "B"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    model = kiln.capture(make_model(nodes, [tensor_info("x", [2, 16])], [tensor_info("y", [2, 32])],
                                    [numpy_helper.from_array(w.T.copy(), "A"), numpy_helper.from_array(w.T.copy(), "B")]))
    for name in ("A", "B"):  # what folding a Transpose leaves behind: non-contiguous views
        model.graph.initializers[name].const_value = ir.Tensor(w.T, name=name)
    optimized = kiln.optimize(model, passes=[DeduplicateInitializers()])
    (report,) = optimized.report.passes
    assert report.status == "applied", report.message
    assert len(optimized.model.graph.initializers) == 1
    x = np.ones((2, 16), np.float32)
    np.testing.assert_allclose(optimized(x), 2 * x @ w.T, rtol=1e-5)


def test_gather_of_a_large_constant_table_folds_when_the_result_is_small():
    table = np.random.default_rng(0).standard_normal((512, 64)).astype(np.float32)  # 32768 > 8192 elements
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0), helper.make_node("Add", ["x", "rows"], ["y"])]
    model = make_model(nodes, [tensor_info("x", [4, 64])], [tensor_info("y", [4, 64])],
                       [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([0, 1, 2, 3], np.int64), "ids")])
    optimized = kiln.optimize(model, level=1)
    assert "Gather" not in op_histogram(optimized.model)
    assert optimized.report.parameter_bytes_after < optimized.report.parameter_bytes_before
    x = np.ones((4, 64), np.float32)
    np.testing.assert_allclose(optimized(x), x + table[:4])


@pytest.mark.parametrize("with_bias", [False, True])
def test_consecutive_linear_maps_merge_when_cheaper(with_bias):
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 64)).astype(np.float32)  # 16x64 + 64x8 > 16x8: merge
    w2 = rng.standard_normal((64, 8)).astype(np.float32)
    b1 = rng.standard_normal(64).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"])]
    if with_bias:
        nodes.append(helper.make_node("Add", ["b1", "h"], ["hb"]))  # operands commuted on purpose
    nodes.append(helper.make_node("MatMul", ["hb" if with_bias else "h", "W2"], ["y"]))
    inits = [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2"), numpy_helper.from_array(b1, "b1")]
    model = make_model(nodes, [tensor_info("x", [3, 16])], [tensor_info("y", [3, 8])], inits)
    optimized = optimize_with(model, MergeLinearChains(), LinearToGemm())
    assert op_histogram(optimized.model) == ({"Gemm": 1} if with_bias else {"MatMul": 1})  # MatMul + bias: Gemm
    merging = next(p for p in optimized.report.passes if p.name == "linear_chain_merging")
    assert merging.status == "applied" and merging.rewrites
    (decision,) = merging.decisions
    assert decision.chosen == "merged" and decision.decided_by == "cost_model"
    assert decision.alternative("merged").predicted_ms < decision.alternative("chain").predicted_ms
    assert optimized.report.parameter_bytes_after < optimized.report.parameter_bytes_before
    x = rng.standard_normal((3, 16)).astype(np.float32)
    expected = ((x @ w1 + b1) if with_bias else x @ w1) @ w2
    np.testing.assert_allclose(optimized(x), expected, rtol=1e-4, atol=1e-4)


def test_linear_maps_stay_apart_when_merging_costs_more_or_something_nonlinear_sits_between():
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((256, 8)).astype(np.float32)  # bottleneck: 256x256 >> 256x8 + 8x256
    w2 = rng.standard_normal((8, 256)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")]
    bottleneck = make_model([helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("MatMul", ["h", "W2"], ["y"])],
                            [tensor_info("x", [1024, 256])], [tensor_info("y", [1024, 256])], inits)
    optimized = optimize_with(bottleneck, MergeLinearChains())
    assert op_histogram(optimized.model)["MatMul"] == 2
    merging = next(p for p in optimized.report.passes if p.name == "linear_chain_merging")
    (decision,) = merging.decisions  # 16x the FLOPs per row: the cost model keeps the chain
    assert decision.chosen == "chain" and decision.alternative("merged").metrics["weight_elements"] == 256 * 256
    assert decision.alternative("merged").predicted_ms > decision.alternative("chain").predicted_ms
    without_cost_model = optimize_with(bottleneck, MergeLinearChains(), cost_model=None)
    assert op_histogram(without_cost_model.model)["MatMul"] == 2
    w3 = rng.standard_normal((8, 4)).astype(np.float32)
    relu = make_model([helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                       helper.make_node("MatMul", ["r", "W3"], ["y"])],
                      [tensor_info("x", [2, 64])], [tensor_info("y", [2, 4])],
                      [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w3, "W3")])
    assert op_histogram(optimize_with(relu, MergeLinearChains()).model)["MatMul"] == 2


def test_linear_maps_do_not_merge_when_the_intermediate_is_used_elsewhere():
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 64)).astype(np.float32)
    w2 = rng.standard_normal((64, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("MatMul", ["h", "W2"], ["y"]),
             helper.make_node("Relu", ["h"], ["z"])]
    model = make_model(nodes, [tensor_info("x", [3, 16])], [tensor_info("y", [3, 8]), tensor_info("z", [3, 64])],
                       [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")])
    optimized = optimize_with(model, MergeLinearChains())
    x = rng.standard_normal((3, 16)).astype(np.float32)
    y, z = optimized(x)
    np.testing.assert_allclose(y, x @ w1 @ w2, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(z, np.maximum(x @ w1, 0), rtol=1e-5, atol=1e-5)
    assert all(p.status in ("applied", "unchanged") for p in optimized.report.passes)
