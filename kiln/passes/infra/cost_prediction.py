"""The `CostPrediction` instrument: the cost model's predicted latency before and after every pass.

Installed last by `kiln.optimize`, so it only sees passes every other instrument accepted. Models
are priced at the bound input shapes (`dims`: symbol -> size, what validation ran at). A model with
static inputs is priced once with shape inference, then after each accepted pass with the shapes
already on its values (rewrites keep the shapes they know, and pricing then costs milliseconds, not
a shape inference per pass). A model whose inputs stay symbolic is priced with shape inference from
the bound inputs every time: its values carry symbols that only inference turns into sizes. Values
without a shape are priced conservatively by the analytical model and counted as missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import onnx_ir as ir

from kiln.cost_model.analytical import RunFacts
from kiln.cost_model.model import CostModel, ModelEstimate
from kiln.ir.queries import has_symbolic_inputs
from kiln.passes.infra.contract import Pass, PassContext
from kiln.passes.infra.instruments import Instrument
from kiln.report.model import OptimizationReport, PassReport

logger = logging.getLogger(__name__)

__all__ = ["CostPrediction"]


class CostPrediction(Instrument):
    """Fills `PassReport.predicted_ms_before/after` after every accepted pass, and at the end the
    run's predicted latency and peak memory before and after (`OptimizationReport.predicted_*`)."""

    def __init__(self, cost_model: CostModel, dims: Mapping[str, int] | None = None,
                 facts: RunFacts | None = None, observe: Callable[[], RunFacts | None] | None = None) -> None:
        """`dims` binds symbolic dims by name; `facts` holds the bound shape of every input (for
        dims no symbol names). `observe`, called only when shape inference cannot price the input
        model completely, runs it once and returns what the run showed (None when it cannot run);
        those facts then price every pass (matched by name: values a rewrite keeps keep their
        shape). Passes never run a backend, so the caller supplies it."""
        self.cost_model = cost_model
        self.dims = dict(dims or {})
        self.facts = facts or RunFacts()
        self.observe = observe
        self.initial: ModelEstimate | None = None
        self.latest: ModelEstimate | None = None

    def run_before(self, model: ir.Model, ctx: PassContext) -> None:
        estimate = self.cost_model.model_cost(model, dims=self.dims, facts=self.facts)
        if self.observe is not None and estimate.needs_observation:
            observed = self.observe()
            if observed is not None:
                self.facts = observed
                estimate = self.cost_model.model_cost(model, dims=self.dims, facts=self.facts)
        self.initial = self.latest = estimate

    def after_pass(self, model: ir.Model, pass_: Pass, ctx: PassContext, report: PassReport) -> str | None:
        estimate = self.cost_model.model_cost(model, dims=self.dims, facts=self.facts,
                                              infer_shapes=has_symbolic_inputs(model))
        if self.latest is not None:
            report.predicted_ms_before = self.latest.latency_ms
        report.predicted_ms_after = estimate.latency_ms
        logger.debug("pass %s: predicted %.3f -> %.3f ms", pass_.name, report.predicted_ms_before or 0.0,
                     estimate.latency_ms)
        self.latest = estimate
        return None

    def finish(self, model: ir.Model, report: OptimizationReport) -> None:
        if self.initial is None or self.latest is None:
            return
        report.cost_model = repr(self.cost_model)
        report.predicted_ms_before = self.initial.latency_ms
        report.predicted_ms_after = self.latest.latency_ms
        report.predicted_peak_bytes_before = self.initial.peak_memory_bytes
        report.predicted_peak_bytes_after = self.latest.peak_memory_bytes
