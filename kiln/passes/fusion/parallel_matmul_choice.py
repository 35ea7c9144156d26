"""Whether to join a group of parallel linear layers (query / key / value, gate / up): decided by
measuring both forms on the target, never by a rule.

Joining saves no FLOPs or weight bytes and adds a Split's copy; whether ONNX Runtime's GEMM runs
the joined shape faster depends on the shape in ways no rows / bytes rule fits (on the 2-core
EPYC VM it was 6-46 % slower at BERT's 128x768 -> 3x768, 9-20 % faster at Whisper-tiny's
1500x384). So the pass builds the two forms of each group as small ONNX models and asks the
context's measured choices (`kiln.cost_model.measured_choice.MeasuredChoices`, wired by
`kiln.optimize` for ONNX Runtime on this machine) for the ratio joined / separate.

The group is joined only when every independent trial's median ratio is at most
`MAX_MERGED_RATIO` (0.95): the per-pair ratios on this shared VM scatter by a few percent, and a
whole 15-pair run once came out at 0.80 for a shape two other runs put at 1.04, so anything
closer to 1, or not repeated, is noise; a merge that gains nothing still costs a Split and a
larger weight to load. Groups under
`MIN_GROUP_FLOPS` are not measured: their whole time is microseconds, below what the timing
can resolve, and measuring every small model would slow optimization for nothing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import onnx_ir as ir

from kiln.errors import KilnError

logger = logging.getLogger(__name__)

#: Join only when the joined form measured at most this fraction of the separate form's time.
MAX_MERGED_RATIO = 0.95
#: Groups doing fewer FLOPs than this (about 0.1 ms at this machine's GEMM rate) stay apart unmeasured.
MIN_GROUP_FLOPS = 50e6
_OPSET = 17


class ChoiceOracle(Protocol):
    """What the decision needs from `PassContext.measured_choices` (MeasuredChoices has it)."""

    def cached(self, key: str) -> Any:
        """The remembered result for `key`, or None (asked first: building the alternatives
        draws their random weights, wasted when the answer is known)."""

    def measure(self, key: str, baseline: ir.Model, candidate: ir.Model) -> Any:
        """A result with `.ratio` (candidate / baseline time), `.worst_trial`, `.trial_ratios`,
        `.pairs` and `.cached` (kiln.cost_model.measured_choice.ChoiceMeasurement)."""


@dataclass(frozen=True)
class GroupShape:
    """A group of parallel linear layers: the shared input's shape, each branch's output width and
    whether it adds a bias, and the dtype."""

    x_shape: tuple[int | str | None, ...]
    widths: tuple[int, ...]
    biased: tuple[bool, ...]
    dtype: ir.DataType

    @property
    def static(self) -> bool:
        return all(isinstance(d, int) and d > 0 for d in self.x_shape)

    @property
    def flops(self) -> float:
        rows = math.prod(int(d) for d in self.x_shape[:-1]) if self.static else 0
        return 2.0 * rows * int(self.x_shape[-1] or 0) * sum(self.widths)

    @property
    def key(self) -> str:
        dims = "x".join(str(d) for d in self.x_shape)
        widths = "+".join(str(w) for w in self.widths)
        bias = "".join("b" if b else "-" for b in self.biased)
        return f"parallel_matmul x={dims} widths={widths} bias={bias} {self.dtype.name}"

    def __str__(self) -> str:
        rows = math.prod(int(d) for d in self.x_shape[:-1]) if self.static else "?"
        return f"{rows}x{self.x_shape[-1]} -> {'+'.join(str(w) for w in self.widths)}"


@dataclass(frozen=True)
class MergeDecision:
    """Join the group or not, why, and the measured ratio joined / separate when there is one."""

    merge: bool
    reason: str
    ratio: float | None = None


def _tensor_value(name: str, shape: list[int], dtype: ir.DataType) -> ir.Value:
    return ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(shape))


def alternatives(shape: GroupShape, seed: int = 0) -> tuple[ir.Model, ir.Model]:
    """(separate, joined): each branch's MatMul (+ Add), against one MatMul (+ Add of the biases,
    zero for a branch without) and a Split; same input and outputs. The weights are random: the
    time of a GEMM does not depend on the values."""
    rng = np.random.default_rng(seed)
    dims = [int(d) for d in shape.x_shape]
    inner, np_dtype = dims[-1], shape.dtype.numpy()

    def constant(name: str, *size: int) -> ir.Value:
        return ir.Value(name=name, const_value=ir.tensor(rng.standard_normal(size).astype(np.float32).astype(np_dtype),
                                                         name=name))

    def build(joined: bool) -> ir.Model:
        x = _tensor_value("x", dims, shape.dtype)
        nodes: list[ir.Node] = []
        inits: list[ir.Value] = []
        if joined:
            weight = constant("w", inner, sum(shape.widths))
            inits.append(weight)
            nodes.append(ir.Node("", "MatMul", [x, weight]))
            if any(shape.biased):
                bias = constant("b", sum(shape.widths))
                inits.append(bias)
                nodes.append(ir.Node("", "Add", [nodes[-1].outputs[0], bias]))
            sizes = ir.Value(name="sizes", const_value=ir.tensor(np.asarray(shape.widths, np.int64), name="sizes"))
            inits.append(sizes)
            nodes.append(ir.Node("", "Split", [nodes[-1].outputs[0], sizes], attributes=[ir.AttrInt64("axis", -1)],
                                 num_outputs=len(shape.widths)))
            outputs = list(nodes[-1].outputs)
        else:
            outputs = []
            for i, (width, biased) in enumerate(zip(shape.widths, shape.biased)):
                weight = constant(f"w{i}", inner, width)
                inits.append(weight)
                nodes.append(ir.Node("", "MatMul", [x, weight]))
                if biased:
                    bias = constant(f"b{i}", width)
                    inits.append(bias)
                    nodes.append(ir.Node("", "Add", [nodes[-1].outputs[0], bias]))
                outputs.append(nodes[-1].outputs[0])
        for i, (value, width) in enumerate(zip(outputs, shape.widths)):
            value.name, value.type, value.shape = f"y{i}", ir.TensorType(shape.dtype), ir.Shape([*dims[:-1], width])
        graph = ir.Graph([x], outputs, nodes=nodes, initializers=inits, opset_imports={"": _OPSET},
                         name="joined" if joined else "separate")
        return ir.Model(graph, ir_version=8)

    return build(False), build(True)


def decide(shape: GroupShape, oracle: ChoiceOracle | None, *, max_ratio: float = MAX_MERGED_RATIO,
           min_flops: float = MIN_GROUP_FLOPS) -> MergeDecision:
    """Join the group only when the joined form measured at most `max_ratio` of the separate time
    in every trial."""
    if oracle is None:
        return MergeDecision(False, "no measured choices in the context (kiln.optimize gives them for ONNX Runtime "
                                    "on this machine)")
    if not shape.static:
        return MergeDecision(False, f"input shape {list(shape.x_shape)} is not static, so it cannot be measured")
    if shape.flops < min_flops:
        return MergeDecision(False, f"{shape.flops / 1e6:.1f} MFLOP is below {min_flops / 1e6:g} MFLOP: too small "
                                    "to measure a difference")
    try:
        measured = oracle.cached(shape.key) or oracle.measure(shape.key, *alternatives(shape))
    except KilnError as exc:
        logger.info("parallel linear group %s not measured: %s", shape, exc)
        return MergeDecision(False, f"not measured: {exc}")
    ratio, worst = float(measured.ratio), float(measured.worst_trial)
    source = "cached" if measured.cached else "measured"
    trials = "/".join(f"{r:.3f}" for r in measured.trial_ratios)
    detail = (f"joined/separate time {ratio:.3f} ({source} on this machine, median of {measured.pairs} pairs; "
              f"trials {trials}; join when every trial is <= {max_ratio:g})")
    return MergeDecision(worst <= max_ratio, detail, ratio)
