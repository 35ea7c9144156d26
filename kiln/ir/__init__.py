"""kiln's additions to onnx-ir: capture, input checks, analyses and provenance."""

from kiln.ir.capture import capture, load
from kiln.ir.provenance import Origin, get_provenance, merge_provenance

__all__ = ["Origin", "capture", "get_provenance", "load", "merge_provenance"]
