"""Plain graph rules (after tinygrad's PatternMatcher: rules as data, indexed by op): a rule
that has no fixed pattern (a path of any length, a region) is a function from a node of its op
types to a `Rewrite` or None. `GraphRulePass` walks the main graph once and tries the rules
indexed by each node's op in order (the first that rewrites wins); each rewrite carries its
rule's name, so the report counts them per rule."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import onnx_ir as ir

from kiln.ir.queries import is_onnx
from kiln.passes.infra.contract import Pass, PassContext, PassResult
from kiln.report.model import Rewrite

# (node, state shared by the rules of one run) -> the rewrite made, or None
RuleFunction = Callable[[ir.Node, dict[str, Any]], Rewrite | None]


@dataclass(frozen=True)
class GraphRule:
    """A named rule for nodes of `op_types` in the default ONNX domain."""

    name: str
    op_types: frozenset[str]
    apply: RuleFunction


def apply_graph_rules(model: ir.Model, rules: Sequence[GraphRule]) -> list[Rewrite]:
    """Try `rules` on every node of the main graph (a snapshot of its order: rules may remove
    nodes, which are then skipped); the rewrites."""
    index: dict[str, list[GraphRule]] = {}
    for rule in rules:
        for op in rule.op_types:
            index.setdefault(op, []).append(rule)
    state: dict[str, Any] = {}
    rewrites: list[Rewrite] = []
    for node in list(model.graph):
        if node.graph is None or not is_onnx(node):
            continue
        for rule in index.get(node.op_type, ()):
            rewrite = rule.apply(node, state)
            if rewrite is not None:
                rewrites.append(rewrite)
                break
    return rewrites


class GraphRulePass(Pass):
    """A pass made of plain graph rules; subclasses give `name` and `graph_rules`."""

    graph_rules: tuple[GraphRule, ...] = ()

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        rewrites = apply_graph_rules(model, self.graph_rules)
        return PassResult(model, bool(rewrites), rewrites=rewrites)
