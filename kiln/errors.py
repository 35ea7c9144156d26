"""Exceptions kiln raises for bad input or unsupported models.

Every message says what was wrong and what to do next; callers can catch `KilnError`.
"""

from __future__ import annotations


class KilnError(Exception):
    """Base class of every error kiln raises on purpose."""


class InvalidModelError(KilnError, ValueError):
    """The model file or proto is malformed, truncated, cyclic, or otherwise not valid ONNX."""


class UnsafeModelError(InvalidModelError):
    """The model asks for something kiln refuses to do with untrusted input (e.g. read files
    outside the model's folder through external-data paths)."""


class CaptureError(KilnError):
    """A PyTorch model could not be exported to ONNX.

    Attributes:
        construct: the op or Python construct that failed, when it could be identified.
        suggestion: what the user can change to make the export work.
    """

    def __init__(self, message: str, *, construct: str | None = None, suggestion: str | None = None):
        self.construct = construct
        self.suggestion = suggestion
        parts = [message if message.rstrip().endswith((".", "!", "?")) else message.rstrip() + "."]
        if construct:
            parts.append(f"Failing construct: {construct}.")
        if suggestion:
            parts.append(f"Suggested fix: {suggestion}")
        super().__init__(" ".join(parts))


class UnsupportedOperatorError(KilnError):
    """The model uses an operator that no available runtime or reference implements."""

    def __init__(self, message: str, *, op_types: list[str] | None = None):
        self.op_types = op_types or []
        super().__init__(message)


class InputError(KilnError, ValueError):
    """Inputs given to a model do not match its declared inputs (names, count, dtype, rank)."""


class BackendError(KilnError):
    """A backend could not compile or run a model."""


class ExecutionError(BackendError):
    """A backend loaded the model but failed to run it on the inputs given (a shape or value the
    model does not accept, or a kernel failing on them)."""


class PassError(KilnError):
    """A pass was misconfigured or a pipeline could not be built."""


class ValidationError(KilnError):
    """The optimized model could not be validated against the original."""


class BackendNumericsError(BackendError, ValidationError):
    """A backend runs the model as written, but computes it differently from the reference (ONNX
    Runtime, optimizer off) beyond the tolerance, whatever kiln does to it.

    Attributes:
        op_type, node: the first node whose outputs differ, when it could be found.
    """

    def __init__(self, message: str, *, op_type: str | None = None, node: str | None = None):
        self.op_type = op_type
        self.node = node
        super().__init__(message)


class MeasurementError(KilnError):
    """A measurement on this machine could not be made (the alternatives do not match, a shape is
    not static, or the runtime failed to load or run one of them)."""
