"""Tensors across ORT's boundary: numpy arrays as OrtValues and back, including the ml_dtypes
element types (bfloat16, float8, int4, ...) that ORT's numpy bridge does not know."""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from kiln.errors import BackendError


def needs_ort_value(value: object) -> bool:
    """True for an ml_dtypes array, which ORT accepts only as an OrtValue."""
    return isinstance(value, np.ndarray) and value.dtype.type.__module__.split(".")[0] == "ml_dtypes"


def to_ort_value(array: Any) -> Any:
    """An OrtValue for a numpy array; ml_dtypes arrays (bfloat16, float8, int4...) are packed
    as ONNX stores them, since ORT's numpy bridge does not know their types."""
    if isinstance(array, list):
        return [to_ort_value(a) for a in array]
    if not needs_ort_value(array):
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
