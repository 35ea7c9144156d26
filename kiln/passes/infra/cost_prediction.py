"""The `CostPrediction` instrument: the cost model's predicted latency before and after every pass.

Installed last by `kiln.optimize`, so it only sees passes every other instrument accepted. The
input model is priced once with shape inference; after each accepted pass the new model is priced
with the shapes already on its values (rewrites keep the shapes they know, and pricing then costs
milliseconds, not a shape inference per pass). Values a rewrite left without a shape are priced
conservatively by the analytical model.
"""

from __future__ import annotations

import logging

import onnx_ir as ir

from kiln.cost_model.model import CostModel, ModelEstimate
from kiln.passes.infra.contract import Pass, PassContext
from kiln.passes.infra.instruments import Instrument
from kiln.report.model import OptimizationReport, PassReport

logger = logging.getLogger(__name__)

__all__ = ["CostPrediction"]


class CostPrediction(Instrument):
    """Fills `PassReport.predicted_ms_before/after` after every accepted pass, and at the end the
    run's predicted latency and peak memory before and after (`OptimizationReport.predicted_*`)."""

    def __init__(self, cost_model: CostModel) -> None:
        self.cost_model = cost_model
        self.initial: ModelEstimate | None = None
        self.latest: ModelEstimate | None = None

    def run_before(self, model: ir.Model, ctx: PassContext) -> None:
        self.initial = self.latest = self.cost_model.model_cost(model)

    def after_pass(self, model: ir.Model, pass_: Pass, ctx: PassContext, report: PassReport) -> str | None:
        estimate = self.cost_model.model_cost(model, infer_shapes=False)
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
