"""The PassManager: runs passes in order, times each, infers its rewrites, lets instruments check
it, and rolls it back when one vetoes it."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import onnx_ir as ir

from kiln.errors import PassError
from kiln.ir.analysis import count_nodes, parameter_bytes
from kiln.passes.infra.contract import Pass, PassContext
from kiln.passes.infra.instruments import Instrument
from kiln.passes.infra.recording import Explainer, GraphSnapshot
from kiln.passes.infra.validation import NumericValidation
from kiln.report.model import OptimizationReport, PassReport

logger = logging.getLogger(__name__)


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
