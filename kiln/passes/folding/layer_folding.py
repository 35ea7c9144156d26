"""Exact layer folding: BatchNormalization and per-channel affine ops folded into the Conv,
ConvTranspose or Gemm next to them (their weights and bias absorb the scale and shift).

The BatchNorm / affine rules are onnxscript's (pattern / check / rewrite); they match only a
direct producer-consumer pair, so a BatchNorm after a ReLU never folds into the conv before the
ReLU. The scale fold follows only linear ops (layout ops, MatMuls), never a ReLU.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern as orp
from onnxscript.rewriter.rules import common as common_rules

from kiln.passes.infra.contract import PassContext
from kiln.passes.infra.rule_pass import RulePass

_LAYER_FOLDING_RULES = (
    common_rules.fuse_batchnorm_into_conv_rule,
    common_rules.fuse_batchnorm_into_conv_transpose_rule,
    common_rules.fuse_batchnorm_into_gemm_rule,
    common_rules.affine_conv_fusion_rule,  # Mul/Add by constants before a Conv
    common_rules.conv_affine_fusion_rule,  # Mul/Add by constants after a Conv
)


class FoldLayers(RulePass):
    """Fold BatchNormalization and constant per-channel Mul/Add into a neighbouring Conv,
    ConvTranspose or Gemm (onnxscript's rules)."""

    name = "layer_folding"

    def explain(self, removed: list[ir.Node], successors: list[ir.Value]) -> str:
        folded = sorted({n.op_type for n in removed if n.op_type not in ("Conv", "ConvTranspose", "Gemm", "Constant")})
        into = sorted({v.producer().op_type for v in successors if v.producer() is not None})
        return f"{', '.join(folded) or 'affine op'} folded into the weights and bias of {', '.join(into) or 'its layer'}"

    def rules(self, ctx: PassContext) -> list[orp.RewriteRule]:
        return list(_LAYER_FOLDING_RULES)
