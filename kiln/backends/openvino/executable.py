"""An onnx-ir model compiled by OpenVINO: read through its ONNX frontend, compiled with the
threads, hint, precision and streams of the `Target`, run on numpy or torch inputs."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import openvino as ov

from kiln.backends.base import CallableExecutable
from kiln.errors import BackendError, ExecutionError, KilnError, UnsupportedOperatorError
from kiln.ir.inputs import Feeds
from kiln.ir.serialization import save_model, saves_external_data, to_proto
from kiln.target import Target

__all__ = ["OpenVINOExecutable", "compile", "compile_properties"]

#: "No conversion rule found for operations: StringNormalizer-17, Foo-1" and "Conversion is
#: failed for: ..." in the frontend's report of what it could not convert
_UNCONVERTED = re.compile(r"(?:No conversion rule found for operations|Conversion is failed for):\s*([^\n]+)")
_OP_NAME = re.compile(r"([A-Za-z_][\w.:]*?)(?:-\d+)?$")


def compile_properties(target: Target) -> dict[str, Any]:
    """`compile_model` properties for `target`: every choice set explicitly, so the result does
    not depend on what OpenVINO picks for the machine (its CPU default precision is bf16 where
    the CPU has bf16 units, which changes the numerics)."""
    options = target.openvino
    properties: dict[str, Any] = {"PERFORMANCE_HINT": options.performance_hint, "NUM_STREAMS": options.streams}
    if target.intra_op_threads > 0:
        properties["INFERENCE_NUM_THREADS"] = target.intra_op_threads
    if options.inference_precision != "default":
        properties["INFERENCE_PRECISION_HINT"] = options.inference_precision
    if options.dynamic_quantization_group_size is not None:
        properties["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = options.dynamic_quantization_group_size
    return properties


def _unconverted_ops(text: str) -> list[str]:
    ops: list[str] = []
    for match in _UNCONVERTED.finditer(text):
        for item in match.group(1).split(","):
            name = _OP_NAME.match(item.strip())
            if name and name.group(1) not in ops:
                ops.append(name.group(1))
    return ops


def _failure_details(text: str) -> list[str]:
    """'<op>: <the most specific line of its message>' for each op of the frontend's "Failed
    operations detailed log" (e.g. 'Loop-16: Accessing out-of-range dimension')."""
    if "Failed operations detailed log:" not in text:
        return []
    log = text.split("Failed operations detailed log:", 1)[1].split("Summary:", 1)[0]
    details = []
    for block in re.split(r"\n-- ", "\n" + log.strip())[1:]:
        head, _, body = block.partition("\n")
        lines = [line.strip() for line in body.splitlines() if line.strip()]
        details.append(f"{head.removesuffix(' with a message:')}: {lines[-1] if lines else 'no message'}")
    return details


def _translate_read_error(exc: Exception) -> KilnError:
    text = str(exc)
    ops = _unconverted_ops(text)
    if ops:
        details = _failure_details(text)
        return UnsupportedOperatorError(
            f"OpenVINO {ov.__version__.split('-')[0]} cannot convert {', '.join(ops)} from ONNX"
            + (f" ({'; '.join(details)[:400]})" if details else "")
            + ". Use backend='onnxruntime', or rewrite the model without these operators.", op_types=ops)
    return BackendError(f"OpenVINO could not read the model: {text.strip()[:500]}")


class OpenVINOExecutable(CallableExecutable):
    """A model compiled by OpenVINO that takes and returns numpy arrays or torch tensors."""

    def __init__(self, model: ir.Model, target: Target | None = None, *,
                 input_shapes: Mapping[str, Sequence[int]] | None = None, profiling: bool = False):
        """`input_shapes` fixes the inputs named there to static shapes before compiling (what a
        runtime graph with every shape known needs); `profiling` turns on OpenVINO's per-kernel
        performance counters (`kiln.backends.openvino.kernels`), which slow every run a little."""
        self.target = target or Target(backend="openvino")
        self._required_inputs = [v for v in model.graph.inputs if not v.is_initializer()]
        self.input_names = [v.name for v in self._required_inputs]
        self.output_names = [v.name for v in model.graph.outputs]
        core = ov.Core()
        # Weights over save_model's threshold go to a file OpenVINO memory-maps, and onnx-ir
        # streams them there: no second in-memory copy. The file lives as long as the model,
        # which may keep reading it.
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        try:
            if saves_external_data(model):
                self._tempdir = tempfile.TemporaryDirectory(prefix="kiln-openvino-")
                read = core.read_model(str(save_model(model, Path(self._tempdir.name) / "model.onnx",
                                                      external_data=True)))
            else:
                read = core.read_model(to_proto(model).SerializeToString())
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError with its report
            raise _translate_read_error(exc) from exc
        if input_shapes:
            _fix_input_shapes(read, input_shapes)
        self.properties = compile_properties(self.target)
        if profiling:
            self.properties["PERF_COUNT"] = True
        try:
            self.compiled = core.compile_model(read, self.target.openvino.device, self.properties)
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"OpenVINO could not compile the model for {self.target.openvino.device} "
                               f"with {self.properties}: {str(exc).strip()[:500]}") from exc
        ports = {name: port for port in self.compiled.outputs for name in port.get_names()}
        missing = [name for name in self.output_names if name not in ports]
        if missing:
            raise BackendError(f"OpenVINO's compiled model has no output named {missing}; it has "
                               f"{sorted(ports)}.")
        self._ports = [ports[name] for name in self.output_names]
        # OpenVINO drops graph inputs nothing reads; feeds for them are not passed on
        self._inputs = {name for port in self.compiled.inputs for name in port.get_names()}
        self._request = self.compiled.create_infer_request()

    @property
    def request(self) -> Any:
        """The infer request `run` uses (its `profiling_info` holds the last run's counters)."""
        return self._request

    @property
    def inference_precision(self) -> str:
        """The precision OpenVINO computes in ("f32", "bf16", "f16"), as compiled."""
        return str(self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())

    def run(self, feeds: Feeds) -> list[np.ndarray]:
        """Run on named numpy feeds; outputs in graph-output order (copies, not views of
        OpenVINO's buffers, which the next run overwrites)."""
        try:
            results = self._request.infer({name: _to_openvino(value) for name, value in feeds.items()
                                           if name in self._inputs or name not in self.input_names})
        except Exception as exc:  # noqa: BLE001
            raise ExecutionError(f"OpenVINO failed to run the model: {str(exc).strip()[:500]}") from exc
        return [_from_openvino(np.asarray(results[port]), port) for port in self._ports]


def _fix_input_shapes(read: Any, input_shapes: Mapping[str, Sequence[int]]) -> None:
    shapes = {}
    for port in read.inputs:
        name = next((n for n in port.get_names() if n in input_shapes), None)
        if name is not None:
            shapes[port] = ov.PartialShape([int(d) for d in input_shapes[name]])
    try:
        read.reshape(shapes)
    except Exception as exc:  # noqa: BLE001
        raise BackendError(f"OpenVINO could not fix the input shapes to {dict(input_shapes)}: "
                           f"{str(exc).strip()[:300]}") from exc


#: element types numpy lacks (ml_dtypes has them): OpenVINO's name -> the ml_dtypes type, the
#: unsigned type of the same width its tensors carry the bits in
_BIT_TYPES = {"bf16": ("bfloat16", np.uint16, ov.Type.bf16), "f8e4m3": ("float8_e4m3fn", np.uint8, ov.Type.f8e4m3),
              "f8e5m2": ("float8_e5m2", np.uint8, ov.Type.f8e5m2)}
_PACKED_4BIT = {"i4": "int4", "u4": "uint4"}


def _to_openvino(value: Any) -> Any:
    """A feed as OpenVINO takes it: numpy as is; bfloat16 and float8 (ml_dtypes, which OpenVINO
    would read as other types) as a tensor of their bits with the element type named."""
    array = np.ascontiguousarray(value)
    for ml_name, bits, ov_type in _BIT_TYPES.values():
        if array.dtype.name == ml_name:
            return ov.Tensor(array.view(bits), list(array.shape), ov_type)
    if array.dtype.name in ("int4", "uint4"):  # two per byte, low nibble first
        nibbles = (array.astype(np.int8).ravel() & 0x0F).astype(np.uint8)
        if nibbles.size % 2:
            nibbles = np.append(nibbles, np.uint8(0))
        packed = np.ascontiguousarray(nibbles[0::2] | (nibbles[1::2] << 4))
        return ov.Tensor(packed, list(array.shape), ov.Type.i4 if array.dtype.name == "int4" else ov.Type.u4)
    return array


def _from_openvino(array: np.ndarray, port: Any) -> np.ndarray:
    """An output as kiln returns it: bfloat16 and float8 outputs (OpenVINO hands their bits back
    as float16 / uint8) and packed int4 / uint4 (two per byte, low nibble first) as ml_dtypes
    arrays of the port's shape."""
    import ml_dtypes

    type_name = port.get_element_type().get_type_name()
    if type_name in _BIT_TYPES:
        ml_name, bits, _ = _BIT_TYPES[type_name]
        return np.array(array.view(bits).view(getattr(ml_dtypes, ml_name)))
    if type_name in _PACKED_4BIT:
        shape = list(port.get_shape()) if port.get_partial_shape().is_static else None
        packed = array.view(np.uint8).ravel()
        nibbles = np.stack([packed & 0x0F, packed >> 4], axis=-1).ravel()
        count = int(np.prod(shape)) if shape is not None else nibbles.size
        values = nibbles[:count].astype(np.int8)
        if type_name == "i4":
            values = np.where(values > 7, values - 16, values).astype(np.int8)
        return values.astype(getattr(ml_dtypes, _PACKED_4BIT[type_name])).reshape(shape if shape is not None else -1)
    return np.array(array)


def compile(model: ir.Model, target: Target | None = None) -> OpenVINOExecutable:  # noqa: A001 - backend API name
    """Compile `model` with OpenVINO."""
    return OpenVINOExecutable(model, target)
