"""int8 quantization of linears (dynamic, or static on OpenVINO) and convolutions (static, on
OpenVINO), layer by layer, under an accuracy budget.

Each linear ``y = alpha * (A @ W) + bias`` (`kiln.passes.quantization.linears`) becomes ONNX
Runtime's ``com.microsoft.DynamicQuantizeMatMul(A, Wq, scale, 0, bias)``: W stored as symmetric
int8 (`kiln.passes.quantization.weights`), A quantized to uint8 with its own range at every call,
the int32 product rescaled to float. Which linears are rewritten is decided twice:

1. **speed, by the cost model**: the fp32 product against the int8 one (its on-the-fly
   quantization of A included), per linear, at the linear's shapes; a linear predicted no faster
   stays fp32;
2. **accuracy, by measurement**: all the linears the cost model chose are quantized and the model
   is run on the calibration inputs; while its outputs' cosine with the fp32 model's is below the
   budget, the linear whose quantization alone moved the outputs most goes back to fp32, and the
   joint error is measured again. (Errors of separate layers do not simply add up, so every step
   is measured, not predicted.) Then the same on the sample inputs validation checks, when they
   are not calibration inputs: a budget broken only there sends linears back one at a time, so
   validation does not have to roll the whole pass back. Once the budget holds, the steps the
   final forms made unneeded are undone, the largest predicted saving first, where every set
   stays within the budget (`_relax`).

Linears that read the same activation (a transformer layer's Q, K and V) may instead quantize it
once: ``DynamicQuantizeLinear(A)`` feeding one ``com.microsoft.MatMulIntegerToFloat`` per linear,
which computes exactly what their DynamicQuantizeMatMuls would (the same uint8 A, scale and zero
point); which form is faster is measured on the target once per shape (`shared_activation`).

On OpenVINO the same linears become int8 weights behind a DequantizeLinear read by the MatMul
(`compressed_weights`): OpenVINO's CPU plugin quantizes the activation itself, per group of a
row, for its int8 GEMM. No kiln model prices those kernels, so speed is a measured choice per
linear shape (fp32 against int8, on the target); the budget search is the same, run on OpenVINO.

The static scheme (OpenVINO) goes one step further, with the ranges activations take on the
calibration inputs (`static_activations`): a dynamic int8 linear whose static form measured
faster reads its activation through a fixed-scale QuantizeLinear / DequantizeLinear, and a
convolution measured faster in static int8 than in fp32 reads its input that way and int8
filters (`static_convs`), and an attention core measured faster with its two products in int8
reads Q, K, Softmax's probabilities and V at fixed scales (`attention_products`). The budget
search runs once more over these, on top of the dynamic linears; a linear it drops stays
dynamic, a convolution or attention core goes back to fp32.

A dynamic int8 linear of ONNX Runtime's form has rungs before fp32: its activation
Hadamard-rotated in blocks at every call, the rotation undone in its weight (`hadamard_rotation`,
exact before quantization), which spreads outlier channels over their block and so shrinks the
per-tensor range the activation is quantized at. Each block size is priced by the cost model for
the activation's site (one rotation for all the linears that read it, as Q, K and V do); the
budget search steps the linear with the largest solo error to the cheapest rotated form that
measures more accurate alone (its site's other readers with it: the site takes the finest rung
any reader kept needs), and to fp32 only when none does.
The rotated linears' decision rows carry the outlier statistics (activation peak over RMS, as
read and rotated, on the calibration inputs).

Two choices are measured for all the linears at once, before the budget search: on a CPU
without VNNI, 7-bit or 8-bit weights for ORT (`_weight_range`), and whether to take the mean
error int8 adds out of the biases (`bias_correction`, `_correct_biases`).

Every linear, convolution and attention core is a `Decision` row: both alternatives' predicted (or measured) times, its solo and
the joint cosine, and why; so is every shape of shared activation. The pass is approximate: the
PassManager checks its result against the original with the budget on the sample inputs, which
need not be the calibration ones.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from kiln.cost_model.decisions import measured_decision
from kiln.errors import PassError
from kiln.ir.edits import new_initializer, placeholder_weight, remove_unused_initializers, sketch_node
from kiln.ir.inputs import Feeds
from kiln.ir.provenance import merge_provenance
from kiln.ir.queries import is_onnx
from kiln.passes.infra.contract import ModelRunner, Pass, PassContext, PassResult
from kiln.passes.infra.recording import node_ref
from kiln.passes.infra.validation import OutputScore
from kiln.passes.quantization.attention_products import (
    AttentionCore,
    attention_core_of,
    find_attention_cores,
    quantize_attention_core,
)
from kiln.passes.quantization.attention_products import alternatives as attention_alternatives
from kiln.passes.quantization.bias_correction import (
    activation_means,
    bias_add,
    bias_shift,
    correct_bias_add,
    has_bias,
)
from kiln.passes.quantization.compressed_weights import (
    LinearShape,
    compressed_linear,
    static_alternatives,
    static_linear,
)
from kiln.passes.quantization.compressed_weights import alternatives as compressed_alternatives
from kiln.passes.quantization.config import QuantConfig
from kiln.passes.quantization.convs import Convolution, conv_of, find_convs
from kiln.passes.quantization.hadamard_rotation import PeakObserver, rotate_input, rotation_blocks, sketch_rotation
from kiln.passes.quantization.linears import Linear, find_linears, linear_of, remove_replaced_weights
from kiln.passes.quantization.reference_sets import (
    ReferenceSets,
    held_out_inputs,
    reference_sets,
    score_trial,
    within,
)
from kiln.passes.quantization.shared_activation import SharedShape
from kiln.passes.quantization.shared_activation import alternatives as shared_alternatives
from kiln.passes.quantization.static_activations import ActivationRange, activation_ranges, exposing
from kiln.passes.quantization.static_convs import ConvShape, static_conv
from kiln.passes.quantization.static_convs import alternatives as conv_alternatives
from kiln.passes.quantization.weights import QuantizedWeight, quantize_weight
from kiln.report.model import Alternative, Decision, Rewrite

logger = logging.getLogger(__name__)

__all__ = ["QuantizeInt8"]

_DOMAIN = "com.microsoft"
_OP = "DynamicQuantizeMatMul"
#: The form each backend runs dynamic int8 linears in: ONNX Runtime's contrib kernels, or int8
#: weights behind a DequantizeLinear that OpenVINO compiles into its compressed-weight GEMM.
_FORMS = {"onnxruntime": "contrib", "openvino": "compressed"}
_SHARED_OP = "MatMulIntegerToFloat"
_QUESTION = "quantize linear to dynamic int8"
_STATIC_QUESTION = "static activation scales against quantizing the activation per call"
_CONV_QUESTION = "quantize convolution to static int8"
_CORE_QUESTION = "quantize attention products to static int8"
_STATIC = "int8 static"
_SHARED_QUESTION = "quantize an activation several int8 linears read once"
_BIAS_QUESTION = "take the mean error int8 adds out of the linears' biases"
_RANGE_QUESTION = "7-bit or 8-bit int8 weights without VNNI"

#: what the pass quantizes: linears (dynamic or static int8), convolutions and attention cores
#: (static int8)
_Unit = Linear | Convolution | AttentionCore


@dataclasses.dataclass
class _Ladder:
    """A dynamic int8 linear's rotated forms (`hadamard_rotation`) the cost model prices faster
    than fp32, cheapest first, as (alternative name, block size); `why` says why there are none."""

    rungs: list[tuple[str, int]]
    why: str = ""


def _cpu_has_vnni() -> bool:
    from kiln.cost_model.machine import cpu_flags

    flags = cpu_flags()
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags) or not flags  # unknown CPU: assume modern


class QuantizeInt8(Pass):
    """Rewrites the linears the cost model prices faster in int8 into DynamicQuantizeMatMul,
    keeping in fp32 those whose error would break the budget (see the module doc)."""

    name = "quantize_int8"
    exact = False
    rule = "quantize_int8"

    def __init__(self, config: QuantConfig | None = None, *, calibration: Sequence[Feeds] | None = None,
                 runner: ModelRunner | None = None) -> None:
        self.config = config or QuantConfig()
        self.error_budget = self.config.budget
        self.calibration = list(calibration) if calibration is not None else None
        self.runner = runner

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        form = _FORMS.get(ctx.target.backend)
        if form is None:
            raise PassError(f"dynamic int8 quantization lowers to ONNX Runtime or OpenVINO, not to the "
                            f"{ctx.target.backend!r} backend; use backend='onnxruntime' or 'openvino'.")
        # without VNNI, ORT's u8 x s8 GEMM adds pairs of products in 16 bits, which 8-bit weights can
        # saturate and 7-bit ones cannot; which costs less accuracy is measured (`_weight_range`),
        # 7-bit until then. OpenVINO handles its own.
        undecided = form == "contrib" and self.config.reduce_range is None and not _cpu_has_vnni()
        reduce_range = self.config.reduce_range if self.config.reduce_range is not None else undecided
        linears, left = find_linears(model.graph)
        static_scheme = self.config.scheme == "static-int8"
        # convolutions and attention products have no dynamic int8 form: only the static scheme
        # on OpenVINO takes them
        static_forms = static_scheme and form == "compressed"
        convs, conv_left = find_convs(model.graph) if static_forms else ([], {})
        cores, core_left = find_attention_cores(model.graph) if static_forms else ([], {})
        for core in cores:  # the linears' search counted their products as left
            for product in (core.node, core.context):
                why = linear_of(product)
                if isinstance(why, str) and left.get(why, 0) > 0:
                    left[why] -= 1
        left = {why: count for why, count in left.items() if count}
        positions = {node: index for index, node in enumerate(model.graph)}
        decisions = [self._excluded(linear) or (self._priced(linear, ctx) if form == "contrib"
                                                else self._measured(linear, ctx)) for linear in linears]
        decisions += [self._excluded(conv) or self._measured(conv, ctx) for conv in convs]
        decisions += [self._excluded(core) or _measured_core(core, ctx) for core in cores]
        units: list[_Unit] = [*linears, *convs, *cores]
        chosen = [i for i, d in enumerate(decisions[:len(linears)]) if d.chosen == "int8"]
        static_only = [i for i in range(len(linears), len(units)) if decisions[i].chosen == _STATIC]
        leftover = "; ".join(f"{count} left: {why}" for why, count in sorted({**left, **conv_left, **core_left}.items()))
        if not chosen and not static_only:
            for decision in decisions:
                ctx.record(decision)
            priced = f"{len(linears)} linears" + (f" and {len(convs)} convolutions" if convs else "") + \
                (f" and {len(cores)} attention cores" if cores else "")
            return PassResult(model, False, message=f"no linear, convolution or attention core is predicted or measured "
                              f"faster in int8 ({priced} priced" + (f"; {leftover}" if leftover else "") + ")")
        # OpenVINO quantizes the activations inside its kernels: the error is the backend's to measure
        runner = self.runner or (ctx.target_runner if form == "compressed" else None) or ctx.runner
        feeds = self.calibration or ctx.calibration_feeds()
        held_out = held_out_inputs(ctx, feeds)
        static: list[int] = []
        ranges: dict[str, ActivationRange] | None = None
        shifts: dict[int, np.ndarray] = {}
        rotations: dict[int, int] = {}  # graph position -> Hadamard block of a rotated linear
        if runner is not None and feeds:
            sets = reference_sets(model, runner, feeds, held_out)
            if chosen and undecided:
                reduce_range = self._weight_range(model, ctx, runner, sets, [positions[linears[i].node] for i in chosen])
            if chosen and form == "contrib" and self.config.bias_correction:  # OpenVINO's own per-group
                # activation quantization is not one kiln can reproduce, so only ORT's linears
                shifts = self._correct_biases(model, ctx, runner, sets, [linears[i] for i in chosen], positions, [],
                                              None, reduce_range, form=form)
            if chosen:
                # rotation is offered to ORT's dynamic linears: OpenVINO quantizes activations per
                # group itself, and the static scheme's ranges are taken before any rotation
                ladders = (self._rotation_ladders(linears, chosen, decisions, ctx)
                           if form == "contrib" and not static_scheme and self.config.rotation_blocks else {})
                chosen, rotations = self._fit_budget(model, runner, sets, [positions[linears[i].node] for i in chosen],
                                                     chosen, decisions, reduce_range, form=form, bias_shifts=shifts,
                                                     ladders=ladders)
                if rotations:
                    self._record_peaks(model, runner, sets, {positions[linears[i].node]: decisions[i] for i in chosen},
                                       {positions[linears[i].node]: linears[i] for i in chosen}, rotations)
            if static_scheme and (chosen or static_only):
                static, ranges, shifts = self._fit_static(model, ctx, runner, sets, units, positions, chosen,
                                                          static_only, decisions, reduce_range)
        else:
            for i in static_only:
                decisions[i].chosen, decisions[i].decided_by = "fp32", "precondition"
                decisions[i].reason += "; no calibration inputs to fix its input's scale from, so it stays fp32"
        for decision in decisions:
            ctx.record(decision)
        static_kept = [i for i in static if i >= len(linears)]  # convolutions and attention cores
        static_cores = [i for i in static_kept if isinstance(units[i], AttentionCore)]
        if not chosen and not static_kept:
            return PassResult(model, False, message=f"no linear, convolution or attention core fits the budget {self.error_budget} in int8")
        shared = self._shared_activations([linears[i] for i in chosen], ctx) if form == "contrib" else set()
        rewritten = chosen + static_kept
        rewrites = _quantize(model, [positions[units[i].node] for i in rewritten], self.config.per_channel,
                             reduce_range, [decisions[i] for i in rewritten], shared=shared, form=form,
                             static={positions[units[i].node] for i in static}, ranges=ranges, bias_shifts=shifts,
                             rotations=rotations)
        static_linears = len(static) - len(static_kept)
        corrected = sum(1 for i in (static if form == "compressed" else chosen)
                        if i < len(linears) and positions[units[i].node] in shifts
                        and positions[units[i].node] not in rotations)
        static_conv_count = len(static_kept) - len(static_cores)
        granularity = "per-channel" if self.config.per_channel else "per-tensor"
        parts = []
        if linears or not convs:
            parts.append(f"{len(chosen)} of {len(linears)} linears in dynamic int8 ({granularity}"
                         f"{', int8 weights OpenVINO compiles with its own activation quantization' if form == 'compressed' else ''}"
                         f"{f'; {static_linears} with static activation scales ({self._range_method})' if static_linears else ''}"
                         f"{f'; {corrected} with their biases corrected for the mean error int8 adds' if corrected else ''}"
                         f"{f'; {len(rotations)} reading their activation Hadamard-rotated' if rotations else ''}"
                         f"{', 7-bit weights' if reduce_range else ''}"
                         f"{f'; {len(shared)} activations quantized once for several linears' if shared else ''})")
        if convs:
            parts.append(f"{static_conv_count} of {len(convs)} convolutions in static int8 ({granularity} filters"
                         f"{f', inputs at {self._range_method}' if static_conv_count else ''})")
        if cores:
            parts.append(f"{len(static_cores)} of {len(cores)} attention cores with both products in static int8"
                         f"{f' (Q, K, V and the probabilities at {self._range_method})' if static_cores else ''}")
        message = "; ".join(parts) + (f"; {leftover}" if leftover else "")
        logger.info("%s: %s", self.name, message)
        return PassResult(model, True, rewrites=rewrites, message=message)

    @property
    def _range_method(self) -> str:
        method = self.config.activation_range
        return f"{method} ranges" if method != "percentile" else f"{self.config.percentile:g}th-percentile ranges"

    def _priced(self, linear: Linear, ctx: PassContext) -> Decision:
        """The linear's decision row on speed alone (the budget may revise it)."""
        metrics = {name: {"weight_bytes": value} for name, value in _weight_bytes(linear).items()}
        if ctx.cost is None:
            return _kept_fp32(linear, "no cost model to price int8 against fp32; the linear stays fp32")
        return ctx.cost.choose(linear.name, _QUESTION, {"fp32": [linear.node], "int8": [_sketch(linear)]}, keep="fp32",
                               metrics=metrics, why={"int8": "int8 weights and an int8 GEMM, A quantized per call"})

    def _excluded(self, unit: _Unit) -> Decision | None:
        """The fp32 row of a linear, convolution or attention core (either product) that
        `QuantConfig.exclude` names, else None."""
        names = {unit.node.name, unit.context.name} if isinstance(unit, AttentionCore) else {unit.node.name}
        return _kept_fp32(unit, "excluded by QuantConfig.exclude") if names & set(self.config.exclude) else None

    @staticmethod
    def _measured(unit: _Unit, ctx: PassContext) -> Decision:
        """The unit's decision row on speed alone for OpenVINO, measured on the target once per
        shape (the budget may revise it): a linear's fp32 against int8 weights, a convolution's
        fp32 against static int8 (input at a fixed scale, int8 filters)."""
        weight_bytes = _weight_bytes(unit)
        if isinstance(unit, Convolution):
            shape: LinearShape | ConvShape = ConvShape.of(unit)
            question, build = _CONV_QUESTION, lambda: conv_alternatives(shape)
        else:
            shape = LinearShape.of(unit)
            question, build = _QUESTION, lambda: compressed_alternatives(shape)
        decision = measured_decision(ctx.measured, key=shape.key, subject=unit.name, question=question,
                                     names=tuple(weight_bytes), build=build, policy=ctx.measured_policy,
                                     static=shape.static)
        for alternative in decision.alternatives:
            alternative.metrics["weight_bytes"] = weight_bytes[alternative.name]
        decision.reason = f"{shape}: {decision.reason}"
        return decision

    @staticmethod
    def _shared_activations(linears: list[Linear], ctx: PassContext) -> set[str]:
        """Names of the activations read by two or more of `linears` that measured clearly faster
        quantized once (`shared_activation`); a decision row per shape, with the cost model's
        price of both forms beside the measurement."""
        readers: dict[str, list[Linear]] = {}
        for linear in linears:
            if linear.activation.name:
                readers.setdefault(linear.activation.name, []).append(linear)
        decisions: dict[str, Decision] = {}  # one measurement per shape, however many layers share it
        shared: set[str] = set()
        for name, group in readers.items():
            if len(group) < 2:
                continue
            activation = group[0].activation
            shape = SharedShape(tuple(activation.shape) if activation.shape is not None else (None,),
                                tuple(linear.weight.shape[1] for linear in group),
                                tuple(linear.bias is not None for linear in group))
            decision = decisions.get(shape.key)
            if decision is None:
                quantized = _sketch_dynamic_quantize(activation)
                predicted = ({"per linear": ctx.cost.price([_sketch(linear) for linear in group]),
                              "shared": ctx.cost.price([quantized, *(_sketch(linear, quantized) for linear in group)])}
                             if ctx.cost is not None else None)
                decision = decisions[shape.key] = ctx.record(measured_decision(
                    ctx.measured, key=shape.key, subject=str(shape), question=_SHARED_QUESTION,
                    names=("per linear", "shared"), build=lambda shape=shape: shared_alternatives(shape),
                    predicted=predicted, policy=ctx.measured_policy, static=shape.static))
            else:
                decision.count += 1
            if decision.chosen == "shared":
                shared.add(name)
        return shared

    def _fit_static(self, model: ir.Model, ctx: PassContext, runner: ModelRunner, sets: ReferenceSets,
                    units: list[_Unit], positions: dict[ir.Node, int], chosen: list[int], static_only: list[int],
                    decisions: list[Decision], reduce_range: bool
                    ) -> tuple[list[int], dict[str, ActivationRange], dict[int, np.ndarray]]:
        """The linears, convolutions and attention cores (indices into `units`) that keep the budget with static
        activation scales (the range each input took on the calibration feeds): among the dynamic
        int8 linears `chosen`, those where static measured clearly faster on the target, once per
        shape (the others stay dynamic), and the convolutions and attention cores `static_only` measured faster in
        static int8 than in fp32 (those dropped stay fp32); the ranges, and the bias shifts of the
        static linears by graph position when bias correction measured better (`_correct_biases`)."""
        ranges = activation_ranges(model, ctx.runner or runner, sets["calibration"][0],
                                   [v for i in chosen + static_only for v in _inputs(units[i])],
                                   method=self.config.activation_range, percentile=self.config.percentile)
        faster: dict[str, Decision] = {}
        candidates = []
        for i in chosen:
            linear = units[i]
            assert isinstance(linear, Linear)
            if linear.activation.name not in ranges:
                continue
            shape = LinearShape.of(linear)
            decision = faster.get(shape.key)
            if decision is None:
                decision = faster[shape.key] = ctx.record(measured_decision(
                    ctx.measured, key=f"static {shape.key}", subject=f"{shape} static", question=_STATIC_QUESTION,
                    names=("int8", _STATIC), build=lambda shape=shape: static_alternatives(shape),
                    policy=ctx.measured_policy, static=shape.static))
            else:
                decision.count += 1
            if decision.chosen == _STATIC:
                decisions[i].alternatives.append(Alternative(_STATIC, metrics={}))
                candidates.append(i)
        for i in static_only:
            if all(v.name in ranges for v in _inputs(units[i])):
                candidates.append(i)
            else:
                decisions[i].chosen, decisions[i].decided_by = "fp32", "precondition"
                decisions[i].reason += ("; its input has no range on the calibration inputs (not a tensor the "
                                        "calibration run could read), so it stays fp32")
        if not candidates:
            return [], ranges, {}
        base = [positions[units[i].node] for i in chosen]
        shifts = self._correct_biases(model, ctx, runner, sets, [units[i] for i in candidates], positions, base,
                                      ranges, reduce_range, form="compressed") if self.config.bias_correction else {}
        kept, _ = self._fit_budget(model, runner, sets, [positions[units[i].node] for i in candidates], candidates,
                                   decisions, reduce_range, form="compressed", static_ranges=ranges,
                                   base_positions=base, bias_shifts=shifts)
        return kept, ranges, shifts

    def _weight_range(self, model: ir.Model, ctx: PassContext, runner: ModelRunner, sets: ReferenceSets,
                      positions: list[int]) -> bool:
        """Whether the int8 linears at `positions` take 7-bit weights (True) or 8-bit ones, on a CPU
        without VNNI: both quantize every one of them and are scored on the calibration inputs;
        8-bit wins only where it measures more accurate (its finer grid against the 16-bit
        saturation it risks). One decision row, both scores in it."""
        inputs, reference = sets["calibration"]
        seven, eight = (self._trial_score(model, runner, inputs, reference, positions, reduce_range)
                        for reduce_range in (True, False))
        reduce_range = not (eight.problem is None and eight.error < seven.error)
        ctx.record(Decision(
            f"the weights of {len(positions)} int8 linears", _RANGE_QUESTION,
            [Alternative("7-bit", metrics={"cosine": seven.cosine}), Alternative("8-bit", metrics={"cosine": eight.cosine})],
            chosen="7-bit" if reduce_range else "8-bit", decided_by="measurement",
            reason=(f"this CPU has no VNNI: its u8 x s8 GEMM adds pairs of products in 16 bits, which 8-bit weights can "
                    f"saturate; worst output cosine on the calibration inputs {seven.cosine:.6f} with 7-bit weights, "
                    f"{eight.cosine:.6f} with 8-bit; the same kernels and weight bytes, so both run alike")))
        return reduce_range

    def _correct_biases(self, model: ir.Model, ctx: PassContext, runner: ModelRunner, sets: ReferenceSets,
                        candidates: list[_Unit], positions: dict[ir.Node, int], base: list[int],
                        ranges: dict[str, ActivationRange] | None, reduce_range: bool, form: str) -> dict[int, np.ndarray]:
        """The bias shifts (`bias_correction`) of the linears among `candidates` that have a bias,
        by graph position, if correcting them measured better than not, else none: static
        linears at the fixed `ranges` (on top of the dynamic linears at `base`), or with `ranges`
        None dynamic int8 linears of ONNX Runtime's form, each call at its own range. Both are
        scored with every candidate quantized: the uncorrected model on the calibration feeds,
        the corrected one on each calibration feed with the shifts fitted on the others (fitted
        and scored on the same rows, a mean always looks right). One decision row, both scores
        in it."""
        biased = {positions[u.node]: u for u in candidates if isinstance(u, Linear) and has_bias(u)}
        if not biased:
            return {}
        feeds, reference = sets["calibration"]
        means = activation_means(model, ctx.runner or runner, feeds, [u.activation for u in biased.values()], ranges)
        biased = {p: u for p, u in biased.items() if u.activation.name in means}
        if not biased:  # no activation the calibration run could read
            return {}
        weights = {p: quantize_weight(u.weight, per_channel=self.config.per_channel, reduce_range=reduce_range)
                   for p, u in biased.items()}

        def fitted(on: Sequence[int] | None) -> dict[int, np.ndarray]:
            return {p: bias_shift(u, weights[p], means[u.activation.name], on) for p, u in biased.items()}
        quantized = sorted(positions[u.node] for u in candidates)
        static = set(quantized) if ranges is not None else set()

        def score(shifts: dict[int, np.ndarray], on: list[int]) -> OutputScore:
            return self._trial_score(model, runner, [feeds[k] for k in on], [reference[k] for k in on],
                                     list(dict.fromkeys([*base, *quantized])), reduce_range, form=form,
                                     static=static, ranges=ranges, bias_shifts=shifts)
        everything = list(range(len(feeds)))
        plain = score({}, everything)
        if len(feeds) > 1:
            folds = [score(fitted([j for j in everything if j != k]), [k]) for k in everything]
            problem = next((f.problem for f in folds if f.problem), None)
            corrected = OutputScore(min(f.cosine for f in folds), max(f.max_abs for f in folds), problem)
            how = f"each of the {len(feeds)} calibration feeds scored with the shifts fitted on the others"
        else:
            corrected = score(fitted(None), everything)
            how = "scored on the one calibration feed it was fitted on (give more feeds for an unbiased judgement)"
        shifts = fitted(None)
        largest = max(float(np.abs(s).max()) for s in shifts.values())
        better = corrected.problem is None and corrected.error < plain.error
        decision = ctx.record(Decision(
            f"{len(biased)} {'static' if ranges is not None else 'dynamic'} int8 linears with a bias", _BIAS_QUESTION,
            [Alternative("uncorrected", metrics={"cosine": plain.cosine}),
             Alternative("corrected", metrics={"cosine": corrected.cosine, "largest_shift": largest})],
            chosen="corrected" if better else "uncorrected", decided_by="measurement",
            reason=(f"worst output cosine {plain.cosine:.6f} uncorrected, {corrected.cosine:.6f} corrected ({how}; "
                    f"largest shift {largest:.3g}); only bias values change, so both run alike")))
        logger.info("%s: bias correction of %s: %s", self.name, decision.subject, decision.reason)
        return shifts if better else {}

    def _fit_budget(self, model: ir.Model, runner: ModelRunner, sets: ReferenceSets, positions: list[int],
                    chosen: list[int], decisions: list[Decision], reduce_range: bool, form: str = "contrib", *,
                    static_ranges: dict[str, ActivationRange] | None = None,
                    base_positions: Sequence[int] = (), bias_shifts: dict[int, np.ndarray] | None = None,
                    ladders: Mapping[int, _Ladder] | None = None) -> tuple[list[int], dict[int, int]]:
        """The chosen linears (indices into `decisions`) that keep the budget together, and the
        Hadamard block of each that reads its activation rotated, by graph position: all of them
        plain if they keep it, else the one with the largest solo error steps down its `ladders`
        rung (the cheapest rotated form below its current one that measures more accurate alone)
        or, with none left, goes back to fp32, and the joint error is measured again; first on the
        calibration feeds, then on the held-out feeds (`reference_sets`: the sample inputs
        validation checks, when they are not among the calibration feeds): a linear that breaks
        the budget only on inputs the search has not seen steps down alone, not the whole pass.

        With `static_ranges`, the same search one step up: every linear at `base_positions` is
        int8 in every trial, the chosen ones (linears and convolutions) with static activation
        scales; a dropped linear keeps its dynamic int8, a dropped convolution (it has no dynamic
        form) goes back to fp32; `bias_shifts` correct the static linears' biases (`_correct_biases`)."""
        candidate = _STATIC if static_ranges is not None else "int8"
        ladders = ladders or {}
        blocks: dict[int, int] = {}  # index -> the Hadamard block its site's activation is rotated by (plain: absent)
        own: dict[int, int] = {}  # index -> the rung it stepped to itself (its site takes the finest kept)

        def fallback(i: int) -> str:
            dynamic = static_ranges is not None and decisions[i].alternative("int8") is not None
            return "int8" if dynamic else "fp32"

        def measure(subset: list[int], on: str) -> OutputScore:
            picked = [positions[chosen.index(i)] for i in subset]
            rotations = {positions[chosen.index(i)]: blocks[i] for i in subset if i in blocks}
            inputs, reference = sets[on]
            if static_ranges is None:
                return self._trial_score(model, runner, inputs, reference, picked, reduce_range, form=form,
                                         bias_shifts=bias_shifts, rotations=rotations)
            return self._trial_score(model, runner, inputs, reference, list(dict.fromkeys([*base_positions, *picked])),
                                     reduce_range, form=form, static=set(picked), ranges=static_ranges,
                                     bias_shifts=bias_shifts)

        def site_rung(i: int) -> int:
            """The rung of `i`'s site: the finest any of its kept readers stepped to (-1: plain)."""
            ladder = ladders.get(i)
            return max((own[j] for j in keep if j in own and ladders.get(j) is ladder), default=-1)

        def sync(i: int, by: str | None = None, quiet: bool = False) -> None:
            """Rotate every kept reader of `i`'s site by the site's rung (`by`: the reader whose
            step moved the others, for their reasons; `quiet`: a trial, no reasons)."""
            ladder = ladders.get(i)
            for j in keep:
                if ladders.get(j) is not ladder:
                    continue
                rung = site_rung(j)
                block = ladder.rungs[rung][1] if ladder is not None and rung >= 0 else None
                if block == blocks.get(j):
                    continue
                if block is None:
                    blocks.pop(j)
                else:
                    blocks[j] = block
                if quiet:
                    continue
                if by is not None and j != i:
                    decisions[j].decided_by = "budget"
                    decisions[j].reason += f"; {form_name(j)}: it reads the activation of {by}, rotated for both"
                elif by is None:
                    decisions[j].reason += (f"; {form_name(j)} again: {decisions[i].subject}, which shares its "
                                            "activation, went back to fp32")

        def form_name(i: int) -> str:
            rung = site_rung(i)
            return ladders[i].rungs[rung][0] if rung >= 0 else candidate

        def step_down(i: int) -> str | None:
            """Move linear `i` to the cheapest rung below its site's that measures more accurate
            alone on the calibration feeds (its solo score replaced, its site's other readers
            moved with it); that rung's name, or None."""
            ladder = ladders.get(i)
            was = blocks.get(i)
            for rung in range(site_rung(i) + 1, len(ladder.rungs) if ladder else 0):
                name, block = ladder.rungs[rung]
                blocks[i] = block
                score = measure([i], "calibration")
                decisions[i].alternative(name).metrics["solo_cosine"] = score.cosine
                if score.problem is None and score.error < solo[i].error:
                    solo[i], own[i] = score, rung
                    sync(i, by=decisions[i].subject)
                    return name
            if was is None:
                blocks.pop(i, None)
            else:
                blocks[i] = was
            return None

        keep = list(chosen)
        solo: dict[int, OutputScore] = {}
        scores: dict[str, OutputScore] = {}
        changed = True
        while changed and keep:  # until a sweep over the sets steps nothing: a step made for one can break another
            changed = False
            for on in sets:
                joint = measure(keep, on)
                while not self._within(joint):
                    changed = True
                    if not solo:  # each chosen linear or convolution alone, on the calibration feeds, once
                        solo = {i: measure([i], "calibration") for i in chosen}
                        for i, score in solo.items():
                            decisions[i].alternative(candidate).metrics["solo_cosine"] = score.cosine
                    worst = max(keep, key=lambda i: (solo[i].error, -i))
                    why = (f"{form_name(worst)} alone moves the outputs to cosine {solo[worst].cosine:.6f}; with it "
                           f"the joint cosine on the {on} inputs was {joint.cosine:.6f} (budget {self.error_budget})")
                    rotated = step_down(worst)
                    ladder = ladders.get(worst)
                    decisions[worst].decided_by = "budget"
                    if rotated is not None:
                        decisions[worst].reason += f"; {why}: {rotated} alone {solo[worst].cosine:.6f}"
                    else:
                        keep.remove(worst)
                        own.pop(worst, None)
                        blocks.pop(worst, None)
                        if ladder is not None:
                            sync(worst)  # its site's other readers keep only the rotation they need
                            why += (f"; {ladder.why}" if not ladder.rungs else
                                    "; no rotated form below it measured more accurate alone")
                        decisions[worst].chosen = fallback(worst)
                        # a row whose rotated forms were measured keeps what they measured
                        decisions[worst].reason = why if static_ranges is None and not (ladder and ladder.rungs) \
                            else f"{decisions[worst].reason}; {why}"
                    if not keep:
                        break
                    joint = measure(keep, on)
                if not keep:
                    break
                scores[on] = joint
            changed = changed and len(sets) > 1  # one set: its search ended within the budget
        if static_ranges is None and keep:
            self._relax(chosen, keep, own, blocks, decisions, ladders, sets, scores, measure, sync, form_name)
        for i in keep:
            name = form_name(i)
            metrics = decisions[i].alternative(name).metrics
            metrics["joint_cosine"] = scores["calibration"].cosine
            if "held-out" in scores:
                metrics["held_out_cosine"] = scores["held-out"].cosine
            if static_ranges is not None or i in blocks:
                decisions[i].chosen = name
            decisions[i].reason += (f"; {candidate}" if static_ranges is not None else "") + "; joint cosine " + \
                ", ".join(f"{score.cosine:.6f} ({on})" for on, score in scores.items())
            decisions[i].reason += f" within {self.error_budget}"
        return keep, {positions[chosen.index(i)]: blocks[i] for i in keep if i in blocks}

    def _relax(self, chosen: list[int], keep: list[int], own: dict[int, int], blocks: dict[int, int],
               decisions: list[Decision], ladders: Mapping[int, _Ladder], sets: ReferenceSets,
               scores: dict[str, OutputScore], measure: Callable[[list[int], str], OutputScore],
               sync: Callable[..., None], form_name: Callable[[int], str]) -> None:
        """Undo the budget search's steps that the final forms of the others made unneeded, the
        largest predicted saving first: a linear sent to fp32 tries int8 again (at its site's
        rung), a linear that stepped to a rotated form tries the plain one; a step is undone when
        the joint cosine stays within the budget on every set. (A step is taken for the joint
        error at that moment; later steps can make an earlier one unneeded.) `keep`, `own`,
        `blocks` and `scores` are the search's state, updated in place."""
        def saving(i: int) -> float:
            row = decisions[i]
            cheaper = row.alternative("int8")
            dearer = row.alternative("fp32") if i not in keep else row.alternative(ladders[i].rungs[own[i]][0])
            if cheaper is None or dearer is None or cheaper.predicted_ms is None or dearer.predicted_ms is None:
                return 0.0
            return dearer.predicted_ms - cheaper.predicted_ms

        dropped = [i for i in chosen if i not in keep]  # only the budget drops a chosen linear
        for i in sorted([*dropped, *own], key=saving, reverse=True):
            back_in, was_own, was_blocks = i not in keep, own.get(i), dict(blocks)
            if back_in:  # in graph order, as the rewrite needs (a shared quantization goes before its first reader)
                keep.append(i)
                keep.sort(key=chosen.index)
            else:
                own.pop(i)
            sync(i, quiet=True)
            trial: dict[str, OutputScore] = {}
            for on in sets:
                trial[on] = measure(keep, on)
                if not self._within(trial[on]):
                    break
            if len(trial) == len(sets) and all(self._within(score) for score in trial.values()):
                scores.update(trial)
                decisions[i].reason += (f"; back to {form_name(i)} once the other linears had their final forms "
                                        f"(joint cosine " + ", ".join(f"{sc.cosine:.6f} ({on})" for on, sc in trial.items())
                                        + ")")
                if back_in:
                    decisions[i].chosen = form_name(i)
                continue
            if back_in:
                keep.remove(i)
            else:
                own[i] = was_own  # type: ignore[assignment]
            blocks.clear()
            blocks.update(was_blocks)

    def _rotation_ladders(self, linears: list[Linear], chosen: list[int], decisions: list[Decision],
                          ctx: PassContext) -> dict[int, _Ladder]:
        """The `_Ladder` of each chosen linear: the rotated int8 forms (`QuantConfig.rotation_blocks`)
        of its activation's site, those the cost model prices faster than fp32, cheapest first.
        A site is an activation and the chosen linears that read it (Q, K and V share one): its
        activation is rotated once for all of them, so a form is priced for the site (one rotation
        and every reader's int8 product against every reader's fp32 one) and every reader gets the
        same ladder object; each reader's decision row holds each form's price for it alone (the
        rotation and its own product)."""
        sites: dict[str, list[int]] = {}
        for i in chosen:
            sites.setdefault(linears[i].activation.name or linears[i].name, []).append(i)
        ladders: dict[int, _Ladder] = {}
        for members in sites.values():
            first = linears[members[0]]
            blocks, why = rotation_blocks(first, self.config.rotation_blocks)
            if ctx.cost is None or not blocks:
                ladder = _Ladder([], "no cost model to price a rotated form" if ctx.cost is None
                                 else f"no rotated form: {why}")
                ladders.update((i, ladder) for i in members)
                continue
            fp32 = [decisions[i].alternative("fp32") for i in members]
            fp32_ms = sum(a.predicted_ms for a in fp32 if a is not None and a.predicted_ms is not None)
            priced = []
            for block in blocks:
                added, rotated = sketch_rotation(first, block)
                rotation_ms = ctx.cost.price(added)
                name = f"int8 hadamard-{block}"
                site_ms = rotation_ms
                for i in members:
                    product_ms = ctx.cost.price([_sketch(dataclasses.replace(linears[i], activation=rotated))])
                    site_ms += product_ms
                    decisions[i].alternatives.append(Alternative(name, predicted_ms=rotation_ms + product_ms,
                                                                 metrics={"block": block}))
                if site_ms < fp32_ms * (1.0 - ctx.cost.resolution):
                    priced.append((site_ms, name, block))
            ladder = _Ladder([(name, block) for _, name, block in sorted(priced)],
                             "" if priced else "no rotated form is priced faster than fp32")
            ladders.update((i, ladder) for i in members)
        return ladders

    def _record_peaks(self, model: ir.Model, runner: ModelRunner, sets: ReferenceSets, decisions: dict[int, Decision],
                      linears: dict[int, Linear], rotations: dict[int, int]) -> None:
        """Add to each rotated linear's decision row the outlier statistics of its activation on
        the calibration feeds (`hadamard_rotation.PeakRatios`: peak over RMS as read and rotated),
        streamed one feed at a time."""
        probe, index = exposing(model, [linears[p].activation for p in rotations])
        observers = {p: PeakObserver(block) for p, block in rotations.items() if linears[p].activation.name in index}
        for feed in sets["calibration"][0]:
            outputs = runner(probe, feed)
            for p, observer in observers.items():
                observer.observe(np.asarray(outputs[index[linears[p].activation.name]]))
        for p, observer in observers.items():
            ratios = observer.ratios()
            decision = decisions[p]
            decision.reason += f"; {ratios}"
            metrics = decision.alternative(decision.chosen).metrics
            metrics["peak_over_rms"], metrics["rotated_peak_over_rms"] = ratios.plain, ratios.rotated

    def _trial_score(self, model: ir.Model, runner: ModelRunner, inputs: Sequence[Feeds],
                     reference: Sequence[Sequence[Any]], positions: list[int], reduce_range: bool,
                     **forms: Any) -> OutputScore:
        """A copy of `model` with the units at `positions` quantized (`_quantize`, with `forms`)
        scored against the fp32 `reference` outputs on `inputs`: one trial of a search."""
        trial = model.clone()
        _quantize(trial, positions, self.config.per_channel, reduce_range, **forms)
        return score_trial(runner, model, trial, inputs, reference, self.config.budget)

    def _within(self, score: OutputScore) -> bool:
        return within(self.config.budget, score)


def _inputs(unit: _Unit) -> tuple[ir.Value, ...]:
    """The activations whose calibrated ranges the unit's static form needs."""
    return unit.operands if isinstance(unit, AttentionCore) else (unit.activation,)


def _measured_core(core: AttentionCore, ctx: PassContext) -> Decision:
    """An attention core's decision row on speed alone, measured on the target once per shape
    (the budget may revise it): its region in fp32 against its products in static int8."""
    def build() -> tuple[ir.Model, ir.Model]:
        return attention_alternatives(core)

    try:
        build()  # the region must stand as a model of its own before anything is measured
    except ValueError as exc:
        return Decision(core.name, _CORE_QUESTION, [Alternative("fp32"), Alternative(_STATIC)], chosen="fp32",
                        reason=f"{core}: the region cannot be timed on its own: {exc}", decided_by="precondition")
    decision = measured_decision(ctx.measured, key=core.key, subject=core.name, question=_CORE_QUESTION,
                                 names=("fp32", _STATIC), build=build, policy=ctx.measured_policy, static=core.static)
    decision.reason = f"{core}: {decision.reason}"
    return decision


def _weight_bytes(unit: _Unit) -> dict[str, float]:
    """The weight's bytes in each of the unit's forms: fp32, and its int8 form ("int8" for a
    linear, "int8 static" for a convolution, which has no dynamic form)."""
    return {"fp32": float(unit.weight.nbytes),
            _STATIC if isinstance(unit, Convolution) else "int8": float(unit.weight.size)}


def _kept_fp32(unit: _Unit, reason: str) -> Decision:
    """A linear's or convolution's row when a precondition keeps it fp32 before any price or
    measurement."""
    if isinstance(unit, AttentionCore):
        return Decision(unit.name, _CORE_QUESTION, [Alternative("fp32"), Alternative(_STATIC)], chosen="fp32",
                        reason=reason, decided_by="precondition")
    rows = [Alternative(name, metrics={"weight_bytes": v}) for name, v in _weight_bytes(unit).items()]
    return Decision(unit.name, _CONV_QUESTION if isinstance(unit, Convolution) else _QUESTION, rows, chosen="fp32",
                    reason=reason, decided_by="precondition")


def _sketch_dynamic_quantize(activation: ir.Value) -> ir.Node:
    """The DynamicQuantizeLinear of `activation`, outside the graph."""
    return sketch_node("DynamicQuantizeLinear", [activation],
                       [(activation.shape, ir.DataType.UINT8), ((), ir.DataType.FLOAT), ((), ir.DataType.UINT8)])


def _sketch(linear: Linear, quantized: ir.Node | None = None) -> ir.Node:
    """The DynamicQuantizeMatMul `linear` would become, or with `quantized` (a sketched
    DynamicQuantizeLinear of its activation) its MatMulIntegerToFloat, outside the graph (to price
    it)."""
    k, n = linear.weight.shape
    weight = placeholder_weight("weight_int8", (k, n), ir.DataType.INT8)
    scale = placeholder_weight("weight_scale", (n,), ir.DataType.FLOAT)
    zero_point = placeholder_weight("weight_zero_point", (n,), ir.DataType.INT8)
    bias = [placeholder_weight("bias", (n,), ir.DataType.FLOAT)] if linear.bias is not None else []
    output = linear.node.outputs[0]
    if quantized is None:
        return sketch_node(_OP, [linear.activation, weight, scale, zero_point, *bias],
                           [(output.shape, ir.DataType.FLOAT)], domain=_DOMAIN)
    a, a_scale, a_zero_point = quantized.outputs
    return sketch_node(_SHARED_OP, [a, weight, a_scale, scale, a_zero_point, zero_point, *bias],
                       [(output.shape, ir.DataType.FLOAT)], domain=_DOMAIN)


def _quantize(model: ir.Model, positions: list[int], per_channel: bool, reduce_range: bool,
              decisions: Sequence[Decision] | None = None, shared: set[str] = frozenset(),
              form: str = "contrib", static: set[int] = frozenset(),
              ranges: dict[str, ActivationRange] | None = None,
              bias_shifts: dict[int, np.ndarray] | None = None,
              rotations: Mapping[int, int] | None = None) -> list[Rewrite]:
    """Rewrite the linears at `positions` of the graph's node order (positions survive
    `Model.clone()`, node identity does not) into DynamicQuantizeMatMul, in place; those reading
    an activation named in `shared` into MatMulIntegerToFloat of one DynamicQuantizeLinear of it;
    with ``form="compressed"`` into a MatMul of the int8 weight's DequantizeLinear (OpenVINO), and
    those at positions in `static` read their activation through QuantizeLinear / DequantizeLinear
    at the calibrated range `ranges` holds for it. A Conv at a position (in `static`: it has no
    dynamic form) reads its input at that range and int8 filters (`static_convs`); the Q K^T MatMul of an
    attention core (in `static`) has both its products read their operands at their ranges
    (`attention_products`). A static linear whose position `bias_shifts` holds takes that shift
    out of its bias (`bias_correction`). A linear whose position `rotations` holds first reads its
    activation rotated in blocks of that size, its weight rotated back (`hadamard_rotation`), and
    takes no bias shift (those were fitted to its unrotated form)."""
    graph = model.graph
    nodes = list(graph)
    rewrites: list[Rewrite] = []
    if form == "contrib":
        graph.opset_imports.setdefault(_DOMAIN, 1)
    quantized: dict[str, ir.Node] = {}  # shared activation -> its DynamicQuantizeLinear
    rotated: dict[tuple[str, int], ir.Value] = {}  # (activation, block) -> its rotation, made once
    for k, position in enumerate(positions):
        if is_onnx(nodes[position], "Conv"):
            rewrite = _quantize_conv(graph, nodes[position], per_channel, reduce_range, ranges, static, position)
            if decisions is not None:
                rewrites.append(Rewrite(rule=QuantizeInt8.rule, nodes=[node_ref(nodes[position])],
                                        reason=decisions[k].reason, result=rewrite))
            continue
        linear = linear_of(nodes[position])
        if isinstance(linear, str) and position in static:
            core = attention_core_of(nodes[position])
            if isinstance(core, AttentionCore):
                rewrite = _quantize_core(graph, core, ranges)
                if decisions is not None:
                    rewrites.append(Rewrite(rule=QuantizeInt8.rule, nodes=[node_ref(core.node), node_ref(core.context)],
                                            reason=decisions[k].reason, result=rewrite))
                continue
        if isinstance(linear, str):  # cannot happen: positions come from find_linears on this graph
            raise PassError(f"node {nodes[position].name!r} is no longer a quantizable linear: {linear}")
        refs = [node_ref(linear.node)]
        block = (rotations or {}).get(position)
        share = linear.activation.name in shared  # the readers of a rotated site share its rotation too
        if block is not None:
            linear, added = rotate_input(graph, linear, block, rotated)
            for new_node in added:
                merge_provenance(new_node, [linear.node])
        q = quantize_weight(linear.weight, per_channel=per_channel, reduce_range=reduce_range)
        old_weights = [v for v in linear.node.inputs[1:] if v is not None]
        # a correction fits the form it was measured for: ORT's dynamic linears or static ones
        shift = (bias_shifts or {}).get(position) if block is None and (form == "contrib" or position in static) \
            else None
        add = bias_add(linear) if shift is not None and linear.bias is None else None
        if shift is not None and linear.bias is not None:  # Gemm's C: every form writes the corrected one
            linear = dataclasses.replace(linear, bias=(linear.bias - shift).astype(np.float32))
        if form == "compressed" and position in static:
            assert ranges is not None and linear.activation.name in ranges
            new_nodes = static_linear(graph, linear, q, ranges[linear.activation.name])
        elif form == "compressed":
            new_nodes = compressed_linear(graph, linear, q)
        else:
            new_nodes = _contrib_nodes(graph, linear, q, share, quantized)
        node = new_nodes[-1]
        for new_node in new_nodes:
            merge_provenance(new_node, [linear.node])
        ir.convenience.replace_nodes_and_values(graph, linear.node, [linear.node], new_nodes,
                                                [linear.node.outputs[0]], [node.outputs[0]])
        if add is not None:  # a MatMul's bias is the Add after it
            old_weights.append(add.node.inputs[add.index])
            correct_bias_add(graph, add, shift, linear.name)
        removed = remove_replaced_weights(graph, linear, old_weights)
        if removed is not None:
            refs.append(node_ref(removed))
        if decisions is not None:
            int8 = decisions[k].alternative(decisions[k].chosen) or decisions[k].alternative("int8")
            saved = linear.weight.nbytes - q.values.nbytes
            rewrites.append(Rewrite(
                rule=QuantizeInt8.rule, nodes=refs,
                reason=decisions[k].reason + (f" (int8 predicted {int8.predicted_ms:.4f} ms)"
                                              if int8 is not None and int8.predicted_ms is not None else ""),
                result=f"{node.domain or 'ai.onnx'}.{node.op_type} {node.name!r}, weight "
                       f"{linear.weight.shape[0]}x{linear.weight.shape[1]} int8 ({saved / 1e6:.2f} MB less if the fp32 "
                       "weight had no other reader)"
                       + (f", reading its activation Hadamard-rotated in blocks of {block}" if block else "")))
    return rewrites


def _quantize_core(graph: ir.Graph, core: AttentionCore, ranges: dict[str, ActivationRange] | None) -> str:
    """Put the attention core's four operands at their calibrated scales in place
    (`attention_products.quantize_attention_core`); what it became, for the rewrite row."""
    if ranges is None or not all(v.name in ranges for v in core.operands):
        raise PassError(f"attention core {core.name!r} has no dynamic int8 form: it needs its operands' calibrated ranges")
    added = quantize_attention_core(graph, core, ranges)
    for new_node in added:
        merge_provenance(new_node, [core.node])
    types = [n.outputs[0].dtype for n in added if n.op_type == "QuantizeLinear"]
    kinds = ", ".join(f"{label} {'int8' if dtype == ir.DataType.INT8 else 'uint8'}" for label, dtype in zip("QKPV", types))
    return (f"ai.onnx.MatMul {core.node.name!r} and {core.context.name!r} reading their operands at fixed scales, "
            f"zero points 0 ({kinds})")


def _quantize_conv(graph: ir.Graph, node: ir.Node, per_channel: bool, reduce_range: bool,
                   ranges: dict[str, ActivationRange] | None, static: set[int], position: int) -> str:
    """Quantize the Conv `node` to static int8 in place (`static_convs.static_conv`); what it
    became, for the rewrite row."""
    conv = conv_of(node)
    if isinstance(conv, str):  # cannot happen: positions come from find_convs on this graph
        raise PassError(f"node {node.name!r} is no longer a quantizable convolution: {conv}")
    if position not in static or ranges is None or conv.activation.name not in ranges:
        raise PassError(f"convolution {conv.name!r} has no dynamic int8 form: it needs its input's calibrated range")
    q = quantize_weight(conv.weight, per_channel=per_channel, reduce_range=reduce_range, axis=0)
    old_weight = node.inputs[1]
    new_nodes = static_conv(graph, conv, q, ranges[conv.activation.name])
    for new_node in new_nodes:
        merge_provenance(new_node, [node])
    graph.insert_before(node, new_nodes)
    remove_unused_initializers(graph, [old_weight])
    return (f"ai.onnx.Conv {node.name!r} reading its input at a fixed uint8 scale and "
            f"{'x'.join(str(d) for d in conv.weight.shape)} int8 filters "
            f"({(conv.weight.nbytes - q.values.nbytes) / 1e6:.2f} MB less if the fp32 filters had no other reader)")


def _contrib_nodes(graph: ir.Graph, linear: Linear, q: QuantizedWeight, share: bool,
                   quantized: dict[str, ir.Node]) -> list[ir.Node]:
    """ONNX Runtime's form of `linear` (not yet inserted): a DynamicQuantizeMatMul, or, to `share`
    its activation's quantization, a MatMulIntegerToFloat of the activation's one
    DynamicQuantizeLinear (made before its first reader and remembered in `quantized`)."""
    prefix = linear.name
    weight = new_initializer(graph, f"{prefix}.weight_int8", q.values)
    scale = new_initializer(graph, f"{prefix}.weight_scale", (q.scale * np.float32(linear.alpha)).astype(np.float32))
    zero_point = new_initializer(graph, f"{prefix}.weight_zero_point", q.zero_point)
    bias = [new_initializer(graph, f"{prefix}.bias", linear.bias)] if linear.bias is not None else []
    name = linear.activation.name
    if not share:
        return [ir.Node(_DOMAIN, _OP, [linear.activation, weight, scale, zero_point, *bias], name=linear.node.name,
                        num_outputs=1)]
    if name not in quantized:  # before the first reader: the activation exists there
        quantized[name] = ir.Node("", "DynamicQuantizeLinear", [linear.activation], num_outputs=3,
                                  name=f"{name}.dynamic_quantize")
        for output, suffix in zip(quantized[name].outputs, ("quantized", "scale", "zero_point")):
            output.name = f"{name}.{suffix}"
        graph.insert_before(linear.node, quantized[name])
    a, a_scale, a_zero_point = quantized[name].outputs
    return [ir.Node(_DOMAIN, _SHARED_OP, [a, weight, a_scale, scale, a_zero_point, zero_point, *bias],
                    name=linear.node.name, num_outputs=1)]

