"""Cost of control flow and data-dependent ops: If prices the branch taken, Loop and Scan bodies
are priced per iteration, NonMaxSuppression / RoiAlign / TopK are priced at a bound and listed,
and a recurrent layer re-reads its recurrent weights every step."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from conftest import make_model, tensor_info
from onnx import TensorProto, helper, numpy_helper

from kiln.cost_model.analytical import (
    IOU_FLOPS,
    RunFacts,
    loop_trip_count,
    model_cost,
)
from kiln.cost_model.measure.observed import observe, price_at_inputs
from kiln.cost_model.model import CostModel

F32 = 4


def _branch(name: str, op: str, size: int):
    """A branch computing y = op(x, x) on the outer x of shape [size, size]."""
    return helper.make_graph([helper.make_node(op, ["x", "x"], [f"{name}_y"])], name, [],
                             [tensor_info(f"{name}_y", [size, size])])


def _if_model():
    then_branch = _branch("then", "MatMul", 8)
    else_branch = _branch("else", "Add", 8)
    return make_model(
        [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
         helper.make_node("Greater", ["s", "zero"], ["cond"]),
         helper.make_node("If", ["cond"], ["y"], name="choose", then_branch=then_branch, else_branch=else_branch)],
        [tensor_info("x", [8, 8])], [tensor_info("y", [8, 8])],
        [numpy_helper.from_array(np.array(0.0, np.float32), "zero")],
    )


def test_if_prices_both_branches_when_the_condition_is_unknown_and_lists_it():
    cost = model_cost(ir.serde.deserialize_model(_if_model()))
    assert cost.both_branches == ["choose"]
    ops = sorted(n.op_type for n, _ in cost.per_node)
    assert "MatMul" in ops and "Add" in ops


def test_if_prices_only_the_branch_a_run_took():
    model = ir.serde.deserialize_model(_if_model())
    facts = observe(model, {"x": np.ones((8, 8), np.float32)})
    assert facts.taken_branches == {"choose": "then_branch"}
    cost = model_cost(model, facts=facts)
    ops = [n.op_type for n, _ in cost.per_node]
    assert "MatMul" in ops and "Add" not in ops and cost.skipped_nodes == 1 and not cost.both_branches
    facts = observe(model, {"x": -np.ones((8, 8), np.float32)})
    assert facts.taken_branches == {"choose": "else_branch"}
    assert "MatMul" not in [n.op_type for n, _ in model_cost(model, facts=facts).per_node]


def _loop_model(trip_input: bool):
    """Loop M times over acc = acc @ W (8x8), M a constant 5 or a graph input."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("MatMul", ["acc_in", "W"], ["acc_out"])],
        "body",
        [tensor_info("i", [], TensorProto.INT64), tensor_info("cond_in", [], TensorProto.BOOL),
         tensor_info("acc_in", [8, 8])],
        [tensor_info("cond_out", [], TensorProto.BOOL), tensor_info("acc_out", [8, 8])],
    )
    inits = [numpy_helper.from_array(np.eye(8, dtype=np.float32), "W"),
             numpy_helper.from_array(np.array(True), "true")]
    inputs = [tensor_info("x", [8, 8])]
    if trip_input:
        inputs.append(tensor_info("m", [], TensorProto.INT64))
    else:
        inits.append(numpy_helper.from_array(np.array(5, np.int64), "m"))
    return make_model([helper.make_node("Loop", ["m", "true", "x"], ["y"], name="repeat", body=body)],
                      inputs, [tensor_info("y", [8, 8])], inits)


def test_loop_with_a_constant_trip_count_prices_its_body_per_iteration():
    model = ir.serde.deserialize_model(_loop_model(trip_input=False))
    assert loop_trip_count(next(iter(model.graph))) == 5
    cost = model_cost(model)
    matmul = next(c for n, c in cost.per_node if n.op_type == "MatMul")
    assert matmul.runs == 5 and matmul.flops == 5 * 2 * 8 * 8 * 8
    assert cost.trip_counts == {"repeat": 5} and "Loop" not in cost.unknown_ops


def test_loop_with_an_unknown_trip_count_is_listed_until_a_run_shows_it():
    model = ir.serde.deserialize_model(_loop_model(trip_input=True))
    assert "Loop" in model_cost(model).unknown_ops
    facts = observe(model, {"x": np.eye(8, dtype=np.float32), "m": np.array(3, np.int64)})
    assert facts.trip_counts == {"repeat": 3}
    cost = model_cost(model, facts=facts)
    assert "Loop" not in cost.unknown_ops
    assert next(c for n, c in cost.per_node if n.op_type == "MatMul").runs == 3


def test_model_estimate_scales_a_loop_body_and_reports_it_inside_the_loop():
    model = ir.serde.deserialize_model(_loop_model(trip_input=False))
    cost_model = CostModel.default(2, learned=False)
    estimate = cost_model.model_cost(model)
    loop = next(n for n, _ in estimate.per_node if n.op_type == "Loop")
    matmul = next(e for n, e in estimate.per_node if n.op_type == "MatMul")
    assert matmul.runs == 5
    assert abs(matmul.per_run().ms * 5 - matmul.ms) < 1e-9
    assert estimate.inclusive_ms(loop) >= matmul.ms
    # the parts a profiler's Loop kernel holds, each of its own class: the Loop, then its body
    parts = estimate.parts(loop)
    assert parts[0].op == "Loop" and matmul in parts[1:]
    assert sum(p.ms for p in parts) == estimate.inclusive_ms(loop)


def test_scan_prices_its_body_once_per_element_of_the_scan_axis():
    body = helper.make_graph([helper.make_node("Add", ["s_in", "x_t"], ["s_out"]),
                              helper.make_node("Identity", ["s_out"], ["y_t"])], "body",
                             [tensor_info("s_in", [4]), tensor_info("x_t", [4])],
                             [tensor_info("s_out", [4]), tensor_info("y_t", [4])])
    proto = make_model([helper.make_node("Scan", ["s0", "xs"], ["s", "ys"], name="cumulate", body=body,
                                         num_scan_inputs=1)],
                       [tensor_info("s0", [4]), tensor_info("xs", [7, 4])],
                       [tensor_info("s", [4]), tensor_info("ys", [7, 4])])
    cost = model_cost(ir.serde.deserialize_model(proto))
    assert cost.trip_counts == {"cumulate": 7}
    assert next(c for n, c in cost.per_node if n.op_type == "Add").flops == 7 * 4


def test_non_max_suppression_and_roi_align_are_priced_at_a_bound_and_listed():
    proto = make_model(
        [helper.make_node("NonMaxSuppression", ["boxes", "scores", "limit"], ["selected"]),
         helper.make_node("RoiAlign", ["feat", "rois", "idx"], ["pooled"], output_height=7, output_width=7,
                          sampling_ratio=2)],
        [tensor_info("boxes", [1, 100, 4]), tensor_info("scores", [1, 3, 100]), tensor_info("feat", [1, 16, 32, 32]),
         tensor_info("rois", [10, 4]), tensor_info("idx", [10], TensorProto.INT64)],
        [tensor_info("selected", None, TensorProto.INT64), tensor_info("pooled", None)],
        [numpy_helper.from_array(np.array([20], np.int64), "limit")],
        opset=16,
    )
    cost = model_cost(ir.serde.deserialize_model(proto))
    assert cost.defaulted_ops == {"NonMaxSuppression": 1, "RoiAlign": 1}
    nms = next(c for n, c in cost.per_node if n.op_type == "NonMaxSuppression")
    assert nms.flops >= 3 * 20 * 100 * IOU_FLOPS and nms.known
    roi = next(c for n, c in cost.per_node if n.op_type == "RoiAlign")
    assert roi.flops > 10 * 16 * 7 * 7 * 4


def test_lstm_reads_its_recurrent_weights_once_per_time_step():
    hidden, inputs, steps = 16, 8, 10
    w = numpy_helper.from_array(np.zeros((1, 4 * hidden, inputs), np.float32), "W")
    r = numpy_helper.from_array(np.zeros((1, 4 * hidden, hidden), np.float32), "R")
    proto = make_model([helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=hidden)],
                       [tensor_info("x", [steps, 1, inputs])], [tensor_info("y", None)], [w, r])
    lstm = next(c for n, c in model_cost(ir.serde.deserialize_model(proto)).per_node)
    once = (steps * inputs + 4 * hidden * inputs + 4 * hidden * hidden) * F32
    assert lstm.bytes_read == once + (steps - 1) * 4 * hidden * hidden * F32
    assert lstm.flops > 0 and lstm.known


def _nonzero_model(mask_shape):
    """MatMul(Cast(Transpose(NonZero(mask))), W): the product's rows are the mask's true count."""
    proto = make_model(
        [helper.make_node("NonZero", ["mask"], ["nz"]),
         helper.make_node("Transpose", ["nz"], ["idx"], perm=[1, 0]),
         helper.make_node("Cast", ["idx"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("MatMul", ["f", "W"], ["y"])],
        [tensor_info("mask", mask_shape, TensorProto.BOOL)], [tensor_info("y", [None, 32])],
        [numpy_helper.from_array(np.ones((1, 32), np.float32), "W")],
    )
    return ir.serde.deserialize_model(proto)


def test_data_dependent_shapes_are_priced_at_what_a_run_shows():
    # NonZero's output length depends on the data: inference cannot size the MatMul after it
    model = _nonzero_model([64])
    assert model_cost(model).missing_shapes.get("MatMul") == 1
    mask = np.zeros(64, bool)
    mask[:10] = True
    estimate, facts = price_at_inputs(CostModel.default(2, learned=False), model, {"mask": mask})
    assert facts is not None and facts.shapes["f"] == (10, 1)
    assert not estimate.missing_shapes
    assert next(e for n, e in estimate.per_node if n.op_type == "MatMul").flops == 2 * 10 * 32 * 1


def test_run_facts_bind_unnamed_input_dims():
    proto = make_model([helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])],
                       [tensor_info("x", [1, 3, None, None])], [tensor_info("y", None)],
                       [numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "W")])
    model = ir.serde.deserialize_model(proto)
    assert model_cost(model).missing_shapes == {"Conv": 1}
    cost = model_cost(model, facts=RunFacts(shapes={"x": (1, 3, 32, 48)}))
    conv = cost.per_node[0][1]
    assert conv.known and conv.flops == 2 * 8 * 32 * 48 * 27


def test_the_graph_ort_runs_is_priced_at_the_shapes_ort_used():
    # unnamed H and W, and ORT's NCHWc convs whose outputs it saves without shapes or types
    rng = np.random.default_rng(0)
    proto = make_model(
        [helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c1"], ["r1"]),
         helper.make_node("Conv", ["r1", "W2"], ["c2"], pads=[1, 1, 1, 1]),
         helper.make_node("GlobalAveragePool", ["c2"], ["y"])],
        [tensor_info("x", [1, 16, None, None])], [tensor_info("y", [1, 32, 1, 1])],
        [numpy_helper.from_array(rng.standard_normal((32, 16, 3, 3)).astype(np.float32), "W1"),
         numpy_helper.from_array(rng.standard_normal((32, 32, 3, 3)).astype(np.float32), "W2")],
    )
    model = ir.serde.deserialize_model(proto)
    feeds = {"x": rng.standard_normal((1, 16, 40, 56)).astype(np.float32)}
    estimate, _ = price_at_inputs(CostModel.default(2, learned=False), model, feeds, compiled=True)
    assert not estimate.missing_shapes and not estimate.unknown_ops
    convs = [e for n, e in estimate.per_node if n.op_type == "Conv"]
    assert len(convs) == 2 and sum(e.flops for e in convs) >= 2 * 40 * 56 * 32 * (16 + 32) * 9


def test_kiln_optimize_prices_a_dynamic_model_at_the_shapes_of_its_sample_run():
    from kiln.ir.shapes import bind_shapes
    from kiln.optimizer import Optimizer
    from kiln.passes.infra.cost_prediction import CostPrediction

    # the MatMul after NonZero cannot be sized by inference; one run on the samples sizes it
    model = _nonzero_model(["n"])
    optimizer = Optimizer()
    bound = bind_shapes(list(model.graph.inputs))
    mask = np.ones(bound.shape("mask"), bool)
    prediction = CostPrediction(CostModel.default(2, learned=False), dims=bound.dims,
                                observe=optimizer._observer(model, {"mask": mask}))
    prediction.run_before(model, None)
    facts = prediction.facts
    assert facts.shapes["f"] == (bound.shape("mask")[0], 1)
    assert not model_cost(model, dims=bound.dims, facts=facts).missing_shapes
    assert not prediction.initial.missing_shapes


def test_tensors_inside_the_branch_taken_are_observed_by_inlining_it():
    # then: MatMul(Cast(Transpose(NonZero(mask))), W), sized only by a run; else: a constant
    then_branch = helper.make_graph(
        [helper.make_node("NonZero", ["mask"], ["nz"]),
         helper.make_node("Transpose", ["nz"], ["idx"], perm=[1, 0]),
         helper.make_node("Cast", ["idx"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("MatMul", ["f", "W"], ["then_y"])],
        "then", [], [tensor_info("then_y", None)])
    else_branch = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["shape"], ["else_y"],
                          value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0]))],
        "else", [], [tensor_info("else_y", None)])
    proto = make_model(
        [helper.make_node("ReduceMax", ["mask_f"], ["any"], keepdims=0),
         helper.make_node("Greater", ["any", "zero"], ["cond"]),
         helper.make_node("Cast", ["mask_f"], ["mask"], to=TensorProto.BOOL),
         helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch)],
        [tensor_info("mask_f", [64])], [tensor_info("y", None)],
        [numpy_helper.from_array(np.ones((1, 32), np.float32), "W"),
         numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
         numpy_helper.from_array(np.array([1, 32], np.int64), "shape")],
    )
    model = ir.serde.deserialize_model(proto)
    assert "MatMul" in model_cost(model).missing_shapes
    mask = np.zeros(64, np.float32)
    mask[:5] = 1.0
    facts = observe(model, {"mask_f": mask})
    assert facts.taken_branches == {"branch": "then_branch"} and facts.shapes["f"] == (5, 1)
    cost = model_cost(model, facts=facts)
    assert not cost.missing_shapes and not cost.both_branches
    assert next(c for n, c in cost.per_node if n.op_type == "MatMul").flops == 2 * 5 * 32
