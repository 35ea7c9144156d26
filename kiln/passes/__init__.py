"""Graph rewrite passes and the PassManager that runs, validates and reports them."""

from kiln.passes.base import (
    Instrument,
    IRDump,
    NumericValidation,
    Pass,
    PassContext,
    PassManager,
    PassResult,
    StructuralCheck,
    Tolerance,
)
from kiln.passes.cleanup import EliminateCommonSubexpressions, EliminateDeadNodes, EliminateIdentityAndNoOps
from kiln.passes.folding import FoldConstants
from kiln.passes.pipeline import passes_for_level

__all__ = [
    "EliminateCommonSubexpressions",
    "EliminateDeadNodes",
    "EliminateIdentityAndNoOps",
    "FoldConstants",
    "IRDump",
    "Instrument",
    "NumericValidation",
    "Pass",
    "PassContext",
    "PassManager",
    "PassResult",
    "StructuralCheck",
    "Tolerance",
    "passes_for_level",
]
