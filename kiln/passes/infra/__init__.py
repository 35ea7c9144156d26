"""Pass infrastructure: the contract (Pass, PassContext, PassResult, budgets), the PassManager,
instruments, numeric validation, rewrite recording and the onnxscript rule pass."""

from kiln.passes.infra.contract import CosineBudget, ErrorBudget, ModelRunner, Pass, PassContext, PassResult, Tolerance
from kiln.passes.infra.instruments import Instrument, IRDump, StructuralCheck
from kiln.passes.infra.manager import PassManager
from kiln.passes.infra.validation import NumericValidation

__all__ = [
    "CosineBudget",
    "ErrorBudget",
    "IRDump",
    "Instrument",
    "ModelRunner",
    "NumericValidation",
    "Pass",
    "PassContext",
    "PassManager",
    "PassResult",
    "StructuralCheck",
    "Tolerance",
]
