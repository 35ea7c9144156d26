"""Rule passes: onnxscript rule sets (and onnx-ir passes) run as kiln passes, reused, not
copied, with the reasons behind every "no" a rule's check gave."""

from __future__ import annotations

import abc
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import onnx_ir as ir
from onnxscript import rewriter
from onnxscript.rewriter import pattern

from kiln.ir.provenance import register_with_onnxscript_rewriter
from kiln.passes.infra.contract import Pass, PassContext, PassResult
from kiln.passes.infra.recording import snake_case
from kiln.report.model import Decision, NearMiss

# nodes an onnxscript rule writes keep the provenance of every node it replaced
register_with_onnxscript_rewriter()


def run_ir_passes(model: ir.Model, passes: Sequence[ir.passes.PassBase]) -> PassResult:
    """Apply onnx-ir passes in order; modified if any of them modified the model."""
    modified = False
    for inner in passes:
        result = inner(model)
        model = result.model
        modified = modified or result.modified
    return PassResult(model, modified)


class CapturedWarnings(logging.Handler):
    """Collects a library logger's warnings during a pass so they reach the pass report
    instead of stderr (the library keeps working; the user reads why in the report)."""

    def __init__(self, logger_name: str):
        super().__init__(level=logging.WARNING)
        self.logger = logging.getLogger(logger_name)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> CapturedWarnings:
        self._propagate = self.logger.propagate
        self.logger.addHandler(self)
        self.logger.propagate = False
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.propagate = self._propagate

    def summary(self, what: str) -> str:
        """E.g. "2 warnings from the constant folder: first message (+1 more)"."""
        if not self.messages:
            return ""
        first = self.messages[0][:200]
        more = f" (+{len(self.messages) - 1} more)" if len(self.messages) > 1 else ""
        return f"{what}: {first}{more}"


class _NearMissTracer(pattern.MatchingTracer):
    """Keeps every match whose check said no, with the check's reason (onnxscript's own tracer
    keeps only the best-scoring match per rule, for printing)."""

    def __init__(self) -> None:
        super().__init__()
        self.misses: Counter[tuple[str, str]] = Counter()

    def log(self, rule: Any, container: Any, node: ir.Node, match_result: Any, status: Any) -> None:
        if status == pattern.MatchStatus.CONDITION_FAILED:
            reason = (match_result.reason or "its check failed").strip()
            self.misses[(snake_case(rule.name or ""), reason)] += 1


def near_misses(rules: pattern.RewriteRuleSet, model: ir.Model) -> list[NearMiss]:
    """Where the rules' patterns match `model` but their checks say no, with the reasons: a
    tracing sweep that changes nothing."""
    tracer = _NearMissTracer()
    rules.apply_to_model(model, tracer=tracer)
    return [NearMiss(rule=rule, reason=reason, count=count)
            for (rule, reason), count in tracer.misses.most_common()]


class DecidingRule(pattern.RewriteRuleClassBase):
    """An onnxscript rule whose check settles a trade-off through the context's decision API
    (`PassContext.cost` / `.measured`): built per run with the context, it records the decision
    and lets the match go ahead only when the decision chose the rewritten form."""

    def __init__(self, ctx: PassContext, name: str) -> None:
        super().__init__(name)
        self.ctx = ctx

    def follow(self, decision: Decision, rewritten: str) -> pattern.MatchResult:
        """Record `decision`; the match succeeds when it chose `rewritten`, else fails with why."""
        self.ctx.record(decision)
        result = pattern.MatchResult()
        return result if decision.chosen == rewritten else result.fail(f"kept: {decision.reason}")


def _footprint(model: ir.Model) -> tuple[int, frozenset[str]]:
    """The main graph's node count and initializer names."""
    return len(model.graph), frozenset(model.graph.initializers)


class RulePass(Pass):
    """A pass that applies a set of onnxscript pattern / check / rewrite rules, reports each
    rewrite under its rule's (snake_case) name, and, with ``PassOptions.trace_near_misses``,
    keeps the reasons of every check that said no (`PassReport.near_misses`). Subclasses give
    `name`, `explanation` (why the rewrites are right, used for rewrites inferred from the graph
    diff) and `rules(ctx)`."""

    #: Why a rewrite of this pass is right, for the report.
    explanation: str = ""
    #: Also match commutative ops (Add, Mul) with their operands swapped.
    commute: bool = False

    @abc.abstractmethod
    def rules(self, ctx: PassContext) -> Sequence[pattern.RewriteRule]:
        """The rules, built for this run (a rule that decides a trade-off reads `ctx`)."""

    def explain(self, removed: list[ir.Node], successors: list[ir.Value]) -> str:
        return self.explanation

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        rule_set = pattern.RewriteRuleSet(list(self.rules(ctx)), commute=self.commute)
        before = _footprint(model)
        result = run_ir_passes(model, [rewriter.RewritePass(rule_set)])
        # A rule set holding a rule with remove_nodes=False ends with onnxscript's
        # remove_unused_nodes, which drops dead nodes and initializers and reports it as no
        # change when no rule applied (onnxscript 0.7.2): a change all the same, to validate
        result.modified = result.modified or _footprint(model) != before
        if ctx.options.trace_near_misses:
            decisions = list(ctx.decisions)
            result.near_misses = near_misses(rule_set, model)
            ctx.decisions[:] = decisions  # the tracing sweep asks the same checks again: keep the first answers
        return result
