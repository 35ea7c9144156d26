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


@dataclass(frozen=True)
class FixedPointGroup:
    """Passes run in order, round after round, until a round changes nothing (or `max_rounds`
    rounds ran): clean-ups that enable each other (a fold exposes a no-op, whose removal exposes
    a duplicate) reach their fixed point without listing each pass twice."""

    name: str
    passes: tuple[Pass, ...]
    max_rounds: int = 4

    def __post_init__(self) -> None:
        if self.max_rounds < 1:
            raise PassError(f"FixedPointGroup {self.name!r}: max_rounds={self.max_rounds}; run at least one round.")


PipelineStep = Pass | FixedPointGroup


def _name_decisions(entry: PassReport) -> None:
    """Stamp the pass's name on the decisions it recorded."""
    for decision in entry.decisions:
        decision.pass_name = decision.pass_name or entry.name


def _check_pass(p: object) -> None:
    if not isinstance(p, Pass):
        raise PassError(f"{p!r} is not a kiln Pass; wrap it in a class deriving kiln.passes.infra.Pass.")
    if not p.name:
        raise PassError(f"{type(p).__name__} has no name; set the class attribute `name`.")


class PassManager:
    """Runs passes (and fixed-point groups) in order; times each pass, infers its rewrites, lets
    instruments check it, and rolls it back (restoring the model from before it) when an
    instrument vetoes it or it raises. With ``strict=True`` a pass that raises or is vetoed
    raises instead (tests use it, so a crashing pass cannot pass for an unchanged one).

    A checkpoint (rollback copy, snapshot, counts) is taken before a pass only when the model
    changed since the last one: a pass that reports `modified=False` leaves the model as it
    was, so the checkpoint taken before it is still exact for the next pass. (A pass that
    changed the model while reporting no change was never validated either; a later rollback
    then also drops its change, returning to the last model every instrument accepted.)
    """

    def __init__(self, passes: Sequence[PipelineStep], instruments: Sequence[Instrument] = (), *,
                 rollback: bool = True, strict: bool = False):
        for step in passes:
            for p in step.passes if isinstance(step, FixedPointGroup) else (step,):
                _check_pass(p)
        self.passes = list(passes)
        self.instruments = list(instruments)
        self.rollback = rollback
        self.strict = strict

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
        self._checkpoint_cache: _Checkpoint | None = None
        for step in self.passes:
            if isinstance(step, FixedPointGroup):
                model = self._run_group(model, step, ctx, report)
            else:
                model, _ = self._run_step(model, step, ctx, report)
        report.nodes_after = count_nodes(model)
        report.parameter_bytes_after = parameter_bytes(model)
        report.seconds = time.perf_counter() - started
        for instrument in self.instruments:
            instrument.finish(model, report)
        return model, report

    def _run_group(self, model: ir.Model, group: FixedPointGroup, ctx: PassContext,
                   report: OptimizationReport) -> ir.Model:
        """Cycle through the group's passes until every pass has run once since the last change
        (the fixed point: none of them would change the model now) or `max_rounds` rounds ran."""
        broken: set[int] = set()  # a pass that failed or was rolled back is not retried
        since_change = 0
        for round_ in range(1, group.max_rounds + 1):
            for pass_ in group.passes:
                if since_change >= len(group.passes):
                    return model
                if id(pass_) in broken:
                    since_change += 1
                    continue
                model, entry = self._run_step(model, pass_, ctx, report)
                entry.group, entry.round = group.name, round_
                since_change = 0 if entry.status == "applied" else since_change + 1
                if entry.status in ("failed", "rolled_back"):
                    broken.add(id(pass_))
        if since_change < len(group.passes):
            logger.info("Group %s still changed the model after %d rounds; moving on.", group.name, group.max_rounds)
        return model

    def _run_step(self, model: ir.Model, pass_: Pass, ctx: PassContext,
                  report: OptimizationReport) -> tuple[ir.Model, PassReport]:
        if self._checkpoint_cache is None:
            self._checkpoint_cache = self._checkpoint(model)
        model, self._checkpoint_cache = self._run_one(model, pass_, ctx, report, self._checkpoint_cache)
        return model, report.passes[-1]

    def _checkpoint(self, model: ir.Model) -> _Checkpoint:
        return _Checkpoint(backup=model.clone() if self.rollback else None, snapshot=GraphSnapshot(model),
                           nodes=count_nodes(model), parameter_bytes=parameter_bytes(model))

    def _run_one(self, model: ir.Model, pass_: Pass, ctx: PassContext, report: OptimizationReport,
                 checkpoint: _Checkpoint) -> tuple[ir.Model, _Checkpoint | None]:
        """Run one pass; returns the model and the checkpoint still valid for it (None when the
        model changed or was restored, so the next pass takes a new one)."""
        entry = PassReport(name=pass_.name, exact=pass_.exact)
        entry.nodes_before = entry.nodes_after = checkpoint.nodes
        entry.parameter_bytes_before = entry.parameter_bytes_after = checkpoint.parameter_bytes
        report.passes.append(entry)
        backup = checkpoint.backup
        for instrument in self.instruments:
            skip = instrument.should_run(model, pass_, ctx)
            if skip:
                entry.status, entry.message = "skipped", skip
                return model, checkpoint
        for instrument in self.instruments:
            instrument.before_pass(model, pass_, ctx)
        ctx.decisions = entry.decisions  # what the pass records lands in its report
        started = time.perf_counter()
        try:
            result = pass_.call(model, ctx)
        except Exception as exc:
            entry.seconds = time.perf_counter() - started
            _name_decisions(entry)
            if backup is None or self.strict:
                raise
            logger.warning("Pass %s raised %s: %s; rolled back.", pass_.name, type(exc).__name__, exc)
            entry.status = "failed"
            entry.message = f"raised {type(exc).__name__}: {str(exc)[:300]}; rolled back"
            return backup, None
        entry.seconds = time.perf_counter() - started
        _name_decisions(entry)
        new_model = result.model
        entry.message = result.message
        entry.near_misses = list(result.near_misses)
        if not result.modified:
            entry.status = "unchanged"
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
                if self.strict:
                    raise
                veto = f"{type(instrument).__name__} raised {type(exc).__name__}: {str(exc)[:300]}"
            if veto and backup is not None and not self.strict:
                logger.warning("Rolled back pass %s: %s", pass_.name, veto)
                entry.status = "rolled_back"
                entry.message = f"rolled back: {veto}"
                entry.nodes_after = entry.nodes_before
                entry.parameter_bytes_after = entry.parameter_bytes_before
                return backup, None
            if veto:
                mode = "strict mode" if self.strict else "rollback is off"
                raise PassError(f"Pass {pass_.name} failed a check ({mode}): {veto}")
        for instrument in self.instruments:
            instrument.pass_accepted(new_model, pass_, ctx, entry)
        logger.info("Pass %s: %d -> %d nodes, %d rewrites, %.3f s", pass_.name, entry.nodes_before,
                    entry.nodes_after, len(entry.rewrites), entry.seconds)
        return new_model, None
