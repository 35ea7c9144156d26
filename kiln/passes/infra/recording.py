"""Infer what a pass rewrote by diffing the graph before and after it.

Passes reused from onnx-ir and onnxscript do not say what they changed. Node and value
objects keep their identity in onnx-ir, so we snapshot every node with its inputs and outputs,
then read, through surviving consumers, which value took over from each removed node's
outputs. Removed nodes connected to each other form one rewrite; the provenance of every
removed node is merged into the nodes that replace it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import onnx_ir as ir
from networkx.utils import UnionFind

from kiln.ir.compat import RULE_NAME_KEY
from kiln.ir.provenance import Origin, get_provenance, merge_provenance
from kiln.report.model import NodeRef, Rewrite

# Given the removed nodes of one rewrite and the values that took over their outputs,
# return the reason text.
Explainer = Callable[[list[ir.Node], list[ir.Value]], str]


def node_ref(node: ir.Node) -> NodeRef:
    return NodeRef(node.name or "", node.op_type, [str(o) for o in get_provenance(node)])


@dataclass
class _NodeState:
    node: ir.Node
    inputs: tuple[ir.Value | None, ...]
    outputs: tuple[ir.Value, ...]
    provenance: list[Origin]


def _all_nodes(model: ir.Model) -> list[ir.Node]:
    return list(ir.traversal.RecursiveGraphIterator(model.graph))


class GraphSnapshot:
    """Node identities, their inputs/outputs and provenance, and the graph outputs."""

    def __init__(self, model: ir.Model):
        self.states: dict[int, _NodeState] = {}
        for node in _all_nodes(model):
            self.states[id(node)] = _NodeState(node, tuple(node.inputs), tuple(node.outputs), get_provenance(node))
        self.graph_outputs = list(model.graph.outputs)

    def diff(self, model: ir.Model, *, rule: str, explain: Explainer | None = None) -> list[Rewrite]:
        """The rewrites that turned the snapshot into `model`; merges provenance as it goes."""
        after_nodes = _all_nodes(model)
        after_ids = {id(n) for n in after_nodes}
        removed = [s for key, s in self.states.items() if key not in after_ids]
        added = [n for n in after_nodes if id(n) not in self.states]
        if not removed and not added:
            return []

        # Which value replaced each old value, read from surviving consumers and graph outputs.
        replaced: dict[int, ir.Value] = {}
        for node in after_nodes:
            state = self.states.get(id(node))
            if state is None:
                continue
            for old, new in zip(state.inputs, node.inputs):
                if old is not None and new is not None and old is not new:
                    replaced[id(old)] = new
        for old, new in zip(self.graph_outputs, model.graph.outputs):
            if old is not new:
                replaced[id(old)] = new

        # Group removed nodes connected through their own values.
        producer_of = {id(v): id(s.node) for s in removed for v in s.outputs}
        connected = UnionFind(id(s.node) for s in removed)
        for state in removed:
            for value in state.inputs:
                if value is not None and id(value) in producer_of:
                    connected.union(id(state.node), producer_of[id(value)])
        clusters: dict[int, list[_NodeState]] = {}
        for state in removed:
            clusters.setdefault(connected[id(state.node)], []).append(state)

        added_ids = {id(n) for n in added}
        explained_added: set[int] = set()
        rewrites: list[Rewrite] = []
        for members in clusters.values():
            successors: list[ir.Value] = []
            for state in members:
                for value in state.outputs:
                    new = replaced.get(id(value))
                    if new is not None and all(new is not s for s in successors):
                        successors.append(new)
            # A removed node replaced by a node of the same op (CSE, de-duplication) hands its
            # provenance to that counterpart, and so do its removed producers, pairwise.
            mapped = _match_counterparts(members, replaced, producer_of, self.states)
            origins = [o for s in members if id(s.node) not in mapped for o in s.provenance]
            # The rest goes to every node of the replacement the cluster fed into:
            # new nodes reached backwards from the successor values, and surviving producers.
            targets = _replacement_nodes(successors, added_ids)
            for target in targets:
                if origins:
                    merge_provenance(target, origins)
                explained_added.add(id(target))
            rule_name = _rule_from_metadata(targets) or rule
            reason = explain([s.node for s in members], successors) if explain else ""
            if not reason:
                reason = _default_reason(successors)
            rewrites.append(
                Rewrite(
                    rule=rule_name,
                    nodes=[NodeRef(s.node.name or "", s.node.op_type, [str(o) for o in s.provenance]) for s in members],
                    reason=reason,
                    result=_describe_values(successors),
                )
            )
        # New nodes that replaced nothing (pure insertions) still get a provenance entry.
        for node in added:
            if id(node) not in explained_added and not get_provenance(node):
                merge_provenance(node, [Origin("", f"<{rule}>")])
                rewrites.append(Rewrite(rule=_rule_from_metadata([node]) or rule, nodes=[node_ref(node)], reason="inserted"))
        return rewrites


def _match_counterparts(members: list[_NodeState], replaced: dict[int, ir.Value],
                        producer_of: dict[int, int], states: dict[int, _NodeState]) -> set[int]:
    """Pair removed nodes with surviving nodes of the same op that took over their outputs,
    then their removed producers with the survivors' producers; merge provenance per pair.
    Returns the ids of the removed nodes that found a counterpart."""
    pairs: list[tuple[_NodeState, ir.Node]] = []
    for state in members:
        for value in state.outputs:
            new = replaced.get(id(value))
            producer = new.producer() if new is not None else None
            if producer is not None and producer.op_type == state.node.op_type:
                pairs.append((state, producer))
    mapped: set[int] = set()
    while pairs:
        state, survivor = pairs.pop()
        if id(state.node) in mapped:
            continue
        mapped.add(id(state.node))
        merge_provenance(survivor, state.provenance)
        for old_input, new_input in zip(state.inputs, survivor.inputs):
            if old_input is None or new_input is None or old_input is new_input:
                continue
            source = producer_of.get(id(old_input))
            counterpart = new_input.producer()
            if source is not None and counterpart is not None and states[source].node.op_type == counterpart.op_type:
                pairs.append((states[source], counterpart))
    return mapped


def _replacement_nodes(successors: list[ir.Value], added_ids: set[int]) -> list[ir.Node]:
    """Producers of the successor values, and, behind new producers, the new nodes feeding them."""
    found: list[ir.Node] = []
    seen: set[int] = set()
    stack = [v.producer() for v in successors]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        found.append(node)
        if id(node) in added_ids:
            stack.extend(v.producer() for v in node.inputs if v is not None and id(v.producer()) in added_ids)
    return found


def _rule_from_metadata(nodes: list[ir.Node]) -> str | None:
    for node in nodes:
        name = node.metadata_props.get(RULE_NAME_KEY)
        if name:
            return snake_case(name.split(",")[-1].strip())
    return None


def snake_case(name: str) -> str:
    """A rule's name as reports spell it: ``FuseBatchNormIntoConv`` -> ``fuse_batch_norm_into_conv``."""
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    return re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower()


def describe_value(value: ir.Value) -> str:
    producer = value.producer()
    if producer is not None:
        return f"{producer.op_type} {producer.name}".strip()
    if value.is_initializer():
        return f"initializer {value.name}"
    if value.is_graph_input():
        return f"graph input {value.name}"
    if value.const_value is not None:
        return f"constant {value.name}"
    return f"value {value.name}"


def _describe_values(values: list[ir.Value]) -> str:
    if not values:
        return "removed"
    text = ", ".join(describe_value(v) for v in values[:3])
    if len(values) > 3:
        text += f", +{len(values) - 3} more"
    return f"now from {text}"


def _default_reason(successors: list[ir.Value]) -> str:
    if not successors:
        return "no output reaches a graph output"
    if all(v.producer() is None and v.const_value is not None for v in successors):
        return "computed at compile time"
    return "replaced by an equivalent computation"
