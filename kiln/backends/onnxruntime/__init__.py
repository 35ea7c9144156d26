"""ONNX Runtime backend (the default): one session factory (`session`), tensors across ORT's
boundary (`values`), and the compiled model (`executable`)."""

from kiln.backends.onnxruntime.executable import (
    SHARED_WEIGHT_MIN_BYTES,
    OrtExecutable,
    compile,
    run_model,
    weights_as_inputs,
)
from kiln.backends.onnxruntime.session import (
    OPTIMIZED_EXTERNAL_MIN_BYTES,
    SessionSource,
    create_session,
    loadable,
    save_optimized_graph,
    session_options,
)
from kiln.backends.onnxruntime.values import needs_ort_value, ort_value_to_numpy, to_ort_value

__all__ = [
    "OPTIMIZED_EXTERNAL_MIN_BYTES",
    "SHARED_WEIGHT_MIN_BYTES",
    "OrtExecutable",
    "SessionSource",
    "compile",
    "create_session",
    "loadable",
    "needs_ort_value",
    "ort_value_to_numpy",
    "run_model",
    "save_optimized_graph",
    "session_options",
    "to_ort_value",
    "weights_as_inputs",
]
