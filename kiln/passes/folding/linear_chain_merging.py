"""Merge consecutive linear maps: x @ W1 @ W2 -> x @ (W1 W2), and with a bias between them
(x @ W1 + b1) @ W2 -> x @ (W1 W2) + b1 W2, when the merged weight is no larger than the two it
replaces (per row, FLOPs scale with weight elements, so both FLOPs and bytes do not grow).

Written as onnxscript pattern / check / rewrite rules; onnxscript ships no such rule. Until the
cost model (kiln.cost_model) decides trade-offs, the check is that element count.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript import rewriter
from onnxscript.rewriter import pattern as orp

from kiln.passes.infra.rule_pass import run_ir_passes
from kiln.passes.infra.contract import Pass, PassContext, PassResult
from kiln.ir.queries import FLOAT_TYPES
from kiln.passes.fusion.parallel_matmul_choice import MAX_MERGED_RATIO, MIN_GROUP_FLOPS
from kiln.passes.fusion.parallel_matmul_joining import merge_parallel_matmuls
from kiln.passes.infra.recording import GraphSnapshot


def _constant_matrix(value: ir.Value) -> np.ndarray | None:
    """The value of a 2-D float initializer that is not a graph input, else None."""
    if not value.is_initializer() or value.is_graph_input() or value.const_value is None:
        return None
    if value.dtype not in FLOAT_TYPES or value.const_value.shape is None or len(value.const_value.shape) != 2:
        return None
    return value.const_value.numpy()


def _check_weights(w1: ir.Value, w2: ir.Value, result: orp.MatchResult) -> orp.MatchResult:
    a, b = _constant_matrix(w1), _constant_matrix(w2)
    if a is None or b is None:
        return result.fail("both weights must be constant 2-D float initializers")
    (k, m), (m2, n) = a.shape, b.shape
    if m != m2:
        return result.fail(f"inner dimensions differ ({m} vs {m2})")
    if k * n > k * m + m * n:
        return result.fail(f"merged weight {k}x{n} is larger than {k}x{m} + {m}x{n}: merging would cost more")
    return result


def _product(a: ir.Value, b: ir.Value) -> ir.TensorProtocol:
    """a @ b computed in float64 and stored in the weights' dtype."""
    x, y = a.const_value.numpy(), b.const_value.numpy()
    return ir.tensor((x.astype(np.float64) @ y.astype(np.float64)).astype(x.dtype))


class MergeMatMulChain(orp.RewriteRuleClassBase):
    """MatMul(MatMul(x, W1), W2) -> MatMul(x, W1 W2)."""

    def pattern(self, op, x, w1, w2):
        return op.MatMul(op.MatMul(x, w1), w2)

    def check(self, context, x, w1, w2) -> orp.MatchResult:
        return _check_weights(w1, w2, orp.MatchResult())

    def rewrite(self, op, x, w1, w2):
        return op.MatMul(x, op.initializer(_product(w1, w2), name=f"{w1.name}_x_{w2.name}"))


class MergeMatMulBiasMatMul(orp.RewriteRuleClassBase):
    """MatMul(Add(MatMul(x, W1), b1), W2) -> Add(MatMul(x, W1 W2), b1 W2)."""

    def pattern(self, op, x, w1, b1, w2):
        return op.MatMul(op.Add(op.MatMul(x, w1), b1), w2)

    def check(self, context, x, w1, b1, w2) -> orp.MatchResult:
        result = _check_weights(w1, w2, orp.MatchResult())
        if not result:
            return result
        if not b1.is_initializer() or b1.is_graph_input() or b1.const_value is None or b1.dtype != w2.dtype:
            return result.fail("the bias must be a constant initializer of the weights' dtype")
        bias = b1.const_value.numpy()
        if bias.ndim == 0 or bias.shape[-1] != w2.const_value.shape[0]:
            return result.fail(f"bias shape {list(bias.shape)} does not end with the inner dimension")
        return result

    def rewrite(self, op, x, w1, b1, w2):
        bias = b1.const_value.numpy()
        merged_bias = ir.tensor((bias.astype(np.float64) @ w2.const_value.numpy().astype(np.float64)).astype(bias.dtype))
        return op.Add(
            op.MatMul(x, op.initializer(_product(w1, w2), name=f"{w1.name}_x_{w2.name}")),
            op.initializer(merged_bias, name=f"{b1.name}_x_{w2.name}"),
        )


_RULES = rewriter.RewriteRuleSet([MergeMatMulChain.rule(), MergeMatMulBiasMatMul.rule()], commute=True)


class MergeLinearMaps(Pass):
    """Merge chains of constant-weight MatMuls (with an optional bias between) into one, then
    join parallel constant-weight MatMuls on one input (query, key, value) into one MatMul and a
    Split where that was measured clearly faster on the target
    (kiln.passes.fusion.parallel_matmul_joining).

    Joining saves no FLOPs or weight bytes and adds the Split's copy; in ONNX Runtime (2 threads,
    loaded 2-core machine) the joined GEMM was slower at the zoo's 128-197-row shapes (BERT-base:
    6.2-7.0 ms for one 768x2304 against 4.2-4.3 ms for three 768x768), at 512x384, 1024x384 and
    1500x768 (rows x width), and faster at Whisper-tiny's 1500x384 (by 9-20 %). No FLOPs / bytes
    rule fits that, so each shape is timed both ways (``PassContext.measured_choices``); without
    measured choices nothing is joined.

    Options: ``merge_parallel_max_ratio`` (default 0.95: join when joined/separate time is at
    most this) and ``merge_parallel_min_flops`` (default 50e6: smaller groups stay apart)."""

    name = "linear_map_merging"
    rule = "merge_linear_maps"

    def explain(self, removed: list[ir.Node], successors: list[ir.Value]) -> str:
        return "consecutive linear maps with nothing non-linear between them; the merged weight is no larger"

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        snapshot = GraphSnapshot(model)
        chains = run_ir_passes(model, [rewriter.RewritePass(_RULES)])
        rewrites = snapshot.diff(model, rule=self.rule, explain=self.explain) if chains.modified else []
        joined, kept = merge_parallel_matmuls(
            model, ctx.measured_choices,
            max_ratio=float(ctx.options.get("merge_parallel_max_ratio", MAX_MERGED_RATIO)),
            min_flops=float(ctx.options.get("merge_parallel_min_flops", MIN_GROUP_FLOPS)),
        )
        message = f"parallel MatMuls left apart: {'; '.join(kept)}" if kept else ""
        return PassResult(model, chains.modified or bool(joined), rewrites=rewrites + joined, message=message)
