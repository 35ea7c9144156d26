"""Reports: plain dataclasses every layer fills, and their renderers."""

from kiln.report.model import (
                               Alternative,
                               Decision,
                               ErrorStats,
                               NearMiss,
                               NodeRef,
                               OptimizationReport,
                               PassReport,
                               Rewrite,
)

__all__ = ["Alternative", "Decision", "ErrorStats", "NearMiss", "NodeRef", "OptimizationReport", "PassReport",
           "Rewrite"]
