"""`kiln.optimize`: the front door. It groups its arguments into the typed configurations of
`kiln.optimizer.Optimizer`, which does the work, and wraps the result in a callable, saveable
`OptimizedModel`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import onnx_ir as ir

from kiln.backends import compile_model
from kiln.backends.base import Executable
from kiln.backends.timing import BenchmarkResult
from kiln.cost_model.decisions import MeasuredChoiceOracle
from kiln.cost_model.model import CostModel
from kiln.errors import BackendError
from kiln.ir.inputs import Feeds
from kiln.ir.serialization import save_model
from kiln.ir.shapes import ShapeBinding
from kiln.optimizer import CostConfig, Optimizer, PipelineConfig, ValidationConfig
from kiln.passes.approximate.block_dropping import BlockBudget
from kiln.passes.infra import Tolerance
from kiln.passes.infra.manager import PipelineStep
from kiln.passes.infra.options import PassOptions
from kiln.passes.quantization import QuantConfig, resolve_quantize
from kiln.report.model import OptimizationReport
from kiln.target import Target


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


def optimize(
    model: Any,
    example_inputs: Any = None,
    *,
    level: int = 1,
    backend: str = "onnxruntime",
    validate: bool = True,
    target: Target | None = None,
    passes: Sequence[PipelineStep] | None = None,
    tolerance: Tolerance | None = None,
    sample_inputs: Feeds | None = None,
    dynamic_shapes: Any = None,
    options: Mapping[str, Any] | PassOptions | None = None,
    dump_ir: str | os.PathLike | None = None,
    cost_model: CostModel | None | Literal["default"] = "default",
    measure: bool = False,
    drop_blocks: BlockBudget | None = None,
    measured_choices: MeasuredChoiceOracle | None | Literal["default"] = "default",
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    dim_values: Mapping[str, int] | None = None,
    fix_shapes: bool = False,
    quantize: str | QuantConfig | None = None,
    calibration: Sequence[Feeds] | None = None,
) -> OptimizedModel:
    """Optimize a PyTorch or ONNX model.

    Args:
        model: nn.Module, fx.GraphModule, ExportedProgram, ONNX path, ModelProto or onnx_ir.Model.
        example_inputs: inputs to trace a PyTorch model with (also used for validation).
        level: optimization level (see ``kiln.passes.pipeline``); ignored when `passes` is given.
        backend: the runtime the model is compiled for: "onnxruntime" (default), "openvino"
            (the ``openvino`` extra), or "auto": after the passes, time the optimized model on
            every installed backend in turn and keep the fastest (the report shows each one's
            median). Validation always runs on ONNX Runtime, the reference; the optimized model
            is also checked on a backend other than it.
        validate: compare every changed model against the original on sample inputs and roll
            back passes that exceed their tolerance.
        target: threads, runtime optimization level and providers (default: ``Target(backend)``).
        passes: run these passes instead of the level's pipeline.
        tolerance: allowed deviation for exact passes (default atol=1e-4, rtol=1e-4).
        sample_inputs: named numpy inputs for validation (default: example inputs, else random).
        dynamic_shapes: passed to torch.export for PyTorch models.
        options: pass options, a dict or ``PassOptions`` (e.g. ``fold_output_size_limit``); an
            unknown key raises ``PassError``.
        dump_ir: folder to write the model after every pass, for debugging.
        cost_model: prices the model before and after every pass (`PassReport.predicted_ms_*`)
            and is what passes ask for trade-offs (``PassContext.cost``). "default": the
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
        measured_choices: settles choices no model predicts (joining parallel MatMuls, writing a residual Add as Sum) by timing
            both forms on this machine, once per shape (``PassContext.measured``).
            "default": for ONNX Runtime on the CPU, measured on the target and cached in
            ``~/.cache/kiln/measured_choices.json`` (``$KILN_MEASURED_CHOICES``); None: such
            choices are not made.
        input_shapes: concrete shapes for inputs with symbolic or unknown (``-1``) dims, by input
            name, e.g. ``{"x": (1, 3, 48, 192)}``: what sample inputs, validation and predictions
            use. Dims nothing binds get the defaults of ``kiln.ir.shapes`` (batch 1, sequence 128,
            image sides 224, ...), and the report warns about each one guessed.
        dim_values: sizes of symbolic dims by name, e.g. ``{"image_width": 160, "batch": 1}``.
        fix_shapes: write the bound shapes into the model (its inputs become static, and folding
            may use them); by default they stay symbolic in the optimized model.
        quantize: approximate, off by default: "int8" (dynamic int8 linears, no calibration data
            needed; on ONNX Runtime its DynamicQuantizeMatMul, on OpenVINO int8 weights it compiles
            with its own per-group activation quantization), "static-int8" (OpenVINO, needs
            `calibration`: activation scales fixed from their calibration range where the budget
            still holds), "int4-weights" (weight-only: 4-bit weights in blocks along K, 8-bit where
            4-bit breaks the budget, as com.microsoft.MatMulNBits, which both backends run; the
            block size and compute type measured fastest per shape; no calibration data needed)
            or a ``kiln.QuantConfig`` (e.g.
            ``QuantConfig(budget=kiln.CosineBudget(min_cosine=0.999, per_sample=True))``). A linear
            is quantized when the cost model (on OpenVINO: a measurement) says it is faster in int8 and the outputs keep the
            config's budget (by default every sample keeps cosine 0.99) on the calibration inputs
            and then the sample inputs; the report has a row per linear. Runs after the level's
            passes.
        calibration: feeds (name -> array) quantization measures its accuracy on; by default the
            sample inputs. Validation then checks the budget on the sample inputs.
    """
    choose_backend = backend == "auto"
    if target is None:
        target = Target(backend="onnxruntime" if choose_backend else backend)  # type: ignore[arg-type]
    elif choose_backend and target.backend != "onnxruntime":
        raise BackendError(f"backend='auto' chooses the backend; target.backend={target.backend!r} already names one. "
                           "Give one of them.")
    elif not choose_backend and backend != "onnxruntime" and backend != target.backend:
        raise BackendError(f"backend={backend!r} conflicts with target.backend={target.backend!r}; give one of them.")
    optimizer = Optimizer(
        target,
        pipeline=PipelineConfig(level=level, passes=passes, drop_blocks=drop_blocks,
                                options=PassOptions.from_mapping(options), quantize=resolve_quantize(quantize)),
        validation=ValidationConfig(enabled=validate, tolerance=tolerance or Tolerance(), sample_inputs=sample_inputs,
                                    calibration=tuple(calibration or ())),
        cost=CostConfig(cost_model=cost_model, measured_choices=measured_choices, measure=measure),
        shapes=ShapeBinding(input_shapes={} if input_shapes is None else input_shapes,
                            dim_values={} if dim_values is None else dim_values, fix=fix_shapes),
        dump_ir=dump_ir,
        choose_backend=choose_backend,
    )
    run = optimizer.optimize(model, example_inputs, dynamic_shapes=dynamic_shapes)
    return OptimizedModel(run.model, run.report, run.target or target)
