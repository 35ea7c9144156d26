"""An onnx-ir model compiled for ONNX Runtime: a callable, benchmarkable session, and the
one-shot run validation uses (large weights fed as inputs instead of serialized)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from kiln.backends.base import CallableExecutable
from kiln.backends.onnxruntime.session import create_session
from kiln.backends.onnxruntime.values import needs_ort_value, ort_value_to_numpy, to_ort_value
from kiln.errors import ExecutionError
from kiln.ir.inputs import Feeds
from kiln.ir.queries import is_onnx
from kiln.ir.serialization import needs_external_data
from kiln.target import Target

#: Float initializers at least this large are fed to validation sessions as inputs.
SHARED_WEIGHT_MIN_BYTES = 64 * 1024
_SHAREABLE_DTYPES = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}


class OrtExecutable(CallableExecutable):
    """An ONNX Runtime session that takes and returns numpy arrays or torch tensors."""

    def __init__(self, model: ir.Model, target: Target | None = None):
        self.target = target or Target()
        self._model_inputs = list(model.graph.inputs)
        # Initializers listed as graph inputs are optional inputs; callers need not feed them.
        self._required_inputs = [v for v in self._model_inputs if not v.is_initializer()]
        self.input_names = [v.name for v in self._required_inputs]
        self.output_names = [v.name for v in model.graph.outputs]
        # a model over protobuf's limit is loaded from a file that lives as long as the session
        self._tempdir = tempfile.TemporaryDirectory(prefix="kiln-ort-") if needs_external_data(model) else None
        workdir = Path(self._tempdir.name) if self._tempdir is not None else None
        self.session = create_session(model, self.target, workdir=workdir)

    def run(self, feeds: Feeds) -> list[np.ndarray]:
        """Run on named numpy feeds; outputs in graph-output order."""
        try:
            if any(needs_ort_value(v) for v in feeds.values()):
                return self._run_with_ort_values(feeds)
            try:
                return self.session.run(self.output_names, feeds)
            except Exception as exc:
                if "No corresponding Numpy type" not in str(exc):
                    raise
                return self._run_with_ort_values(feeds)  # outputs of a type numpy lacks
        except Exception as exc:
            raise ExecutionError(f"ONNX Runtime failed to run the model: {str(exc).strip()[:500]}") from exc

    def _run_with_ort_values(self, feeds: Feeds) -> list[np.ndarray]:
        """Run through OrtValues: ORT's numpy bridge rejects bfloat16, float8 and int4 arrays."""
        values = {name: to_ort_value(v) for name, v in feeds.items()}
        return [ort_value_to_numpy(v) for v in self.session.run_with_ort_values(self.output_names, values)]

    def _timed_run(self, feeds: Feeds) -> Any:
        return self.session.run(self.output_names, feeds)


def compile(model: ir.Model, target: Target | None = None) -> OrtExecutable:  # noqa: A001 - backend API name
    """Compile `model` for ONNX Runtime."""
    return OrtExecutable(model, target)


def weights_as_inputs(model: ir.Model, min_bytes: int = SHARED_WEIGHT_MIN_BYTES) -> tuple[ir.Model, Feeds]:
    """A clone of `model` whose large float initializers are graph inputs, and those weights as
    numpy arrays: views for numpy-, torch- and memory-mapped tensors (captured PyTorch models,
    external data); tensors still inside a loaded proto are decoded once per run.

    Serializing every weight into a proto for each validation run dominated its cost; fed as
    inputs, ONNX Runtime reads them where they are.
    Only standard-domain consumers qualify: contrib ops may require constant weights.
    """
    clone = model.clone()
    weights: Feeds = {}
    for name, value in list(clone.graph.initializers.items()):
        tensor = value.const_value
        if tensor is None or tensor.dtype not in _SHAREABLE_DTYPES or tensor.nbytes < min_bytes:
            continue
        if value.is_graph_input() or any(not is_onnx(user) for user, _ in value.uses()):
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
