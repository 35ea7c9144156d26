"""The one way kiln opens an ONNX Runtime session: options from a `Target`, the model in a form
ORT loads, and ORT's load errors turned into `kiln.errors` that say what to do."""

from __future__ import annotations

import os
import re
from pathlib import Path

import onnx
import onnx_ir as ir
import onnxruntime as ort

from kiln.errors import BackendError, KilnError, UnsupportedOperatorError
from kiln.ir.serialization import needs_external_data, save_model, to_proto
from kiln.target import Target

#: What `create_session` opens: an onnx-ir model, a ModelProto, serialized bytes or a file path.
SessionSource = ir.Model | onnx.ModelProto | bytes | str | os.PathLike

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "layout": getattr(ort.GraphOptimizationLevel, "ORT_ENABLE_LAYOUT", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

_NO_KERNEL = re.compile(r"Could not find an implementation for (\w+)\((\d+)\)")
_NO_OP = re.compile(r"(?:No Op registered for|No opset import for domain|Unrecognized attribute)\W*(\w+)")

#: Weights at least this large go to a side file when ORT saves its optimized graph, so the graph
#: stays small to parse and models over protobuf's 2 GiB limit can be saved at all.
OPTIMIZED_EXTERNAL_MIN_BYTES = 1024


def session_options(target: Target) -> ort.SessionOptions:
    """ORT session options from a Target (threads, optimization level, sequential execution)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = target.intra_op_threads
    options.inter_op_num_threads = target.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        options.graph_optimization_level = _LEVELS[target.graph_optimization_level]
    except KeyError:
        raise BackendError(
            f"Unknown graph_optimization_level {target.graph_optimization_level!r}; use one of {sorted(_LEVELS)}."
        ) from None
    options.log_severity_level = 3
    if not target.allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def save_optimized_graph(options: ort.SessionOptions, path: str | Path) -> None:
    """Make the session built with `options` save the graph ORT optimized to `path` (weights of
    at least `OPTIMIZED_EXTERNAL_MIN_BYTES` to ``<path>.data`` beside it)."""
    path = Path(path)
    options.optimized_model_filepath = str(path)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", f"{path.name}.data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                     str(OPTIMIZED_EXTERNAL_MIN_BYTES))


def loadable(model: ir.Model, workdir: Path | None = None) -> bytes | str:
    """What ORT loads for `model`: its serialized bytes or, for a model over protobuf's size
    limit, the path of a copy saved with external data in `workdir` (which must outlive the
    sessions that load it)."""
    if not needs_external_data(model):
        return to_proto(model).SerializeToString()
    if workdir is None:
        raise BackendError("This model is too large for one protobuf; give create_session a workdir to save it "
                           "in with its weights as external data.")
    return str(save_model(model, Path(workdir) / "model.onnx", external_data=True))


def create_session(source: SessionSource, target: Target, *, options: ort.SessionOptions | None = None,
                   workdir: Path | None = None, purpose: str = "") -> ort.InferenceSession:
    """An ORT session for `source` on `target`'s providers, with `options` (default:
    `session_options(target)`). An onnx-ir model too large for one protobuf is saved in `workdir`
    first. `purpose` (e.g. "to profile it") ends the first clause of the error message.

    Raises:
        UnsupportedOperatorError: ORT has no kernel for, or does not know, an operator.
        BackendError: ORT could not load the model for another reason.
    """
    options = options if options is not None else session_options(target)
    try:
        if isinstance(source, ir.Model):
            data: bytes | str = loadable(source, workdir)
        elif isinstance(source, onnx.ModelProto):
            data = source.SerializeToString()
        else:
            data = source if isinstance(source, bytes) else os.fspath(source)
        return ort.InferenceSession(data, options, providers=list(target.providers))
    except KilnError:
        raise
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise _translate_error(exc, purpose) from exc


def _translate_error(exc: Exception, purpose: str) -> KilnError:
    text = str(exc)
    match = _NO_KERNEL.search(text)
    if match:
        return UnsupportedOperatorError(
            f"ONNX Runtime {ort.__version__} has no CPU kernel for {match.group(1)} (opset "
            f"{match.group(2)}). Use an op ONNX Runtime supports, a different opset, or another backend.",
            op_types=[match.group(1)],
        )
    match = _NO_OP.search(text)
    if match and "No Op registered" in text:
        return UnsupportedOperatorError(
            f"ONNX Runtime does not know the operator {match.group(1)}: {text.strip()[:300]}",
            op_types=[match.group(1)],
        )
    what = f"the model {purpose}" if purpose else "the model"
    return BackendError(f"ONNX Runtime could not load {what}: {text.strip()[:500]}")
