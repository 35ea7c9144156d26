"""ONNX Runtime backend (the default): compile an onnx-ir model into an InferenceSession."""

from __future__ import annotations

import ctypes
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from kiln.backends.base import BenchmarkResult, time_calls
from kiln.errors import BackendError, UnsupportedOperatorError
from kiln.ir.inputs import Feeds, is_torch_tensor, make_feeds, random_inputs
from kiln.ir.serialization import needs_external_data, save_model, to_proto
from kiln.target import Target

logger = logging.getLogger(__name__)

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "layout": getattr(ort.GraphOptimizationLevel, "ORT_ENABLE_LAYOUT", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

_NO_KERNEL = re.compile(r"Could not find an implementation for (\w+)\((\d+)\)")
_NO_OP = re.compile(r"(?:No Op registered for|No opset import for domain|Unrecognized attribute)\W*(\w+)")


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


#: Weights at least this large go to a side file when ORT saves its optimized graph, so the graph
#: stays small to parse and models over protobuf's 2 GiB limit can be saved at all.
OPTIMIZED_EXTERNAL_MIN_BYTES = 1024


def save_optimized_graph(options: ort.SessionOptions, path: str | Path) -> None:
    """Make the session built with `options` save the graph ORT optimized to `path` (weights of
    at least `OPTIMIZED_EXTERNAL_MIN_BYTES` to ``<path>.data`` beside it)."""
    path = Path(path)
    options.optimized_model_filepath = str(path)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", f"{path.name}.data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                     str(OPTIMIZED_EXTERNAL_MIN_BYTES))


def _translate_error(exc: Exception) -> Exception:
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
    return BackendError(f"ONNX Runtime could not load the model: {text.strip()[:500]}")


def _needs_ort_value(value: object) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.type.__module__.split(".")[0] == "ml_dtypes"


def to_ort_value(array: Any) -> Any:
    """An OrtValue for a numpy array; ml_dtypes arrays (bfloat16, float8, int4...) are packed
    as ONNX stores them, since ORT's numpy bridge does not know their types."""
    if isinstance(array, list):
        return [to_ort_value(a) for a in array]
    if not _needs_ort_value(array):
        return array if isinstance(array, ort.OrtValue) or array is None else ort.OrtValue.ortvalue_from_numpy(array)
    proto = onnx.numpy_helper.from_array(array)
    value = ort.OrtValue.ortvalue_from_shape_and_type(list(array.shape), proto.data_type)
    raw = proto.raw_data
    if len(raw) != value.tensor_size_in_bytes():
        raise BackendError(f"Cannot feed a {array.dtype} array of shape {list(array.shape)} to ONNX Runtime.")
    if raw:
        ctypes.memmove(value.data_ptr(), raw, len(raw))
    return value


def ort_value_to_numpy(value: Any) -> Any:
    """An output OrtValue as numpy, reading raw bytes for types ORT cannot hand to numpy."""
    if not isinstance(value, ort.OrtValue):
        return value
    try:
        return value.numpy()
    except Exception:
        if not value.is_tensor():
            raise
    proto = onnx.TensorProto()
    proto.data_type = value.element_type()
    proto.dims.extend(value.shape())
    proto.raw_data = ctypes.string_at(value.data_ptr(), value.tensor_size_in_bytes())
    return onnx.numpy_helper.to_array(proto)


class OrtExecutable:
    """An ONNX Runtime session that takes and returns numpy arrays or torch tensors."""

    def __init__(self, model: ir.Model, target: Target | None = None):
        self.target = target or Target()
        self._model_inputs = list(model.graph.inputs)
        # Initializers listed as graph inputs are optional inputs; callers need not feed them.
        self._required_inputs = [v for v in self._model_inputs if not v.is_initializer()]
        self.input_names = [v.name for v in self._required_inputs]
        self.output_names = [v.name for v in model.graph.outputs]
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        options = session_options(self.target)
        try:
            if needs_external_data(model):
                self._tempdir = tempfile.TemporaryDirectory(prefix="kiln-ort-")
                path = save_model(model, Path(self._tempdir.name) / "model.onnx", external_data=True)
                self.session = ort.InferenceSession(str(path), options, providers=list(self.target.providers))
            else:
                data = to_proto(model).SerializeToString()
                self.session = ort.InferenceSession(data, options, providers=list(self.target.providers))
        except Exception as exc:
            raise _translate_error(exc) from exc

    def run(self, feeds: Feeds) -> list[np.ndarray]:
        """Run on named numpy feeds; outputs in graph-output order."""
        try:
            if any(_needs_ort_value(v) for v in feeds.values()):
                return self._run_with_ort_values(feeds)
            try:
                return self.session.run(self.output_names, feeds)
            except Exception as exc:
                if "No corresponding Numpy type" not in str(exc):
                    raise
                return self._run_with_ort_values(feeds)  # outputs of a type numpy lacks
        except Exception as exc:
            raise BackendError(f"ONNX Runtime failed to run the model: {str(exc).strip()[:500]}") from exc

    def _run_with_ort_values(self, feeds: Feeds) -> list[np.ndarray]:
        """Run through OrtValues: ORT's numpy bridge rejects bfloat16, float8 and int4 arrays."""
        values = {name: to_ort_value(v) for name, v in feeds.items()}
        return [ort_value_to_numpy(v) for v in self.session.run_with_ort_values(self.output_names, values)]

    def feeds(self, *args: Any, **kwargs: Any) -> Feeds:
        """Match call arguments to model inputs (numpy or torch, positional or by name)."""
        return make_feeds(self._required_inputs, args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run like the original model: one output is returned as is, several as a tuple; torch
        tensors in give torch tensors out."""
        as_torch = any(is_torch_tensor(a) for a in list(args) + list(kwargs.values()))
        outputs = self.run(self.feeds(*args, **kwargs))
        if as_torch:
            import torch

            outputs = [torch.from_numpy(np.ascontiguousarray(o)) if isinstance(o, np.ndarray) else o for o in outputs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def benchmark(self, *args: Any, warmup: int = 5, repeats: int = 30, min_seconds: float = 0.0,
                  **kwargs: Any) -> BenchmarkResult:
        """Latency on the given inputs (random inputs of the declared shapes when none given)."""
        feeds = self.feeds(*args, **kwargs) if (args or kwargs) else random_inputs(self._required_inputs)
        return time_calls(lambda: self.session.run(self.output_names, feeds), warmup=warmup,
                          repeats=repeats, min_seconds=min_seconds)


def compile(model: ir.Model, target: Target | None = None) -> OrtExecutable:  # noqa: A001 - backend API name
    """Compile `model` for ONNX Runtime."""
    return OrtExecutable(model, target)


# Float initializers at least this large are fed to validation sessions as inputs.
SHARED_WEIGHT_MIN_BYTES = 64 * 1024
_SHAREABLE_DTYPES = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}


def weights_as_inputs(model: ir.Model, min_bytes: int = SHARED_WEIGHT_MIN_BYTES) -> tuple[ir.Model, Feeds]:
    """A clone of `model` whose large float initializers are graph inputs, and those weights as
    numpy arrays: views for numpy-, torch- and memory-mapped tensors (captured PyTorch models,
    external data); tensors still inside a loaded proto are decoded once per run.

    Serializing every weight into a proto for each validation run dominated its cost (about 2 s
    of 5 s per run on BERT-base); fed as inputs, ONNX Runtime reads them where they are.
    Only standard-domain consumers qualify: contrib ops may require constant weights.
    """
    clone = model.clone()
    weights: Feeds = {}
    for name, value in list(clone.graph.initializers.items()):
        tensor = value.const_value
        if tensor is None or tensor.dtype not in _SHAREABLE_DTYPES or tensor.nbytes < min_bytes:
            continue
        if value.is_graph_input() or any(user.domain not in ("", "ai.onnx") for user, _ in value.uses()):
            continue
        weights[name] = tensor.numpy()
        clone.graph.initializers.pop(name)
        value.const_value = None
        value.dtype = tensor.dtype
        value.shape = ir.Shape(tensor.shape)
        clone.graph.inputs.append(value)
    return clone, weights


def run_model(model: ir.Model, feeds: Feeds, target: Target | None = None) -> list[np.ndarray]:
    """Compile and run once (used for validation), feeding large weights as inputs."""
    light, weights = weights_as_inputs(model)
    if not weights:
        return compile(model, target).run(feeds)
    return compile(light, target).run({**feeds, **weights})
