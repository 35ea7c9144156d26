"""Weight-only quantization of linears into block-wise 4-bit (or 8-bit) weights, layer by layer,
under an accuracy budget (``quantize="int4-weights"``).

Each linear ``y = alpha * (A @ W) + bias`` (`linears`) may become ``com.microsoft.MatMulNBits``
(`blockwise_weights`) in one of the config's formats: 4 or 8 bits, a block size, and on ONNX
Runtime a compute type (float products, or A quantized per block to int8). Which format is
decided twice:

1. **speed, by measurement** on the target, once per linear shape and format: the fp32 linear
   against its MatMulNBits (no kiln model prices these kernels, whose speed turns on unpacking
   and the memory the weights save); the formats that measured faster form the linear's
   ladder, fastest first;
2. **accuracy, by measurement**: every linear starts at the top of its ladder and the model runs
   on the calibration inputs; while the outputs' cosine is below the budget, the linear whose
   format alone moves the outputs most steps down to the fastest format of its ladder that is
   at least as fine in every respect (more bits, smaller blocks, more exact arithmetic), or to
   fp32 when none is, and the joint error is measured again. Then the same on the held-out
   sample inputs validation checks.

Weight-only quantization needs no calibration data of its own: without any, the search runs on
the sample inputs. Every linear is a `Decision` row with each format's measured time against
fp32, its solo cosine where it was measured, and the joint cosine.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import onnx_ir as ir

from kiln.cost_model.decisions import measured_decision
from kiln.errors import PassError
from kiln.ir.inputs import Feeds
from kiln.ir.provenance import merge_provenance
from kiln.passes.infra.contract import ModelRunner, Pass, PassContext, PassResult
from kiln.passes.infra.recording import node_ref
from kiln.passes.infra.validation import OutputScore
from kiln.passes.quantization.blockwise_weights import (
    BlockFormat,
    BlockwiseWeight,
    NBitsShape,
    alternatives,
    block_formats,
    matmul_nbits,
    quantize_blockwise,
)
from kiln.passes.quantization.config import QuantConfig
from kiln.passes.quantization.linears import Linear, find_linears, linear_of, remove_replaced_weights
from kiln.passes.quantization.reference_sets import (
    ReferenceSets,
    held_out_inputs,
    reference_sets,
    score_trial,
    within,
)
from kiln.report.model import Alternative, Decision, Rewrite

logger = logging.getLogger(__name__)

__all__ = ["QuantizeWeightsBlockwise"]

_QUESTION = "quantize linear's weights block-wise (weight-only)"
#: (graph position, format) -> the linear's packed weight, made once per search
_Packed = dict[tuple[int, BlockFormat], BlockwiseWeight]
_BACKENDS = ("onnxruntime", "openvino")


class QuantizeWeightsBlockwise(Pass):
    """Rewrites the linears whose MatMulNBits measured faster than fp32 into the fastest format
    that keeps the budget (see the module doc)."""

    name = "quantize_weights_blockwise"
    exact = False
    rule = "quantize_weights_blockwise"

    def __init__(self, config: QuantConfig | None = None, *, calibration: Sequence[Feeds] | None = None,
                 runner: ModelRunner | None = None) -> None:
        self.config = config or QuantConfig(scheme="int4-weights")
        self.error_budget = self.config.budget
        self.calibration = list(calibration) if calibration is not None else None
        self.runner = runner

    def formats(self, backend: str) -> list[BlockFormat]:
        """The formats tried on `backend`: OpenVINO chooses its own arithmetic, so one per bits and block size."""
        computes: tuple[str | None, ...] = tuple(self.config.block_compute) if backend == "onnxruntime" else (None,)
        return block_formats(tuple(self.config.block_bits), tuple(self.config.block_sizes), computes)

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        backend = ctx.target.backend
        if backend not in _BACKENDS:
            raise PassError(f"block-wise weight quantization lowers to com.microsoft.MatMulNBits, which ONNX Runtime "
                            f"and OpenVINO run, not the {backend!r} backend; use backend='onnxruntime' or 'openvino'.")
        linears, left = find_linears(model.graph)
        formats = self.formats(backend)
        packed: _Packed = {}  # shared by every trial of this run and the final rewrite
        measured: dict[str, Decision] = {}
        decisions: list[Decision] = []
        ladders: dict[int, list[BlockFormat]] = {}  # linear -> the formats measured faster, fastest first
        for i, linear in enumerate(linears):
            excluded = self._excluded(linear)
            decision, ladder = (excluded, []) if excluded else self._measured(linear, formats, ctx, measured)
            decisions.append(decision)
            if ladder:
                ladders[i] = ladder
        positions = {node: index for index, node in enumerate(model.graph)}
        linear_at = {positions[linear.node]: i for i, linear in enumerate(linears)}  # graph position -> linear
        leftover = "; ".join(f"{count} left: {why}" for why, count in sorted(left.items()))
        assignment: dict[int, BlockFormat] = {}
        if ladders:
            runner = self.runner or (ctx.target_runner if backend == "openvino" else None) or ctx.runner
            feeds = self.calibration or ctx.calibration_feeds()
            if runner is None or not feeds:
                for i in ladders:
                    decisions[i].chosen, decisions[i].decided_by = "fp32", "precondition"
                    decisions[i].reason += "; no inputs to measure the outputs' error on, so it stays fp32"
            else:
                sets = reference_sets(model, runner, feeds, held_out_inputs(ctx, feeds))
                assignment = self._fit_budget(model, runner, sets, {p: i for p, i in linear_at.items() if i in ladders},
                                              ladders, decisions, packed)
        for decision in decisions:
            ctx.record(decision)
        if not assignment:
            why = ("no linear measured faster in a block-wise format" if not ladders else
                   f"no linear fits the budget {self.error_budget} in a block-wise format")
            return PassResult(model, False, message=f"{why} ({len(linears)} linears"
                              + (f"; {leftover}" if leftover else "") + ")")
        rewrites = _quantize(model, assignment, packed, {p: decisions[linear_at[p]] for p in assignment})
        counts: dict[str, int] = {}
        for fmt in assignment.values():
            counts[fmt.name] = counts.get(fmt.name, 0) + 1
        kinds = ", ".join(f"{n} in {name}" for name, n in sorted(counts.items()))
        message = (f"{len(assignment)} of {len(linears)} linears weight-only block-wise ({kinds})"
                   + (f"; {leftover}" if leftover else ""))
        logger.info("%s: %s", self.name, message)
        return PassResult(model, True, rewrites=rewrites, message=message)

    def _excluded(self, linear: Linear) -> Decision | None:
        if linear.node.name not in self.config.exclude:
            return None
        return Decision(linear.name, _QUESTION, [Alternative("fp32")], chosen="fp32",
                        reason="excluded by QuantConfig.exclude", decided_by="precondition")

    @staticmethod
    def _measured(linear: Linear, formats: list[BlockFormat], ctx: PassContext,
                  cache: dict[str, Decision]) -> tuple[Decision, list[BlockFormat]]:
        """The linear's row on speed alone: each format against fp32, measured on the target once
        per shape (`cache`); chosen is the fastest format that won its pair (the budget may
        revise it), else fp32. With it the ladder: the formats that won, fastest first."""
        shape = NBitsShape.of(linear)
        weight_bytes = float(linear.weight.nbytes)
        rows = {"fp32": Alternative("fp32", metrics={"weight_bytes": weight_bytes})}
        reasons = []
        won: list[tuple[float, int, BlockFormat]] = []
        for fmt in formats:
            key = shape.key_for(fmt)
            pair = cache.get(key)
            if pair is None:
                pair = cache[key] = measured_decision(
                    ctx.measured, key=key, subject=f"{shape} {fmt}", question=_QUESTION, names=("fp32", fmt.name),
                    build=lambda fmt=fmt: alternatives(shape, fmt), policy=ctx.measured_policy, static=shape.static)
            fp32, candidate = pair.alternatives
            if rows["fp32"].measured_ms is None:
                rows["fp32"].measured_ms = fp32.measured_ms
            blocks = -(-shape.k // fmt.block_size)
            rows[fmt.name] = Alternative(fmt.name, measured_ms=candidate.measured_ms,
                                         metrics={**candidate.metrics, "weight_bytes": float(
                                             shape.n * blocks * (fmt.block_size * fmt.bits // 8 + 4))})
            if pair.decided_by != "measurement":
                reasons.append(f"{fmt}: {pair.reason}")
            elif pair.chosen == fmt.name:
                won.append((candidate.metrics["ratio"], len(won), fmt))
        decided_by = "measurement" if any(r.measured_ms is not None for r in rows.values()) else "precondition"
        ladder = [fmt for _, _, fmt in sorted(won)]
        if ladder:
            ratio, _, fastest = min(won)
            chosen = fastest.name
            reason = (f"{shape}: {len(won)} of {len(formats)} block-wise formats measured faster than fp32 in every "
                      f"trial; fastest {chosen} at {ratio:.3f}x fp32's time")
        else:
            chosen = "fp32"
            reason = f"{shape}: no block-wise format measured faster than fp32 in every trial"
            timed = [(row.metrics["ratio"], row.name) for row in rows.values() if "ratio" in row.metrics]
            if timed:
                ratio, best = min(timed)
                reason += f" (the fastest, {best}, at {ratio:.3f}x fp32's time)"
        if reasons:
            reason += "; " + "; ".join(dict.fromkeys(reasons))
        return (Decision(linear.name, _QUESTION, list(rows.values()), chosen=chosen, reason=reason,
                         decided_by=decided_by), ladder)

    def _fit_budget(self, model: ir.Model, runner: ModelRunner, sets: ReferenceSets, linear_at: dict[int, int],
                    ladders: dict[int, list[BlockFormat]], decisions: list[Decision], packed: _Packed
                    ) -> dict[int, BlockFormat]:
        """The format each linear keeps (by graph position; those gone back to fp32 absent): every
        linear (index into `decisions`, at the graph position `linear_at` maps to it) starts
        at the fastest format of its ladder; while the joint outputs break the budget, the one
        whose format alone moves them most steps down its ladder (`_step_down`), on the
        calibration feeds and then on the held-out ones; `packed` keeps each packed weight for
        every trial."""
        current = {position: ladders[i][0] for position, i in linear_at.items()}
        solo: dict[tuple[int, BlockFormat], OutputScore] = {}
        scores: dict[str, OutputScore] = {}

        def alone(position: int) -> OutputScore:
            key = (position, current[position])
            if key not in solo:
                solo[key] = self._trial_score(model, runner, sets["calibration"], {position: current[position]}, packed)
                row = decisions[linear_at[position]].alternative(current[position].name)
                row.metrics["solo_cosine"] = solo[key].cosine
            return solo[key]

        for on in sets:
            joint = self._trial_score(model, runner, sets[on], current, packed)
            while current and not self._within(joint):
                worst = max(current, key=lambda p: (alone(p).error, -p))
                fmt, i = current[worst], linear_at[worst]
                lower = _step_down(ladders[i], fmt)
                why = (f"{fmt} alone moves the outputs to cosine {alone(worst).cosine:.6f}; with it the joint cosine "
                       f"on the {on} inputs was {joint.cosine:.6f} (budget {self.error_budget})")
                decisions[i].decided_by = "budget"
                decisions[i].reason += f"; {why}: " + (f"{lower} instead" if lower else "fp32")
                if lower is None:
                    del current[worst]
                    decisions[i].chosen = "fp32"
                else:
                    current[worst] = lower
                    decisions[i].chosen = lower.name
                if current:
                    joint = self._trial_score(model, runner, sets[on], current, packed)
            scores[on] = joint
        for position, fmt in current.items():
            decision = decisions[linear_at[position]]
            decision.chosen = fmt.name
            row = decision.alternative(fmt.name)
            row.metrics["joint_cosine"] = scores["calibration"].cosine
            if "held-out" in scores:
                row.metrics["held_out_cosine"] = scores["held-out"].cosine
            decision.reason += ("; joint cosine " + ", ".join(f"{s.cosine:.6f} ({on})" for on, s in scores.items())
                                + f" within {self.error_budget}")
        return current

    def _trial_score(self, model: ir.Model, runner: ModelRunner, feeds_and_reference: tuple[list[Feeds], list[Any]],
                     assignment: dict[int, BlockFormat], packed: _Packed) -> OutputScore:
        """A copy of `model` with the linears at the positions in `assignment` in their formats,
        scored against the fp32 outputs: one trial of the search."""
        inputs, reference = feeds_and_reference
        trial = model.clone()
        _quantize(trial, assignment, packed)
        return score_trial(runner, model, trial, inputs, reference, self.config.budget)

    def _within(self, score: OutputScore) -> bool:
        return within(self.config.budget, score)


def _step_down(ladder: list[BlockFormat], fmt: BlockFormat) -> BlockFormat | None:
    """The fastest format of `ladder` other than `fmt` that is at least as fine as it in every respect."""
    for other in ladder:
        if other != fmt and other.at_least_as_accurate_as(fmt):
            return other
    return None


def _quantize(model: ir.Model, assignment: dict[int, BlockFormat], packed: _Packed,
              decisions: dict[int, Decision] | None = None) -> list[Rewrite]:
    """Rewrite the linears at the graph positions of `assignment` (positions survive
    `Model.clone()`, node identity does not) into MatMulNBits in their formats, in place; the
    weights packed once per position and format (`packed`, filled as it goes)."""
    graph = model.graph
    nodes = list(graph)
    graph.opset_imports.setdefault("com.microsoft", 1)
    rewrites: list[Rewrite] = []
    for position, fmt in sorted(assignment.items()):
        linear = linear_of(nodes[position])
        if isinstance(linear, str):  # cannot happen: positions come from find_linears on this graph
            raise PassError(f"node {nodes[position].name!r} is no longer a quantizable linear: {linear}")
        refs = [node_ref(linear.node)]
        q = packed.get((position, fmt))
        if q is None:
            q = packed[(position, fmt)] = quantize_blockwise(linear.weight, fmt, linear.alpha)
        old_weights = [v for v in linear.node.inputs[1:] if v is not None]
        node = matmul_nbits(graph, linear, q)
        merge_provenance(node, [linear.node])
        ir.convenience.replace_nodes_and_values(graph, linear.node, [linear.node], [node], [linear.node.outputs[0]],
                                                [node.outputs[0]])
        removed = remove_replaced_weights(graph, linear, old_weights)
        if removed is not None:
            refs.append(node_ref(removed))
        if decisions is not None:
            saved = linear.weight.nbytes - q.packed.nbytes - q.scales.nbytes
            rewrites.append(Rewrite(
                rule=QuantizeWeightsBlockwise.rule, nodes=refs, reason=decisions[position].reason,
                result=f"com.microsoft.MatMulNBits {node.name!r}, weight {linear.weight.shape[0]}x"
                       f"{linear.weight.shape[1]} in {fmt} ({saved / 1e6:.2f} MB less if the fp32 weight had no other "
                       "reader)"))
    return rewrites

