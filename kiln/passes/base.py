"""Pass infrastructure: the Pass contract, the context passes read, and the PassManager that
times, checks, validates and (when a pass breaks the model) rolls back each pass.

Modelled on onnx-ir's PassBase and torch.fx's PassResult (a pass returns the model and whether
it changed) and on TVM's instruments (hooks run before and after every pass).
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from kiln.errors import PassError
from kiln.ir.analysis import count_nodes, parameter_bytes
from kiln.ir.inputs import Feeds
from kiln.passes.tracking import Explainer, GraphSnapshot
from kiln.report.model import BlockDecision, ErrorStats, OptimizationReport, PassReport, Rewrite
from kiln.target import Target

logger = logging.getLogger(__name__)

# Runs a model on feeds and returns its outputs in graph-output order.
ModelRunner = Callable[[ir.Model, Feeds], list[np.ndarray]]


@dataclass(frozen=True)
class Tolerance:
    """Outputs agree when |new - ref| <= atol + rtol * |ref| elementwise (NaN matches NaN)."""

    atol: float = 1e-4
    rtol: float = 1e-4

    def __str__(self) -> str:
        return f"atol={self.atol:g} rtol={self.rtol:g}"


@dataclass(frozen=True)
class CosineBudget:
    """The error budget of a pass that changes outputs on purpose (e.g. dropping blocks): each
    float output, flattened, keeps a cosine similarity of at least `min_cosine` with the original
    model's (and, when `max_abs` is given, stays within it elementwise); other outputs must match
    exactly. Elementwise atol/rtol would reject any such pass however close its outputs stay."""

    min_cosine: float = 0.99
    max_abs: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.min_cosine <= 1.0:
            raise PassError(f"min_cosine={self.min_cosine} is not in (0, 1]; use e.g. 0.99.")
        if self.max_abs is not None and self.max_abs < 0:
            raise PassError(f"max_abs={self.max_abs} is negative; give a bound >= 0 or None.")

    def __str__(self) -> str:
        text = f"cosine>={self.min_cosine:g}"
        return text + (f" max_abs<={self.max_abs:g}" if self.max_abs is not None else "")


# What an approximate pass may deviate from the original model by.
ErrorBudget = Tolerance | CosineBudget


@dataclass
class PassResult:
    """What a pass returns: the (possibly new) model, whether it changed, and optionally the
    rewrites it made. When `rewrites` is None the PassManager infers them from a graph diff."""

    model: ir.Model
    modified: bool
    rewrites: list[Rewrite] | None = None
    message: str = ""
    # block dropping: the per-block scores and decisions, copied into the PassReport
    blocks: list[BlockDecision] = field(default_factory=list)


@dataclass
class PassContext:
    """What a pass may read: the target, the cost model, sample inputs, a model runner and options.

    `cost_model` is filled by the cost_model package when one is configured; passes that need a
    trade-off decision must ask it (and fall back to a documented heuristic when it is None).
    `runner` runs a model on feeds (the validation runner `kiln.optimize` injects, since passes
    never import a backend); passes that measure outputs (block dropping) use it.
    `measured_choices` times two small alternatives on the target and remembers the ratio
    (`kiln.cost_model.measured_choice.MeasuredChoices`, given by `kiln.optimize` for ONNX Runtime
    on this machine); choices no model predicts (joining parallel MatMuls) ask it, and are not
    made when it is None.
    """

    target: Target = field(default_factory=Target)
    cost_model: Any = None
    sample_inputs: Feeds | None = None
    options: dict[str, Any] = field(default_factory=dict)
    runner: ModelRunner | None = None
    measured_choices: Any = None


class Pass(abc.ABC):
    """A graph-to-graph rewrite.

    Subclasses set `name`, `exact` (outputs preserved to float tolerance) or give an
    `error_budget` (approximate passes), and implement `call`. A pass may modify the model in
    place; the PassManager keeps a snapshot to roll back to.
    """

    name: str = ""
    exact: bool = True
    # Approximate passes: what they may deviate from the original model by (elementwise
    # Tolerance, or CosineBudget for passes that change outputs on purpose).
    error_budget: ErrorBudget | None = None
    # Rule name and reason used when the PassManager infers rewrites from a graph diff.
    rule: str = ""

    def explain(self, removed: list[ir.Node], successors: list[ir.Value]) -> str:
        """Why a group of removed nodes could go (used in inferred rewrites)."""
        return ""

    @abc.abstractmethod
    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        """Rewrite `model` and say whether it changed."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class Instrument:
    """Hooks around every pass (after TVM's PassInstrument). `after_pass` may veto the pass by
    returning a reason; the PassManager then rolls the pass back."""

    def run_before(self, model: ir.Model, ctx: PassContext) -> None:
        """Called once before the first pass, with the input model."""

    def before_pass(self, model: ir.Model, pass_: Pass, ctx: PassContext) -> None:
        """Called before each pass."""

    def after_pass(self, model: ir.Model, pass_: Pass, ctx: PassContext, report: PassReport) -> str | None:
        """Called after each pass that changed the model. Return a reason to roll it back."""
        return None

    def pass_accepted(self, model: ir.Model, pass_: Pass, ctx: PassContext, report: PassReport) -> None:
        """Called after a pass that changed the model once every instrument accepted it."""


def check_structure(model: ir.Model) -> str | None:
    """A cheap structural check: every node input is defined before use, in topological
    order, and every graph output is defined. Returns a problem description or None."""

    def check_graph(graph: ir.Graph, outer: set[int]) -> str | None:
        defined = set(outer)
        defined.update(id(v) for v in graph.inputs)
        defined.update(id(v) for v in graph.initializers.values())
        for node in graph:
            for value in node.inputs:
                if value is not None and id(value) not in defined:
                    return (
                        f"node {node.name!r} ({node.op_type}) reads {value.name!r} before it is "
                        "defined"
                    )
            for attr in node.attributes.values():
                subgraphs = []
                if attr.type == ir.AttributeType.GRAPH:
                    subgraphs = [attr.value]
                elif attr.type == ir.AttributeType.GRAPHS:
                    subgraphs = list(attr.value)
                for sub in subgraphs:
                    problem = check_graph(sub, defined)
                    if problem:
                        return problem
            defined.update(id(v) for v in node.outputs)
        for value in graph.outputs:
            if id(value) not in defined:
                return f"graph output {value.name!r} is not defined"
        return None

    return check_graph(model.graph, set())


class StructuralCheck(Instrument):
    """Rolls back a pass that leaves a value used before it is defined."""

    def after_pass(self, model: ir.Model, pass_: Pass, ctx: PassContext, report: PassReport) -> str | None:
        problem = check_structure(model)
        return f"structural check failed: {problem}" if problem else None


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


def cosine_stats(names: Sequence[str], reference: Sequence[Any],
                 actual: Sequence[Any]) -> tuple[ErrorStats, str | None]:
    """Min cosine over float outputs (flattened) and max abs / rel error of `actual` against
    `reference`; the problem is set when the outputs are incomparable (count, shape, dtype) or a
    non-float output differs, which no cosine can measure."""
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
            cosines.append((cosine_similarity(np.real(ref), np.real(got)), name))
    worst = min(cosines, key=lambda item: item[0] if np.isfinite(item[0]) else -np.inf, default=(1.0, ""))
    stats.min_cosine = worst[0]
    return stats, problem


def compare_cosine(names: Sequence[str], reference: Sequence[Any], actual: Sequence[Any],
                   budget: CosineBudget) -> tuple[ErrorStats, str | None]:
    """`cosine_stats` of `actual` against `reference` and the first violation of `budget`."""
    stats, problem = cosine_stats(names, reference, actual)
    if problem:
        return stats, problem
    assert stats.min_cosine is not None
    if not stats.min_cosine >= budget.min_cosine:
        return stats, f"an output has cosine {stats.min_cosine:.6f} with the original (allowed {budget})"
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
                 fallback_runner: ModelRunner | None = None):
        self.runner = runner
        self.fallback_runner = fallback_runner
        self.feeds = feeds
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
                    self.unavailable_reason = f"the original model does not run: {exc2}"
        if self.reference is None:
            logger.warning("Numeric validation is off: %s", self.unavailable_reason)
        else:
            self.baseline = self.reference
            self.final_error = ErrorStats()
        self.seconds += time.perf_counter() - started

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

    def pass_accepted(self, model: ir.Model, pass_: Pass, ctx: PassContext, report: PassReport) -> None:
        if self._pending is None:
            return
        outputs, versus_original = self._pending
        self._pending = None
        self.final_error = versus_original
        if not pass_.exact and pass_.error_budget is not None:
            self.baseline, self.baseline_pass = outputs, pass_.name


class IRDump(Instrument):
    """Writes the model after every pass to `folder/NN_<pass>.onnx` (for debugging)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.index = 0

    def run_before(self, model: ir.Model, ctx: PassContext) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._dump(model, "input")

    def after_pass(self, model: ir.Model, pass_: Pass, ctx: PassContext, report: PassReport) -> str | None:
        self._dump(model, pass_.name)
        return None

    def _dump(self, model: ir.Model, label: str) -> None:
        from kiln.ir.serialization import save_model

        path = self.folder / f"{self.index:02d}_{label}.onnx"
        save_model(model, path)
        self.index += 1
        logger.debug("Dumped IR to %s", path)


@dataclass
class _Checkpoint:
    """What the PassManager keeps of the model before a pass: the rollback copy (`Model.clone()`,
    tensors shared), the snapshot rewrites are inferred from, and the node and parameter counts."""

    backup: ir.Model | None
    snapshot: GraphSnapshot
    nodes: int
    parameter_bytes: int


class PassManager:
    """Runs passes in order; times each one, infers its rewrites, lets instruments check it,
    and rolls it back (restoring the model from before it) when an instrument vetoes it.

    A checkpoint (rollback copy, snapshot, counts) is taken before a pass only when the model
    changed since the last one: a pass that reports `modified=False` leaves the model as it
    was, so the checkpoint taken before it is still exact for the next pass. Level 2 runs 11
    passes of which most change nothing, so this saves most of the clones. (A pass that changed
    the model while reporting no change was never validated either; a later rollback then also
    drops its change, returning to the last model every instrument accepted.)
    """

    def __init__(self, passes: Sequence[Pass], instruments: Sequence[Instrument] = (), *,
                 rollback: bool = True):
        for p in passes:
            if not isinstance(p, Pass):
                raise PassError(f"{p!r} is not a kiln Pass; wrap it in a class deriving kiln.passes.Pass.")
            if not p.name:
                raise PassError(f"{type(p).__name__} has no name; set the class attribute `name`.")
        self.passes = list(passes)
        self.instruments = list(instruments)
        self.rollback = rollback

    def run(self, model: ir.Model, ctx: PassContext | None = None,
            report: OptimizationReport | None = None) -> tuple[ir.Model, OptimizationReport]:
        """Run every pass on `model` (modified in place unless a pass is rolled back)."""
        ctx = ctx or PassContext()
        report = report or OptimizationReport()
        started = time.perf_counter()
        report.nodes_before = count_nodes(model)
        report.parameter_bytes_before = parameter_bytes(model)
        for instrument in self.instruments:
            instrument.run_before(model, ctx)
        checkpoint: _Checkpoint | None = None
        for pass_ in self.passes:
            if checkpoint is None:
                checkpoint = self._checkpoint(model)
            model, checkpoint = self._run_one(model, pass_, ctx, report, checkpoint)
        report.nodes_after = count_nodes(model)
        report.parameter_bytes_after = parameter_bytes(model)
        report.seconds = time.perf_counter() - started
        validation = next((i for i in self.instruments if isinstance(i, NumericValidation)), None)
        if validation is not None:
            report.validation_seconds = validation.seconds
            report.validated = validation.available
            report.final_error = validation.final_error
        return model, report

    def _checkpoint(self, model: ir.Model) -> _Checkpoint:
        return _Checkpoint(backup=model.clone() if self.rollback else None, snapshot=GraphSnapshot(model),
                           nodes=count_nodes(model), parameter_bytes=parameter_bytes(model))

    def _run_one(self, model: ir.Model, pass_: Pass, ctx: PassContext, report: OptimizationReport,
                 checkpoint: _Checkpoint) -> tuple[ir.Model, _Checkpoint | None]:
        """Run one pass; returns the model and the checkpoint still valid for it (None when the
        model changed or was restored, so the next pass takes a new one)."""
        entry = PassReport(name=pass_.name, exact=pass_.exact)
        entry.nodes_before = checkpoint.nodes
        entry.parameter_bytes_before = checkpoint.parameter_bytes
        report.passes.append(entry)
        backup = checkpoint.backup
        for instrument in self.instruments:
            instrument.before_pass(model, pass_, ctx)
        started = time.perf_counter()
        try:
            result = pass_.call(model, ctx)
        except Exception as exc:
            entry.seconds = time.perf_counter() - started
            if backup is None:
                raise
            logger.warning("Pass %s raised %s: %s; rolled back.", pass_.name, type(exc).__name__, exc)
            entry.status = "failed"
            entry.message = f"raised {type(exc).__name__}: {str(exc)[:300]}; rolled back"
            entry.nodes_after = entry.nodes_before
            entry.parameter_bytes_after = entry.parameter_bytes_before
            return backup, None
        entry.seconds = time.perf_counter() - started
        new_model = result.model
        entry.message = result.message
        entry.blocks = list(result.blocks)
        if not result.modified:
            entry.status = "unchanged"
            entry.nodes_after = entry.nodes_before
            entry.parameter_bytes_after = entry.parameter_bytes_before
            return new_model, checkpoint if new_model is model else None
        explain: Explainer = pass_.explain
        entry.rewrites = result.rewrites if result.rewrites is not None else checkpoint.snapshot.diff(
            new_model, rule=pass_.rule or pass_.name, explain=explain
        )
        entry.nodes_after = count_nodes(new_model)
        entry.parameter_bytes_after = parameter_bytes(new_model)
        entry.status = "applied"
        for instrument in self.instruments:
            try:
                veto = instrument.after_pass(new_model, pass_, ctx, entry)
            except Exception as exc:  # a check that cannot run on the new model rejects it
                veto = f"{type(instrument).__name__} raised {type(exc).__name__}: {str(exc)[:300]}"
            if veto and backup is not None:
                logger.warning("Rolled back pass %s: %s", pass_.name, veto)
                entry.status = "rolled_back"
                entry.message = f"rolled back: {veto}"
                return backup, None
            if veto:
                raise PassError(f"Pass {pass_.name} failed a check and rollback is off: {veto}")
        for instrument in self.instruments:
            instrument.pass_accepted(new_model, pass_, ctx, entry)
        logger.info("Pass %s: %d -> %d nodes, %d rewrites, %.3f s", pass_.name, entry.nodes_before,
                    entry.nodes_after, len(entry.rewrites), entry.seconds)
        return new_model, None
