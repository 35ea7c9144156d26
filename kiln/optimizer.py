"""`Optimizer`: the wiring `kiln.optimize`, `kiln optimize` and the torch.compile backend share.

It captures the model (every input kind through the same checks; the caller's model is never
modified), picks the sample and calibration feeds, builds the pipeline and the `PassContext`
(target, cost oracle, measured choices, typed options), installs the instruments (structure,
validation, IR dumps, cost prediction), runs the PassManager and, when asked, measures the
input against the output on the target. Settings come grouped in typed dataclasses.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx_ir as ir

from kiln.backends import compile_model, installed_backends
from kiln.backends import onnxruntime as ort_backend
from kiln.backends import reference as reference_backend
from kiln.backends.timing import alternate, round_robin
from kiln.cost_model.analytical import RunFacts
from kiln.cost_model.decisions import CostOracle, MeasuredChoiceOracle
from kiln.cost_model.measure.choices import MeasuredChoices
from kiln.cost_model.measure.observed import observe, price_at_inputs
from kiln.cost_model.model import CostModel
from kiln.divergence import find_divergence
from kiln.errors import BackendError, BackendNumericsError, InputError, KilnError, ValidationError
from kiln.ir.capture import capture, split_example_inputs
from kiln.ir.inputs import Feeds, make_feeds, random_inputs, shapes_of_feeds
from kiln.ir.queries import has_symbolic_inputs
from kiln.ir.shapes import BoundShapes, ShapeBinding, bind_shapes, fix_input_shapes
from kiln.passes.approximate.block_dropping import BlockBudget, DropResidualBlocks
from kiln.passes.infra import IRDump, NumericValidation, PassContext, PassManager, StructuralCheck, Tolerance
from kiln.passes.infra.contract import ErrorBudget, Pass
from kiln.passes.infra.cost_prediction import CostPrediction
from kiln.passes.infra.instruments import Instrument
from kiln.passes.infra.manager import PipelineStep
from kiln.passes.infra.options import PassOptions
from kiln.passes.infra.validation import compare_outputs, compare_with_budget
from kiln.passes.pipeline import passes_for_level
from kiln.passes.quantization import MigrateActivationOutliers, QuantConfig, QuantizeInt8, QuantizeWeightsBlockwise
from kiln.report.model import Alternative, Decision, ErrorStats, OptimizationReport
from kiln.target import Target

logger = logging.getLogger(__name__)

Default = Literal["default"]


@dataclass(frozen=True)
class PipelineConfig:
    """Which passes run: a level's pipeline, or the given `passes`; block dropping first when a
    budget is given; quantization last when asked (after the exact passes: it sees the linears
    they folded, joined and turned into Gemms), after outlier migration when the config asks;
    `options` for the passes (unknown keys are an error)."""

    level: int = 1
    passes: Sequence[PipelineStep] | None = None
    drop_blocks: BlockBudget | None = None
    options: PassOptions = field(default_factory=PassOptions)
    quantize: QuantConfig | None = None

    def steps(self) -> list[PipelineStep]:
        if self.passes is None:
            steps = passes_for_level(self.level, drop_blocks=self.drop_blocks)
        else:
            steps = ([DropResidualBlocks(self.drop_blocks)] if self.drop_blocks is not None else []) + list(self.passes)
        if self.quantize is None:
            return steps
        migration = [MigrateActivationOutliers(self.quantize)] if self.quantize.migrate_outliers else []
        quantize = (QuantizeWeightsBlockwise(self.quantize) if self.quantize.scheme == "int4-weights"
                    else QuantizeInt8(self.quantize))
        return steps + migration + [quantize]


@dataclass(frozen=True)
class ValidationConfig:
    """Numeric validation: compare every changed model with the original on the sample inputs
    (given, else the example inputs, else random ones) and roll back a pass outside `tolerance`."""

    enabled: bool = True
    tolerance: Tolerance = field(default_factory=Tolerance)
    sample_inputs: Feeds | None = None
    calibration: Sequence[Feeds] = ()


@dataclass(frozen=True)
class CostConfig:
    """What prices decisions and reports: the cost model ("default": the calibrated profile, else
    this CPU's preset), measured choices ("default": ONNX Runtime on this CPU, cached on disk),
    and whether to time the input and output models on the target (`measure`)."""

    cost_model: CostModel | None | Default = "default"
    measured_choices: MeasuredChoiceOracle | None | Default = "default"
    measure: bool = False


@dataclass
class OptimizationRun:
    """What an Optimizer returns: the optimized model and its report."""

    model: ir.Model
    report: OptimizationReport
    target: Target | None = None  # the target the model is for (the chosen backend's, with choose_backend)


class Optimizer:
    """Optimizes models for one target with one pipeline, validation and cost configuration."""

    def __init__(self, target: Target | None = None, *, pipeline: PipelineConfig | None = None,
                 validation: ValidationConfig | None = None, cost: CostConfig | None = None,
                 shapes: ShapeBinding | None = None, dump_ir: str | os.PathLike | None = None,
                 choose_backend: bool = False) -> None:
        """`choose_backend`: after the passes, time the optimized model on every installed backend
        and keep the fastest (``kiln.optimize(backend="auto")``); the passes run for `target`."""
        self.target = target or Target()
        self.choose_backend = choose_backend
        self.shapes = shapes or ShapeBinding()
        self.pipeline = pipeline or PipelineConfig()
        self.validation = validation or ValidationConfig()
        self.cost = cost or CostConfig()
        self.dump_ir = dump_ir
        self._compiled: tuple[ir.Model, tuple[ir.Node, ...], Any] | None = None  # run_on_target's last
        self.pipeline.steps()  # an unknown level fails here, before any capture
        if self.pipeline.quantize is not None and (self.target.backend not in ("onnxruntime", "openvino")
                                                   or choose_backend):
            raise BackendError(f"quantize={self.pipeline.quantize.scheme!r} lowers to ONNX Runtime (its "
                               "com.microsoft.DynamicQuantizeMatMul) or to OpenVINO (int8 weights it compiles with its "
                               f"own activation quantization), not to {'auto' if choose_backend else self.target.backend!r}"
                               ": choose the backend, backend='onnxruntime' or backend='openvino'.")
        if self.pipeline.quantize is not None and self.pipeline.quantize.scheme == "static-int8":
            if self.target.backend != "openvino":
                raise BackendError("quantize='static-int8' lowers to OpenVINO only so far (its QuantizeLinear / "
                                   "DequantizeLinear int8 GEMMs); use backend='openvino', or quantize='int8' on "
                                   f"{self.target.backend!r}.")
            if not self.validation.calibration:
                raise InputError("quantize='static-int8' fixes activation scales from calibration inputs, and none "
                                 "were given: pass calibration=[feeds, ...] (name -> array, like the inputs you "
                                 "run; CLI --calibration data.npz, repeatable), or use quantize='int8', which "
                                 "needs none.")

    @property
    def threads(self) -> int:
        return self.target.intra_op_threads or 2

    def cost_model(self) -> CostModel | None:
        """The cost model decisions and per-pass predictions use."""
        if self.cost.cost_model != "default":
            return self.cost.cost_model
        # Per pass, models are priced as written (ORT lowering after every pass would cost more
        # than the passes): the calibrated roofline, without the correction fitted to ORT's
        # *fused* kernels, whose per-kernel overheads would bill every unfused node.
        return CostModel.default(self.threads, learned=False)

    def measured_choices(self) -> MeasuredChoiceOracle | None:
        """Measured choices on this machine for the target's backend on its CPU (ONNX Runtime's
        CPU provider, OpenVINO's CPU device), cached per backend."""
        if self.cost.measured_choices != "default":
            return self.cost.measured_choices
        if self.target.backend == "onnxruntime" and self.target.providers[:1] != ("CPUExecutionProvider",):
            return None
        if self.target.backend == "openvino" and self.target.openvino.device != "CPU":
            return None
        return MeasuredChoices.default(self.target)

    def validation_target(self) -> Target:
        """ONNX Runtime with its optimizer off: the reference validation runs on (DESIGN 9)."""
        return Target(backend="onnxruntime", intra_op_threads=self.target.intra_op_threads, inter_op_threads=1,
                      graph_optimization_level="disable", providers=self.target.providers)

    def run_reference(self, model: ir.Model, feeds: Feeds) -> list[Any]:
        """Run `model` as validation does."""
        return ort_backend.run_model(model, feeds, self.validation_target())

    def run_on_target(self, model: ir.Model, feeds: Feeds) -> list[Any]:
        """Run `model` compiled for the target backend. The last compilation is reused while the
        same model object, with the same nodes, is run again (a search runs each trial on
        several feeds; compiling is the slow part on OpenVINO). The cache holds the model itself:
        ids alone could be reused by the next trial once the last one is freed."""
        nodes = tuple(model.graph)
        if self._compiled is None or self._compiled[0] is not model or self._compiled[1] != nodes:
            self._compiled = (model, nodes, compile_model(model, self.target))
        return self._compiled[2].run(feeds)

    def optimize(self, model: Any, example_inputs: Any = None, *, dynamic_shapes: Any = None,
                 name: str | None = None) -> OptimizationRun:
        """Capture `model` (a copy: the caller's object is not modified), run the pipeline with
        validation and cost prediction, and return the optimized model with its report."""
        started = time.perf_counter()
        captured = capture(model, example_inputs, dynamic_shapes)
        capture_seconds = time.perf_counter() - started
        pipeline = self.pipeline
        report = OptimizationReport(model_name=name or _model_name(model),
                                    level=pipeline.level if pipeline.passes is None else None,
                                    target=f"{self.target.backend}, {self.threads} intra-op threads")
        inputs = [v for v in captured.graph.inputs if not v.is_initializer()]
        feeds, bound = self._shapes_and_feeds(captured, example_inputs, report)
        if not self.validation.enabled:
            report.validation = "not validated: validation is off (validate=False, --no-validate)"
        cost_model = self.cost_model()
        ctx = PassContext(
            target=self.target, cost=CostOracle(cost_model, resolution=pipeline.options.cost_resolution)
            if cost_model is not None else None, measured=self.measured_choices(), sample_inputs=feeds,
            calibration=list(self.validation.calibration), options=pipeline.options, runner=self.run_reference,
            target_runner=self.run_on_target if self.target.backend != "onnxruntime" and not self.choose_backend
            else None)
        check_backend = (self.target.backend != "onnxruntime" or self.choose_backend) and self.validation.enabled \
            and feeds is not None
        # the clone shares weight tensors
        original = captured.clone() if self.cost.measure or check_backend else None
        manager = PassManager(pipeline.steps(), self._instruments(captured, feeds, cost_model, bound,
                                                                  made_up=report.sample_inputs == "random inputs"))
        optimized, report = manager.run(captured, ctx, report)
        target = self.target
        if self.choose_backend:
            target = self._choose_backend(original, optimized, feeds if feeds is not None
                                          else random_inputs(inputs, shapes=bound), report)
        elif check_backend and original is not None and feeds is not None:
            self._check_on_backend(original, optimized, feeds, report)
        if original is not None and self.cost.measure:
            self._measure(original, optimized, feeds if feeds is not None else random_inputs(inputs, shapes=bound),
                          report, bound)
        logger.info("Captured in %.2f s; passes ran in %.2f s (validation %.2f s)", capture_seconds,
                    report.seconds - report.validation_seconds, report.validation_seconds)
        return OptimizationRun(optimized, report, target)

    def _shapes_and_feeds(self, captured: ir.Model, example_inputs: Any,
                          report: OptimizationReport) -> tuple[Feeds | None, BoundShapes]:
        """Bind the input shapes, make or take the sample inputs (when validation or block dropping
        needs them), record in the report which shapes ran, and write them into the model when the
        user fixed them (before the passes: folding may then use the bound sizes)."""
        inputs = [v for v in captured.graph.inputs if not v.is_initializer()]
        bound = bind_shapes(inputs, self.shapes)
        feeds: Feeds | None = None
        if self.validation.enabled or self.pipeline.drop_blocks is not None:
            feeds, report.sample_inputs = self._sample_feeds(captured, example_inputs, bound)
            if self.pipeline.drop_blocks is not None and report.sample_inputs == "random inputs" \
                    and not self.validation.calibration:
                raise InputError(
                    "Block dropping scores blocks by how much the outputs change on real inputs, and none were "
                    "given: pass sample_inputs={input name: array} (or example_inputs) to kiln.optimize, or "
                    "--sample-inputs inputs.npz to `kiln optimize`.")
            if report.sample_inputs != "random inputs":  # the given inputs' shapes are what runs
                given_as = "sample_inputs" if self.validation.sample_inputs is not None else "example_inputs"
                bound = shapes_of_feeds(inputs, feeds, self.shapes, bound, given_as)
        report.input_shapes, report.shape_warnings, report.shapes_fixed = bound.summary(), bound.warnings, bound.fixed
        if self.shapes.fix:
            fix_input_shapes(captured, bound)
        return feeds, bound

    def _instruments(self, model: ir.Model, feeds: Feeds | None, cost_model: CostModel | None,
                     bound: BoundShapes, made_up: bool = False) -> list[Instrument]:
        instruments: list[Instrument] = [StructuralCheck()]
        if self.validation.enabled and feeds is not None:
            instruments.append(NumericValidation(self.run_reference, feeds, self.validation.tolerance,
                                                 fallback_runner=reference_backend.run_model, made_up_feeds=made_up,
                                                 guessed_dims=bound.warnings))
        if self.dump_ir is not None:
            instruments.append(IRDump(self.dump_ir))
        if cost_model is not None:
            # last: it sees only the passes every check accepted
            instruments.append(CostPrediction(cost_model, dims=bound.dims,
                                              facts=RunFacts(shapes={n: b.shape for n, b in bound.inputs.items()}),
                                              observe=self._observer(model, feeds)))
        return instruments

    def _observer(self, model: ir.Model, feeds: Feeds | None) -> Callable[[], RunFacts | None] | None:
        """For a model whose inputs stay symbolic or that has control flow, a callable running it
        once on the sample inputs, for the cost prediction to call when shape inference cannot size
        every node (legacy exports with dynamic axes lose shapes at their first computed Reshape);
        None for other models, whose inferred shapes are what runs."""
        control_flow = any(attr.type == ir.AttributeType.GRAPH for node in model.graph
                           for attr in node.attributes.values())
        if feeds is None or not (has_symbolic_inputs(model) or control_flow):
            return None

        def run() -> RunFacts | None:
            try:
                return observe(model, feeds, threads=self.threads)
            except KilnError as exc:  # the prediction then lists what it could not size
                logger.info("cost prediction: could not observe the model's shapes (%s)", exc)
                return None

        return run

    def _sample_feeds(self, model: ir.Model, example_inputs: Any, bound: BoundShapes) -> tuple[Feeds, str]:
        inputs = [v for v in model.graph.inputs if not v.is_initializer()]
        if self.validation.sample_inputs is not None:
            return make_feeds(inputs, (), self.validation.sample_inputs), "the given sample inputs"
        if example_inputs is not None:
            args, kwargs = split_example_inputs(example_inputs)
            try:
                return make_feeds(inputs, args, kwargs), "the example inputs"
            except InputError as exc:
                logger.info("Example inputs do not map onto the ONNX inputs (%s); using random inputs.", exc)
        return random_inputs(inputs, shapes=bound), "random inputs"

    def _choose_backend(self, original: ir.Model | None, optimized: ir.Model, feeds: Feeds,
                        report: OptimizationReport) -> Target:
        """The target of the installed backend that runs `optimized` fastest on `feeds`: each
        backend's compiled model is checked against the reference (when validating; one outside
        the tolerance is not a candidate), then all are timed in turn (rounds of every backend,
        order rotating, spinning off: `kiln.backends.timing.round_robin`) and the lowest median
        wins. The report gets a `Decision` with every backend's median."""
        names = installed_backends()
        executables: dict[str, Any] = {}  # the candidates: compiled, and within the tolerance when validating
        excluded: dict[str, str] = {}
        checks: dict[str, tuple[ErrorStats, str]] = {}
        reference = self.run_reference(original, feeds) if original is not None else None
        for name in names:
            target = dataclasses.replace(self.target, backend=name, allow_spinning=False)
            try:
                executable = compile_model(optimized, target)
                if original is not None and reference is not None:
                    checks[name] = self._backend_error(original, reference, optimized, feeds, target, executable,
                                                       report=report)
                executables[name] = executable
            except KilnError as exc:
                excluded[name] = str(exc).split(". ")[0]
                logger.info("backend %s is not a candidate: %s", name, exc)
        if not executables:
            raise BackendError("No installed backend runs the optimized model: "
                               + "; ".join(f"{n}: {why}" for n, why in excluded.items()))
        order = list(executables)
        times = round_robin([lambda e=executables[n]: e.run(feeds) for n in order], warmup=3, repeats=15)
        medians = {name: statistics.median(ms) for name, ms in zip(order, times)}
        chosen = min(medians, key=medians.__getitem__)
        others = ", ".join(f"{n} {medians[n]:.3f} ms" for n in order if n != chosen)
        reason = (f"fastest median on the sample inputs: {medians[chosen]:.3f} ms"
                  + (f" (vs {others})" if others else "") + ", backends timed in turn, order rotating")
        if excluded:
            reason += "; not candidates: " + "; ".join(f"{n} ({why})" for n, why in excluded.items())
        report.backend_decision = Decision(
            subject="backend", question="which installed backend runs the optimized model fastest",
            alternatives=[Alternative(name, measured_ms=medians.get(name)) for name in names],
            chosen=chosen, reason=reason, decided_by="measurement")
        report.target = f"{chosen} (chosen by timing), {self.threads} intra-op threads"
        if chosen in checks:
            report.backend_error, report.backend_check = checks[chosen]
        return dataclasses.replace(self.target, backend=chosen)

    def _check_on_backend(self, original: ir.Model, optimized: ir.Model, feeds: Feeds,
                          report: OptimizationReport) -> None:
        """`_backend_error` on the target's backend, into the report."""
        started = time.perf_counter()
        reference = self.run_reference(original, feeds)
        report.backend_error, report.backend_check = self._backend_error(original, reference, optimized, feeds,
                                                                         self.target, report=report)
        report.validation_seconds += time.perf_counter() - started

    def _applied_budget(self, report: OptimizationReport | None) -> ErrorBudget | None:
        """The error budget of the last approximate pass the report says applied (the final model
        is held to it against the original), or None when every applied pass was exact."""
        if report is None:
            return None
        applied = {p.name for p in report.passes if p.status == "applied" and not p.exact}
        budgets = [step.error_budget for step in self.pipeline.steps()
                   if isinstance(step, Pass) and step.name in applied and step.error_budget is not None]
        return budgets[-1] if budgets else None

    def _backend_error(self, original: ir.Model, reference: list[Any], optimized: ir.Model, feeds: Feeds,
                       target: Target, executable: Any = None, *,
                       report: OptimizationReport | None = None) -> tuple[ErrorStats, str]:
        """Run the optimized model compiled for `target` (or `executable`) on the sample inputs
        and compare it with `reference` (the original's outputs on ONNX Runtime, optimizer off),
        within the validation tolerance loosened to the backend's inference precision, or, when
        an approximate pass applied (`report`), within its budget.

        Raises:
            BackendNumericsError: the backend computes the original outside that tolerance too.
            ValidationError: only the optimized model's outputs are outside it on the backend.
        """
        executable = executable if executable is not None else compile_model(optimized, target)
        outputs = executable.run(feeds)
        precision = str(getattr(executable, "inference_precision", "f32"))
        floor = BACKEND_PRECISION_FLOOR.get(precision, 0.0)
        tolerance = self.validation.tolerance
        allowed = Tolerance(atol=max(tolerance.atol, floor), rtol=max(tolerance.rtol, floor))
        names = [v.name for v in optimized.graph.outputs]
        budget = self._applied_budget(report)
        if budget is not None:  # an approximate pass changed the outputs on purpose: its budget holds
            stats, violation = compare_with_budget(names, reference, outputs, budget)
            if violation:
                raise ValidationError(
                    f"The optimized model compiled for {target.backend} ({precision}) is outside the budget of the "
                    f"approximate passes against the reference (the original on ONNX Runtime): {violation}. Loosen "
                    "the budget, give calibration inputs like the ones you run, or use backend='onnxruntime'.")
            return stats, (f"{target.backend} ({precision}) against the reference: min cosine "
                           f"{stats.min_cosine:.6f} within {budget}")
        stats, violation = compare_outputs(names, reference, outputs, allowed)
        if violation:
            self._raise_backend_mismatch(original, reference, optimized, feeds, target, precision, allowed, violation)
        return stats, (f"{target.backend} ({precision}) against the reference: max abs error {stats.max_abs:.2e} "
                       f"(allowed atol {allowed.atol:g}, rtol {allowed.rtol:g})")

    def _raise_backend_mismatch(self, original: ir.Model, reference: list[Any], optimized: ir.Model, feeds: Feeds,
                                target: Target, precision: str, allowed: Tolerance, violation: str) -> None:
        """Raise the error for an optimized model the backend computes outside the tolerance: is
        it the passes or the backend? The original compiled for the backend tells; the first node
        whose outputs differ (`kiln.divergence`) is named, in the original when it differs too
        (`BackendNumericsError`), else in the optimized model (`ValidationError`)."""
        def on_backend(model: ir.Model, model_feeds: Feeds) -> list[Any]:
            return compile_model(model, target).run(model_feeds)

        backend = f"{target.backend} ({precision})"
        mismatch = (f"The optimized model compiled for {backend} does not match the reference (the original on "
                    f"ONNX Runtime): {violation}")
        advice = " Use backend='onnxruntime', a wider tolerance=, or another inference precision."
        try:
            _, original_violation = compare_outputs([v.name for v in original.graph.outputs], reference,
                                                    on_backend(original, feeds), allowed)
        except KilnError as exc:
            raise ValidationError(f"{mismatch}, and the original does not run on {target.backend}: "
                                  f"{str(exc)[:200]}.{advice}") from exc
        culprit = original if original_violation else optimized
        divergence = find_divergence(culprit, feeds, reference=self.run_reference, candidate=on_backend,
                                     tolerance=allowed)
        where = f" {divergence.describe(target.backend)}" if divergence is not None else (
            " No single node could be named: with every intermediate value exposed, the outputs agree.")
        if original_violation:
            raise BackendNumericsError(
                f"{backend} computes this model differently from ONNX Runtime, the original too (there {original_violation}"
                f"; in the optimized model {violation}); kiln's passes matched on ONNX Runtime.{where}{advice}",
                op_type=divergence.op_type if divergence else None, node=divergence.node if divergence else None)
        raise ValidationError(f"{mismatch}; the original does match on {target.backend}, and the passes' outputs "
                              f"matched on ONNX Runtime. In the optimized model:{where}{advice}")

    def _measure(self, before: ir.Model, after: ir.Model, feeds: Feeds, report: OptimizationReport,
                 bound: BoundShapes) -> None:
        """Time both models on the target, in turn on the same inputs, and price the graphs ORT
        really runs next to the measurement (with the full learned correction)."""
        report.measured_ms_before, report.measured_ms_after = _measure_both(before, after, self.target, feeds)
        compiled_model = CostModel.default(self.threads)
        report.compiled_cost_model = repr(compiled_model)
        report.predicted_compiled_ms_before = price_at_inputs(compiled_model, before, feeds, dims=bound.dims,
                                                              compiled=True)[0].latency_ms
        report.predicted_compiled_ms_after = price_at_inputs(compiled_model, after, feeds, dims=bound.dims,
                                                             compiled=True)[0].latency_ms


#: Tolerance floor of a backend's reduced inference precision: every intermediate is rounded to
#: it, so outputs differ by several units in its last place at 1.0 (bf16 keeps 8 bits of
#: mantissa, f16 11).
BACKEND_PRECISION_FLOOR = {"bf16": 8 * 2.0**-8, "f16": 8 * 2.0**-11}


def _model_name(obj: Any) -> str:
    if isinstance(obj, (str, os.PathLike)):
        return Path(obj).name
    if isinstance(obj, ir.Model):
        return obj.graph.name or "model"
    return type(obj).__name__


def _measure_both(before: ir.Model, after: ir.Model, target: Target, inputs: Feeds) -> tuple[float, float]:
    """Median latency of two models on the target's backend, alternated on the same inputs
    (`kiln.backends.timing.alternate`: 3 warm-up pairs, 15 timed pairs, order rotating)."""
    # two sessions alternate: idle spinning threads of one would slow the other (Target.allow_spinning)
    quiet = dataclasses.replace(target, allow_spinning=False)
    a, b = compile_model(before, quiet), compile_model(after, quiet)
    return alternate(lambda: a.run(inputs), lambda: b.run(inputs), warmup=3, repeats=15).medians()
