"""kiln: a graph compiler for trained models.

    import kiln
    optimized = kiln.optimize(model, example_inputs)
    optimized.save("model.opt.onnx"); print(optimized.report)
"""

from kiln.api import OptimizedModel, optimize
from kiln.errors import (
    BackendError,
    CaptureError,
    InputError,
    InvalidModelError,
    KilnError,
    UnsafeModelError,
    UnsupportedOperatorError,
)
from kiln.ir.capture import capture, load
from kiln.target import Target

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "CaptureError",
    "InputError",
    "InvalidModelError",
    "KilnError",
    "OptimizedModel",
    "Target",
    "UnsafeModelError",
    "UnsupportedOperatorError",
    "__version__",
    "capture",
    "load",
    "optimize",
]
