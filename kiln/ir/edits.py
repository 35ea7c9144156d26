"""Small edits rewrites share: adding a constant initializer under a name not yet taken."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def new_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """Register `array` as an initializer of `graph` named `name` (suffixed until unique)."""
    unique, counter = name, 1
    while unique in graph.initializers:
        unique, counter = f"{name}_{counter}", counter + 1
    tensor = ir.tensor(array, name=unique)
    value = ir.Value(name=unique, type=ir.TensorType(tensor.dtype), shape=ir.Shape(array.shape), const_value=tensor)
    graph.register_initializer(value)
    return value
