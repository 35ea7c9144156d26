"""Exact layer folding: BatchNormalization and per-channel affine ops folded into the Conv,
ConvTranspose or Gemm next to them (their weights and bias absorb the scale and shift).

The BatchNorm / affine rules are onnxscript's (pattern / check / rewrite); they match only a
direct producer-consumer pair, so a BatchNorm after a ReLU never folds into the conv before the
ReLU. A BatchNorm in training mode (`training_mode=1`, or the running / saved statistics as extra
outputs before opset 14, as `torch.onnx.export(training=TrainingMode.TRAINING)` writes it)
normalizes with the batch's own statistics, so it never folds. The scale fold follows only linear
ops (layout ops, MatMuls), never a ReLU.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import MatchResult
from onnxscript.rewriter import pattern as orp
from onnxscript.rewriter.rules import common as common_rules

from kiln.ir.compat import BATCHNORM_FOLD_RULE_CLASSES
from kiln.passes.infra.contract import PassContext
from kiln.passes.infra.rule_pass import RulePass


def training_mode_reason(batchnorm: ir.Node) -> str:
    """Why `batchnorm` normalizes with batch statistics (training mode), or "" in inference mode."""
    if batchnorm.attributes.get_int("training_mode", 0):
        return "the BatchNormalization runs in training mode (training_mode=1): it uses the batch's statistics"
    if len(batchnorm.outputs) > 1:
        return "the BatchNormalization has training outputs (running or saved statistics)"
    return ""


class _InInferenceMode:
    """Adds to a BatchNorm fold's check: the BatchNormalization uses its running statistics."""

    def check(self, context, x, inbound_out: ir.Value, batchnorm_out: ir.Value) -> MatchResult:
        reason = training_mode_reason(batchnorm_out.producer())
        if reason:
            return MatchResult().fail(reason)
        return super().check(context, x, inbound_out, batchnorm_out)  # type: ignore[misc]


# onnxscript's BatchNorm folds with the inference-mode check, under onnxscript's class names (the
# rule names reports show)
_BATCHNORM_FOLDS = tuple(type(cls.__name__, (_InInferenceMode, cls), {}).rule()
                        for cls in BATCHNORM_FOLD_RULE_CLASSES)

_LAYER_FOLDING_RULES = (
    *_BATCHNORM_FOLDS,
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
