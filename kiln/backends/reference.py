"""The ONNX reference evaluator (``onnx.reference``) as a slow runner for models that ONNX
Runtime cannot run, so validation still works for ops ORT lacks."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator

from kiln.errors import BackendError
from kiln.ir.inputs import Feeds
from kiln.ir.serialization import to_proto


def run_model(model: ir.Model, feeds: Feeds) -> list[np.ndarray]:
    """Evaluate `model` on `feeds` with onnx.reference; outputs in graph-output order."""
    try:
        evaluator = ReferenceEvaluator(to_proto(model))
        return list(evaluator.run(None, feeds))
    except Exception as exc:
        raise BackendError(f"The ONNX reference evaluator failed: {str(exc).strip()[:300]}") from exc
