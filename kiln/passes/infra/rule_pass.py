"""Run passes that onnx-ir and onnxscript already ship as kiln passes (reused, not copied)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import onnx_ir as ir

from kiln.passes.infra.contract import PassResult


def run_ir_passes(model: ir.Model, passes: Sequence[ir.passes.PassBase]) -> PassResult:
    """Apply onnx-ir passes in order; modified if any of them modified the model."""
    modified = False
    for inner in passes:
        result = inner(model)
        model = result.model
        modified = modified or result.modified
    return PassResult(model, modified)


class CapturedWarnings(logging.Handler):
    """Collects a library logger's warnings during a pass so they reach the pass report
    instead of stderr (the library keeps working; the user reads why in the report)."""

    def __init__(self, logger_name: str):
        super().__init__(level=logging.WARNING)
        self.logger = logging.getLogger(logger_name)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> CapturedWarnings:
        self._propagate = self.logger.propagate
        self.logger.addHandler(self)
        self.logger.propagate = False
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.propagate = self._propagate

    def summary(self, what: str) -> str:
        """E.g. "2 warnings from the constant folder: first message (+1 more)"."""
        if not self.messages:
            return ""
        first = self.messages[0][:200]
        more = f" (+{len(self.messages) - 1} more)" if len(self.messages) > 1 else ""
        return f"{what}: {first}{more}"
