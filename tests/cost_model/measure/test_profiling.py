"""kiln.cost_model.measure.profiling: ORT profiler samples mapped back to the model's nodes."""

from __future__ import annotations

import statistics

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import make_model, tensor_info
from onnx import TensorProto, helper, numpy_helper

from kiln.cost_model.measure.profiling import ModelProfile, profile_model
from kiln.errors import InputError

RNG = np.random.default_rng(0)


def _init(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    model = make_model(nodes, inputs, outputs, initializers)
    onnx.checker.check_model(model)
    return model


def _fusable_model() -> onnx.ModelProto:
    """x @ W + b -> Relu (ORT fuses into one Gemm-family kernel); scale = k1 + k2 is constant
    (ORT folds it); 3-D h @ W2 + b2 (ORT wraps the Gemm in Reshapes)."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["mm"], name="matmul"),
        helper.make_node("Add", ["mm", "b"], ["biased"], name="bias"),
        helper.make_node("Relu", ["biased"], ["act"], name="relu"),
        helper.make_node("Add", ["k1", "k2"], ["scale"], name="const_add"),
        helper.make_node("Mul", ["act", "scale"], ["scaled"], name="scale_mul"),
        helper.make_node("MatMul", ["h", "W2"], ["mm3"], name="matmul3d"),
        helper.make_node("Add", ["mm3", "b2"], ["out3"], name="bias3d"),
    ]
    inputs = [tensor_info("x", [4, 8]),
              tensor_info("h", [2, 3, 8])]
    outputs = [tensor_info("scaled", [4, 16]),
               tensor_info("out3", [2, 3, 16])]
    inits = [_init("W", 8, 16), _init("b", 16), _init("k1", 16), _init("k2", 16), _init("W2", 8, 16), _init("b2", 16)]
    return _model(nodes, inputs, outputs, inits)


def _every_node_once(profile: ModelProfile, names: set[str]) -> None:
    in_groups = [n for g in profile.groups for n in g.node_names]
    in_kernels = [n for k in profile.kernels for n in k.node_names]
    assert len(in_groups) == len(set(in_groups)) and len(in_kernels) == len(set(in_kernels))
    assert set(in_groups) == set(in_kernels)
    assert set(in_groups) | set(profile.unmapped) == names
    assert not set(in_groups) & set(profile.unmapped)


@pytest.fixture(scope="module")
def fused() -> ModelProfile:
    return profile_model(_fusable_model(), repeats=3, warmup=1, threads=1)


def test_fused_nodes_map_to_one_kernel_and_every_node_once(fused):
    _every_node_once(fused, {n.name for n in _fusable_model().graph.node})
    group = fused.group_of("matmul")
    assert group is not None and set(group.node_names) == {"matmul", "bias", "relu"}
    (kernel,) = group.kernels
    assert fused.kernel(kernel).ort_op_type in {"FusedGemm", "Gemm", "FusedMatMul"}
    assert fused.kernel_of("relu") is fused.kernel(kernel)
    assert fused.kernel_of("scale_mul").node_names == ("scale_mul",)


def test_glue_kernels_share_a_group_and_the_gemm_gets_the_nodes(fused):
    group = fused.group_of("matmul3d")
    assert group is not None and set(group.node_names) == {"matmul3d", "bias3d"}
    owners = {fused.kernel_of("matmul3d").ort_name, fused.kernel_of("bias3d").ort_name}
    assert len(owners) == 1
    for name in group.kernels:  # glue ORT inserted (Reshapes) computes no original node
        if name not in owners:
            assert fused.kernel(name).node_names == ()
    assert group.median_us == statistics.median(
        [sum(v) for v in zip(*(fused.kernel(k).samples_us for k in group.kernels))])


def test_medians_come_from_one_sample_per_run(fused):
    assert fused.runs == 3
    for kernel in fused.kernels:
        assert len(kernel.samples_us) == 3
        assert kernel.median_us == statistics.median(kernel.samples_us)
        assert kernel.calls_per_run == 1.0
        assert kernel.provider == "CPUExecutionProvider" and kernel.output_shapes
    assert fused.model_median_ms > 0 and fused.profiled_run_ms > 0
    assert fused.kernel_sum_ms == pytest.approx(
        statistics.median([sum(run) for run in zip(*(k.samples_us for k in fused.kernels))]) / 1e3)


def test_a_time_budget_measures_a_fast_model_for_more_runs_than_asked():
    """min_seconds: the run count comes from the warm-up runs' median, so a model of microseconds
    gets many more samples per kernel than `repeats`; every kernel has one per measured run."""
    profile = profile_model(_fusable_model(), repeats=2, warmup=2, min_seconds=0.05)
    assert profile.runs > 2
    assert all(len(kernel.samples_us) == profile.runs for kernel in profile.kernels)
    assert profile_model(_fusable_model(), repeats=2, warmup=2).runs == 2


def test_constant_folded_nodes_are_unmapped_with_a_reason(fused):
    assert fused.unmapped == {"const_add": "folded into an initializer by ONNX Runtime"}
    assert fused.group_of("const_add") is None and fused.kernel_of("const_add") is None


def test_without_ort_optimizations_kernels_are_the_nodes():
    profile = profile_model(_fusable_model(), repeats=2, warmup=0, threads=1, graph_optimization_level="disable")
    assert {k.ort_name: k.node_names for k in profile.kernels} == {
        n.name: (n.name,) for n in _fusable_model().graph.node}
    assert profile.unmapped == {}


def test_residual_convs_get_one_kernel_each():
    """Conv + Relu, then Conv + Add + Relu with 16 channels. Where MLAS has NCHWc kernels (x86),
    ORT turns all of it into one group (reorders + two NCHWc convs, the second one summing and
    activating); otherwise into FusedConv, Conv, Add, Relu. Either way each Conv has its own kernel."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "c1"], ["y1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["y1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "c2"], ["y2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["y2", "r1"], ["s"], name="residual"),
        helper.make_node("Relu", ["s"], ["out"], name="relu2"),
    ]
    model = _model(nodes, [tensor_info("x", [1, 16, 8, 8])],
                   [tensor_info("out", [1, 16, 8, 8])],
                   [_init("w1", 16, 16, 3, 3), _init("c1", 16), _init("w2", 16, 16, 3, 3), _init("c2", 16)])
    profile = profile_model(model, repeats=2, warmup=1, threads=1)
    _every_node_once(profile, {n.name for n in nodes})
    assert profile.kernel_of("conv1") is not profile.kernel_of("conv2")
    assert profile.kernel_of("relu1") is profile.kernel_of("conv1")
    if len(profile.group_of("conv1").kernels) > 1:  # NCHWc: ReorderInput / ReorderOutput are glue
        assert profile.kernel_of("residual") is profile.kernel_of("conv2") is profile.kernel_of("relu2")
        assert any(k.node_names == () for k in profile.kernels)


def _subgraph_model() -> onnx.ModelProto:
    """If (then: Add, Relu; else: Mul) feeding a Loop that adds x three times."""
    f44 = [4, 4]
    then_branch = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["t0"], name="add"),
         helper.make_node("Relu", ["t0"], ["t1"], name="relu")],
        "then", [], [tensor_info("t1", f44)])
    else_branch = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["e0"], name="mul")], "else", [],
                                    [tensor_info("e0", f44)])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
         helper.make_node("Add", ["acc_in", "x"], ["acc_out"], name="add")],
        "body",
        [tensor_info("i", [], TensorProto.INT64),
         tensor_info("cond_in", [], TensorProto.BOOL),
         tensor_info("acc_in", f44)],
        [tensor_info("cond_out", [], TensorProto.BOOL),
         tensor_info("acc_out", f44)])
    nodes = [helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch),
             helper.make_node("Loop", ["n", "", "y"], ["z"], name="loop", body=body)]
    inits = [numpy_helper.from_array(np.array(1, np.float32), "one"),
             numpy_helper.from_array(np.array(2, np.float32), "two"),
             numpy_helper.from_array(np.array(3, np.int64), "n")]
    return _model(nodes, [tensor_info("x", f44),
                          tensor_info("c", [], TensorProto.BOOL)],
                  [tensor_info("z", f44)], inits)


def test_subgraph_kernels_are_nested_under_their_parent():
    feeds = {"x": np.ones((4, 4), np.float32), "c": np.array(True)}
    profile = profile_model(_subgraph_model(), feeds, repeats=3, warmup=1, threads=1)
    names = {"branch", "loop", "branch/then_branch/add", "branch/then_branch/relu", "branch/else_branch/mul",
             "loop/body/keep_going", "loop/body/add"}
    _every_node_once(profile, names)
    body_add = profile.kernel("loop/body/add")
    assert body_add.parent == "loop" and body_add.calls_per_run == 3.0
    untaken = profile.kernel("branch/else_branch/mul")
    assert untaken.calls_per_run == 0.0 and untaken.samples_us == [0.0, 0.0, 0.0]
    loop = profile.kernel("loop")
    nested = [sum(v) for v in zip(profile.kernel("loop/body/add").samples_us,
                                   profile.kernel("loop/body/keep_going").samples_us)]
    assert loop.nested_us == nested
    assert loop.self_samples_us == [max(0.0, t - n) for t, n in zip(loop.samples_us, nested)]
    assert profile.group_of("loop").samples_us == loop.self_samples_us
    top = [sum(v) for v in zip(profile.kernel("branch").samples_us, loop.samples_us)]
    assert profile.kernel_sum_ms == pytest.approx(statistics.median(top) / 1e3)
    assert not profile.unmatched_events


def test_bad_arguments_raise_kiln_errors():
    model = _fusable_model()
    with pytest.raises(InputError, match="no input named"):
        profile_model(model, {"nope": np.zeros(3, np.float32)}, repeats=1, warmup=0)
    with pytest.raises(InputError, match="repeats >= 1"):
        profile_model(model, repeats=0)
    with pytest.raises(InputError, match="min_seconds >= 0"):
        profile_model(model, min_seconds=-1.0)
    with pytest.raises(InputError, match="onnx_ir.Model"):
        profile_model(42)  # type: ignore[arg-type]


def test_eliminated_identity_is_unmapped_and_keeps_its_consumers_apart():
    """ORT removes the Identity and both Gemm fusions read x: without noticing the replacement,
    the Identity's vanished output would join the two fusions into one group."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Identity", ["r"], ["alias"], name="identity"),
        helper.make_node("MatMul", ["alias", "W1"], ["m1"], name="matmul1"),
        helper.make_node("Add", ["m1", "b1"], ["y1"], name="add1"),
        helper.make_node("MatMul", ["alias", "W2"], ["m2"], name="matmul2"),
        helper.make_node("Add", ["m2", "b2"], ["y2"], name="add2"),
    ]
    model = _model(nodes, [tensor_info("x", [4, 8])],
                   [tensor_info("y1", [4, 16]),
                    tensor_info("y2", [4, 16])],
                   [_init("W1", 8, 16), _init("b1", 16), _init("W2", 8, 16), _init("b2", 16)])
    profile = profile_model(model, repeats=2, warmup=0, threads=1)
    _every_node_once(profile, {n.name for n in nodes})
    assert profile.unmapped == {"identity": "eliminated by ONNX Runtime (consumers read its input)"}
    assert set(profile.group_of("matmul1").node_names) == {"matmul1", "add1"}
    assert set(profile.group_of("matmul2").node_names) == {"matmul2", "add2"}


def test_unnamed_nodes_are_named_on_a_clone_and_ort_glue_is_matched():
    """fp16 on CPU: ORT inserts Casts and decomposes Softmax into unnamed nodes, whose events it
    names <OpType>_<index>. The caller's model keeps its unnamed nodes."""
    weight = numpy_helper.from_array(np.ones((8, 8), np.float16), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Softmax", ["m"], ["y"])]
    model = ir.serde.deserialize_model(make_model(
        nodes, [tensor_info("x", [4, 8], TensorProto.FLOAT16)], [tensor_info("y", [4, 8], TensorProto.FLOAT16)],
        [weight]))
    profile = profile_model(model, repeats=2, warmup=0, threads=1)
    assert all(not node.name for node in model.graph)
    assert not profile.unmatched_events and not profile.unmapped
    assert profile.mapped_nodes == 2
    assert all(k.calls_per_run == 1.0 for k in profile.kernels)
