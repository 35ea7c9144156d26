"""kiln: a graph compiler for trained models.

    import kiln
    optimized = kiln.optimize(model, example_inputs)
    optimized.save("model.opt.onnx"); print(optimized.report)
"""

from kiln.api import OptimizedModel, optimize
from kiln.cost_model import CostModel
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
from kiln.ir.shapes import ShapeBinding
from kiln.optimizer import CostConfig, Optimizer, PipelineConfig, ValidationConfig
from kiln.passes.approximate.block_dropping import BlockBudget
from kiln.passes.infra.contract import CosineBudget
from kiln.passes.infra.options import PassOptions
from kiln.passes.quantization import QuantConfig
from kiln.target import OpenVINOOptions, Target

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BlockBudget",
    "CaptureError",
    "CosineBudget",
    "CostConfig",
    "CostModel",
    "InputError",
    "InvalidModelError",
    "KilnError",
    "OpenVINOOptions",
    "OptimizedModel",
    "Optimizer",
    "PassOptions",
    "PipelineConfig",
    "QuantConfig",
    "ShapeBinding",
    "Target",
    "UnsafeModelError",
    "UnsupportedOperatorError",
    "ValidationConfig",
    "__version__",
    "capture",
    "load",
    "optimize",
]
