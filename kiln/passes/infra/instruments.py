"""Instruments: hooks around every pass (after TVM's PassInstrument): the structural check,
IR dumps, and the base class numeric validation and cost prediction derive from."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx_ir as ir

from kiln.passes.infra.contract import Pass, PassContext
from kiln.report.model import OptimizationReport, PassReport

logger = logging.getLogger(__name__)


class Instrument:
    """Hooks around every pass (after TVM's PassInstrument). `should_run` may skip a pass;
    `after_pass` may veto it by returning a reason (the PassManager then rolls it back);
    `finish` writes what the instrument found into the run's report."""

    def run_before(self, model: ir.Model, ctx: PassContext) -> None:
        """Called once before the first pass, with the input model."""

    def should_run(self, model: ir.Model, pass_: Pass, ctx: PassContext) -> str | None:
        """Return a reason to skip `pass_` (it is then reported as skipped), else None."""
        return None

    def before_pass(self, model: ir.Model, pass_: Pass, ctx: PassContext) -> None:
        """Called before each pass."""

    def after_pass(self, model: ir.Model, pass_: Pass, ctx: PassContext, report: PassReport) -> str | None:
        """Called after each pass that changed the model. Return a reason to roll it back."""
        return None

    def pass_accepted(self, model: ir.Model, pass_: Pass, ctx: PassContext, report: PassReport) -> None:
        """Called after a pass that changed the model once every instrument accepted it."""

    def finish(self, model: ir.Model, report: OptimizationReport) -> None:
        """Called once after the last pass, with the final model: fill the run's report."""


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
