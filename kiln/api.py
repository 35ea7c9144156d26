"""`kiln.optimize`: capture, run the pass pipeline with validation, and return a callable,
saveable OptimizedModel with its report."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import onnx_ir as ir

from kiln.backends import compile_model
from kiln.backends import onnxruntime as ort_backend
from kiln.backends import reference as reference_backend
from kiln.backends.base import Executable
from kiln.backends.timing import BenchmarkResult, alternate
from kiln.cost_model.measure.choices import MeasuredChoices
from kiln.cost_model.model import CostModel
from kiln.errors import BackendError, InputError
from kiln.ir.capture import capture, split_example_inputs
from kiln.ir.inputs import Feeds, make_feeds, random_inputs
from kiln.ir.serialization import save_model
from kiln.passes.infra.contract import Pass, PassContext, Tolerance
from kiln.passes.infra.instruments import IRDump, StructuralCheck
from kiln.passes.infra.manager import PassManager
from kiln.passes.infra.validation import NumericValidation
from kiln.passes.approximate.block_dropping import BlockBudget, DropResidualBlocks
from kiln.passes.infra.cost_prediction import CostPrediction
from kiln.passes.pipeline import passes_for_level
from kiln.report.model import OptimizationReport
from kiln.target import Target

logger = logging.getLogger(__name__)


class OptimizedModel:
    """An optimized model: call it, save it as ONNX, read its report."""

    def __init__(self, model: ir.Model, report: OptimizationReport, target: Target):
        self.model = model
        self.report = report
        self.target = target
        self._executable: Executable | None = None

    @property
    def executable(self) -> Executable:
        """The compiled backend executable (compiled on first use)."""
        if self._executable is None:
            self._executable = compile_model(self.model, self.target)
        return self._executable

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.executable(*args, **kwargs)

    def save(self, path: str | os.PathLike, *, external_data: bool | None = None) -> Path:
        """Write the optimized ONNX model (weights in `<name>.data` when large or asked)."""
        return save_model(self.model, path, external_data=external_data)

    def benchmark(self, *args: Any, warmup: int = 5, repeats: int = 30, **kwargs: Any) -> BenchmarkResult:
        return self.executable.benchmark(*args, warmup=warmup, repeats=repeats, **kwargs)

    def __repr__(self) -> str:
        return (f"OptimizedModel({self.report.model_name!r}, nodes {self.report.nodes_before} -> "
                f"{self.report.nodes_after}, backend={self.target.backend})")


def _model_name(obj: Any) -> str:
    if isinstance(obj, (str, os.PathLike)):
        return Path(obj).name
    if isinstance(obj, ir.Model):
        return obj.graph.name or "model"
    return type(obj).__name__


def _sample_feeds(model: ir.Model, example_inputs: Any, sample_inputs: Feeds | None) -> tuple[Feeds, str]:
    inputs = [v for v in model.graph.inputs if not v.is_initializer()]
    if sample_inputs is not None:
        return make_feeds(inputs, (), sample_inputs), "the given sample inputs"
    if example_inputs is not None:
        args, kwargs = split_example_inputs(example_inputs)
        try:
            return make_feeds(inputs, args, kwargs), "the example inputs"
        except InputError as exc:
            logger.info("Example inputs do not map onto the ONNX inputs (%s); using random inputs.", exc)
    return random_inputs(inputs), "random inputs"


def _measure_both(before: ir.Model, after: ir.Model, target: Target, feeds: Feeds | None) -> tuple[float, float]:
    """Median latency of two models on the target's backend, alternated on the same inputs
    (`kiln.backends.timing.alternate`: 3 warm-up pairs, 15 timed pairs)."""
    # two sessions alternate: idle spinning threads of one would slow the other (Target.allow_spinning)
    quiet = dataclasses.replace(target, allow_spinning=False)
    a, b = compile_model(before, quiet), compile_model(after, quiet)
    inputs = feeds if feeds is not None else _sample_feeds(before, None, None)[0]
    return alternate(lambda: a.run(inputs), lambda: b.run(inputs), warmup=3, repeats=15).medians()


def _default_measured_choices(target: Target) -> MeasuredChoices | None:
    """Measured choices on this machine when the model will run in ONNX Runtime on its CPU."""
    if target.backend != "onnxruntime" or target.providers[:1] != ("CPUExecutionProvider",):
        return None
    return MeasuredChoices.default(target)


def optimize(
    model: Any,
    example_inputs: Any = None,
    *,
    level: int = 1,
    backend: str = "onnxruntime",
    validate: bool = True,
    target: Target | None = None,
    passes: Sequence[Pass] | None = None,
    tolerance: Tolerance | None = None,
    sample_inputs: Feeds | None = None,
    dynamic_shapes: Any = None,
    options: dict[str, Any] | None = None,
    dump_ir: str | os.PathLike | None = None,
    cost_model: CostModel | None | Literal["default"] = "default",
    measure: bool = False,
    drop_blocks: BlockBudget | None = None,
    measured_choices: MeasuredChoices | None | Literal["default"] = "default",
) -> OptimizedModel:
    """Optimize a PyTorch or ONNX model.

    Args:
        model: nn.Module, fx.GraphModule, ExportedProgram, ONNX path, ModelProto or onnx_ir.Model.
        example_inputs: inputs to trace a PyTorch model with (also used for validation).
        level: optimization level (see ``kiln.passes.pipeline``); ignored when `passes` is given.
        backend: the runtime the model is compiled for ("onnxruntime").
        validate: compare every changed model against the original on sample inputs and roll
            back passes that exceed their tolerance.
        target: threads, runtime optimization level and providers (default: ``Target(backend)``).
        passes: run these passes instead of the level's pipeline.
        tolerance: allowed deviation for exact passes (default atol=1e-4, rtol=1e-4).
        sample_inputs: named numpy inputs for validation (default: example inputs, else random).
        dynamic_shapes: passed to torch.export for PyTorch models.
        options: pass options (e.g. ``fold_output_size_limit``).
        dump_ir: folder to write the model after every pass, for debugging.
        cost_model: prices the model before and after every pass (`PassReport.predicted_ms_*`)
            and is what passes ask for trade-offs (``PassContext.cost_model``). "default": the
            calibrated profile (`kiln calibrate`) with its learned correction, else the preset
            for this CPU, for the target's thread count; None: no predictions.
        measure: also time the input and the optimized model on the target's backend, in turn
            on the same inputs, and put both medians in the report next to the predictions.
        drop_blocks: approximate, off by default: drop residual blocks (attention / MLP of a
            transformer layer, identity-shortcut ResNet blocks) while the outputs on the sample
            inputs keep the budget's cosine with the original, e.g.
            ``BlockBudget(min_cosine=0.99)`` (``from kiln.passes.approximate.block_dropping import
            BlockBudget``). Runs before the level's passes (or the given `passes`); needs real
            inputs: `sample_inputs` or `example_inputs`. The report lists every block scored.
        measured_choices: settles choices no model predicts (joining parallel MatMuls) by timing
            both forms on this machine, once per shape (``PassContext.measured_choices``).
            "default": for ONNX Runtime on the CPU, measured on the target and cached in
            ``~/.cache/kiln/measured_choices.json`` (``$KILN_MEASURED_CHOICES``); None: such
            choices are not made.
    """
    if target is None:
        target = Target(backend=backend)  # type: ignore[arg-type]
    elif backend != "onnxruntime" and backend != target.backend:
        raise BackendError(f"backend={backend!r} conflicts with target.backend={target.backend!r}; give one of them.")
    started = time.perf_counter()
    ir_model = capture(model, example_inputs, dynamic_shapes)
    capture_seconds = time.perf_counter() - started
    if passes is not None:
        pipeline = ([DropResidualBlocks(drop_blocks)] if drop_blocks is not None else []) + list(passes)
    else:
        pipeline = passes_for_level(level, drop_blocks=drop_blocks)
    instruments = [StructuralCheck()]
    report = OptimizationReport(model_name=_model_name(model), level=level if passes is None else None)
    validation_target = Target(
        backend="onnxruntime", intra_op_threads=target.intra_op_threads, inter_op_threads=1,
        graph_optimization_level="disable", providers=target.providers,
    )

    def runner(m: ir.Model, f: Feeds) -> list[Any]:
        return ort_backend.run_model(m, f, validation_target)

    feeds: Feeds | None = None
    if validate or drop_blocks is not None:
        feeds, source = _sample_feeds(ir_model, example_inputs, sample_inputs)
        if drop_blocks is not None and source == "random inputs":
            raise InputError(
                "Block dropping scores blocks by how much the outputs change on real inputs, and none were "
                "given: pass sample_inputs={input name: array} (or example_inputs) to kiln.optimize, or "
                "--sample-inputs inputs.npz to `kiln optimize`."
            )
        report.sample_inputs = source
    if validate:
        instruments.append(NumericValidation(runner, feeds, tolerance or Tolerance(),
                                             fallback_runner=reference_backend.run_model))
    if dump_ir is not None:
        instruments.append(IRDump(dump_ir))
    if cost_model == "default":
        # Per pass, models are priced as written (ORT lowering after every pass would cost more
        # than the passes): the calibrated roofline, without the correction fitted to ORT's
        # *fused* kernels, whose per-kernel overheads would bill every unfused node.
        cost_model = CostModel.default(target.intra_op_threads or 2, learned=False)
    if measured_choices == "default":
        measured_choices = _default_measured_choices(target)
    prediction = CostPrediction(cost_model) if cost_model is not None else None
    if prediction is not None:
        instruments.append(prediction)  # last: it sees only the passes every check accepted
    ctx = PassContext(target=target, cost_model=cost_model, sample_inputs=feeds, options=dict(options or {}),
                      runner=runner, measured_choices=measured_choices)
    original = ir_model.clone() if measure else None  # the clone shares weight tensors
    optimized, report = PassManager(pipeline, instruments).run(ir_model, ctx, report)
    if original is not None:
        report.measured_ms_before, report.measured_ms_after = _measure_both(original, optimized, target, feeds)
        # next to the measurement: the prediction for the graphs ORT really ran, with the full
        # learned correction
        threads = target.intra_op_threads or 2
        compiled_model = CostModel.default(threads)
        report.compiled_cost_model = repr(compiled_model)
        report.predicted_compiled_ms_before = compiled_model.model_cost(original, compiled=True).latency_ms
        report.predicted_compiled_ms_after = compiled_model.model_cost(optimized, compiled=True).latency_ms
    if prediction is not None and prediction.initial is not None and prediction.latest is not None:
        report.cost_model = repr(cost_model)
        report.predicted_ms_before = prediction.initial.latency_ms
        report.predicted_ms_after = prediction.latest.latency_ms
        report.predicted_peak_bytes_before = prediction.initial.peak_memory_bytes
        report.predicted_peak_bytes_after = prediction.latest.peak_memory_bytes
    logger.info("Captured in %.2f s; passes ran in %.2f s (validation %.2f s)", capture_seconds,
                report.seconds - report.validation_seconds, report.validation_seconds)
    return OptimizedModel(optimized, report, target)

