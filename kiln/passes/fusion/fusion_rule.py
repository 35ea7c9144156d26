"""`FusionRule`: the base of a kernel-fusion rule. A rule gives the pattern, the condition that
makes the rewrite exact, and the fused replacement; the base class asks the cost model whether
the matched nodes run faster as the one kernel the rewrite leaves (`Fused`) than as separate
kernels, and records that decision."""

from __future__ import annotations

from onnxscript.rewriter import pattern as orp

from kiln.cost_model.decisions import Fused
from kiln.passes.infra.rule_pass import DecidingRule


class FusionRule(DecidingRule):
    """Subclasses implement `pattern`, `rewrite` and, when the match alone is not enough,
    `condition` (a reason string when the rewrite would not be exact, else "")."""

    def condition(self, context, **bindings) -> str:
        """Why this match cannot be fused exactly ("" when it can)."""
        return ""

    def check(self, context, **bindings) -> orp.MatchResult:
        result = orp.MatchResult()
        problem = self.condition(context, **bindings)
        if problem:
            return result.fail(problem)
        if self.ctx.cost is None:
            return result.fail("no cost model in the context to price the fusion")
        nodes = list(context.nodes)
        return self.follow(self.ctx.cost.choose(
            subject=f"{self.name} at {context.root.name}", question="fuse into one kernel",
            alternatives={"separate": nodes, "fused": Fused(nodes)}, keep="separate"), "fused")
