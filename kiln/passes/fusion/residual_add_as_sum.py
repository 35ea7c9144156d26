"""Write the Add that feeds a LayerNormalization (a transformer's residual connection) as Sum,
where the target measured that form clearly faster.

Add(a, b) -> LayerNormalization  becomes  Sum(a, b) -> LayerNormalization

Exact: ONNX Sum of two inputs is the same elementwise addition as Add, with the same
broadcasting, so the model computes the same function (on a backend that fused the Add form,
outputs move by float rounding only, as a different normalization kernel runs).

Why a rewrite that computes the same thing can be faster: ONNX Runtime (level extended and up)
fuses Add -> LayerNormalization into its SkipLayerNormalization contrib kernel, and on some
builds, CPUs and shapes that kernel runs several times slower than the Add and the
LayerNormalization kernel it replaces (benchmarks/results/residual_add_as_sum.md). ORT's fusion
matches Add only, so a Sum keeps the unfused kernels. No kiln model predicts which kernel a
backend will fuse, nor how fast its fused kernel is, so the choice is measured per shape on the
target: the Add, the LayerNormalization and the graph around them that matters to the fusion
(which operands are constants, whether the sum has other readers) are cut out as two small
models (`kiln.ir.edits.region_model`), one with the Add and one with the Sum, and the Sum is
taken only when every trial says it ran clearly faster (``PassOptions.measured_choice_max_ratio``).
The cost model's price of both forms, which does not see the backend's fusion, is reported
beside the measurement.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx_ir as ir

from kiln.cost_model.decisions import measured_decision
from kiln.ir.edits import region_model, sketch_node
from kiln.ir.provenance import get_provenance, merge_provenance
from kiln.ir.queries import FLOAT_TYPES, is_onnx
from kiln.passes.infra.contract import Pass, PassContext, PassResult
from kiln.passes.infra.recording import node_ref
from kiln.report.model import Decision, Rewrite

logger = logging.getLogger(__name__)

RULE = "residual_add_as_sum"
_QUESTION = "write the Add before a LayerNormalization as Sum (the backend may fuse the Add form)"


@dataclass
class _Candidate:
    """An ONNX Add of two float tensors whose sum a LayerNormalization normalizes."""

    add: ir.Node
    layer_norm: ir.Node

    @property
    def static(self) -> bool:
        return all(v is not None and v.shape is not None and v.shape.is_static() for v in self.add.inputs)

    @property
    def other_readers(self) -> int:
        """Readers of the sum besides the LayerNormalization."""
        return sum(1 for user, _ in self.add.outputs[0].uses() if user is not self.layer_norm)

    @property
    def key(self) -> str:
        """What the measured time depends on: operand shapes and whether each is a constant,
        the normalization's axis, precision and weights, and who else reads the sum."""

        def operand(value: ir.Value) -> str:
            dims = "x".join(str(d) for d in value.shape) if value.shape is not None else "?"
            return dims + ("c" if value.const_value is not None else "")

        total = self.add.outputs[0]
        attributes = ",".join(f"{k}={a.value}" for k, a in sorted(self.layer_norm.attributes.items())
                              if k != "epsilon")  # epsilon does not change the time
        weights = "+".join("-" if v is None else operand(v) for v in self.layer_norm.inputs[1:])
        return (f"residual_add_as_sum a={operand(self.add.inputs[0])} b={operand(self.add.inputs[1])} "
                f"ln=({attributes}) w={weights} other_readers={self.other_readers}{'+out' if total.is_graph_output() else ''} "
                f"{total.dtype.name if total.dtype is not None else '?'}")

    def __str__(self) -> str:
        total = self.add.outputs[0]
        dims = "x".join(str(d) for d in total.shape) if total.shape is not None else "?"
        shared = total.is_graph_output() or self.other_readers > 0
        return f"Add -> LayerNormalization {dims}" + (" (the sum read elsewhere too)" if shared else "")


def _candidates(graph: ir.Graph) -> list[_Candidate]:
    found = []
    for node in graph:
        if not is_onnx(node, "LayerNormalization") or not node.inputs or node.inputs[0] is None:
            continue
        add = node.inputs[0].producer()
        if (add is None or add.graph is not graph or not is_onnx(add, "Add") or len(add.inputs) != 2
                or any(v is None or v.dtype not in FLOAT_TYPES for v in add.inputs)):
            continue
        found.append(_Candidate(add, node))
    return found


def _replace_with_sum(add: ir.Node) -> ir.Node:
    """Put a Sum of `add`'s operands in its place (same output name, dtype and shape, same
    readers) and return it."""
    graph = add.graph
    total = ir.Node("", "Sum", list(add.inputs), name=f"{add.name}_sum" if add.name else None)
    old = add.outputs[0]
    total.outputs[0].dtype, total.outputs[0].shape = old.dtype, old.shape
    graph.insert_before(add, total)
    ir.convenience.replace_all_uses_with(old, total.outputs[0], replace_graph_outputs=True)
    name, old.name = old.name, None
    total.outputs[0].name = name
    graph.remove(add, safe=True)
    return total


def _alternatives(candidate: _Candidate) -> tuple[ir.Model, ir.Model]:
    """(Add, Sum): the Add and its LayerNormalization cut out of the graph as they are, and the
    same region with the Add written as Sum."""
    with_add, _ = region_model([candidate.add, candidate.layer_norm], name="residual_add")
    with_sum, copies = region_model([candidate.add, candidate.layer_norm], name="residual_sum")
    _replace_with_sum(copies[candidate.add])
    return with_add, with_sum


def _decide(candidate: _Candidate, ctx: PassContext) -> Decision:
    predicted = None
    if ctx.cost is not None:
        ln = candidate.layer_norm
        total = sketch_node("Sum", list(candidate.add.inputs),
                            [(candidate.add.outputs[0].shape, candidate.add.outputs[0].dtype)])
        normalized = sketch_node("LayerNormalization", [total.outputs[0], *ln.inputs[1:]],
                                 [(v.shape, v.dtype) for v in ln.outputs], attributes=list(ln.attributes.values()))
        predicted = {"Add": ctx.cost.price([candidate.add, ln]), "Sum": ctx.cost.price([total, normalized])}
    return measured_decision(ctx.measured, key=candidate.key, subject=str(candidate), question=_QUESTION,
                             names=("Add", "Sum"), build=lambda: _alternatives(candidate), predicted=predicted,
                             policy=ctx.measured_policy, static=candidate.static)


def write_residual_adds_as_sum(model: ir.Model, ctx: PassContext) -> tuple[list[Rewrite], int]:
    """Rewrite every Add -> LayerNormalization of the main graph whose Sum form measured clearly
    faster on the target; one decision per shape (with the number of Adds it covers), one rewrite
    per Add. Returns the rewrites and the number of candidates."""
    graph = model.graph
    decisions: dict[str, Decision] = {}  # one measurement per shape, however many layers share it
    rewrites: list[Rewrite] = []
    candidates = _candidates(graph)
    for candidate in candidates:
        decision = decisions.get(candidate.key)
        if decision is None:
            decision = decisions[candidate.key] = ctx.record(_decide(candidate, ctx))
        else:
            decision.count += 1
        if decision.chosen != "Sum":
            continue
        ref, origins = node_ref(candidate.add), get_provenance(candidate.add)
        total = _replace_with_sum(candidate.add)
        merge_provenance(total, origins)
        rewrites.append(Rewrite(rule=RULE, nodes=[ref],
                                reason=f"the sum feeds LayerNormalization {candidate.layer_norm.name}; written as Sum "
                                       f"because {decision.reason}",
                                result=f"Sum {total.name}"))
    logger.debug("Wrote %d of %d residual Adds as Sum", len(rewrites), len(candidates))
    return rewrites, len(candidates)


class WriteResidualAddsAsSum(Pass):
    """Write the Add feeding a LayerNormalization as Sum (the same addition) where that measured
    clearly faster on the target, which keeps a backend from fusing the pair into a slower
    kernel (see the module docstring)."""

    name = RULE

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        rewrites, candidates = write_residual_adds_as_sum(model, ctx)
        message = f"{len(rewrites)} of {candidates} Adds before a LayerNormalization written as Sum" if candidates else ""
        return PassResult(model, bool(rewrites), rewrites=rewrites, message=message)
