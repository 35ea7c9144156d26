"""Backends: compile an onnx-ir model for a runtime. ONNX Runtime is the default; OpenVINO is
the ``openvino`` extra. Backends register by name in `kiln.backends.registry`."""

from __future__ import annotations

import onnx_ir as ir

from kiln.backends.base import Executable
from kiln.backends.registry import backend_module, installed_backends, known_backends
from kiln.backends.timing import BenchmarkResult
from kiln.target import Target


def compile_model(model: ir.Model, target: Target | None = None) -> Executable:
    """Compile for `target.backend` (ONNX Runtime unless told otherwise)."""
    target = target or Target()
    return backend_module(target.backend).compile(model, target)


__all__ = ["BenchmarkResult", "Executable", "compile_model", "installed_backends", "known_backends"]
