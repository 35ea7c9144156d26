"""Operator fusion: every registered fusion rule (`kiln.passes.fusion.rules.FUSION_RULES`), each
fusing a matched subgraph into one op where the cost model predicts the one kernel faster."""

from __future__ import annotations

from onnxscript.rewriter import pattern as orp

from kiln.passes.fusion.rules import FUSION_RULES
from kiln.passes.infra.contract import PassContext
from kiln.passes.infra.rule_pass import RulePass


class FuseOperators(RulePass):
    """Apply the registered fusion rules (see the module docstring)."""

    name = "operator_fusion"
    commute = True
    explanation = "the matched nodes compute exactly what the fused op computes, as one kernel"

    def rules(self, ctx: PassContext) -> list[orp.RewriteRule]:
        return [rule.rule(ctx, name) for rule, name in FUSION_RULES]
