"""Merge parallel linear maps: several MatMuls reading the same input with constant weights
(an attention block's query, key and value projections, an MLP's gate and up) become one MatMul
with the weights side by side, then a Split. The biases after them are joined into one Add (a
branch without a bias, like Whisper's key projection, gets zeros).

x @ W1 (+ b1), x @ W2 (+ b2), ... -> Split(x @ [W1 W2 ...] (+ [b1 b2 ...]), axis=-1)

Exact: every output column is the same dot product as before. The model grows at most by one
bias row (each weight must have no other reader, so its joined copy replaces the original; a
bias may be shared, or zero for a branch that had none, and is copied into the joined row). A group is n MatMuls (and up to n Adds) replaced by one
MatMul, at most one Add and one Split.

Only where it is measured faster: a group is joined when `kiln.passes.fusion.parallel_matmul_choice`
says the joined form ran clearly faster on the target (ratio <= 0.95), and otherwise left alone.

onnxscript has no rule for it (a pattern matches one output; this needs every sibling), so it
is a plain graph pass that reports one rewrite per merged group.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from kiln.ir.provenance import get_provenance, merge_provenance
from kiln.ir.edits import new_initializer
from kiln.ir.queries import FLOAT_TYPES, initializer_array
from kiln.passes.fusion.parallel_matmul_choice import MAX_MERGED_RATIO, MIN_GROUP_FLOPS, ChoiceOracle, GroupShape, MergeDecision, decide
from kiln.passes.infra.recording import node_ref
from kiln.report.model import Rewrite

logger = logging.getLogger(__name__)

RULE = "merge_parallel_matmuls"


@dataclass
class _Branch:
    """One MatMul reading the shared input, and the bias Add after it (if any)."""

    matmul: ir.Node
    weight: np.ndarray
    add: ir.Node | None = None
    bias: np.ndarray | None = None

    @property
    def output(self) -> ir.Value:
        return (self.add or self.matmul).outputs[0]

    @property
    def nodes(self) -> list[ir.Node]:
        return [self.matmul] + ([self.add] if self.add is not None else [])


def _branch(matmul: ir.Node, x: ir.Value) -> _Branch | None:
    """The branch `matmul` starts when it multiplies `x` by a private 2-D float weight."""
    if matmul.op_type != "MatMul" or matmul.domain not in ("", "ai.onnx") or len(matmul.inputs) != 2:
        return None
    if matmul.inputs[0] is not x or matmul.inputs[1] is x or matmul.inputs[1] is None:
        return None
    weight = initializer_array(matmul.inputs[1], private_to=matmul)
    if weight is None or weight.ndim != 2 or matmul.inputs[1].dtype not in FLOAT_TYPES:
        return None
    if x.dtype is not None and x.dtype != matmul.inputs[1].dtype:
        return None
    branch = _Branch(matmul, weight)
    product = matmul.outputs[0]
    users = [user for user, _ in product.uses()]
    if product.is_graph_output() or len(users) != 1:
        return branch
    add = users[0]
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.inputs) != 2:
        return branch
    other = add.inputs[1] if add.inputs[0] is product else add.inputs[0]
    if other is product:
        return branch
    # A bias may be shared (random-init exports share one zero bias among many Adds): the joined
    # copy is one row, small beside the weights. A 1-D bias of the output width broadcasts along
    # the last axis only, as after the merge.
    bias = initializer_array(other)
    if bias is not None and bias.ndim == 1 and bias.shape[0] == weight.shape[1] and other.dtype == matmul.inputs[1].dtype:
        branch.add, branch.bias = add, bias
    return branch


def _groups(graph: ir.Graph) -> list[list[_Branch]]:
    """Groups of two or more mergeable branches: same input, same inner size and dtype."""
    groups: list[list[_Branch]] = []
    seen: set[int] = set()
    for node in graph:
        if node.op_type != "MatMul" or not node.inputs or node.inputs[0] is None:
            continue
        x = node.inputs[0]
        if id(x) in seen:
            continue
        seen.add(id(x))
        branches = [b for user, index in x.uses() if index == 0 and (b := _branch(user, x)) is not None]
        buckets: dict[tuple, list[_Branch]] = {}
        for branch in branches:
            key = (branch.weight.shape[0], branch.weight.dtype.str)
            buckets.setdefault(key, []).append(branch)
        groups.extend(bucket for bucket in buckets.values() if len(bucket) > 1)
    return groups


def _shape(branches: list[_Branch]) -> GroupShape:
    x = branches[0].matmul.inputs[0]
    dims = tuple(x.shape.dims) if x.shape is not None else (None, branches[0].weight.shape[0])
    return GroupShape(x_shape=dims, widths=tuple(b.weight.shape[1] for b in branches),
                      biased=tuple(b.add is not None for b in branches), dtype=branches[0].matmul.inputs[1].dtype)


def _merge(graph: ir.Graph, branches: list[_Branch], why: str) -> Rewrite:
    """Replace `branches` (in graph order) by one MatMul (+ Add) and a Split; returns the rewrite."""
    first = branches[0].matmul
    x = first.inputs[0]
    widths = [b.weight.shape[1] for b in branches]
    removed = [n for b in branches for n in b.nodes]
    origins = [o for n in removed for o in get_provenance(n)]
    weight = new_initializer(graph, f"{first.inputs[1].name}_merged", np.concatenate([b.weight for b in branches], axis=1))
    matmul = ir.Node("", "MatMul", [x, weight], name=f"{first.name}_merged")
    new_nodes = [matmul]
    joined = matmul.outputs[0]
    joined.name = f"{matmul.name}_out"  # named: linear_to_gemm names its shape constants after it
    biased = next((b for b in branches if b.add is not None), None)
    if biased is not None:
        biases = [b.bias if b.bias is not None else np.zeros(b.weight.shape[1], biased.bias.dtype) for b in branches]
        bias = new_initializer(graph, f"{biased.add.name}_bias_merged", np.concatenate(biases))
        add = ir.Node("", "Add", [joined, bias], name=f"{biased.add.name}_merged")
        new_nodes.append(add)
        joined = add.outputs[0]
        joined.name = f"{add.name}_out"
    sizes = new_initializer(graph, f"{first.name}_split_sizes", np.asarray(widths, np.int64))
    split = ir.Node("", "Split", [joined, sizes], attributes=[ir.AttrInt64("axis", -1)],
                    num_outputs=len(branches), name=f"{first.name}_split")
    new_nodes.append(split)
    old_values = [b.output for b in branches]
    rows = list(x.shape.dims[:-1]) if x.shape is not None else None
    dtype = first.inputs[1].dtype
    for value in {id(v): v for v in (matmul.outputs[0], joined)}.values():
        value.dtype = dtype
        value.shape = ir.Shape([*rows, sum(widths)]) if rows is not None else None
    for old, new, width in zip(old_values, split.outputs, widths):
        new.dtype = dtype
        new.shape = old.shape if old.shape is not None else (ir.Shape([*rows, width]) if rows is not None else None)
    graph.insert_before(first, new_nodes)
    ir.convenience.replace_all_uses_with(old_values, list(split.outputs), replace_graph_outputs=True)
    for old, new in zip(old_values, split.outputs):  # keep the names (graph outputs among them)
        name = old.name
        old.name = None
        new.name = name
    graph.remove(removed, safe=True)
    for node in new_nodes:
        merge_provenance(node, origins)
    with_bias = sum(b.add is not None for b in branches)
    kind = "MatMul" + (f" ({with_bias} with a bias)" if with_bias else "")
    return Rewrite(
        rule=RULE,
        nodes=[node_ref(n) for n in removed],
        reason=f"{len(branches)} {kind} branches read the same input; joined because {why}",
        result=f"now from Split {split.name} of one MatMul with a {weight.const_value.shape[0]}x{sum(widths)} weight",
    )


def merge_parallel_matmuls(model: ir.Model, oracle: ChoiceOracle | None, *, max_ratio: float = MAX_MERGED_RATIO,
                           min_flops: float = MIN_GROUP_FLOPS) -> tuple[list[Rewrite], list[str]]:
    """Join every group of parallel constant-weight MatMuls in the main graph that `oracle`
    measured clearly faster joined (`parallel_linear_choice.decide`); returns the rewrites and,
    for the groups left apart, why."""
    graph = model.graph
    groups = _groups(graph)
    if not groups:
        return [], []
    order = {id(node): index for index, node in enumerate(graph)}
    decisions: dict[str, MergeDecision] = {}  # one measurement per shape, however many layers share it
    rewrites: list[Rewrite] = []
    kept: dict[str, int] = {}  # shape key -> groups left apart
    for group in groups:
        group.sort(key=lambda b: order[id(b.matmul)])
        shape = _shape(group)
        decision = decisions.get(shape.key)
        if decision is None:
            decision = decisions[shape.key] = decide(shape, oracle, max_ratio=max_ratio, min_flops=min_flops)
        if decision.merge:
            rewrites.append(_merge(graph, group, decision.reason))
        else:
            kept[shape.key] = kept.get(shape.key, 0) + 1
    notes = [f"{count} group(s) {key}: {decisions[key].reason}" for key, count in kept.items()]
    logger.debug("Joined %d groups of parallel MatMuls, left %d apart", len(rewrites), sum(kept.values()))
    return rewrites, notes
