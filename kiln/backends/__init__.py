"""Backends: compile an onnx-ir model for a runtime. ONNX Runtime is the default."""

from __future__ import annotations

import onnx_ir as ir

from kiln.backends.base import Executable
from kiln.backends.timing import BenchmarkResult
from kiln.errors import BackendError
from kiln.target import Target


def compile_model(model: ir.Model, target: Target | None = None) -> Executable:
    """Compile for `target.backend` (ONNX Runtime unless told otherwise)."""
    target = target or Target()
    if target.backend == "onnxruntime":
        from kiln.backends import onnxruntime

        return onnxruntime.compile(model, target)
    raise BackendError(
        f"Backend {target.backend!r} is not available in this build of kiln; use backend='onnxruntime'."
    )


__all__ = ["BenchmarkResult", "Executable", "compile_model"]
