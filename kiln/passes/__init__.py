"""Graph rewrite passes, one folder per family (cleanup, folding, layout, fusion, approximate),
on the infrastructure in `kiln.passes.infra`; `pipeline.passes_for_level` says which run at each
optimization level."""

from kiln.passes.pipeline import MAX_LEVEL, passes_for_level

__all__ = ["MAX_LEVEL", "passes_for_level"]
