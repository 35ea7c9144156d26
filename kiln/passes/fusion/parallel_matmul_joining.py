"""Merge parallel linear maps: several MatMuls reading the same input with constant weights
(an attention block's query, key and value projections, an MLP's gate and up) become one MatMul
with the weights side by side, then a Split. The biases after them are joined into one Add (a
branch without a bias, like Whisper's key projection, gets zeros).

x @ W1 (+ b1), x @ W2 (+ b2), ... -> Split(x @ [W1 W2 ...] (+ [b1 b2 ...]), axis=-1)

Exact: every output column is the same dot product as before. The model grows at most by one
bias row (each weight must have no other reader, so its joined copy replaces the original; a
bias may be shared, or zero for a branch that had none, and is copied into the joined row). A group is n MatMuls (and up to n Adds) replaced by one
MatMul, at most one Add and one Split.

Only where it is measured faster: the two forms (`parallel_matmul_forms`) are timed on the
target through ``PassContext.measured``, and a group is joined when every trial says the joined
form ran clearly faster (``PassOptions.measured_choice_max_ratio``); the cost model's price of
both forms is reported beside the measurement and leaves forms too fast to time unmeasured.

onnxscript has no rule for it (a pattern matches one output; this needs every sibling), so it
is a plain graph pass that reports one rewrite per merged group.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from kiln.cost_model.decisions import measured_decision
from kiln.ir.edits import new_initializer, placeholder_weight, sketch_node
from kiln.ir.provenance import get_provenance, merge_provenance
from kiln.ir.queries import FLOAT_TYPES, initializer_array, is_onnx
from kiln.passes.fusion.parallel_matmul_forms import GroupShape, alternatives
from kiln.passes.infra.contract import Pass, PassContext, PassResult
from kiln.passes.infra.recording import node_ref
from kiln.report.model import Decision, Rewrite

logger = logging.getLogger(__name__)

RULE = "parallel_matmul_joining"


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
    if not is_onnx(matmul, "MatMul") or len(matmul.inputs) != 2:
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
    if not is_onnx(add, "Add") or len(add.inputs) != 2:
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


def _joined_sketch(branches: list[_Branch]) -> list[ir.Node]:
    """The joined form, outside the graph, to price it: one MatMul (+ Add) and a Split."""
    x = branches[0].matmul.inputs[0]
    dtype = branches[0].matmul.inputs[1].dtype
    widths = [b.weight.shape[1] for b in branches]
    rows = list(x.shape.dims[:-1]) if x.shape is not None else None
    joined_shape = [*rows, sum(widths)] if rows is not None else None
    nodes = [sketch_node("MatMul", [x, placeholder_weight("w", (branches[0].weight.shape[0], sum(widths)), dtype)],
                         [(joined_shape, dtype)])]
    if any(b.add is not None for b in branches):
        nodes.append(sketch_node("Add", [nodes[-1].outputs[0], placeholder_weight("b", (sum(widths),), dtype)],
                                 [(joined_shape, dtype)]))
    nodes.append(sketch_node("Split", [nodes[-1].outputs[0]], [(b.output.shape, dtype) for b in branches],
                             attributes=[ir.AttrInt64("axis", -1)]))
    return nodes


def _decide(group: list[_Branch], shape: GroupShape, ctx: PassContext) -> Decision:
    separate = [n for b in group for n in b.nodes]
    predicted = ({"separate": ctx.cost.price(separate), "joined": ctx.cost.price(_joined_sketch(group))}
                 if ctx.cost is not None else None)
    return measured_decision(ctx.measured, key=shape.key, subject=str(shape), question="join parallel MatMuls",
                             names=("separate", "joined"), build=lambda: alternatives(shape), predicted=predicted,
                             policy=ctx.measured_policy, static=shape.static)


def join_parallel_matmuls(model: ir.Model, ctx: PassContext) -> list[Rewrite]:
    """Join every group of parallel constant-weight MatMuls in the main graph that measured
    clearly faster joined on the target; one decision per shape (recorded with the number of
    groups it covers), one rewrite per joined group."""
    graph = model.graph
    groups = _groups(graph)
    order = {id(node): index for index, node in enumerate(graph)}
    decisions: dict[str, Decision] = {}  # one measurement per shape, however many layers share it
    rewrites: list[Rewrite] = []
    for group in groups:
        group.sort(key=lambda b: order[id(b.matmul)])
        shape = _shape(group)
        decision = decisions.get(shape.key)
        if decision is None:
            decision = decisions[shape.key] = ctx.record(_decide(group, shape, ctx))
        else:
            decision.count += 1
        if decision.chosen == "joined":
            rewrites.append(_merge(graph, group, decision.reason))
    logger.debug("Joined %d groups of parallel MatMuls, left %d apart", len(rewrites), len(groups) - len(rewrites))
    return rewrites


class JoinParallelMatMuls(Pass):
    """Join parallel constant-weight MatMuls on one input (query, key, value) into one MatMul
    and a Split where that was measured clearly faster on the target (see the module docstring)."""

    name = "parallel_matmul_joining"

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        rewrites = join_parallel_matmuls(model, ctx)
        return PassResult(model, bool(rewrites), rewrites=rewrites)
