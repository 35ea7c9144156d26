"""Static activation scales: the range an activation takes on calibration inputs, as the uint8
scale and zero point of a fixed QuantizeLinear / DequantizeLinear pair in front of its int8 readers.

    x -> QuantizeLinear(x, scale, zero_point) -> DequantizeLinear(., scale, zero_point)

A backend that runs QDQ graphs in int8 (OpenVINO's low-precision transformations) takes the pair
and the int8 weight behind it as one int8 kernel whose activation scale is fixed, instead of
computing it per call. The range comes from a streaming observer over the calibration inputs
(`observers`: MinMax by default, or a Percentile, MSE or Entropy clip of a histogram; never the
tensors).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from kiln.ir.inputs import Feeds
from kiln.passes.infra.contract import ModelRunner
from kiln.passes.quantization.observers import RangeMethod, make_observer

__all__ = ["ActivationRange", "activation_ranges", "exposing", "fixed_scale_pair"]


@dataclass(frozen=True)
class ActivationRange:
    """The range an activation took on the calibration inputs, as an asymmetric uint8 scale and
    zero point: the range widened to hold 0, ``x ~ scale * (q - zero_point)`` with q in [0, 255]."""

    low: float
    high: float

    @property
    def scale(self) -> np.float32:
        low, high = min(self.low, 0.0), max(self.high, 0.0)
        return np.float32((high - low) / 255.0 if high > low else 1.0)

    @property
    def zero_point(self) -> np.uint8:
        return np.uint8(np.clip(np.rint(-min(self.low, 0.0) / float(self.scale)), 0, 255))


def fixed_scale_pair(x: ir.Value, scale: ir.Value, zero_point: ir.Value, prefix: str = "") -> list[ir.Node]:
    """QuantizeLinear / DequantizeLinear of `x` at a fixed uint8 scale and zero point (not yet
    inserted); the second node's output is `x` as the int8 reader sees it."""
    quantize = ir.Node("", "QuantizeLinear", [x, scale, zero_point], name=f"{prefix}.quantize_activation" if prefix else None)
    dequantize = ir.Node("", "DequantizeLinear", [quantize.outputs[0], scale, zero_point],
                         name=f"{prefix}.dequantize_activation" if prefix else None)
    if prefix:
        quantize.outputs[0].name, dequantize.outputs[0].name = f"{prefix}.activation_uint8", f"{prefix}.activation_int8"
    quantize.outputs[0].dtype, dequantize.outputs[0].dtype = ir.DataType.UINT8, ir.DataType.FLOAT
    quantize.outputs[0].shape = dequantize.outputs[0].shape = x.shape
    return [quantize, dequantize]


def exposing(model: ir.Model, values: Sequence[ir.Value]) -> tuple[ir.Model, dict[str, int]]:
    """A copy of `model` that also outputs the named `values` (graph inputs or node outputs), and
    the output index of each name found."""
    wanted = list(dict.fromkeys(v.name for v in values if v.name))
    probe = model.clone()
    by_name = {v.name: v for v in probe.graph.inputs}
    by_name.update({out.name: out for node in probe.graph for out in node.outputs})
    known = [name for name in wanted if name in by_name]
    probe.graph.outputs.extend(by_name[name] for name in known if by_name[name] not in probe.graph.outputs)
    position = {id(v): k for k, v in enumerate(probe.graph.outputs)}
    return probe, {name: position[id(by_name[name])] for name in known}


def activation_ranges(model: ir.Model, runner: ModelRunner, feeds: Sequence[Feeds], activations: Sequence[ir.Value],
                      method: RangeMethod = "minmax", percentile: float = 99.99) -> dict[str, ActivationRange]:
    """The clip range of each named activation over `feeds` by `method` (the fp32 model run with
    them exposed as outputs, one feed at a time, twice for the histogram methods: only a running
    min/max and a histogram per activation are kept, never the tensors)."""
    probe, index = exposing(model, activations)
    known = list(index)
    observers = {name: make_observer(method, percentile) for name in known}
    passes = (False, True) if any(o.needs_second_pass for o in observers.values()) else (False,)
    for second_pass in passes:
        for feed in feeds:
            outputs = runner(probe, feed)
            for name in known:
                observers[name].observe(np.asarray(outputs[index[name]]), second_pass=second_pass)
    return {name: ActivationRange(*observer.clip()) for name, observer in observers.items() if observer.seen}
