"""Saving onnx-ir models: one file when small, weights in an external-data file when large.

onnx-ir streams tensors to the data file (memory-mapped sources are not copied into a proto),
so a model over 2 GB is saved without holding two copies of its weights.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx
import onnx_ir as ir

from kiln.ir.analysis import parameter_bytes

logger = logging.getLogger(__name__)

# Above this many parameter bytes the weights go to an external-data file (protobuf's
# hard limit is 2 GiB for the whole model; stay well below it).
EXTERNAL_DATA_THRESHOLD_BYTES = 1 << 30
# Tensors smaller than this stay inside the .onnx file even when external data is used.
EXTERNAL_TENSOR_MIN_BYTES = 1024
# `save_model` writes weights over this size to an external-data file unless told otherwise:
# onnx-ir streams them to it in a fraction of a second, while serializing them into one
# protobuf costs seconds per few hundred MB and a second in-memory copy. The price is a `<name>.data` file next to the model.
SAVE_EXTERNAL_DATA_THRESHOLD_BYTES = 64 << 20


def needs_external_data(model: ir.Model) -> bool:
    """True when the model is too large to serialize into a single protobuf."""
    return parameter_bytes(model) >= EXTERNAL_DATA_THRESHOLD_BYTES


def saves_external_data(model: ir.Model) -> bool:
    """True when `save_model` (by default) writes the weights to an external-data file."""
    return needs_external_data(model) or parameter_bytes(model) >= SAVE_EXTERNAL_DATA_THRESHOLD_BYTES


def has_external_tensors(model: ir.Model) -> bool:
    """True when some initializer still points at an external-data file."""
    return any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())


def in_memory(model: ir.Model) -> ir.Model:
    """`model`, or a clone whose external tensors are read into memory (the input is untouched)."""
    if not has_external_tensors(model):
        return model
    # Not ir.external_data.load_to_model: the clone shares its ExternalTensors with `model`, and
    # load_to_model releases each one's memory map, which fails with BufferError while any numpy
    # view of it is alive (a pass holding a weight it read) and would unmap the input's data.
    clone = model.clone()
    for value in clone.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor):
            value.const_value = ir.Tensor(tensor.numpy().copy(), name=tensor.name, dtype=tensor.dtype)
    return clone


def save_model(model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None) -> Path:
    """Save `model` to `path`. `external_data=None` decides by size (weights over
    SAVE_EXTERNAL_DATA_THRESHOLD_BYTES go to a `<name>.data` file next to the model); True forces
    that file; False forces a single file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    use_external = saves_external_data(model) if external_data is None else external_data
    if use_external:
        data_name = path.name + ".data"
        ir.save(model, path, external_data=data_name, size_threshold_bytes=EXTERNAL_TENSOR_MIN_BYTES)
        logger.info("Saved %s with weights in %s", path, data_name)
    else:
        ir.save(in_memory(model), path)
    return path


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialize to a ModelProto (only for models under the protobuf size limit)."""
    return ir.serde.serialize_model(in_memory(model))
