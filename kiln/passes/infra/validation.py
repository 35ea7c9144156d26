"""Numeric validation: compare a rewritten model's outputs with the original's on sample inputs
(elementwise tolerance, or a cosine budget for approximate passes) and veto passes that exceed
what they are allowed."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from kiln.errors import ExecutionError, InputError, ValidationError
from kiln.ir.inputs import Feeds
from kiln.ir.queries import constant_array, is_onnx
from kiln.passes.infra.contract import CosineBudget, ErrorBudget, ModelRunner, Pass, PassContext, Tolerance
from kiln.passes.infra.instruments import Instrument
from kiln.report.model import ErrorStats, OptimizationReport, PassReport

logger = logging.getLogger(__name__)


def is_ml_dtype(dtype: np.dtype) -> bool:
    """bfloat16, float8*, float4, int4...: types numpy lacks, provided by ml_dtypes."""
    return dtype.type.__module__.split(".")[0] == "ml_dtypes"


# A float tolerance cannot be tighter than the output dtype resolves: about one ulp at 1.0.
_DTYPE_TOLERANCE_FLOOR = {"float16": 1e-3, "bfloat16": 1e-2}
_LOW_PRECISION_FLOOR = 0.125  # float8 and float4 types


def tolerance_for(dtype: np.dtype, tolerance: Tolerance) -> Tolerance:
    """`tolerance`, loosened to the precision of `dtype` where the dtype is coarser."""
    floor = _DTYPE_TOLERANCE_FLOOR.get(dtype.name)
    if floor is None and is_ml_dtype(dtype) and dtype.name.startswith("float") and dtype.itemsize == 1:
        floor = _LOW_PRECISION_FLOOR
    if floor is None:
        return tolerance
    return Tolerance(atol=max(tolerance.atol, floor), rtol=max(tolerance.rtol, floor))


def _flatten_outputs(name: str, ref: Any, got: Any, out: list[tuple[str, np.ndarray, np.ndarray]]) -> str | None:
    """Pair up tensors inside sequence and optional outputs; a structural mismatch is returned."""
    if ref is None or got is None:
        return None if ref is None and got is None else f"output {name!r}: one model returned an empty optional"
    if isinstance(ref, (list, tuple)) or isinstance(got, (list, tuple)):
        if not isinstance(ref, (list, tuple)) or not isinstance(got, (list, tuple)):
            return f"output {name!r} is a sequence in one model and a tensor in the other"
        if len(ref) != len(got):
            return f"output {name!r} is a sequence of {len(got)} instead of {len(ref)}"
        for index, (r, g) in enumerate(zip(ref, got)):
            problem = _flatten_outputs(f"{name}[{index}]", r, g, out)
            if problem:
                return problem
        return None
    out.append((name, np.asarray(ref), np.asarray(got)))
    return None


def _paired_outputs(names: Sequence[str], reference: Sequence[Any],
                    actual: Sequence[Any]) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], str | None]:
    """(name, reference, actual) per tensor, or the structural mismatch (count, sequence, shape,
    dtype) that makes the outputs incomparable."""
    if len(reference) != len(actual):
        return [], f"the model has {len(actual)} outputs instead of {len(reference)}"
    pairs: list[tuple[str, np.ndarray, np.ndarray]] = []
    for name, ref, got in zip(names, reference, actual):
        problem = _flatten_outputs(name, ref, got, pairs)
        if problem:
            return [], problem
    for name, ref, got in pairs:
        if ref.shape != got.shape:
            return [], f"output {name!r} has shape {list(got.shape)} instead of {list(ref.shape)}"
        if ref.dtype != got.dtype:
            return [], f"output {name!r} has dtype {got.dtype} instead of {ref.dtype}"
    return pairs, None


#: Ops that draw random numbers on every run (Dropout does too when told to train).
RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                        "Bernoulli"})


def random_nodes(model: ir.Model) -> list[ir.Node]:
    """Nodes that may draw random numbers: the random generators, and Dropouts whose training_mode
    input is not a constant False (whether they do is settled by running the model twice)."""
    found: list[ir.Node] = []
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if not is_onnx(node):
            continue
        if node.op_type in RANDOM_OPS:
            found.append(node)
        elif node.op_type == "Dropout" and len(node.inputs) > 2 and node.inputs[2] is not None:
            mode = constant_array(node.inputs[2])
            if mode is None or bool(mode.any()):
                found.append(node)
    return found


def feed_shapes(feeds: Feeds) -> str:
    """'x [1, 3, 224, 224], ids [1, 128]': the shapes of the array feeds, for messages."""
    return ", ".join(f"{name} {list(np.shape(value))}" for name, value in feeds.items() if hasattr(value, "shape"))


def compare_outputs(names: Sequence[str], reference: Sequence[Any], actual: Sequence[Any],
                    tolerance: Tolerance) -> tuple[ErrorStats, str | None]:
    """Max abs / rel error of `actual` against `reference` and the first violation, if any.
    Sequences and optionals are compared element by element; float16, bfloat16 and float8
    outputs get at least their dtype's precision as tolerance."""
    stats = ErrorStats()
    violation: str | None = None
    pairs, problem = _paired_outputs(names, reference, actual)
    if problem:
        return stats, problem
    for name, ref, got in pairs:
        allowed = tolerance_for(ref.dtype, tolerance)
        if is_ml_dtype(ref.dtype):
            ref, got = ref.astype(np.float32), got.astype(np.float32)
        if ref.dtype.kind not in "fciub":
            if not np.array_equal(ref, got):
                return stats, f"output {name!r} differs"
            continue
        if ref.size == 0:
            continue
        ref64 = ref.astype(np.complex128 if ref.dtype.kind == "c" else np.float64)
        got64 = got.astype(ref64.dtype)
        both_nan = np.isnan(ref64) & np.isnan(got64)
        same_inf = np.isinf(ref64) & (ref64 == got64)
        diff = np.where(both_nan | same_inf, 0.0, np.abs(got64 - ref64))
        diff = np.where(np.isnan(diff), np.inf, diff)
        max_abs = float(diff.max())
        finite_ref = np.where(np.isfinite(ref64), np.abs(ref64), 0.0)
        rel = diff / np.maximum(finite_ref, np.finfo(np.float32).tiny)
        max_rel = float(np.where(diff == 0, 0.0, rel).max())
        if max_abs > stats.max_abs:
            stats = ErrorStats(max_abs=max_abs, max_rel=max(stats.max_rel, max_rel), worst_output=name)
        else:
            stats.max_rel = max(stats.max_rel, max_rel)
        bound = allowed.atol + allowed.rtol * finite_ref
        if violation is None and bool(np.any(diff > bound)):
            violation = f"output {name!r} differs by up to {max_abs:.3g} (allowed {allowed})"
    return stats, violation


def cosine_similarity(reference: np.ndarray, actual: np.ndarray) -> float:
    """Cosine similarity of two flattened arrays (1.0 when both are zero, 0.0 when one is,
    NaN when either holds a NaN or an infinity)."""
    ref = reference.astype(np.float64).ravel()
    got = actual.astype(np.float64).ravel()
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(got))):
        return float("nan")
    norms = float(np.linalg.norm(ref)) * float(np.linalg.norm(got))
    if norms == 0.0:
        return 1.0 if not ref.any() and not got.any() else 0.0
    return float(np.clip(ref @ got / norms, -1.0, 1.0))


def sample_cosine(reference: np.ndarray, actual: np.ndarray) -> float:
    """The smallest cosine between matching samples (slices along the first axis, each flattened):
    a batch of sentence embeddings is as good as its worst sentence. Rank < 2: the flattened cosine."""
    if reference.ndim < 2 or reference.shape[0] < 2:
        return cosine_similarity(reference, actual)
    values = [cosine_similarity(r, a) for r, a in zip(reference, actual)]
    return min(values, key=lambda v: v if np.isfinite(v) else -np.inf)


def cosine_stats(names: Sequence[str], reference: Sequence[Any],
                 actual: Sequence[Any], *, per_sample: bool = False) -> tuple[ErrorStats, str | None]:
    """Min cosine over float outputs (flattened, or with `per_sample` the worst sample of each:
    `sample_cosine`) and max abs / rel error of `actual` against `reference`; the problem is set
    when the outputs are incomparable (count, shape, dtype) or a non-float output differs, which no
    cosine can measure."""
    stats, _ = compare_outputs(names, reference, actual, Tolerance(atol=np.inf, rtol=np.inf))
    pairs, problem = _paired_outputs(names, reference, actual)
    if problem:
        return stats, problem
    cosines: list[tuple[float, str]] = []
    for name, ref, got in pairs:
        if is_ml_dtype(ref.dtype):
            ref, got = ref.astype(np.float32), got.astype(np.float32)
        if ref.dtype.kind not in "fc":
            if problem is None and not np.array_equal(ref, got):
                problem = f"output {name!r} ({ref.dtype}) differs; a cosine budget covers float outputs only"
            continue
        if ref.size:
            measure = sample_cosine if per_sample else cosine_similarity
            cosines.append((measure(np.real(ref), np.real(got)), name))
    worst = min(cosines, key=lambda item: item[0] if np.isfinite(item[0]) else -np.inf, default=(1.0, ""))
    stats.min_cosine = worst[0]
    return stats, problem


@dataclass(frozen=True)
class OutputScore:
    """How far a changed model's outputs moved over a set of feeds: the worst cosine and max abs
    diff, or why they cannot be compared (the model does not run, the outputs changed shape)."""

    cosine: float
    max_abs: float
    problem: str | None = None

    @property
    def error(self) -> float:
        """1 - cosine; infinite when the outputs cannot be compared."""
        return float("inf") if self.problem or not np.isfinite(self.cosine) else 1.0 - self.cosine


def score_outputs(runner: ModelRunner, model: ir.Model, feeds: Sequence[Feeds], names: Sequence[str],
                  reference: Sequence[Sequence[np.ndarray]], *, per_sample: bool = False) -> OutputScore:
    """`model` run on every feed set against the `reference` outputs (one list per feed set):
    what approximate passes weigh their trials by (block dropping, quantization). `per_sample`:
    cosines of the worst sample (`sample_cosine`)."""
    cosine, max_abs = 1.0, 0.0
    for f, ref in zip(feeds, reference):
        try:
            outputs = runner(model, f)
        except Exception as exc:  # noqa: BLE001 - a trial that breaks the model scores as unusable
            return OutputScore(float("nan"), float("inf"), f"the model does not run: {str(exc).strip()[:200]}")
        stats, problem = cosine_stats(names, ref, outputs, per_sample=per_sample)
        if problem:
            return OutputScore(float("nan"), float("inf"), problem)
        cosine = min(cosine, stats.min_cosine if stats.min_cosine is not None else 1.0)
        max_abs = max(max_abs, stats.max_abs)
    return OutputScore(cosine, max_abs)


def compare_cosine(names: Sequence[str], reference: Sequence[Any], actual: Sequence[Any],
                   budget: CosineBudget) -> tuple[ErrorStats, str | None]:
    """`cosine_stats` of `actual` against `reference` and the first violation of `budget`."""
    stats, problem = cosine_stats(names, reference, actual, per_sample=budget.per_sample)
    if problem:
        return stats, problem
    assert stats.min_cosine is not None
    if not stats.min_cosine >= budget.min_cosine:
        what = "a sample of an output" if budget.per_sample else "an output"
        return stats, f"{what} has cosine {stats.min_cosine:.6f} with the original (allowed {budget})"
    if budget.max_abs is not None and stats.max_abs > budget.max_abs:
        return stats, f"output {stats.worst_output!r} differs by up to {stats.max_abs:.3g} (allowed {budget})"
    return stats, None


def compare_with_budget(names: Sequence[str], reference: Sequence[Any], actual: Sequence[Any],
                        budget: ErrorBudget) -> tuple[ErrorStats, str | None]:
    """`compare_cosine` or `compare_outputs`, whichever `budget` asks for."""
    if isinstance(budget, CosineBudget):
        return compare_cosine(names, reference, actual, budget)
    return compare_outputs(names, reference, actual, budget)


class NumericValidation(Instrument):
    """Runs every changed model on the sample inputs and compares it; vetoes a pass whose error
    exceeds what it is allowed.

    An approximate pass with an `error_budget` is checked against the original model's outputs
    with its own budget (a `CosineBudget` compares cosines, not elements). Once one is accepted,
    the outputs of the model after it become the baseline that later exact passes are checked
    against, with the exact tolerance: they must preserve the approximated model, not the
    original one it no longer matches. `final_error` is always measured against the original.
    """

    def __init__(self, runner: ModelRunner, feeds: Feeds, tolerance: Tolerance = Tolerance(),
                 fallback_runner: ModelRunner | None = None, made_up_feeds: bool = False,
                 guessed_dims: Sequence[str] = ()):
        self.runner = runner
        self.fallback_runner = fallback_runner
        self.feeds = feeds
        # kiln made the feeds up (random inputs at bound or guessed shapes): an original that loads but
        # fails on them (ExecutionError) raises InputError naming the shapes and the sizes guessed,
        # rather than leaving the run unvalidated; one that does not load stays unvalidated
        self.made_up_feeds = made_up_feeds
        self.guessed_dims = list(guessed_dims)
        self.tolerance = tolerance
        self.reference: list[np.ndarray] | None = None  # the original model's outputs
        self.baseline: list[np.ndarray] | None = None  # what exact passes are compared with
        self.baseline_pass = ""  # the approximate pass that set the baseline ("" = the original)
        self.final_error: ErrorStats | None = None  # the last accepted model against the original
        self.output_names: list[str] = []
        self.unavailable_reason = ""
        self.seconds = 0.0
        self._pending: tuple[list[np.ndarray], ErrorStats] | None = None

    def run_before(self, model: ir.Model, ctx: PassContext) -> None:
        started = time.perf_counter()
        self.output_names = [v.name or f"output_{i}" for i, v in enumerate(model.graph.outputs)]
        try:
            self.reference = self.runner(model, self.feeds)
        except Exception as exc:  # the original model cannot run on the primary runner
            if self.fallback_runner is None:
                self.unavailable_reason = f"the original model does not run: {exc}"
            else:
                logger.info("Primary runner failed on the original model (%s); using the fallback.", exc)
                try:
                    self.runner = self.fallback_runner
                    self.reference = self.runner(model, self.feeds)
                except Exception as exc2:
                    self.unavailable_reason = f"the original model does not run: {exc}; nor on the fallback: {exc2}"
            if self.reference is None and self.made_up_feeds and isinstance(exc, ExecutionError):
                guessed = f" ({'; '.join(self.guessed_dims)})" if self.guessed_dims else ""
                raise InputError(
                    f"The original model does not run on kiln's random sample inputs {feed_shapes(self.feeds)}"
                    f"{guessed}: {str(exc).strip()[:500]}. Bind the shapes it takes with input_shapes= / dim_values= "
                    "(kiln optimize --input-shape NAME:D0,D1,.. / --dim NAME=SIZE), or give real inputs with "
                    "sample_inputs= (--sample-inputs inputs.npz); validate=False (--no-validate) optimizes "
                    "without checking.") from exc
        if self.reference is None:
            logger.warning("Numeric validation is off: %s", self.unavailable_reason)
        else:
            self._check_deterministic(model)
            self.baseline = self.reference
            self.final_error = ErrorStats()
        self.seconds += time.perf_counter() - started

    def _check_deterministic(self, model: ir.Model) -> None:
        """Raise ValidationError when the original's outputs change between two runs on the same
        inputs (a Dropout in training mode, a random generator): no rewrite could be checked."""
        suspects = random_nodes(model)
        if not suspects:
            return
        assert self.reference is not None
        _, difference = compare_outputs(self.output_names, self.reference, self.runner(model, self.feeds),
                                        Tolerance(atol=0.0, rtol=0.0))
        if difference is None:
            return
        named = ", ".join(f"{n.op_type} {n.name!r}" for n in suspects[:3]) + (" ..." if len(suspects) > 3 else "")
        raise ValidationError(
            f"The original model's outputs change from run to run on the same inputs ({difference}): {named} "
            "draw random numbers (a Dropout with training_mode true runs in training mode), so no rewrite can be "
            "checked against them. Export the model in eval mode (model.eval(); torch.onnx.export(..., "
            "training=torch.onnx.TrainingMode.EVAL)), or optimize without checking with validate=False "
            "(--no-validate).")

    @property
    def available(self) -> bool:
        return self.reference is not None

    def _run(self, model: ir.Model) -> tuple[list[np.ndarray] | None, str | None]:
        started = time.perf_counter()
        try:
            return self.runner(model, self.feeds), None
        except Exception as exc:
            return None, f"the rewritten model does not run: {str(exc).strip()[:300]}"
        finally:
            self.seconds += time.perf_counter() - started

    def check(self, model: ir.Model, tolerance: ErrorBudget) -> tuple[ErrorStats | None, str | None]:
        """Compare `model` against the original; (stats, violation or None)."""
        if self.reference is None:
            return None, None
        outputs, problem = self._run(model)
        if outputs is None:
            return None, problem
        return compare_with_budget(self.output_names, self.reference, outputs, tolerance)

    def after_pass(self, model: ir.Model, pass_: Pass, ctx: PassContext, report: PassReport) -> str | None:
        approximate = not pass_.exact and pass_.error_budget is not None
        budget: ErrorBudget = pass_.error_budget if approximate else self.tolerance  # type: ignore[assignment]
        report.tolerance = str(budget)
        if not approximate and self.baseline_pass:
            report.tolerance += f" against the model after {self.baseline_pass}"
        self._pending = None
        if self.reference is None or self.baseline is None:
            return None
        started = time.perf_counter()
        outputs, problem = self._run(model)
        if outputs is None:
            report.validation_seconds = time.perf_counter() - started
            return problem
        reference = self.reference if approximate else self.baseline
        stats, violation = compare_with_budget(self.output_names, reference, outputs, budget)
        if reference is self.reference:
            versus_original = stats
        else:
            versus_original, _ = cosine_stats(self.output_names, self.reference, outputs)
        report.validation_seconds = time.perf_counter() - started
        report.error = stats
        self._pending = (outputs, versus_original)
        return violation

    def finish(self, model: ir.Model, report: OptimizationReport) -> None:
        report.validation_seconds = self.seconds
        report.validated = self.available
        report.final_error = self.final_error
        if self.available:
            report.validation = f"validated on {report.sample_inputs or 'the sample inputs'}"
        else:
            report.validation = f"not validated: {self.unavailable_reason}"

    def pass_accepted(self, model: ir.Model, pass_: Pass, ctx: PassContext, report: PassReport) -> None:
        if self._pending is None:
            return
        outputs, versus_original = self._pending
        self._pending = None
        self.final_error = versus_original
        if not pass_.exact and pass_.error_budget is not None:
            self.baseline, self.baseline_pass = outputs, pass_.name
