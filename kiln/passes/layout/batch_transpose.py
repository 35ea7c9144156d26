"""Place a Reshape's size-1 dims so the Transpose after it is one a MatMul reads in place.

Attention splits heads with ``Transpose(Reshape(x, [1, S, H, D]), perm=[0, 2, 1, 3])`` and
feeds the result to a MatMul. At batch 1 the leading 1 may sit anywhere in the Reshape target
without moving a byte, and with ``[S, 1, H, D]`` the same Transpose is ``perm=[1, 2, 0, 3]``:
a "batch transpose" (the matrix rows move behind the batch dims, which stay in order), which
ONNX Runtime's MatMul-Transpose fusion folds into ``FusedMatMul(transBatchA/B)`` and reads
with strides instead of copying. The perm with the last two axes swapped as well (the keys
``[0, 2, 3, 1]``) becomes ``[1, 2, 3, 0]`` (transBatch and trans): the copy of the split heads
goes and the attention MatMuls take the same time.

Exact: the Transpose's output shape and values are unchanged; only the Reshape's unit dims
move. Static shapes only. A candidate is a Transpose whose every reader is a MatMul whose other
operand has the same rank (ORT fuses a batch transpose only then).

Whether the relayout is faster depends on the backend: OpenVINO, for one, folds the exported
``[0, 2, 1, 3]`` head splits into its fused attention kernel and runs a batch transpose as a
copy. So the choice is measured on the target, per attention core: the candidates whose MatMuls
are joined through the scores (Q K^T -> scale, mask, Softmax -> P V) and the output Transpose
after them are timed as a small model in both layouts (`kiln.ir.edits.region_model`), once per
shape, and the relayout is applied where every trial measured it clearly faster.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from kiln.cost_model.decisions import measured_decision
from kiln.ir.edits import new_initializer, region_key, region_model
from kiln.ir.queries import is_onnx, resolved_reshape_shape, scores_path, sole_reader, static_shape
from kiln.passes.infra.contract import Pass, PassContext, PassResult
from kiln.passes.infra.recording import node_ref
from kiln.report.model import Alternative, Decision, Rewrite

logger = logging.getLogger(__name__)

RULE = "batch_transpose"


def batch_transpose_perms(rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The perms of `rank` a MatMul input can absorb as a batch transpose: axis 0 moves to the
    matrix-row position (rank - 2), or behind the last axis (rows and columns swapped too)."""
    middle = tuple(range(1, rank - 1))
    return (*middle, 0, rank - 1), (*middle, rank - 1, 0)


def _last_two_swapped(perm: Sequence[int]) -> bool:
    rank = len(perm)
    return list(perm[:-2]) == list(range(rank - 2)) and list(perm[-2:]) == [rank - 1, rank - 2]


def relayout_for_batch_transpose(shape: Sequence[int], perm: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """A (new shape, new perm) pair with the same Transpose output, where the new shape only
    moves `shape`'s size-1 dims and the new perm is a batch transpose; None when there is none.

    The element order depends only on the non-unit axes: a layout is equivalent when they keep
    their order in the input and each output position reads the same one of them."""
    rank = len(shape)
    if rank < 3 or 0 in shape or 1 not in shape or sorted(perm) != list(range(rank)):
        return None
    out = [shape[p] for p in perm]
    kept = [d for d in shape if d != 1]
    rank_of = {axis: i for i, axis in enumerate(a for a in range(rank) if shape[a] != 1)}
    for target in batch_transpose_perms(rank):
        new_shape = [0] * rank
        for j, axis in enumerate(target):
            new_shape[axis] = out[j]
        if [d for d in new_shape if d != 1] != kept:
            continue
        new_rank_of = {axis: i for i, axis in enumerate(a for a in range(rank) if new_shape[a] != 1)}
        if all(new_rank_of[target[j]] == rank_of[perm[j]] for j in range(rank) if out[j] != 1):
            return tuple(new_shape), target
    return None


def _matmul_readers_of_equal_rank(value: ir.Value) -> bool:
    """Every reader of `value` is a MatMul whose other operand has `value`'s (static) rank."""
    users = [user for user, _ in value.uses()]
    if not users or value.is_graph_output():
        return False
    rank = len(value.shape) if value.shape is not None else None
    for user in users:
        if not is_onnx(user, "MatMul") or len(user.inputs) != 2:
            return False
        others = [v for v in user.inputs if v is not value] or [value]  # x @ x reads it twice
        if others[0] is None or others[0].shape is None or len(others[0].shape) != rank:
            return False
    return True


@dataclass
class _Candidate:
    """A Reshape -> Transpose pair that a relayout makes a batch transpose."""

    reshape: ir.Node
    transpose: ir.Node
    shape: tuple[int, ...]
    perm: tuple[int, ...]
    new_shape: tuple[int, ...]
    new_perm: tuple[int, ...]

    @property
    def readers(self) -> list[ir.Node]:
        return [user for user, _ in self.transpose.outputs[0].uses()]


def _candidate(transpose: ir.Node) -> _Candidate | None:
    if not is_onnx(transpose, "Transpose") or not transpose.inputs or transpose.inputs[0] is None:
        return None
    reshape = transpose.inputs[0].producer()
    if reshape is None or not is_onnx(reshape, "Reshape") or reshape.graph is not transpose.graph:
        return None
    middle = reshape.outputs[0]
    source_shape = static_shape(reshape.inputs[0])
    perm_attr = transpose.attributes.get("perm")
    if source_shape is None or perm_attr is None or not sole_reader(middle, transpose):
        return None
    shape = resolved_reshape_shape(reshape, source_shape)
    perm = tuple(int(p) for p in perm_attr.value)
    if shape is None or len(perm) != len(shape) or perm == tuple(range(len(perm))):
        return None
    if perm in batch_transpose_perms(len(perm)) or _last_two_swapped(perm):
        return None  # already a form a MatMul absorbs
    if not _matmul_readers_of_equal_rank(transpose.outputs[0]):
        return None
    found = relayout_for_batch_transpose(shape, perm)
    if found is None:
        return None
    return _Candidate(reshape, transpose, shape, perm, *found)


def _relayout(candidate: _Candidate, reshape: ir.Node, transpose: ir.Node,
              targets: dict[tuple[int, ...], ir.Value], reason: str) -> Rewrite:
    """Give `reshape` (the candidate's, or its copy in a region) the candidate's new target and
    `transpose` its batch-transpose perm."""
    new_shape, new_perm = candidate.new_shape, candidate.new_perm
    middle = reshape.outputs[0]
    if new_shape not in targets:  # one constant per shape: the head splits of every layer share it
        targets[new_shape] = new_initializer(reshape.graph, f"{reshape.name or middle.name or 'reshape'}_batch_layout",
                                             np.asarray(new_shape, np.int64))
    reshape.replace_input_with(1, targets[new_shape])
    reshape.attributes.pop("allowzero", None)  # the new target has no 0 to copy
    middle.shape = ir.Shape(list(new_shape))
    transpose.attributes["perm"] = ir.AttrInt64s("perm", list(new_perm))
    return Rewrite(
        rule=RULE, nodes=[node_ref(reshape), node_ref(transpose)],
        reason=f"the Reshape's size-1 dims can sit anywhere: {list(candidate.shape)} -> {list(new_shape)} makes "
               f"perm {list(candidate.perm)} the batch transpose {list(new_perm)}, which the MatMul reads in place; "
               f"{reason}",
        result=f"Transpose {transpose.name} perm {list(new_perm)} "
               f"(same output {list(static_shape(transpose.outputs[0]) or [])})",
    )


@dataclass
class _Core:
    """Candidates whose MatMuls are joined through the attention scores, and the region that times
    them: the Reshapes, Transposes, MatMuls, the scores path and the output Transpose."""

    candidates: list[_Candidate]
    nodes: list[ir.Node]

    def key(self) -> str:
        """What the timing depends on: the region's ops, attributes and shapes, in order."""
        return "batch_transpose:" + region_key(self.nodes)

    def subject(self) -> str:
        names = ", ".join(c.transpose.name or c.transpose.outputs[0].name or "?" for c in self.candidates)
        return f"head splits {names} of {list(self.candidates[0].shape)}"


def _cores(graph: ir.Graph, candidates: list[_Candidate]) -> list[_Core]:
    """Group `candidates` into attention cores (candidates sharing a MatMul reader, or whose
    MatMuls a scores path joins)."""
    parent = list(range(len(candidates)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_reader: dict[ir.Node, int] = {}
    for i, candidate in enumerate(candidates):
        for reader in candidate.readers:
            if reader in by_reader:
                parent[find(i)] = find(by_reader[reader])
            by_reader.setdefault(reader, i)
    paths: dict[ir.Node, list[ir.Node]] = {}
    for reader in list(by_reader):
        path = scores_path(reader)
        if path is not None and path[-1] in by_reader:
            paths[reader] = path
            parent[find(by_reader[reader])] = find(by_reader[path[-1]])
    groups: dict[int, list[int]] = {}
    for i in range(len(candidates)):
        groups.setdefault(find(i), []).append(i)
    order = {node: index for index, node in enumerate(graph)}
    cores = []
    for members in groups.values():
        chosen = [candidates[i] for i in members]
        nodes: set[ir.Node] = set()
        for candidate in chosen:
            nodes.update((candidate.reshape, candidate.transpose, *candidate.readers))
        for reader in list(nodes):
            nodes.update(paths.get(reader, ()))
        last = max((n for n in nodes if is_onnx(n, "MatMul")), key=order.__getitem__)
        tail = [user for user, _ in last.outputs[0].uses()]
        if len(tail) == 1 and is_onnx(tail[0], "Transpose") and not last.outputs[0].is_graph_output():
            nodes.add(tail[0])  # the heads' merge: a fused attention kernel takes it in
        chosen.sort(key=lambda c: order[c.transpose])
        cores.append(_Core(chosen, sorted(nodes, key=order.__getitem__)))
    return cores


def _forms(core: _Core) -> tuple[ir.Model, ir.Model]:
    """The core's region as written and relaid out (a second copy, rewritten), to time both."""
    baseline, _ = region_model(core.nodes, name="head_splits")
    candidate, copies = region_model(core.nodes, name="batch_transposes")
    targets: dict[tuple[int, ...], ir.Value] = {}
    for c in core.candidates:
        _relayout(c, copies[c.reshape], copies[c.transpose], targets, "")
    return baseline, candidate


def _decide(core: _Core, ctx: PassContext) -> Decision:
    try:
        baseline, candidate = _forms(core)
    except ValueError as exc:  # a region input without a static shape, or a subgraph
        return Decision(subject=core.subject(), question=QUESTION, alternatives=[Alternative(n) for n in NAMES],
                        chosen=NAMES[0], reason=f"the region cannot be timed on its own: {exc}",
                        decided_by="precondition")
    predicted = ({NAMES[0]: ctx.cost.price(list(baseline.graph)), NAMES[1]: ctx.cost.price(list(candidate.graph))}
                 if ctx.cost is not None else None)
    return measured_decision(ctx.measured, key=core.key(), subject=core.subject(), question=QUESTION,
                             names=NAMES, build=lambda: (baseline, candidate), predicted=predicted,
                             policy=ctx.measured_policy)


QUESTION = "lay out head splits as batch transposes"
NAMES = ("as written", "batch transposes")


def expose_batch_transposes(model: ir.Model, ctx: PassContext) -> list[Rewrite]:
    """Relay out the candidates of every attention core that measured clearly faster so on the
    target; one decision per core shape (counting the cores it covers)."""
    graph = model.graph
    candidates = [c for node in list(graph) if (c := _candidate(node)) is not None]
    decisions: dict[str, Decision] = {}
    targets: dict[tuple[int, ...], ir.Value] = {}
    rewrites: list[Rewrite] = []
    for core in _cores(graph, candidates):
        key = core.key()
        decision = decisions.get(key)
        if decision is None:
            decision = decisions[key] = ctx.record(_decide(core, ctx))
        else:
            decision.count += 1
        if decision.chosen == NAMES[1]:
            rewrites.extend(_relayout(c, c.reshape, c.transpose, targets, decision.reason) for c in core.candidates)
    logger.debug("batch transposes: %d cores, %d head splits relaid out", len(decisions), len(rewrites))
    return rewrites


class ExposeBatchTransposes(Pass):
    """Lay out Reshape -> Transpose pairs feeding MatMuls as batch transposes where the target
    measured that faster (see the module docstring); the head splits of every layer share one
    shape constant per layout."""

    name = "batch_transpose"

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        rewrites = expose_batch_transposes(model, ctx)
        return PassResult(model, bool(rewrites), rewrites=rewrites)
