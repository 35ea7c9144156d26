"""Finding residual blocks in hand-built graphs: which Adds are droppable blocks and why the
others are not (nested blocks, escaping internals, projection shortcuts, cross connections,
arithmetic without weights, broadcasting), block names from provenance, and dropping one."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from conftest import make_model, tensor_info
from onnx import helper, numpy_helper

import kiln
from kiln.ir.provenance import Origin, set_provenance
from kiln.passes.approximate.residual_blocks import analyze_add, drop_block, find_residual_blocks

DIM = 8


def _weight(name: str, rng: np.random.Generator, shape=(DIM, DIM)):
    return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name)


def residual_mlp(scales=(1.0, 1.0), head: bool = True, seed: int = 0):
    """x -> [h + s_k * W2_k relu(W1_k h)] per block -> (MatMul head) -> y."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    h = "x"
    for k, scale in enumerate(scales):
        inits += [_weight(f"w1_{k}", rng), _weight(f"w2_{k}", rng),
                  numpy_helper.from_array(np.array(scale, np.float32), f"s_{k}")]
        nodes += [
            helper.make_node("MatMul", [h, f"w1_{k}"], [f"a_{k}"], name=f"fc1_{k}"),
            helper.make_node("Relu", [f"a_{k}"], [f"r_{k}"], name=f"relu_{k}"),
            helper.make_node("MatMul", [f"r_{k}", f"w2_{k}"], [f"b_{k}"], name=f"fc2_{k}"),
            helper.make_node("Mul", [f"b_{k}", f"s_{k}"], [f"f_{k}"], name=f"scale_{k}"),
            helper.make_node("Add", [h, f"f_{k}"], [f"h_{k}"], name=f"add_{k}"),
        ]
        h = f"h_{k}"
    if head:
        inits.append(_weight("w_head", rng))
        nodes.append(helper.make_node("MatMul", [h, "w_head"], ["y"], name="head"))
    else:
        nodes[-1].output[0] = "y"
    return make_model(nodes, [tensor_info("x", [4, DIM])], [tensor_info("y", [4, DIM])], inits)


def _names(model: ir.Model) -> list[str]:
    return [b.add.name for b in find_residual_blocks(model)]


def _add(model: ir.Model, name: str) -> ir.Node:
    return next(n for n in model.graph if n.name == name)


def test_residual_mlp_has_one_block_per_add_with_its_nodes():
    model = kiln.capture(residual_mlp((1.0, 0.5, 2.0)))
    blocks = find_residual_blocks(model)
    assert [b.add.name for b in blocks] == ["add_0", "add_1", "add_2"]
    assert [n.name for n in blocks[1].nodes] == ["fc1_1", "relu_1", "fc2_1", "scale_1"]
    assert blocks[1].skip.name == "h_0" and blocks[1].branch.name == "f_1"
    assert [b.name for b in blocks] == ["add_0", "add_1", "add_2"]  # no provenance: the Add's name


def test_either_input_order_is_a_block():
    proto = residual_mlp((1.0,))
    add = next(n for n in proto.graph.node if n.op_type == "Add")
    add.input[:] = list(reversed(add.input))
    blocks = find_residual_blocks(kiln.capture(proto))
    assert len(blocks) == 1 and blocks[0].skip.name == "x"


def nested_blocks():
    """outer: y = x + Wc (a + Wb relu(a)) with a = Wa x; inner: a + Wb relu(a)."""
    rng = np.random.default_rng(1)
    inits = [_weight(n, rng) for n in ("wa", "wb", "wc")]
    nodes = [
        helper.make_node("MatMul", ["x", "wa"], ["a"], name="fa"),
        helper.make_node("Relu", ["a"], ["ra"], name="relu"),
        helper.make_node("MatMul", ["ra", "wb"], ["b"], name="fb"),
        helper.make_node("Add", ["a", "b"], ["inner"], name="inner_add"),
        helper.make_node("MatMul", ["inner", "wc"], ["c"], name="fc"),
        helper.make_node("Add", ["x", "c"], ["y"], name="outer_add"),
    ]
    return make_model(nodes, [tensor_info("x", [4, DIM])], [tensor_info("y", [4, DIM])], inits)


def test_nested_blocks_are_both_offered_and_the_outer_holds_the_inner():
    model = kiln.capture(nested_blocks())
    blocks = {b.add.name: b for b in find_residual_blocks(model)}
    assert set(blocks) == {"inner_add", "outer_add"}
    outer = {n.name for n in blocks["outer_add"].nodes}
    assert {n.name for n in blocks["inner_add"].removed_nodes} <= outer
    assert outer == {"fa", "relu", "fb", "inner_add", "fc"}


def test_dropping_inner_then_outer_leaves_the_identity():
    model = kiln.capture(nested_blocks())
    inner = analyze_add(model.graph, _add(model, "inner_add"))
    drop_block(model.graph, inner)
    outer = analyze_add(model.graph, _add(model, "outer_add"))
    assert not isinstance(outer, str) and {n.name for n in outer.nodes} == {"fa", "fc"}
    drop_block(model.graph, outer)
    assert len(list(model.graph)) == 1 and next(iter(model.graph)).op_type == "Identity"
    x = np.random.default_rng(0).standard_normal((4, DIM)).astype(np.float32)
    np.testing.assert_array_equal(kiln.optimize(model, level=0, validate=False)(x), x)


def test_block_whose_internals_escape_is_not_offered():
    proto = residual_mlp((1.0, 1.0))
    # relu_1's output is also read outside block 1, by a second graph output
    proto.graph.node.append(helper.make_node("ReduceSum", ["r_1"], ["side"], name="reads_inside", keepdims=0))
    proto.graph.output.append(tensor_info("side", []))
    model = kiln.capture(proto)
    assert _names(model) == ["add_0"]
    reason = analyze_add(model.graph, _add(model, "add_1"))
    assert isinstance(reason, str) and "escape" in reason and "r_1" in reason


def test_internal_graph_output_is_an_escape():
    proto = residual_mlp((1.0,))
    proto.graph.output.append(tensor_info("a_0", [4, DIM]))
    model = kiln.capture(proto)
    assert _names(model) == []
    assert "graph output" in analyze_add(model.graph, _add(model, "add_0"))


def bottleneck(projection: bool):
    """ResNet-style: Relu(Add(shortcut, conv(relu(conv(x))))) with an identity or 1x1-conv shortcut."""
    rng = np.random.default_rng(2)
    c = 4
    inits = [_weight("k1", rng, (c, c, 3, 3)), _weight("k2", rng, (c, c, 3, 3)), _weight("kp", rng, (c, c, 1, 1))]
    nodes = [
        helper.make_node("Conv", ["x", "k1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "k2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    shortcut = "x"
    if projection:
        nodes.append(helper.make_node("Conv", ["x", "kp"], ["proj"], name="projection"))
        shortcut = "proj"
    nodes += [helper.make_node("Add", [shortcut, "c2"], ["s"], name="add"),
              helper.make_node("Relu", ["s"], ["y"], name="relu_out")]
    return make_model(nodes, [tensor_info("x", [1, c, 6, 6])], [tensor_info("y", [1, c, 6, 6])], inits)


def test_identity_shortcut_is_a_block_and_its_relu_stays():
    model = kiln.capture(bottleneck(projection=False))
    (block,) = find_residual_blocks(model)
    assert {n.name for n in block.nodes} == {"conv1", "relu1", "conv2"}
    drop_block(model.graph, block)
    assert [n.op_type for n in model.graph] == ["Relu"]
    assert next(iter(model.graph)).inputs[0].name == "x"


def test_projection_shortcut_is_not_offered():
    model = kiln.capture(bottleneck(projection=True))
    assert _names(model) == []
    assert analyze_add(model.graph, _add(model, "add")) == "neither input depends on the other"


def test_branch_reading_an_earlier_hidden_state_is_not_a_block():
    proto = residual_mlp((1.0, 1.0), head=False)
    # block 1's branch also reads x (the stream before block 0): a cross connection
    fc1 = next(n for n in proto.graph.node if n.name == "fc1_1")
    fc1.input[0] = "mixed"
    proto.graph.node.insert(list(proto.graph.node).index(fc1),
                            helper.make_node("Add", ["h_0", "x"], ["mixed"], name="mix"))
    model = kiln.capture(proto)
    assert "add_1" not in _names(model)
    assert "residual stream" in analyze_add(model.graph, _add(model, "add_1"))


def test_side_input_from_a_graph_input_is_allowed():
    """An attention-mask-like input the branch reads (computed from a graph input) is fine."""
    proto = residual_mlp((1.0,))
    proto.graph.input.append(tensor_info("mask", [4, DIM]))
    proto.graph.node.insert(0, helper.make_node("Neg", ["mask"], ["neg_mask"], name="mask_prep"))
    relu = next(n for n in proto.graph.node if n.name == "relu_0")
    relu.input[0] = "masked"
    proto.graph.node.insert(list(proto.graph.node).index(relu),
                            helper.make_node("Add", ["a_0", "neg_mask"], ["masked"], name="apply_mask"))
    model = kiln.capture(proto)
    (block,) = find_residual_blocks(model)
    assert "apply_mask" in {n.name for n in block.nodes} and "mask_prep" not in {n.name for n in block.nodes}


def test_arithmetic_residual_without_weights_is_not_a_block():
    """tanh-GELU's x + 0.044715 x^3 has the Add(x, f(x)) shape but no layer."""
    nodes = [
        helper.make_node("Pow", ["x", "three"], ["cube"], name="cube"),
        helper.make_node("Mul", ["cube", "k"], ["scaled"], name="scale"),
        helper.make_node("Add", ["x", "scaled"], ["y"], name="add"),
    ]
    inits = [numpy_helper.from_array(np.array(3.0, np.float32), "three"),
             numpy_helper.from_array(np.array(0.044715, np.float32), "k")]
    model = kiln.capture(make_model(nodes, [tensor_info("x", [4, DIM])], [tensor_info("y", [4, DIM])], inits))
    assert _names(model) == []
    assert "no layer with weights" in analyze_add(model.graph, _add(model, "add"))


def test_weight_read_through_transpose_counts_as_a_layer():
    proto = residual_mlp((1.0,))
    fc2 = next(n for n in proto.graph.node if n.name == "fc2_0")
    fc2.input[1] = "w2_t"
    proto.graph.node.insert(0, helper.make_node("Transpose", ["w2_0"], ["w2_t"], name="transpose_weight"))
    fc1 = next(n for n in proto.graph.node if n.name == "fc1_0")
    fc1.op_type = "Add"  # the only other weighted op is gone
    assert _names(kiln.capture(proto)) == ["add_0"]


def test_broadcasting_add_is_not_a_block():
    rng = np.random.default_rng(3)
    inits = [_weight("w", rng, (DIM, DIM)), numpy_helper.from_array(np.ones((4, 1), np.float32), "col")]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"], name="fc"),
        helper.make_node("Mul", ["xw", "col"], ["f"], name="expand"),  # [1, 8] * [4, 1] -> [4, 8]
        helper.make_node("Add", ["x", "f"], ["y"], name="add"),
    ]
    proto = make_model(nodes, [tensor_info("x", [1, DIM])], [tensor_info("y", [4, DIM])], inits)
    model = kiln.capture(proto)
    assert _names(model) == []
    assert "broadcasts" in analyze_add(model.graph, _add(model, "add"))


def test_dropping_a_block_that_feeds_the_graph_output_keeps_the_output_name():
    model = kiln.capture(residual_mlp((1.0, 1.0), head=False))
    blocks = find_residual_blocks(model)
    drop_block(model.graph, blocks[-1])
    assert [v.name for v in model.graph.outputs] == ["y"]
    x = np.random.default_rng(0).standard_normal((4, DIM)).astype(np.float32)
    h0 = kiln.optimize(residual_mlp((1.0,), head=False), level=0, validate=False)(x)
    np.testing.assert_allclose(kiln.optimize(model, level=0, validate=False)(x), h0, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("modules", "expected"), [
    # every weight of `layer.0.attention` is inside the block
    ({"fc1_0": "model.encoder.layer.0.attention.self.query", "fc2_0": "model.encoder.layer.0.attention.output.dense",
      "fc1_1": "model.encoder.layer.0.intermediate.dense", "fc2_1": "model.encoder.layer.0.output.dense"},
     ["layer.0.attention", "layer.0.intermediate+output"]),
    ({"fc1_0": "transformer.h.3.attn.c_attn", "fc2_0": "transformer.h.3.attn.c_proj",
      "fc1_1": "transformer.h.3.mlp.c_fc", "fc2_1": "transformer.h.3.mlp.c_proj"},
     ["h.3.attn", "h.3.mlp"]),
])
def test_blocks_are_named_after_the_modules_owning_their_weights(modules, expected):
    model = kiln.capture(residual_mlp((1.0, 1.0), head=False))
    for node in model.graph:
        if node.name in modules:
            set_provenance(node, [Origin(modules[node.name], node.name)])
    assert [b.name for b in find_residual_blocks(model)] == expected
