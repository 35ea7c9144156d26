"""Graph rewrite passes and the PassManager that runs, validates and reports them."""

from kiln.passes.cleanup.common_subexpression_elimination import EliminateCommonSubexpressions
from kiln.passes.cleanup.dead_node_elimination import EliminateDeadNodes
from kiln.passes.cleanup.identity_elimination import EliminateIdentityAndNoOps
from kiln.passes.folding.constant_folding import FoldConstants
from kiln.passes.infra import Instrument, IRDump, NumericValidation, Pass, PassContext, PassManager, PassResult, StructuralCheck, Tolerance
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
