"""Analytical cost of ONNX ops: FLOPs and bytes moved per node (the first slice of the cost model).

`node_cost(node)` prices one node from the shapes its values carry; `model_cost(model)` runs ONNX
shape inference on a clone of the model first (the caller's model is never modified, and weight
data is never loaded for it) and prices every node, subgraph nodes included.

Counting conventions (the usual ones behind published model FLOP counts, e.g. "BERT-base at
sequence 128 is about 22 GFLOPs"):

- A multiply-add is 2 FLOPs. Matrix products and convolutions count every multiply-add of the
  dense algorithm, padded zeros included (the inferred output shape carries strides, dilations and
  pads, so the formulas read it rather than recomputing it).
- Every other arithmetic operation, and every evaluation of an elementary function (exp, log, erf,
  tanh, sqrt, ...), is 1 FLOP. Composite ops count their parts (Sigmoid = neg, exp, add, div = 4).
  The per-element constants are in `PER_ELEMENT_FLOPS` and the `*_FLOPS_PER_ELEMENT` names below.
  Elementary functions really cost several instructions each (MLAS evaluates exp and erf with
  polynomials), so on an element-wise-heavy model these counts are a lower bound of the work; on
  transformers and CNNs the matrix products dominate by two orders of magnitude.
- Integer arithmetic (MatMulInteger, QLinearMatMul, ConvInteger, ...) is counted the same way and
  labelled ``precision="int8"`` so a roofline can use the integer peak for it.
- Data movement (Reshape, Transpose, Gather, Concat, Cast, ...) is 0 FLOPs and costs bytes only.

Bytes: ``bytes_read`` is the size of every input tensor, ``bytes_written`` the size of every
output (elements x dtype size, sub-byte types rounded up), so a node's bytes assume its operands
stream from memory with no reuse across nodes. Refinements, all documented on `_read_bytes`:
Shape and Size read no data (only metadata), Gather / GatherElements / GatherND read the indices
and the gathered rows (not the whole table: an embedding lookup reads 128 rows of a 94 MB
vocabulary), Constant moves nothing (ONNX Runtime folds it into an initializer).

A node is ``known=False`` when its op has no formula (it is then priced conservatively at one FLOP
per output element and listed in `ModelCost.unknown_ops`) or when a shape it needs is missing or
symbolic (listed in `ModelCost.missing_shapes`; pass ``dims={"batch": 1, ...}`` to `model_cost`
to bind symbolic dimensions, and ``facts=`` the shapes a run showed for data-dependent ones).
Data-dependent ops (NonMaxSuppression, RoiAlign, TopK) are priced at a conservative bound and
listed in `ModelCost.defaulted_ops`.

Control flow: an If prices the branch it took when `RunFacts` says which, else both (listed in
`ModelCost.both_branches`); a Loop or Scan prices its body once per iteration when its trip count
is known (from `RunFacts`, a constant trip count, or a Scan's static input), else once, and the
Loop / Scan node is then listed in ``unknown_ops``.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from kiln.ir.queries import constant_array, op_key

logger = logging.getLogger(__name__)

__all__ = [
    "PER_ELEMENT_FLOPS",
    "RunFacts",
    "loop_trip_count",
    "scan_trip_count",
    "set_shapes",
    "ModelCost",
    "OpCost",
    "model_cost",
    "node_cost",
    "op_key",
    "value_nbytes",
]

# ---------------------------------------------------------------------------------------------
# Documented constants
# ---------------------------------------------------------------------------------------------

#: Softmax / LogSoftmax: max, subtract, exp, sum, divide (LogSoftmax: log and subtract instead
#: of divide) - 5 per element.
SOFTMAX_FLOPS_PER_ELEMENT = 5
#: LayerNormalization: mean (add), centre (sub), square (mul), variance (add), normalise (mul by
#: the reciprocal standard deviation), scale (mul), shift (add) = 7, plus the per-row divisions
#: and rsqrt amortised as one more: 8 per element. Instance and group normalisation likewise.
LAYERNORM_FLOPS_PER_ELEMENT = 8
#: RMS norm (SimplifiedLayerNormalization, RMSNormalization): square, sum, mul by rstd, scale.
RMSNORM_FLOPS_PER_ELEMENT = 4
#: BatchNormalization in inference mode: mean, variance, scale and bias fold into one
#: per-channel scale and shift, i.e. one multiply-add per element.
BATCHNORM_FLOPS_PER_ELEMENT = 2
#: Gelu with erf: x * 0.5 * (1 + erf(x / sqrt(2))) - mul, erf, add, mul, mul.
GELU_ERF_FLOPS_PER_ELEMENT = 5
#: Gelu with tanh (Gelu approximate="tanh", com.microsoft FastGelu):
#: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) - x^2, x^3, mul, add, mul, tanh, add, mul, mul.
GELU_TANH_FLOPS_PER_ELEMENT = 9
#: QuantizeLinear: divide by scale, round, add zero point, saturate.
QUANTIZE_FLOPS_PER_ELEMENT = 4
#: DequantizeLinear: subtract zero point, multiply by scale.
DEQUANTIZE_FLOPS_PER_ELEMENT = 2
#: DynamicQuantizeLinear: min and max scans, then quantize (4): 6 per input element.
DYNAMIC_QUANTIZE_FLOPS_PER_ELEMENT = 6
#: Requantizing an int32 accumulator to 8 bits (QLinearMatMul, QLinearConv): scale, round and
#: add zero point, saturate - 3 per output element.
REQUANTIZE_FLOPS_PER_ELEMENT = 3
#: Attention score post-processing besides softmax: scaling by 1/sqrt(head_size) - 1 per score.
ATTENTION_SCALE_FLOPS_PER_SCORE = 1
#: Recurrent cells, element-wise work per hidden unit and time step besides the two matrix
#: products: LSTM = 3 sigmoids (4 each) + 2 tanh + c = f*c + i*g (3) + h = o*tanh(c) (1) = 18;
#: GRU = 2 sigmoids (8) + tanh (1) + r*(...) (1) + h = (1-z)*n + z*h (3) = 13; RNN = tanh = 1.
RNN_CELL_FLOPS = {"LSTM": 18, "GRU": 13, "RNN": 1}
RNN_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
#: Intersection over union of two boxes: 4 max/min for the intersection corners, 2 subtractions
#: and 2 clamps for its sides, 1 product, 1 sum and 1 difference for the union, 1 division = 12.
IOU_FLOPS = 12
#: One bilinear sample of RoiAlign: 4 neighbour weights (4 products) and the weighted sum (4
#: multiply-adds) = 12, plus the sample's coordinates amortised as 2 more: 14.
ROI_ALIGN_SAMPLE_FLOPS = 14
#: RoiAlign with sampling_ratio=0 samples ceil(roi_size / output_size) points per bin and axis,
#: which depends on the boxes: priced at this many per axis.
ROI_ALIGN_ADAPTIVE_SAMPLES = 2
#: Ops whose work depends on the data (how many boxes survive, where they are): priced at a
#: conservative bound and listed in `ModelCost.defaulted_ops`.
DEFAULTED_OPS = frozenset({"NonMaxSuppression", "RoiAlign", "TopK"})


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


#: FLOPs per output element of element-wise ops (default domain unless qualified). Arithmetic
#: and elementary functions count 1; composites count their parts.
PER_ELEMENT_FLOPS: dict[str, int] = {
    # binary arithmetic, comparison and logic (numpy broadcasting: work = output elements)
    **dict.fromkeys(
        _names(
            """Add Sub Mul Div Pow Mod PRelu Equal Less Greater LessOrEqual GreaterOrEqual And Or Xor
            BitShift BitwiseAnd BitwiseOr BitwiseXor Where"""
        ),
        1,
    ),
    # unary arithmetic and elementary functions
    **dict.fromkeys(
        _names(
            """Abs Neg Relu Ceil Floor Round Sign Reciprocal Sqrt Exp Log Erf Tanh Sin Cos Tan Asin Acos
            Atan Sinh Cosh Asinh Acosh Atanh Not BitwiseNot IsNaN IsInf ThresholdedRelu Hardmax"""
        ),
        1,
    ),
    # composites: parts in the comment
    "LeakyRelu": 2,  # mul, select
    "Clip": 2,  # max, min
    "Sigmoid": 4,  # neg, exp, add, div
    "HardSigmoid": 4,  # mul, add, max, min
    "HardSwish": 5,  # HardSigmoid, mul
    "Softplus": 3,  # exp, add, log
    "Softsign": 3,  # abs, add, div
    "Elu": 4,  # exp, sub, mul, select
    "Celu": 5,  # div, exp, sub, mul, select
    "Selu": 5,  # exp, mul, sub, mul, select
    "Mish": 5,  # exp, add, log, tanh, mul
    "Swish": 5,  # Sigmoid, mul
    "QuantizeLinear": QUANTIZE_FLOPS_PER_ELEMENT,
    "DequantizeLinear": DEQUANTIZE_FLOPS_PER_ELEMENT,
    "com.microsoft::BiasGelu": GELU_ERF_FLOPS_PER_ELEMENT + 1,  # bias add, Gelu
    "com.microsoft::QuickGelu": 6,  # mul, Sigmoid, mul
    "com.microsoft::BiasAdd": 2,  # x + bias + skip
    "com.microsoft::QuantizeLinear": QUANTIZE_FLOPS_PER_ELEMENT,
    "com.microsoft::DequantizeLinear": DEQUANTIZE_FLOPS_PER_ELEMENT,
    "Shrink": 2,  # compare, add or sub
    "SwiGLU": 6,  # Sigmoid, mul (SiLU), mul by the gate
    "RotaryEmbedding": 3,  # x * cos + rotate(x) * sin
    "com.microsoft::RotaryEmbedding": 3,
}

#: Reductions, FLOPs per *input* element.
PER_INPUT_ELEMENT_FLOPS: dict[str, int] = {
    "ReduceSum": 1,
    "ReduceMean": 1,  # plus one division per output element, added by the formula
    "ReduceMax": 1,
    "ReduceMin": 1,
    "ReduceProd": 1,
    "ReduceLogSum": 1,  # plus one log per output element
    "ReduceL1": 2,  # abs, add
    "ReduceL2": 2,  # mul, add (plus one sqrt per output element)
    "ReduceSumSquare": 2,  # mul, add
    "ReduceLogSumExp": 2,  # exp, add (plus one log per output element)
    "ArgMax": 1,
    "ArgMin": 1,
    "CumSum": 1,
    "CumProd": 1,
    "GlobalMaxPool": 1,
    "GlobalAveragePool": 1,  # plus one division per output element
    "GlobalLpPool": 2,
}
_PER_OUTPUT_EXTRA = {"ReduceMean", "ReduceLogSum", "ReduceL2", "ReduceLogSumExp", "GlobalAveragePool"}

#: Ops that only move, view or describe data: 0 FLOPs, bytes only.
DATA_MOVEMENT_OPS: frozenset[str] = frozenset(
    _names(
        """Identity Reshape Transpose Squeeze Unsqueeze Flatten Concat Split Slice Gather GatherElements
        GatherND ScatterElements ScatterND Scatter Expand Tile Pad Shape Size Cast CastLike Constant
        ConstantOfShape Range DepthToSpace SpaceToDepth Trilu OneHot EyeLike NonZero Compress
        ReverseSequence Dropout Optional OptionalHasElement OptionalGetElement SequenceAt
        SequenceConstruct SequenceEmpty SequenceInsert SequenceErase SequenceLength ConcatFromSequence
        SplitToSequence If BitCast CenterCropPad MaxUnpool TensorScatter"""
    )
)
# If: its branches are subgraphs whose nodes are priced on their own (both branches are counted,
# an over-estimate by the branch not taken).

#: Ops whose subgraph runs an unknown number of times: priced as unknown (body counted once).
_LOOPING_OPS = frozenset({"Loop", "Scan"})

_INT8_OPS = frozenset(
    {
        "com.microsoft::DynamicQuantizeLSTM",
        "MatMulInteger",
        "QLinearMatMul",
        "ConvInteger",
        "QLinearConv",
        "com.microsoft::MatMulIntegerToFloat",
        "com.microsoft::DynamicQuantizeMatMul",
        "com.microsoft::QLinearConv",
        "com.microsoft::QAttention",
    }
)
_PRECISION_OF_DTYPE = {
    ir.DataType.FLOAT: "fp32",
    ir.DataType.FLOAT16: "fp16",
    ir.DataType.BFLOAT16: "bf16",
    ir.DataType.DOUBLE: "fp64",
}


# ---------------------------------------------------------------------------------------------
# Public types
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpCost:
    """Cost of one node.

    ``known`` is False when the op has no formula (``flops`` is then the conservative default of
    one per output element) or when a shape the formula needs is missing. ``precision`` is the
    arithmetic the FLOPs run in: "fp32", "fp16", "bf16", "fp64", "int8" (integer GEMM/conv
    families), "int" (other integer or boolean work, e.g. shape arithmetic) or "" (unknown).
    """

    op_type: str
    flops: int
    bytes_read: int
    bytes_written: int
    known: bool
    precision: str = ""
    # how many times the node runs per model run (a Loop body's trip count; 1 in the main graph);
    # flops and bytes are totals over all runs
    runs: int = 1

    @property
    def bytes(self) -> int:
        """Bytes read plus bytes written."""
        return self.bytes_read + self.bytes_written

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOPs per byte moved (0 when nothing moves)."""
        return self.flops / self.bytes if self.bytes else 0.0


@dataclass
class ModelCost:
    """Cost of a whole model: sums over every node (subgraph nodes included).

    ``bytes`` is the sum of each node's reads and writes: every node streams its operands from
    memory, with no reuse across nodes. That over-estimates DRAM traffic when activations stay in
    cache and is close to it when weights dominate (weights are read once per use).
    ``unknown_ops`` counts nodes whose op has no formula, keyed like `op_histogram`
    (``"domain::Op"`` outside the default domain); ``missing_shapes`` counts nodes of known ops
    that could not be priced exactly because a shape was missing or symbolic.
    """

    flops: int
    bytes: int
    per_node: list[tuple[ir.Node, OpCost]]
    unknown_ops: dict[str, int]
    missing_shapes: dict[str, int] = field(default_factory=dict)
    flops_by_precision: dict[str, int] = field(default_factory=dict)
    bytes_read: int = 0
    bytes_written: int = 0
    # nodes priced by a conservative default formula (data-dependent work such as NMS), by op
    defaulted_ops: dict[str, int] = field(default_factory=dict)
    # control flow: If nodes whose taken branch was unknown (both priced), subgraph nodes not run
    # (the branch not taken, a Loop that ran 0 times), and each Loop / Scan's trip count used
    both_branches: list[str] = field(default_factory=list)
    skipped_nodes: int = 0
    trip_counts: dict[str, int] = field(default_factory=dict)

    def flops_by_op(self) -> dict[str, int]:
        """FLOPs per op type, largest first."""
        totals: Counter[str] = Counter()
        for node, cost in self.per_node:
            totals[op_key(node)] += cost.flops
        return dict(totals.most_common())


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------


class _MissingShape(Exception):
    """A shape or dtype the formula needs is absent or symbolic."""


class _Shapes:
    """Reads static shapes and dtypes off values, binding symbolic dimensions from `dims`."""

    def __init__(self, dims: Mapping[str, int] | None = None) -> None:
        self.dims = dict(dims or {})

    def shape(self, value: ir.Value | None) -> tuple[int, ...] | None:
        if value is None:
            return None
        shape = value.shape
        if shape is None and value.const_value is not None:
            shape = value.const_value.shape
        if shape is None:
            return None
        out: list[int] = []
        for dim in shape:
            if isinstance(dim, int):
                out.append(dim)
                continue
            name = getattr(dim, "value", None)
            if name is not None and str(name) in self.dims:
                out.append(int(self.dims[str(name)]))
            else:
                return None
        return tuple(out)

    def need(self, value: ir.Value | None) -> tuple[int, ...]:
        shape = self.shape(value)
        if shape is None:
            raise _MissingShape(value.name if value is not None else "<absent input>")
        return shape

    def numel(self, value: ir.Value | None) -> int | None:
        shape = self.shape(value)
        return None if shape is None else math.prod(shape)

    def need_numel(self, value: ir.Value | None) -> int:
        return math.prod(self.need(value))

    @staticmethod
    def dtype(value: ir.Value | None) -> ir.DataType | None:
        if value is None:
            return None
        if value.dtype is not None:
            return value.dtype
        if value.const_value is not None:
            return value.const_value.dtype
        return None

    def nbytes(self, value: ir.Value | None) -> int | None:
        """Size in bytes, or None when the shape or dtype is unknown. Sub-byte types round up."""
        if value is None:
            return 0
        numel = self.numel(value)
        dtype = self.dtype(value)
        if numel is None or dtype is None:
            return None
        try:
            bits = dtype.bitwidth
        except TypeError:  # strings and other types without a fixed width
            return None
        return (numel * bits + 7) // 8


# ---------------------------------------------------------------------------------------------
# Formulas: each returns FLOPs for a node or raises _MissingShape
# ---------------------------------------------------------------------------------------------

_Formula = Callable[[ir.Node, _Shapes], int]


def _inp(node: ir.Node, i: int) -> ir.Value | None:
    return node.inputs[i] if i < len(node.inputs) else None


def _out(node: ir.Node, i: int = 0) -> ir.Value | None:
    return node.outputs[i] if i < len(node.outputs) else None


def _has(node: ir.Node, i: int) -> bool:
    return _inp(node, i) is not None


def _matmul(node: ir.Node, sh: _Shapes) -> int:
    """MatMul (numpy semantics): 2 * K per output element, so 2*M*N*K*batch with broadcasting
    and 1-D operands handled by the output shape."""
    a = sh.need(_inp(node, 0))
    return 2 * sh.need_numel(_out(node)) * a[-1]


def _qlinear_matmul(node: ir.Node, sh: _Shapes) -> int:
    """QLinearMatMul: the integer product plus requantizing every output element."""
    a = sh.need(_inp(node, 0))
    y = sh.need_numel(_out(node))
    return 2 * y * a[-1] + REQUANTIZE_FLOPS_PER_ELEMENT * y


def _matmul_integer_to_float(node: ir.Node, sh: _Shapes) -> int:
    """com.microsoft MatMulIntegerToFloat: integer product, scale each output, optional bias."""
    a = sh.need(_inp(node, 0))
    y = sh.need_numel(_out(node))
    return 2 * y * a[-1] + y + (y if _has(node, 6) else 0)


def _dynamic_quantize_matmul(node: ir.Node, sh: _Shapes) -> int:
    """com.microsoft DynamicQuantizeMatMul: quantize A on the fly, integer product, scale, bias."""
    a = sh.need(_inp(node, 0))
    y = sh.need_numel(_out(node))
    quantize = DYNAMIC_QUANTIZE_FLOPS_PER_ELEMENT * math.prod(a)
    return quantize + 2 * y * a[-1] + y + (y if _has(node, 4) else 0)


def _matmul_nbits(node: ir.Node, sh: _Shapes) -> int:
    """com.microsoft MatMulNBits: 2*M*N*K plus dequantizing the N x K weight block (sub, mul)."""
    k = node.attributes.get_int("K")
    n = node.attributes.get_int("N")
    if k is None or n is None:
        raise _MissingShape("K/N attributes")
    y = sh.need_numel(_out(node))
    return 2 * y * k + DEQUANTIZE_FLOPS_PER_ELEMENT * n * k + (y if _has(node, 5) else 0)


def _fused_matmul(node: ir.Node, sh: _Shapes) -> int:
    """com.microsoft FusedMatMul: MatMul with optional transposes and an alpha scale."""
    a = sh.need(_inp(node, 0))
    trans_a = node.attributes.get_int("transA", 0)
    k = a[-2] if trans_a and len(a) >= 2 else a[-1]
    y = sh.need_numel(_out(node))
    alpha = node.attributes.get_float("alpha", 1.0)
    return 2 * y * k + (y if alpha != 1.0 else 0)


def _gemm(node: ir.Node, sh: _Shapes) -> int:
    """Gemm: Y = alpha*A'B' + beta*C -> 2*M*N*K, plus M*N for adding C when given. alpha and beta
    are not counted (implementations fold them into the product or the bias)."""
    a = sh.need(_inp(node, 0))
    k = a[0] if node.attributes.get_int("transA", 0) else a[1]
    y = sh.need_numel(_out(node))
    return 2 * y * k + (y if _has(node, 2) else 0)


def _fused_gemm(node: ir.Node, sh: _Shapes) -> int:
    """com.microsoft FusedGemm (ORT fuses Gemm + activation): Gemm plus one FLOP per output for
    the activation."""
    return _gemm(node, sh) + (sh.need_numel(_out(node)) if node.attributes.get_string("activation") else 0)


def _einsum(node: ir.Node, sh: _Shapes) -> int:
    """Einsum: 2 FLOPs per point of the iteration space (every distinct index) when something is
    contracted or multiplied, else 1 per output element. For three or more operands this is the
    cost of a naive loop, an upper bound of a pairwise contraction order."""
    equation = node.attributes.get_string("equation")
    if equation is None:
        raise _MissingShape("equation")
    equation = equation.replace(" ", "")
    lhs = equation.split("->")[0]
    sizes: dict[str, int] = {}
    ellipses: list[tuple[int, ...]] = []
    for term, value in zip(lhs.split(","), node.inputs):
        shape = sh.need(value)
        if "..." in term:
            head, tail = term.split("...")
            ellipses.append(shape[len(head) : len(shape) - len(tail)])
            letters = head + tail
            dims = shape[: len(head)] + shape[len(shape) - len(tail) :]
        else:
            letters, dims = term, shape
        for letter, dim in zip(letters, dims):
            sizes[letter] = max(sizes.get(letter, 1), dim)
    rank = max((len(e) for e in ellipses), default=0)
    padded = [(1,) * (rank - len(e)) + tuple(e) for e in ellipses]
    ellipsis_dims = [max(column) for column in zip(*padded)] if padded else []
    space = math.prod(sizes.values()) * math.prod(ellipsis_dims)
    n_operands = len(lhs.split(","))
    y = sh.need_numel(_out(node))
    if n_operands == 1 and space == y:
        return 0  # a transpose or diagonal view
    return 2 * space if n_operands > 1 else space


def _conv(node: ir.Node, sh: _Shapes) -> int:
    """Conv: 2 * (C_in/groups * prod(kernel)) per output element, i.e.
    2*N*C_out*prod(spatial_out)*(C_in/groups)*prod(kernel), plus one add per output for the bias.
    Works for 1-D/2-D/3-D; strides, dilations, pads and groups reach it through the output shape
    and the weight shape (C_out, C_in/groups, k...)."""
    w = sh.need(_inp(node, 1))
    y = sh.need_numel(_out(node))
    return 2 * y * math.prod(w[1:]) + (y if _has(node, 2) else 0)


def _conv_integer(node: ir.Node, sh: _Shapes) -> int:
    """ConvInteger: the integer multiply-adds of Conv, no bias."""
    w = sh.need(_inp(node, 1))
    return 2 * sh.need_numel(_out(node)) * math.prod(w[1:])


def _qlinear_conv(node: ir.Node, sh: _Shapes) -> int:
    """QLinearConv (x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, B): integer conv,
    requantization, optional bias."""
    w = sh.need(_inp(node, 3))
    y = sh.need_numel(_out(node))
    return 2 * y * math.prod(w[1:]) + REQUANTIZE_FLOPS_PER_ELEMENT * y + (y if _has(node, 8) else 0)


def _fused_conv(node: ir.Node, sh: _Shapes) -> int:
    """com.microsoft FusedConv: Conv + bias + optional residual Z + activation (1 per element)."""
    y = sh.need_numel(_out(node))
    activation = 1 if node.attributes.get_string("activation") else 0
    return _conv(node, sh) + (y if _has(node, 3) else 0) + activation * y


def _conv_transpose(node: ir.Node, sh: _Shapes) -> int:
    """ConvTranspose: every input element is scattered through a (C_out/groups) x prod(kernel)
    slice of the weight (C_in, C_out/groups, k...): 2*numel(X)*prod(W.shape[1:]), plus the bias
    add per output element."""
    x = sh.need_numel(_inp(node, 0))
    w = sh.need(_inp(node, 1))
    bias = sh.need_numel(_out(node)) if _has(node, 2) else 0
    return 2 * x * math.prod(w[1:]) + bias


def _pool(node: ir.Node, sh: _Shapes) -> int:
    """MaxPool / AveragePool / LpPool: prod(kernel_shape) per output element (LpPool: 2)."""
    kernel = node.attributes.get_ints("kernel_shape")
    if kernel is None:
        raise _MissingShape("kernel_shape")
    per = 2 if node.op_type == "LpPool" else 1
    return per * sh.need_numel(_out(node)) * math.prod(kernel)


def _per_output(per: int) -> _Formula:
    def formula(node: ir.Node, sh: _Shapes) -> int:
        return per * sh.need_numel(_out(node))

    formula.__doc__ = f"{per} FLOP(s) per output element."
    return formula


def _per_input(per: int, per_output: int = 0) -> _Formula:
    def formula(node: ir.Node, sh: _Shapes) -> int:
        extra = per_output * sh.need_numel(_out(node)) if per_output else 0
        return per * sh.need_numel(_inp(node, 0)) + extra

    formula.__doc__ = f"{per} FLOP(s) per input element (+{per_output} per output element)."
    return formula


def _variadic(node: ir.Node, sh: _Shapes) -> int:
    """Sum / Max / Min / Mean over n inputs: n-1 per output element (Mean: one more to divide)."""
    n = sum(1 for v in node.inputs if v is not None)
    y = sh.need_numel(_out(node))
    return max(n - 1, 0) * y + (y if node.op_type == "Mean" else 0)


def _gelu(node: ir.Node, sh: _Shapes) -> int:
    """Gelu: erf form 5 per element, tanh form 9 (see the constants)."""
    tanh = node.attributes.get_string("approximate", "none") == "tanh"
    per = GELU_TANH_FLOPS_PER_ELEMENT if tanh else GELU_ERF_FLOPS_PER_ELEMENT
    return per * sh.need_numel(_out(node))


def _fast_gelu(node: ir.Node, sh: _Shapes) -> int:
    """com.microsoft FastGelu: the tanh form, plus the optional bias add."""
    y = sh.need_numel(_out(node))
    return GELU_TANH_FLOPS_PER_ELEMENT * y + (y if _has(node, 1) else 0)


def _skip_layer_norm(per: int) -> _Formula:
    def formula(node: ir.Node, sh: _Shapes) -> int:
        # input, skip, gamma, beta, bias (SkipSimplified: input, skip, gamma, bias)
        y = sh.need_numel(_out(node))
        bias_index = 3 if node.op_type == "SkipSimplifiedLayerNormalization" else 4
        return (per + 1) * y + (y if _has(node, bias_index) else 0)

    formula.__doc__ = f"Residual add (+ optional bias add) then normalisation at {per} per element."
    return formula


def _lrn(node: ir.Node, sh: _Shapes) -> int:
    """LRN: a sum of `size` squares (2 per term) per element, then scale, pow and divide (4)."""
    size = node.attributes.get_int("size", 1)
    return (2 * size + 4) * sh.need_numel(_out(node))


def _resize(node: ir.Node, sh: _Shapes) -> int:
    """Resize / Upsample: nearest 0; linear a weighted sum of 2^k neighbours (2 per neighbour);
    cubic of 4^k neighbours; k = the number of axes whose size changes."""
    mode = node.attributes.get_string("mode", "nearest")
    if mode == "nearest":
        return 0
    x = sh.need(_inp(node, 0))
    y_shape = sh.need(_out(node))
    k = sum(1 for a, b in zip(x, y_shape) if a != b)
    neighbours = (2 if mode == "linear" else 4) ** k
    return 2 * neighbours * math.prod(y_shape)


def _rnn(node: ir.Node, sh: _Shapes) -> int:
    """RNN / GRU / LSTM: per time step, direction and batch row the input product
    2*gates*H*I, the recurrent product 2*gates*H*H, the biases (gates*H) and the cell's
    element-wise work (RNN_CELL_FLOPS per hidden unit)."""
    x = sh.need(_inp(node, 0))
    w = sh.need(_inp(node, 1))  # (directions, gates*H, I)
    seq, batch = (x[1], x[0]) if node.attributes.get_int("layout", 0) else (x[0], x[1])
    directions, gates_h, input_size = w[0], w[1], w[2]
    hidden = gates_h // RNN_GATES[node.op_type]
    per_step = 2 * gates_h * input_size + 2 * gates_h * hidden + RNN_CELL_FLOPS[node.op_type] * hidden
    if _has(node, 3):
        per_step += gates_h
    return directions * seq * batch * per_step


def _dynamic_quantize_lstm(node: ir.Node, sh: _Shapes) -> int:
    """com.microsoft DynamicQuantizeLSTM: an LSTM with int8 weights W (directions, I, 4H) and R
    (directions, H, 4H), transposed against LSTM's, plus quantizing each step's input and state
    (DYNAMIC_QUANTIZE_FLOPS_PER_ELEMENT each)."""
    x = sh.need(_inp(node, 0))
    w = sh.need(_inp(node, 1))
    seq, batch = (x[1], x[0]) if node.attributes.get_int("layout", 0) else (x[0], x[1])
    directions, input_size, gates_h = w[0], w[1], w[2]
    hidden = gates_h // RNN_GATES["LSTM"]
    per_step = 2 * gates_h * input_size + 2 * gates_h * hidden + RNN_CELL_FLOPS["LSTM"] * hidden
    per_step += DYNAMIC_QUANTIZE_FLOPS_PER_ELEMENT * (input_size + hidden) + (gates_h if _has(node, 3) else 0)
    return directions * seq * batch * per_step


def _non_max_suppression(node: ir.Node, sh: _Shapes) -> int:
    """NonMaxSuppression (boxes (B, N, 4), scores (B, C, N)): per batch and class, sort the scores
    (N log2 N comparisons) and compare every kept box with the rest (IOU_FLOPS a pair), at most
    min(max_output_boxes_per_class, N) kept boxes against N (N^2/2 pairs when the bound is unknown)."""
    boxes = sh.need(_inp(node, 0))
    scores = sh.need(_inp(node, 1))
    batch, classes, n = scores[0], scores[1], boxes[1]
    limit = constant_int(_inp(node, 2))
    kept: float = n / 2 if limit is None else min(limit, n)
    per_class = n * max(math.log2(n), 1.0) + kept * n * IOU_FLOPS if n else 0
    return int(batch * classes * per_class)


def _roi_align(node: ir.Node, sh: _Shapes) -> int:
    """RoiAlign: every output bin (R, C, out_h, out_w) averages sampling_ratio^2 bilinear samples
    (ROI_ALIGN_SAMPLE_FLOPS each) and divides once; sampling_ratio 0 (adaptive) is priced at
    ROI_ALIGN_ADAPTIVE_SAMPLES per axis."""
    y = sh.need_numel(_out(node))
    ratio = node.attributes.get_int("sampling_ratio", 0) or ROI_ALIGN_ADAPTIVE_SAMPLES
    return y * (ratio * ratio * ROI_ALIGN_SAMPLE_FLOPS + 1)


def _top_k(node: ir.Node, sh: _Shapes) -> int:
    """TopK: one comparison per input element plus a heap of k: log2(k) per input element along
    the axis (a bound of partial sorting)."""
    x = sh.need_numel(_inp(node, 0))
    y = sh.numel(_out(node)) or x
    rows = max(x // max(sh.need(_inp(node, 0))[node.attributes.get_int("axis", -1)], 1), 1)
    k = max(y // rows, 1)
    return int(x * (1 + math.log2(k))) if k > 1 else x


def _attention_core(batch: int, q_len: int, kv_len: int, heads: int, qk_dim: int, v_dim: int, masked: bool) -> int:
    """Scaled dot-product attention summed over heads: Q K^T (2*S*L*Dqk), scale (+ mask add),
    softmax, and P V (2*S*L*Dv); qk_dim and v_dim are summed over the query heads."""
    scores = batch * heads * q_len * kv_len
    return (
        2 * batch * q_len * kv_len * qk_dim
        + 2 * batch * q_len * kv_len * v_dim
        + (SOFTMAX_FLOPS_PER_ELEMENT + ATTENTION_SCALE_FLOPS_PER_SCORE + (1 if masked else 0)) * scores
    )


def _ms_attention(node: ir.Node, sh: _Shapes) -> int:
    """com.microsoft Attention (input (B,S,H_in), packed QKV weights (H_in, Hq+Hk+Hv), bias,
    mask, past): the QKV projection plus the attention core; past (2,B,N,P,D) lengthens L."""
    x = sh.need(_inp(node, 0))
    w = sh.need(_inp(node, 1))
    heads = node.attributes.get_int("num_heads")
    if heads is None or len(x) != 3:
        raise _MissingShape("num_heads or 3-D input")
    batch, seq, hidden_in = x
    sizes = node.attributes.get_ints("qkv_hidden_sizes") or [w[1] // 3] * 3
    q_dim, _, v_dim = sizes
    kv_len = seq + (sh.need(_inp(node, 4))[3] if _has(node, 4) else 0)
    projection = 2 * batch * seq * hidden_in * w[1] + (batch * seq * w[1] if _has(node, 2) else 0)
    return projection + _attention_core(batch, seq, kv_len, heads, q_dim, v_dim, _has(node, 3) or _has(node, 5))


def _ms_multi_head_attention(node: ir.Node, sh: _Shapes) -> int:
    """com.microsoft MultiHeadAttention with 3-D query (B,S,D), key (B,L,D) and value (B,L,Dv)."""
    q = sh.need(_inp(node, 0))
    k = sh.need(_inp(node, 1))
    v = sh.need(_inp(node, 2))
    heads = node.attributes.get_int("num_heads")
    if heads is None or len(q) != 3 or len(k) != 3 or len(v) != 3:
        raise _MissingShape("num_heads or packed / 4-D key and value")
    batch, seq, qk_dim = q
    kv_len, v_dim = k[1], v[2]
    bias = (batch * seq * qk_dim + batch * kv_len * (qk_dim + v_dim)) if _has(node, 3) else 0
    masked = _has(node, 4) or _has(node, 5)
    return bias + _attention_core(batch, seq, kv_len, heads, qk_dim, v_dim, masked)


def _onnx_attention(node: ir.Node, sh: _Shapes) -> int:
    """ONNX Attention (opset 23+): Q (B,Hq,S,D) or (B,S,Hq*D); K, V likewise; past_key (inputs
    4-5) lengthens L by its sequence axis."""
    q = sh.need(_inp(node, 0))
    k = sh.need(_inp(node, 1))
    v = sh.need(_inp(node, 2))
    if len(q) == 4:
        batch, heads, seq, d = q
        qk_dim, kv_len, v_dim = heads * d, k[2], heads * v[3]
    else:
        heads = node.attributes.get_int("q_num_heads")
        kv_heads = node.attributes.get_int("kv_num_heads")
        if heads is None or kv_heads is None:
            raise _MissingShape("q_num_heads / kv_num_heads")
        batch, seq, qk_dim = q
        kv_len = k[1]
        v_dim = v[2] // kv_heads * heads
    if _has(node, 4):
        kv_len += sh.need(_inp(node, 4))[2]
    return _attention_core(batch, seq, kv_len, heads, qk_dim, v_dim, _has(node, 3))


def _ms_group_query_attention(node: ir.Node, sh: _Shapes) -> int:
    """com.microsoft GroupQueryAttention: query (B,S,D) (or packed QKV when key is absent), past
    key (B,kv_heads,P,head) lengthening L (read off the present key output when it has a static
    shape), optional rotary embedding of Q and K (3 per element)."""
    q = sh.need(_inp(node, 0))
    heads = node.attributes.get_int("num_heads")
    kv_heads = node.attributes.get_int("kv_num_heads")
    if heads is None or kv_heads is None or len(q) != 3:
        raise _MissingShape("num_heads / kv_num_heads or 3-D query")
    batch, seq, width = q
    head = width // (heads + 2 * kv_heads) if not _has(node, 1) else width // heads
    present = sh.shape(_out(node, 1))
    if present is not None and len(present) == 4:
        kv_len = present[2]
    else:
        kv_len = seq + (sh.need(_inp(node, 3))[2] if _has(node, 3) else 0)
    rotary = 3 * batch * seq * (heads + kv_heads) * head if node.attributes.get_int("do_rotary", 0) else 0
    return rotary + _attention_core(batch, seq, kv_len, heads, heads * head, heads * head, False)


def _zero(node: ir.Node, sh: _Shapes) -> int:
    """Data movement: no arithmetic."""
    return 0


def _build_formulas() -> dict[str, _Formula]:
    formulas: dict[str, _Formula] = {}
    for op, per in PER_ELEMENT_FLOPS.items():
        formulas[op] = _per_output(per)
    for op, per in PER_INPUT_ELEMENT_FLOPS.items():
        formulas[op] = _per_input(per, 1 if op in _PER_OUTPUT_EXTRA else 0)
    for op in DATA_MOVEMENT_OPS:
        formulas[op] = _zero
    formulas.update(
        {
            "MatMul": _matmul,
            "MatMulInteger": _matmul,
            "QLinearMatMul": _qlinear_matmul,
            "Gemm": _gemm,
            "Einsum": _einsum,
            "Conv": _conv,
            "ConvInteger": _conv_integer,
            "QLinearConv": _qlinear_conv,
            "ConvTranspose": _conv_transpose,
            "MaxPool": _pool,
            "AveragePool": _pool,
            "LpPool": _pool,
            "Sum": _variadic,
            "Max": _variadic,
            "Min": _variadic,
            "Mean": _variadic,
            "Softmax": _per_output(SOFTMAX_FLOPS_PER_ELEMENT),
            "LogSoftmax": _per_output(SOFTMAX_FLOPS_PER_ELEMENT),
            "LayerNormalization": _per_output(LAYERNORM_FLOPS_PER_ELEMENT),
            "InstanceNormalization": _per_output(LAYERNORM_FLOPS_PER_ELEMENT),
            "GroupNormalization": _per_output(LAYERNORM_FLOPS_PER_ELEMENT),
            "MeanVarianceNormalization": _per_output(LAYERNORM_FLOPS_PER_ELEMENT - 2),
            "LpNormalization": _per_output(3),  # square or abs, sum, divide
            "RMSNormalization": _per_output(RMSNORM_FLOPS_PER_ELEMENT),
            "BatchNormalization": _per_output(BATCHNORM_FLOPS_PER_ELEMENT),
            "LRN": _lrn,
            "Gelu": _gelu,
            "Resize": _resize,
            "Upsample": _resize,
            "DynamicQuantizeLinear": _per_input(DYNAMIC_QUANTIZE_FLOPS_PER_ELEMENT),
            "RNN": _rnn,
            "GRU": _rnn,
            "LSTM": _rnn,
            "com.microsoft::DynamicQuantizeLSTM": _dynamic_quantize_lstm,
            "NonMaxSuppression": _non_max_suppression,
            "RoiAlign": _roi_align,
            "TopK": _top_k,
            "Attention": _onnx_attention,
            # ONNX Runtime contrib ops
            "com.microsoft::Gelu": _gelu,
            "com.microsoft::FastGelu": _fast_gelu,
            "com.microsoft::FusedMatMul": _fused_matmul,
            "com.microsoft::FusedConv": _fused_conv,
            "com.microsoft::FusedGemm": _fused_gemm,
            "com.microsoft::QLinearConv": _qlinear_conv,
            "com.microsoft::MatMulIntegerToFloat": _matmul_integer_to_float,
            "com.microsoft::DynamicQuantizeMatMul": _dynamic_quantize_matmul,
            "com.microsoft::MatMulNBits": _matmul_nbits,
            "com.microsoft::LayerNormalization": _per_output(LAYERNORM_FLOPS_PER_ELEMENT),
            "com.microsoft::SimplifiedLayerNormalization": _per_output(RMSNORM_FLOPS_PER_ELEMENT),
            "SimplifiedLayerNormalization": _per_output(RMSNORM_FLOPS_PER_ELEMENT),  # ORT registers it in ""
            "com.microsoft::SkipLayerNormalization": _skip_layer_norm(LAYERNORM_FLOPS_PER_ELEMENT),
            "com.microsoft::SkipSimplifiedLayerNormalization": _skip_layer_norm(RMSNORM_FLOPS_PER_ELEMENT),
            "com.microsoft::Attention": _ms_attention,
            "com.microsoft::MultiHeadAttention": _ms_multi_head_attention,
            "com.microsoft::GroupQueryAttention": _ms_group_query_attention,
            # ONNX Runtime's NCHWc layout ops (what its CPU optimizer lowers CNNs to): shapes are
            # the blocked tensors' (channels padded to the block size), formulas those of the op
            "com.microsoft.nchwc::Conv": _fused_conv,
            "com.microsoft.nchwc::MaxPool": _pool,
            "com.microsoft.nchwc::AveragePool": _pool,
            "com.microsoft.nchwc::GlobalMaxPool": _per_input(1),
            "com.microsoft.nchwc::GlobalAveragePool": _per_input(1, 1),
            "com.microsoft.nchwc::ReorderInput": _zero,
            "com.microsoft.nchwc::ReorderOutput": _zero,
            "com.microsoft.nchwc::Upsample": _resize,
        }
    )
    return formulas


_FORMULAS: dict[str, _Formula] = _build_formulas()


# ---------------------------------------------------------------------------------------------
# Pricing
# ---------------------------------------------------------------------------------------------


def value_nbytes(value: ir.Value | None, dims: Mapping[str, int] | None = None) -> int | None:
    """Bytes of a tensor value from its shape and dtype (None when either is unknown)."""
    return _Shapes(dims).nbytes(value)


def _sum_bytes(values: Iterable[ir.Value | None], sh: _Shapes) -> tuple[int, bool]:
    total, complete = 0, True
    for value in values:
        nbytes = sh.nbytes(value)
        if nbytes is None:
            complete = False
        else:
            total += nbytes
    return total, complete


def _read_bytes(node: ir.Node, key: str, sh: _Shapes) -> tuple[int, bool]:
    """Bytes a node reads: every input tensor, except
    - Shape and Size read only metadata (0 bytes);
    - Constant reads nothing (and `_written_bytes` counts nothing: it is an initializer at run time);
    - If moves nothing itself: its branches' nodes are priced on their own;
    - Gather, GatherElements and GatherND read the indices plus the gathered elements (the
      output's size in the data's dtype), not the whole data tensor;
    - Loop and Scan move nothing themselves: their bodies' nodes are priced per iteration;
    - RNN, GRU and LSTM read their recurrent weights once per time step."""
    if key in ("Shape", "Size", "Constant", "If"):
        return 0, True
    if key in ("Gather", "GatherElements", "GatherND"):
        indices, ok_i = _sum_bytes([_inp(node, 1)], sh)
        gathered, ok_g = _sum_bytes([_out(node)], sh)
        return indices + gathered, ok_i and ok_g
    if key in ("Loop", "Scan"):
        return 0, True  # its body's nodes are priced on their own, once per iteration
    total, ok = _sum_bytes(node.inputs, sh)
    if key in RNN_GATES or key == "com.microsoft::DynamicQuantizeLSTM":
        # the recurrent weights are read again at every time step after the first
        x, recurrent = sh.shape(_inp(node, 0)), sh.nbytes(_inp(node, 2))
        if x is None or recurrent is None:
            return total, False
        steps = x[1] if node.attributes.get_int("layout", 0) else x[0]
        total += recurrent * max(steps - 1, 0)
    return total, ok


def _produced(node: ir.Node) -> list[ir.Value]:
    """The outputs a node really produces: in a graph, an omitted optional output ("" in the
    proto) has no name, no consumer and is not a graph output."""
    if node.graph is None:
        return list(node.outputs)
    return [v for v in node.outputs if v.name or v.uses() or v.is_graph_output()]


def _written_bytes(node: ir.Node, key: str, sh: _Shapes) -> tuple[int, bool]:
    if key in ("Constant", "If"):
        return 0, True
    return _sum_bytes(_produced(node), sh)


def _precision(node: ir.Node, key: str) -> str:
    if key in _INT8_OPS:
        return "int8"
    if key == "com.microsoft::MatMulNBits":
        return "int8" if node.attributes.get_int("accuracy_level", 0) == 4 else "fp32"
    dtypes = [_Shapes.dtype(v) for v in (*node.inputs, *node.outputs)]
    for dtype in dtypes:
        if dtype is not None and dtype in _PRECISION_OF_DTYPE:
            return _PRECISION_OF_DTYPE[dtype]
    if any(dtype is not None and (dtype.is_integer() or dtype == ir.DataType.BOOL) for dtype in dtypes):
        return "int"
    return ""


def _price(node: ir.Node, sh: _Shapes, *, runs: int = 1, trips: int | None = None) -> tuple[OpCost, str | None]:
    """Price a node run `runs` times; the second element says why it is not exact: "unknown op",
    "missing shape", "default" (a data-dependent op at its conservative bound), or None. A Loop or
    Scan with a known trip count `trips` costs only its outputs (its body is priced per iteration);
    with an unknown one it is an "unknown op"."""
    key = op_key(node)
    read, read_ok = _read_bytes(node, key, sh)
    written, written_ok = _written_bytes(node, key, sh)
    formula = _FORMULAS.get(key)
    reason: str | None = None
    if key in _LOOPING_OPS:
        flops = 0
        if trips is None:
            reason = "unknown op"
            flops = sum(sh.numel(v) or 0 for v in _produced(node))
    elif formula is None:
        reason = "unknown op"
        flops = sum(sh.numel(v) or 0 for v in _produced(node))
    else:
        try:
            flops = formula(node, sh)
        except _MissingShape:
            reason = "missing shape"
            flops = sum(sh.numel(v) or 0 for v in _produced(node))
        except (TypeError, ValueError, IndexError, ZeroDivisionError, KeyError) as exc:
            # A malformed node (wrong rank, bad attribute): price it conservatively.
            logger.debug("cost formula for %s failed on node %s: %s", key, node.name, exc)
            reason = "missing shape"
            flops = sum(sh.numel(v) or 0 for v in _produced(node))
        if reason is None and key in DEFAULTED_OPS and read_ok:
            reason = "default"  # its output's size is the data's to decide: the bound is the price
        if reason is None and not (read_ok and written_ok):
            reason = "missing shape"
    cost = OpCost(
        op_type=node.op_type,
        flops=int(flops) * runs,
        bytes_read=int(read) * runs,
        bytes_written=int(written) * runs,
        known=reason in (None, "default"),
        precision=_precision(node, key),
        runs=runs,
    )
    return cost, reason


def node_cost(node: ir.Node, dims: Mapping[str, int] | None = None) -> OpCost:
    """FLOPs and bytes of one node from the shapes its values carry (run shape inference first,
    or use `model_cost`). `dims` binds symbolic dimensions by name, e.g. ``{"batch": 1}``."""
    return _price(node, _Shapes(dims))[0]


def _inferred_clone(model: ir.Model, dims: Mapping[str, int] | None,
                    shapes: Mapping[str, tuple[int, ...]] | None = None,
                    dtypes: Mapping[str, ir.DataType] | None = None) -> ir.Model | None:
    """A clone of `model` with shapes inferred by ONNX shape inference.

    The clone shares tensors with the original (no weight is copied or loaded); onnx-ir's
    ShapeInferencePass strips initializers over 1 KB before serializing, so models with external
    data and models of hundreds of MB cost only their graph structure. Symbolic dimensions of the
    graph inputs named in `dims` are bound first so inference propagates concrete shapes, and
    `shapes` (value name -> shape, e.g. observed on a run) are set on the main graph's values whose
    shape is missing or symbolic, so inference carries them into what follows and into subgraphs.
    """
    try:
        clone = model.clone()
    except Exception as exc:  # noqa: BLE001 - an unclonable model is priced as is
        logger.warning("cost model: could not clone the model for shape inference (%s)", exc)
        return None
    if dims:
        for value in clone.graph.inputs:
            if value.shape is None:
                continue
            bound = [
                int(dims[str(d.value)]) if not isinstance(d, int) and str(d.value) in dims else d for d in value.shape
            ]
            value.shape = ir.Shape(bound)
    if shapes:
        set_shapes(clone, shapes, dtypes)
    ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(clone)
    if shapes:
        set_shapes(clone, shapes, dtypes)  # where inference could only produce a symbol, the observed size wins
    return clone


def set_shapes(model: ir.Model, shapes: Mapping[str, tuple[int, ...]],
               dtypes: Mapping[str, ir.DataType] | None = None) -> int:
    """Set `shapes` (by value name) on the values of the graph and its subgraphs whose shape is
    missing or symbolic (of the same rank), and `dtypes` where a value has none; returns how many
    shapes were set."""
    filled = 0
    nodes = ir.traversal.RecursiveGraphIterator(model.graph)  # subgraph values too (observed when inlined)
    for value in [*model.graph.inputs, *(v for node in nodes for v in node.outputs)]:
        if dtypes and value.dtype is None and (value.name or "") in dtypes:
            value.dtype = dtypes[value.name]
        shape = shapes.get(value.name or "")
        if shape is None or (value.shape is not None and value.shape.is_static()):
            continue
        if value.shape is not None and len(value.shape) != len(shape):
            continue
        value.shape = ir.Shape(list(shape))
        filled += 1
    return filled


@dataclass(frozen=True)
class RunFacts:
    """What one run of the model showed (`kiln.cost_model.measure.observed`): tensor shapes and
    element types by value name, which branch every If took and how many times every Loop / Scan
    ran (by node name)."""

    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: Mapping[str, ir.DataType] = field(default_factory=dict)
    taken_branches: Mapping[str, str] = field(default_factory=dict)
    trip_counts: Mapping[str, int] = field(default_factory=dict)


def constant_int(value: ir.Value | None) -> int | None:
    """The integer a one-element constant holds, else None."""
    array = constant_array(value)
    return int(array.reshape(-1)[0]) if array is not None and array.size == 1 else None


def loop_trip_count(node: ir.Node, known: Callable[[ir.Value], int | None] = constant_int) -> int | None:
    """How many times a Loop runs when its inputs say so: the trip count M when the condition is
    absent or true and the body passes it on unchanged (else M is only an upper bound: None); 0
    when the initial condition is false. `known` reads an input's value (default: constants)."""
    m = known(node.inputs[0]) if node.inputs and node.inputs[0] is not None else None
    cond_in = node.inputs[1] if len(node.inputs) > 1 else None
    cond = known(cond_in) if cond_in is not None else 1
    if cond == 0:
        return 0
    if m is None or cond is None:
        return None
    body = node.attributes["body"].as_graph() if "body" in node.attributes else None
    if body is not None and body.outputs and len(body.inputs) > 1:
        cond_out = body.outputs[0]
        producer = cond_out.producer()
        passed_on = cond_out is body.inputs[1] or (producer is not None and producer.op_type == "Identity"
                                                   and producer.inputs[0] is body.inputs[1])
        if not passed_on and constant_int(cond_out) is None:
            return None
    return m


def scan_trip_count(node: ir.Node, shape_of: Callable[[ir.Value], tuple[int, ...] | None]) -> int | None:
    """A Scan runs once per element of its first scan input along its scan axis (axis 0 unless set)."""
    num_scan = node.attributes.get_int("num_scan_inputs")
    if num_scan is None or num_scan < 1 or len(node.inputs) < num_scan:
        return None
    first = node.inputs[len(node.inputs) - num_scan]
    shape = shape_of(first) if first is not None else None
    if not shape:
        return None
    axes = node.attributes.get_ints("scan_input_axes")
    axis = axes[0] if axes else 0
    return shape[axis % len(shape)]


def _walk(graph: ir.Graph, runs: int, facts: RunFacts, sh: _Shapes, out: list[tuple[ir.Node, int, int | None]],
          notes: dict[str, Any]) -> None:
    """Every node of `graph` and its subgraphs with how many times it runs per model run (If: the
    taken branch when known, else both; Loop / Scan: body x trip count when known, else once) and,
    for Loop / Scan, the trip count used."""
    for node in graph:
        trips: int | None = None
        key = op_key(node)
        if key == "Loop":
            trips = facts.trip_counts.get(node.name or "")
            if trips is None:
                trips = loop_trip_count(node)
        elif key == "Scan":
            trips = facts.trip_counts.get(node.name or "") or scan_trip_count(node, sh.shape)
        out.append((node, runs, trips))
        if trips is not None and key in _LOOPING_OPS and runs:
            notes["trips"][node.name or key] = trips
        for name, attr in node.attributes.items():
            if attr.type != ir.AttributeType.GRAPH:
                continue
            sub_runs = runs
            if key == "If":
                taken = facts.taken_branches.get(node.name or "")
                if taken is None:
                    if name == "then_branch" and runs:
                        notes["both"].append(node.name or key)
                elif taken != name:
                    sub_runs = 0
            elif key in _LOOPING_OPS:
                sub_runs = runs * (trips if trips is not None else 1)
            _walk(attr.as_graph(), sub_runs, facts, sh, out, notes)


def model_cost(
    model: ir.Model,
    *,
    dims: Mapping[str, int] | None = None,
    infer_shapes: bool = True,
    facts: RunFacts | None = None,
) -> ModelCost:
    """Price every node of `model` (main graph and subgraphs) after shape inference.

    The caller's model is not modified: shapes are inferred on a clone and the costs are reported
    against the caller's nodes. `dims` binds symbolic dimensions by name; `facts` (observed on a
    run) supplies the shapes inference cannot know, the branch every If took and every Loop's trip
    count. With ``infer_shapes=False`` the shapes already on the model are used as they are.
    A node that does not run (the branch not taken) is left out and counted in `skipped_nodes`; a
    Loop body's nodes are priced once per iteration.
    """
    facts = facts or RunFacts()
    sh = _Shapes(dims)
    priced_model = model
    if infer_shapes:
        clone = _inferred_clone(model, dims, facts.shapes, facts.dtypes)
        if clone is not None:
            priced_model = clone
    elif facts.shapes:
        logger.debug("cost model: observed shapes are applied only with shape inference")
    notes: dict[str, Any] = {"trips": {}, "both": []}
    originals: list[tuple[ir.Node, int, int | None]] = []
    _walk(model.graph, 1, facts, sh, originals, {"trips": {}, "both": []})
    priced_nodes: list[tuple[ir.Node, int, int | None]] = []
    _walk(priced_model.graph, 1, facts, sh, priced_nodes, notes)
    if len(priced_nodes) != len(originals):  # pragma: no cover - clone() preserves structure
        logger.warning("cost model: clone has a different node count; using original shapes")
        priced_nodes = originals
    per_node: list[tuple[ir.Node, OpCost]] = []
    unknown: Counter[str] = Counter()
    missing: Counter[str] = Counter()
    defaulted: Counter[str] = Counter()
    by_precision: Counter[str] = Counter()
    skipped = 0
    for (original, _, _), (priced, runs, trips) in zip(originals, priced_nodes):
        if runs == 0:
            skipped += 1
            continue
        cost, reason = _price(priced, sh, runs=runs, trips=trips)
        per_node.append((original, cost))
        key = op_key(original)
        if reason == "unknown op":
            unknown[key] += 1
        elif reason == "missing shape":
            missing[key] += 1
        elif reason == "default":
            defaulted[key] += 1
        if cost.flops:
            by_precision[cost.precision or "unknown"] += cost.flops
    bytes_read = sum(c.bytes_read for _, c in per_node)
    bytes_written = sum(c.bytes_written for _, c in per_node)
    return ModelCost(
        flops=sum(c.flops for _, c in per_node),
        bytes=bytes_read + bytes_written,
        per_node=per_node,
        unknown_ops=dict(unknown.most_common()),
        missing_shapes=dict(missing.most_common()),
        flops_by_precision=dict(by_precision.most_common()),
        bytes_read=bytes_read,
        bytes_written=bytes_written,
        defaulted_ops=dict(defaulted.most_common()),
        both_branches=list(notes["both"]),
        skipped_nodes=skipped,
        trip_counts=dict(notes["trips"]),
    )
