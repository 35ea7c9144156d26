"""Reports: plain dataclasses every layer fills, and their renderers."""

from kiln.report.model import ErrorStats, NodeRef, OptimizationReport, PassReport, Rewrite

__all__ = ["ErrorStats", "NodeRef", "OptimizationReport", "PassReport", "Rewrite"]
