"""Roofline time of a node or of a fused group of nodes on a `HardwareProfile`.

time = max(FLOPs / peak[precision], bytes / bandwidth[level]) / efficiency[op class] + launch

- The precision picks the arithmetic peak (fp32, int8, ...); the op class picks the fraction of
  the roofline the backend's kernels attain (calibrated or fitted, see `hardware.py`).
- Bytes are split into weights (initializers) and activations. Activations come from the fastest
  memory level that holds the node's activation working set; weights come from the level that
  holds them when the model's weights fit in the last cache ("resident"), else from DRAM (a
  model larger than the cache streams every weight from memory on every run).
- A fused group (several nodes run as one kernel) does all its nodes' FLOPs, but only its
  boundary tensors touch memory, and it pays one launch.
- Views (Reshape, Squeeze, ...) and shape ops cost only the launch: ONNX Runtime aliases their
  output buffer or computes them on metadata.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import onnx_ir as ir

from kiln.cost_model.analytical import DATA_MOVEMENT_OPS, OpCost, node_cost, op_key, value_nbytes
from kiln.cost_model.hardware import HardwareProfile

__all__ = ["Estimate", "group_estimate", "is_weight", "node_estimate", "op_class", "roofline"]

_GEMM = frozenset(
    """MatMul Gemm Einsum MatMulInteger QLinearMatMul Attention com.microsoft::FusedMatMul com.microsoft::FusedGemm
    com.microsoft::MatMulIntegerToFloat com.microsoft::DynamicQuantizeMatMul com.microsoft::MatMulNBits
    com.microsoft::Attention com.microsoft::MultiHeadAttention com.microsoft::GroupQueryAttention
    com.microsoft::QAttention com.microsoft::QOrderedMatMul RNN GRU LSTM com.microsoft::DynamicQuantizeLSTM""".split()
)
_CONV = frozenset(
    """Conv ConvTranspose ConvInteger QLinearConv com.microsoft::FusedConv com.microsoft::QLinearConv
    com.microsoft.nchwc::Conv""".split()
)
_NORMALIZATION = frozenset(
    """Softmax LogSoftmax LayerNormalization InstanceNormalization GroupNormalization BatchNormalization
    MeanVarianceNormalization LpNormalization RMSNormalization LRN SimplifiedLayerNormalization
    com.microsoft::LayerNormalization com.microsoft::SimplifiedLayerNormalization
    com.microsoft::SkipLayerNormalization com.microsoft::SkipSimplifiedLayerNormalization""".split()
)
_REDUCTION = frozenset(
    """ReduceSum ReduceMean ReduceMax ReduceMin ReduceProd ReduceLogSum ReduceL1 ReduceL2 ReduceSumSquare
    ReduceLogSumExp ArgMax ArgMin CumSum CumProd TopK GlobalMaxPool GlobalAveragePool GlobalLpPool MaxPool
    AveragePool LpPool com.microsoft.nchwc::MaxPool com.microsoft.nchwc::AveragePool
    com.microsoft.nchwc::GlobalMaxPool com.microsoft.nchwc::GlobalAveragePool""".split()
)
_QUANTIZE = frozenset(
    """QuantizeLinear DequantizeLinear DynamicQuantizeLinear com.microsoft::QuantizeLinear
    com.microsoft::DequantizeLinear""".split()
)
_CONTRIB_ELEMENTWISE = frozenset(
    """com.microsoft::Gelu com.microsoft::FastGelu com.microsoft::BiasGelu com.microsoft::QuickGelu
    com.microsoft::BiasAdd com.microsoft::RotaryEmbedding""".split()
)
_LAYOUT = frozenset(
    """Resize Upsample com.microsoft.nchwc::ReorderInput com.microsoft.nchwc::ReorderOutput
    com.microsoft.nchwc::Upsample""".split()
)
_VIEW = frozenset("Identity Reshape Squeeze Unsqueeze Flatten Dropout".split())
_SHAPE = frozenset("Shape Size Constant ConstantOfShape Range EyeLike Optional OptionalHasElement".split())


def op_class(node_or_key: ir.Node | str) -> str:
    """The op class (`hardware.OP_CLASSES`) of a node or of an op key ("MatMul", "com.microsoft::X")."""
    key = node_or_key if isinstance(node_or_key, str) else op_key(node_or_key)
    if key in _GEMM:
        return "gemm"
    if key in _CONV:
        return "conv"
    if key in _NORMALIZATION:
        return "normalization"
    if key in _REDUCTION:
        return "reduction"
    if key in _QUANTIZE:
        return "quantize"
    if key in _VIEW:
        return "view"
    if key in _SHAPE:
        return "shape"
    if key in DATA_MOVEMENT_OPS or key in _LAYOUT:
        return "data_movement"
    if key in _CONTRIB_ELEMENTWISE:
        return "elementwise"
    if key in ("Loop", "Scan", "If") or "::" in key:
        return "other"
    return "elementwise"


@dataclass(frozen=True)
class Estimate:
    """Predicted time of one kernel (a node, or a fused group of nodes) and what bounds it."""

    op_class: str
    precision: str
    flops: int
    activation_bytes: int
    weight_bytes: int
    memory_level: str  # where the activations come from
    weight_level: str  # where the weights come from ("" without weights)
    compute_ms: float  # FLOPs at the peak (before efficiency)
    memory_ms: float  # bytes at the levels' bandwidth (before efficiency)
    launch_ms: float
    efficiency: float
    ms: float  # the prediction
    known: bool  # False when a formula or a shape was missing (then priced conservatively)
    op: str = ""  # op key of the node, or of a group's leader (what a learned correction keys on)
    output_bytes: int = 0  # the activation bytes written (a GEMM's N side; the rest is read)
    # times the kernel runs per model run (a Loop body's trip count): every figure above is the
    # total over all runs; `per_run()` is one run
    runs: int = 1

    def per_run(self) -> Estimate:
        """The estimate of one run (what a correction fitted on single kernels predicts)."""
        if self.runs == 1:
            return self
        n = self.runs
        return dataclasses.replace(self, flops=self.flops // n, activation_bytes=self.activation_bytes // n,
                                   weight_bytes=self.weight_bytes // n, compute_ms=self.compute_ms / n,
                                   memory_ms=self.memory_ms / n, launch_ms=self.launch_ms / n, ms=self.ms / n,
                                   output_bytes=self.output_bytes // n, runs=1)

    def repeated(self, runs: int) -> Estimate:
        """This one-run estimate run `runs` times."""
        if runs == 1:
            return self
        return dataclasses.replace(self, flops=self.flops * runs, activation_bytes=self.activation_bytes * runs,
                                   weight_bytes=self.weight_bytes * runs, compute_ms=self.compute_ms * runs,
                                   memory_ms=self.memory_ms * runs, launch_ms=self.launch_ms * runs,
                                   ms=self.ms * runs, output_bytes=self.output_bytes * runs, runs=runs)

    @property
    def bytes(self) -> int:
        return self.activation_bytes + self.weight_bytes

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved."""
        return self.flops / self.bytes if self.bytes else 0.0

    @property
    def bound(self) -> str:
        """"compute", "memory" or "launch": what dominates the prediction."""
        body = max(self.compute_ms, self.memory_ms) / self.efficiency
        if self.launch_ms >= body:
            return "launch"
        return "compute" if self.compute_ms >= self.memory_ms else "memory"


def roofline(
    profile: HardwareProfile,
    *,
    op_class: str,
    precision: str,
    flops: int,
    activation_bytes: int,
    weight_bytes: int = 0,
    weights_resident: bool = True,
    known: bool = True,
    op: str = "",
    output_bytes: int = 0,
) -> Estimate:
    """The roofline time of a kernel with these totals (see the module docstring); `output_bytes`
    (the part of `activation_bytes` written) does not change the time but tells a learned
    correction a GEMM's shape apart from its transpose."""
    launch_ms = profile.launch_overhead_us / 1e3
    efficiency = max(profile.efficiency_of(op_class), 1e-3)
    act_level = profile.level_for(activation_bytes)
    weight_level = (profile.level_for(weight_bytes) if weights_resident else profile.dram) if weight_bytes else None
    if op_class in ("view", "shape"):
        compute_ms = memory_ms = 0.0
    else:
        compute_ms = flops / (profile.peak(precision or "fp32") * 1e9) * 1e3
        memory_ms = activation_bytes / (act_level.bandwidth_gbps * 1e9) * 1e3
        if weight_level is not None:
            memory_ms += weight_bytes / (weight_level.bandwidth_gbps * 1e9) * 1e3
    ms = max(compute_ms, memory_ms) / efficiency + launch_ms
    return Estimate(
        op_class=op_class,
        precision=precision,
        flops=int(flops),
        activation_bytes=int(activation_bytes),
        weight_bytes=int(weight_bytes),
        memory_level=act_level.name,
        weight_level=weight_level.name if weight_level is not None else "",
        compute_ms=compute_ms,
        memory_ms=memory_ms,
        launch_ms=launch_ms,
        efficiency=efficiency,
        ms=ms,
        known=known,
        op=op,
        output_bytes=int(output_bytes),
    )


def is_weight(value: ir.Value | None) -> bool:
    """An initializer or a constant: read from wherever weights live, not from activations."""
    return value is not None and (value.const_value is not None or value.is_initializer())


def _weight_bytes(values: Iterable[ir.Value | None], dims: Mapping[str, int] | None) -> int:
    return sum(value_nbytes(v, dims) or 0 for v in values if is_weight(v))


def node_estimate(
    node: ir.Node,
    profile: HardwareProfile,
    *,
    cost: OpCost | None = None,
    weights_resident: bool = True,
    dims: Mapping[str, int] | None = None,
) -> Estimate:
    """Roofline time of one node (priced from the shapes its values carry unless `cost` is given);
    a node that runs several times (`OpCost.runs`) is one run's roofline, repeated."""
    cost = cost if cost is not None else node_cost(node, dims)
    runs = max(cost.runs, 1)
    weights = min(_weight_bytes(node.inputs, dims), cost.bytes_read // runs)
    return roofline(
        profile,
        op_class=op_class(node),
        precision=cost.precision,
        flops=cost.flops // runs,
        activation_bytes=cost.bytes // runs - weights,
        weight_bytes=weights,
        weights_resident=weights_resident,
        known=cost.known,
        op=op_key(node),
        output_bytes=cost.bytes_written // runs,
    ).repeated(runs)


def group_estimate(
    nodes: Sequence[ir.Node],
    profile: HardwareProfile,
    *,
    costs: Mapping[ir.Node, OpCost] | None = None,
    weights_resident: bool = True,
    dims: Mapping[str, int] | None = None,
) -> Estimate:
    """Roofline time of `nodes` run as one fused kernel: all their FLOPs, only the boundary
    tensors' bytes (inputs produced outside the group, outputs used outside it or returned by
    the graph), one launch. The group takes the class and precision of its largest-FLOP node."""
    if not nodes:
        raise ValueError("group_estimate needs at least one node")
    members = set(nodes)
    priced = [(n, costs[n] if costs is not None and n in costs else node_cost(n, dims)) for n in nodes]
    leader, leader_cost = max(priced, key=lambda item: (item[1].flops, op_class(item[0]) in ("gemm", "conv")))
    seen: set[int] = set()
    inputs: list[ir.Value] = []
    outputs: list[ir.Value] = []
    for node in nodes:
        for value in node.inputs:
            if value is None or id(value) in seen or value.producer() in members:
                continue
            seen.add(id(value))
            inputs.append(value)
        for value in node.outputs:
            escapes = value.is_graph_output() or any(use.node not in members for use in value.uses())
            if escapes:
                outputs.append(value)
    weights = _weight_bytes(inputs, dims)
    activations = sum(value_nbytes(v, dims) or 0 for v in inputs if not is_weight(v))
    activations += sum(value_nbytes(v, dims) or 0 for v in outputs)
    classes = {op_class(n) for n in nodes}
    group_class = op_class(leader)
    if group_class in ("view", "shape") and not classes <= {"view", "shape"}:  # a group that does work is not free
        group_class = next(c for c in classes if c not in ("view", "shape"))
    return roofline(
        profile,
        op_class=group_class,
        precision=leader_cost.precision,
        flops=sum(c.flops for _, c in priced),
        activation_bytes=activations,
        weight_bytes=weights,
        weights_resident=weights_resident,
        known=all(c.known for _, c in priced),
        op=op_key(leader),
        output_bytes=sum(value_nbytes(v, dims) or 0 for v in outputs),
    )
