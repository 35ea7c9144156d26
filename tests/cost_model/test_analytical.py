"""Analytical cost model: FLOPs and bytes per ONNX op against hand-computed values."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from conftest import make_model, tensor_info
from onnx import TensorProto, helper, numpy_helper

from kiln.cost_model.analytical import (
    GELU_ERF_FLOPS_PER_ELEMENT,
    LAYERNORM_FLOPS_PER_ELEMENT,
    SOFTMAX_FLOPS_PER_ELEMENT,
    ModelCost,
    OpCost,
    model_cost,
    node_cost,
)

F32 = 4  # bytes


def _cost(proto, **kwargs) -> ModelCost:
    return model_cost(ir.serde.deserialize_model(proto), **kwargs)


def _only(cost: ModelCost, op_type: str) -> OpCost:
    matches = [c for n, c in cost.per_node if n.op_type == op_type]
    assert len(matches) == 1, f"expected one {op_type}, got {len(matches)}"
    return matches[0]


def _init(name: str, shape, dtype=np.float32):
    return numpy_helper.from_array(np.zeros(shape, dtype), name)


# --- MatMul ---------------------------------------------------------------------------------


def test_matmul_batched_with_broadcast_weight():
    # (2,3,4,5) @ (5,6) -> (2,3,4,6): 2 * 4*6*5 * batch 6
    proto = make_model(
        [helper.make_node("MatMul", ["a", "b"], ["y"])],
        [tensor_info("a", [2, 3, 4, 5])],
        [tensor_info("y", None)],
        [_init("b", (5, 6))],
    )
    cost = _only(_cost(proto), "MatMul")
    assert cost == OpCost("MatMul", 2 * 2 * 3 * 4 * 6 * 5, (120 + 30) * F32, 144 * F32, True, "fp32")


def test_matmul_broadcasts_batch_dims_of_both_operands():
    # (3,1,4,5) @ (1,2,5,7) -> (3,2,4,7): batch 3*2, M=4, N=7, K=5
    proto = make_model(
        [helper.make_node("MatMul", ["a", "b"], ["y"])],
        [tensor_info("a", [3, 1, 4, 5]), tensor_info("b", [1, 2, 5, 7])],
        [tensor_info("y", None)],
    )
    cost = _only(_cost(proto), "MatMul")
    assert cost.flops == 2 * (3 * 2) * 4 * 7 * 5 == 1680
    assert (cost.bytes_read, cost.bytes_written) == ((60 + 70) * F32, 168 * F32)
    assert cost.known


def test_matmul_with_vector_operand():
    # (5,) @ (2,5,6) -> (2,6): M=1 after promotion
    proto = make_model(
        [helper.make_node("MatMul", ["a", "b"], ["y"])],
        [tensor_info("a", [5]), tensor_info("b", [2, 5, 6])],
        [tensor_info("y", None)],
    )
    assert _only(_cost(proto), "MatMul").flops == 2 * 2 * 6 * 5


# --- Gemm -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "attrs", "with_c", "expected"),
    [
        ((4, 8), (8, 16), {}, False, 2 * 4 * 16 * 8),
        ((4, 8), (8, 16), {}, True, 2 * 4 * 16 * 8 + 4 * 16),
        ((8, 4), (8, 16), {"transA": 1}, False, 2 * 4 * 16 * 8),
        ((4, 8), (16, 8), {"transB": 1}, True, 2 * 4 * 16 * 8 + 4 * 16),
        ((8, 4), (16, 8), {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}, True, 2 * 4 * 16 * 8 + 4 * 16),
    ],
)
def test_gemm(a_shape, b_shape, attrs, with_c, expected):
    inputs = ["a", "b", "c"] if with_c else ["a", "b"]
    inits = [_init("b", b_shape)] + ([_init("c", (16,))] if with_c else [])
    proto = make_model(
        [helper.make_node("Gemm", inputs, ["y"], **attrs)],
        [tensor_info("a", list(a_shape))],
        [tensor_info("y", None)],
        inits,
    )
    cost = _only(_cost(proto), "Gemm")
    assert cost.flops == expected
    assert cost.bytes_read == (32 + 128 + (16 if with_c else 0)) * F32
    assert cost.bytes_written == 64 * F32
    assert cost.known


# --- Conv -----------------------------------------------------------------------------------


def test_conv_groups_stride_dilation_padding():
    # X (1,4,11,11), W (6, 4/2, 3, 3), groups 2, stride 2, dilation 2, pads 1:
    # effective kernel 2*(3-1)+1 = 5, H_out = (11 + 2 - 5) // 2 + 1 = 5 -> Y (1,6,5,5) = 150
    # FLOPs = 2 * 150 * (2 * 3 * 3) + 150 (bias)
    proto = make_model(
        [
            helper.make_node(
                "Conv", ["x", "w", "b"], ["y"], group=2, strides=[2, 2], dilations=[2, 2], pads=[1, 1, 1, 1]
            )
        ],
        [tensor_info("x", [1, 4, 11, 11])],
        [tensor_info("y", None)],
        [_init("w", (6, 2, 3, 3)), _init("b", (6,))],
    )
    model = ir.serde.deserialize_model(proto)
    cost = model_cost(model)
    conv = _only(cost, "Conv")
    assert conv.flops == 2 * 150 * 18 + 150 == 5550
    assert conv.bytes_read == (4 * 121 + 6 * 2 * 9 + 6) * F32
    assert conv.bytes_written == 150 * F32
    assert conv.known and cost.unknown_ops == {}


def test_conv_without_bias_1d_and_3d():
    proto = make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"]), helper.make_node("Conv", ["v", "k"], ["z"])],
        [tensor_info("x", [2, 3, 10]), tensor_info("v", [1, 2, 4, 4, 4])],
        [tensor_info("y", None), tensor_info("z", None)],
        [_init("w", (4, 3, 3)), _init("k", (3, 2, 2, 2, 2))],
    )
    flops = [c.flops for _, c in _cost(proto).per_node]
    # 1-D: Y (2,4,8) = 64 outputs x 2*3*3; 3-D: Z (1,3,3,3,3) = 81 outputs x 2*2*8
    assert flops == [2 * 64 * 9, 2 * 81 * 16]


def test_conv_transpose():
    # X (1,4,3,3), W (4, 2, 3, 3) -> Y (1,2,5,5); each input element meets 2*3*3 weights
    proto = make_model(
        [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"])],
        [tensor_info("x", [1, 4, 3, 3])],
        [tensor_info("y", None)],
        [_init("w", (4, 2, 3, 3)), _init("b", (2,))],
    )
    assert _only(_cost(proto), "ConvTranspose").flops == 2 * 36 * 18 + 50


# --- Normalisations, element-wise, reductions -----------------------------------------------


def test_softmax():
    proto = make_model(
        [helper.make_node("Softmax", ["x"], ["y"], axis=-1)], [tensor_info("x", [2, 3, 8])], [tensor_info("y", None)]
    )
    cost = _only(_cost(proto), "Softmax")
    assert SOFTMAX_FLOPS_PER_ELEMENT == 5
    assert cost == OpCost("Softmax", 48 * 5, 48 * F32, 48 * F32, True, "fp32")


def test_layer_normalization():
    proto = make_model(
        [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1)],
        [tensor_info("x", [2, 4, 16])],
        [tensor_info("y", None)],
        [_init("g", (16,)), _init("b", (16,))],
    )
    cost = _only(_cost(proto), "LayerNormalization")
    assert LAYERNORM_FLOPS_PER_ELEMENT == 8
    assert cost == OpCost("LayerNormalization", 128 * 8, (128 + 32) * F32, 128 * F32, True, "fp32")


def test_elementwise_reduction_and_gelu():
    proto = make_model(
        [
            helper.make_node("Add", ["x", "bias"], ["s"]),  # broadcast (2,8) + (8,)
            helper.make_node("Gelu", ["s"], ["g"]),
            helper.make_node("ReduceMean", ["g", "axes"], ["m"], keepdims=1),
            helper.make_node("Sum", ["x", "x", "x"], ["t"]),
            helper.make_node("Reshape", ["t", "shape"], ["r"]),
        ],
        [tensor_info("x", [2, 8])],
        [tensor_info("m", None), tensor_info("r", None)],
        [
            _init("bias", (8,)),
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
            numpy_helper.from_array(np.array([16], np.int64), "shape"),
        ],
    )
    flops = {n.op_type: c.flops for n, c in _cost(proto).per_node}
    assert flops == {
        "Add": 16,
        "Gelu": GELU_ERF_FLOPS_PER_ELEMENT * 16,
        "ReduceMean": 16 + 2,  # one add per input element, one division per output
        "Sum": 2 * 16,  # three operands: two adds per element
        "Reshape": 0,
    }


# --- Attention ------------------------------------------------------------------------------

# Q, K, V: (batch 1, heads 4, seq 8, head 16)
_QKV = [tensor_info(n, [1, 4, 8, 16]) for n in ("q", "k", "v")]
# Q K^T: (1,4,8,8) = 256 scores x 2*16; scale: 256; softmax: 5*256; P V: (1,4,8,16) = 512 x 2*8
_ATTENTION_FLOPS = 2 * 256 * 16 + 256 + 5 * 256 + 2 * 512 * 8


def test_tiny_attention_block():
    proto = make_model(
        [
            helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", ["q", "kt"], ["scores"]),
            helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
            helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1),
            helper.make_node("MatMul", ["probs", "v"], ["y"]),
        ],
        _QKV,
        [tensor_info("y", None)],
        [numpy_helper.from_array(np.array(0.25, np.float32), "scale")],
    )
    cost = _cost(proto)
    assert [c.flops for _, c in cost.per_node] == [0, 8192, 256, 1280, 8192]
    assert cost.flops == _ATTENTION_FLOPS == 17920
    # bytes: transpose 512 in and out; QK^T 512+512 in, 256 out; Mul 256+1 in, 256 out;
    # softmax 256 in and out; PV 256+512 in, 512 out
    assert cost.bytes_read == (512 + 1024 + 257 + 256 + 768) * F32
    assert cost.bytes_written == (512 + 256 + 256 + 256 + 512) * F32
    assert cost.bytes == cost.bytes_read + cost.bytes_written
    assert cost.unknown_ops == {} and cost.missing_shapes == {}
    assert cost.flops_by_precision == {"fp32": 17920}


def test_onnx_attention_op_matches_the_decomposed_block():
    proto = make_model(
        [helper.make_node("Attention", ["q", "k", "v"], ["y"])], _QKV, [tensor_info("y", None)], opset=23
    )
    cost = _only(_cost(proto), "Attention")
    assert cost.flops == _ATTENTION_FLOPS
    assert cost.known


def test_contrib_attention_with_packed_qkv_projection():
    # input (1,8,32), weights (32,96), bias (96,), 4 heads of 8
    proto = make_model(
        [helper.make_node("Attention", ["x", "w", "b"], ["y"], domain="com.microsoft", num_heads=4)],
        [tensor_info("x", [1, 8, 32])],
        [tensor_info("y", [1, 8, 32])],
        [_init("w", (32, 96)), _init("b", (96,))],
    )
    proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    projection = 2 * 8 * 32 * 96 + 8 * 96
    core = 2 * 8 * 8 * 32 + 2 * 8 * 8 * 32 + 6 * 4 * 8 * 8  # QK^T, PV, softmax + scale
    cost = _cost(proto)
    assert cost.flops == projection + core
    assert cost.unknown_ops == {}


# --- Integer ops, data movement --------------------------------------------------------------


def test_integer_ops_are_labelled_int8():
    proto = make_model(
        [
            helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
            helper.make_node("MatMulInteger", ["xq", "w", "xz"], ["acc"]),
        ],
        [tensor_info("x", [4, 8])],
        [tensor_info("acc", None, TensorProto.INT32)],
        [_init("w", (8, 16), np.int8)],
    )
    cost = _cost(proto)
    dq, mm = (c for _, c in cost.per_node)
    assert dq.flops == 6 * 32
    assert (dq.bytes_read, dq.bytes_written) == (32 * F32, 32 + 4 + 1)
    assert mm == OpCost("MatMulInteger", 2 * 4 * 16 * 8, 32 + 128 + 1, 64 * 4, True, "int8")
    assert cost.flops_by_precision == {"int8": 1024, "fp32": 192}


def test_gather_reads_rows_not_the_whole_table():
    proto = make_model(
        [helper.make_node("Gather", ["table", "ids"], ["emb"])],
        [tensor_info("ids", [1, 4], TensorProto.INT64)],
        [tensor_info("emb", None)],
        [_init("table", (1000, 16))],
    )
    cost = _only(_cost(proto), "Gather")
    assert cost == OpCost("Gather", 0, 4 * 8 + 64 * F32, 64 * F32, True, "fp32")


# --- Unknown ops, missing shapes, caller's model untouched ----------------------------------


def test_unknown_custom_op_is_listed_and_counted_conservatively():
    proto = make_model(
        [helper.make_node("Mystery", ["x"], ["m"], domain="com.example"), helper.make_node("Relu", ["m"], ["y"])],
        [tensor_info("x", [3, 5])],
        [tensor_info("y", [3, 5])],
    )
    proto.graph.value_info.append(tensor_info("m", [3, 5]))
    proto.opset_import.append(helper.make_opsetid("com.example", 1))
    cost = _cost(proto)
    mystery, relu = (c for _, c in cost.per_node)
    assert mystery == OpCost("Mystery", 15, 15 * F32, 15 * F32, False, "fp32")  # one FLOP per output element
    assert relu.known and relu.flops == 15
    assert cost.unknown_ops == {"com.example::Mystery": 1}
    assert cost.missing_shapes == {}
    assert cost.flops == 30


def test_symbolic_dims_are_missing_until_bound():
    proto = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [tensor_info("x", ["batch", 4])],
        [tensor_info("y", None)],
        [_init("w", (4, 3))],
    )
    unbound = _cost(proto)
    assert unbound.missing_shapes == {"MatMul": 1} and unbound.unknown_ops == {}
    assert not unbound.per_node[0][1].known
    bound = _cost(proto, dims={"batch": 2})
    assert bound.flops == 2 * 2 * 3 * 4
    assert bound.per_node[0][1].known and bound.missing_shapes == {}


def test_model_cost_leaves_the_callers_model_untouched(mlp_model):
    model = ir.serde.deserialize_model(mlp_model)
    before = {v.name: v.shape for n in model.graph for v in n.outputs}
    initializers = dict(model.graph.initializers)
    cost = model_cost(model)
    assert all(shape is None for name, shape in before.items() if name != "y")
    assert {v.name: v.shape for n in model.graph for v in n.outputs} == before
    assert dict(model.graph.initializers) == initializers
    assert len(model.graph.inputs) == 1
    # and the costs are reported against the caller's own nodes
    assert [n for n, _ in cost.per_node] == list(model.graph)
    # x (2,4) @ W (4,3) twice: 2*2*3*4 each
    assert [c.flops for n, c in cost.per_node if n.op_type == "MatMul"] == [48, 48]


def test_node_cost_uses_the_shapes_on_the_node():
    x = ir.Value(name="x", shape=ir.Shape([8, 32]), type=ir.TensorType(ir.DataType.FLOAT))
    w = ir.Value(name="w", shape=ir.Shape([32, 64]), type=ir.TensorType(ir.DataType.FLOAT16))
    node = ir.Node("", "MatMul", [x, w])
    node.outputs[0].shape = ir.Shape([8, 64])
    node.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
    cost = node_cost(node)
    assert cost == OpCost("MatMul", 2 * 8 * 64 * 32, 8 * 32 * 4 + 32 * 64 * 2, 8 * 64 * 4, True, "fp32")
    assert cost.bytes == cost.bytes_read + cost.bytes_written
    node.outputs[0].shape = None
    assert not node_cost(node).known


def test_external_data_model(tmp_path):
    """A model whose weights live in an external file is priced without loading them."""
    proto = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        [tensor_info("x", [16, 512])],
        [tensor_info("y", None)],
        [numpy_helper.from_array(np.ones((512, 1024), np.float32), "w")],
    )
    path = tmp_path / "m.onnx"
    ir.save(ir.serde.deserialize_model(proto), path, external_data="m.onnx.data")
    assert (tmp_path / "m.onnx.data").stat().st_size == 512 * 1024 * F32
    model = ir.load(path)
    cost = model_cost(model)
    assert cost.flops == 2 * 16 * 1024 * 512 + 16 * 1024
    assert cost.bytes_read == (16 * 512 + 512 * 1024 + 16 * 1024) * F32
    assert isinstance(model.graph.initializers["w"].const_value, ir.ExternalTensor)


def test_omitted_optional_outputs_are_not_missing_shapes():
    proto = make_model(
        [helper.make_node("Dropout", ["x"], ["y", ""])], [tensor_info("x", [2, 3])], [tensor_info("y", [2, 3])]
    )
    cost = _cost(proto)
    assert cost.per_node[0][1] == OpCost("Dropout", 0, 6 * F32, 6 * F32, True, "fp32")
    assert cost.missing_shapes == {}


@pytest.mark.parametrize("declare_present", [True, False])
def test_contrib_group_query_attention_with_past(declare_present):
    # 4 query heads, 2 kv heads of 16; 8 new tokens after 4 cached ones: L = 12
    names = ["q", "k", "v", "past_k", "past_v", "seqlens_k", "total_len"]
    proto = make_model(
        [
            helper.make_node(
                "GroupQueryAttention",
                names,
                ["y", "present_k", "present_v"],
                domain="com.microsoft",
                num_heads=4,
                kv_num_heads=2,
            )
        ],
        [
            tensor_info("q", [1, 8, 64]),
            tensor_info("k", [1, 8, 32]),
            tensor_info("v", [1, 8, 32]),
            tensor_info("past_k", [1, 2, 4, 16]),
            tensor_info("past_v", [1, 2, 4, 16]),
            tensor_info("seqlens_k", [1], TensorProto.INT32),
            tensor_info("total_len", [], TensorProto.INT32),
        ],
        [
            tensor_info("y", [1, 8, 64]),
            tensor_info("present_k", [1, 2, 12, 16] if declare_present else None),
            tensor_info("present_v", [1, 2, 12, 16] if declare_present else None),
        ],
    )
    proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    cost = _only(_cost(proto), "GroupQueryAttention")
    assert cost.flops == 2 * 8 * 12 * 64 * 2 + 6 * 4 * 8 * 12
    assert cost.known == declare_present  # without present shapes the bytes written are unknown
