"""Bias correction of int8 linears: the mean error quantization adds to a linear's output on the
calibration inputs, taken out of its bias.

For ``y = alpha * x @ W + b`` quantized to ``y' = alpha * x' @ W' + b``, with ``x'`` the
activation on its uint8 grid (a fixed scale for static int8; for dynamic int8 the grid each call's
own range gives, as DynamicQuantizeLinear takes it over the whole tensor) and ``W'`` the int8
weight (both dequantized), the output error's mean over the calibration rows is

    e = alpha * (mean(x') @ W' - mean(x) @ W)        (means over every axis but the last)

and ``b - e`` makes it zero on those rows (Nagel et al. 2019, "Data-Free Quantization Through
Weight Equalization and Bias Correction", empirical form; NNCF's FastBiasCorrection). Rounding
and clipping are not zero-mean where an activation's values sit in a few levels of its grid,
and the weights' rounding meets activations of nonzero mean (a LayerNorm's beta), so the shift
is systematic, and it adds up over a network's linears. The means come
from the fp32 model (each linear corrected on its own), kept as running sums per calibration
feed, never as tensors; per feed so that whether to correct can be judged on feeds the
correction was not fitted on (`leave_one_out`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from kiln.ir.edits import new_initializer
from kiln.ir.inputs import Feeds
from kiln.ir.queries import constant_array, is_onnx
from kiln.passes.infra.contract import ModelRunner
from kiln.passes.quantization.linears import Linear
from kiln.passes.quantization.observers import data_mask
from kiln.passes.quantization.static_activations import ActivationRange, exposing
from kiln.passes.quantization.weights import QuantizedWeight

__all__ = ["ActivationMeans", "BiasAdd", "activation_means", "bias_add", "bias_shift", "correct_bias_add",
           "fake_quantize", "has_bias"]


@dataclass(frozen=True)
class ActivationMeans:
    """Per calibration feed, the sum over rows of an activation (`sums`, feeds x channels) and of
    its value at the fixed uint8 scale (`quantized_sums`), and the row counts (`rows`)."""

    sums: np.ndarray
    quantized_sums: np.ndarray
    rows: np.ndarray

    def means(self, feeds: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(mean of x, mean of x') over the rows of the chosen `feeds` (default: all)."""
        pick = slice(None) if feeds is None else list(feeds)
        count = max(float(self.rows[pick].sum()), 1.0)
        return self.sums[pick].sum(axis=0) / count, self.quantized_sums[pick].sum(axis=0) / count


@dataclass(frozen=True)
class BiasAdd:
    """The Add that adds a constant vector to a MatMul linear's output, as exporters write a
    bias: the node, which of its inputs is the constant, and its values."""

    node: ir.Node
    index: int
    values: np.ndarray


def bias_add(linear: Linear) -> BiasAdd | None:
    """The `BiasAdd` after `linear` (a MatMul, whose `Linear.bias` is None), if its output has
    that Add as its only reader and the constant holds one float32 value per output column."""
    output = linear.node.outputs[0]
    uses = output.uses()
    if len(uses) != 1 or output.is_graph_output() or not is_onnx(uses[0][0], "Add"):
        return None
    node, index = uses[0][0], 1 - uses[0][1]
    values = constant_array(node.inputs[index])
    columns = linear.weight.shape[1]
    if values is None or values.dtype != np.float32 or values.size != columns or values.shape[-1] != columns:
        return None
    return BiasAdd(node, index, values)


def has_bias(linear: Linear) -> bool:
    """Whether `linear` adds a bias that a correction can go into: Gemm's C, or a `BiasAdd`."""
    return linear.bias is not None or bias_add(linear) is not None


def correct_bias_add(graph: ir.Graph, add: BiasAdd, shift: np.ndarray, prefix: str) -> None:
    """Make the bias Add read ``values - shift`` (a new initializer: the old one may have other
    readers), in place."""
    corrected = (add.values - shift.reshape(add.values.shape)).astype(np.float32)
    add.node.replace_input_with(add.index, new_initializer(graph, f"{prefix}.bias_corrected", corrected))


def fake_quantize(x: np.ndarray, activation: ActivationRange | None) -> np.ndarray:
    """``DequantizeLinear(QuantizeLinear(x))`` at the range's uint8 scale and zero point (round
    half to even, as QuantizeLinear rounds), in float32 as the kernels compute it; with no range,
    at the range of `x` itself (``DynamicQuantizeLinear``: the whole tensor's, widened to hold 0)."""
    if activation is None:  # the operator's own float32 arithmetic, so that ties round as it does
        low = np.minimum(x.min(initial=0.0), np.float32(0.0)).astype(np.float32)
        high = np.maximum(x.max(initial=0.0), np.float32(0.0)).astype(np.float32)
        scale = np.float32((high - low) / np.float32(255.0)) if high > low else np.float32(1.0)
        zero_point = np.float32(np.clip(np.rint(-low / scale), 0, 255))
    else:
        scale, zero_point = activation.scale, np.float32(activation.zero_point)
    q = np.clip(np.rint(x.astype(np.float32) / scale) + zero_point, 0, 255)
    return ((q - zero_point) * scale).astype(np.float32)


def activation_means(model: ir.Model, runner: ModelRunner, feeds: Sequence[Feeds], activations: Sequence[ir.Value],
                     ranges: dict[str, ActivationRange] | None = None) -> dict[str, ActivationMeans]:
    """`ActivationMeans` of each of `activations` over `feeds` (the fp32 model run with them
    exposed as outputs, one feed at a time), on its fixed range in `ranges` or, without `ranges`,
    on each call's own (dynamic int8: one call per feed, the whole tensor). Rows holding a value
    outside float32's extremes (a mask, inf, NaN) are left out of the means, as the range
    observers leave such values out."""
    probe, index = exposing(model, activations)
    sums: dict[str, list[np.ndarray]] = {name: [] for name in index}
    quantized: dict[str, list[np.ndarray]] = {name: [] for name in index}
    rows: dict[str, list[int]] = {name: [] for name in index}
    for feed in feeds:
        outputs = runner(probe, feed)
        for name, k in index.items():
            x = np.asarray(outputs[k], np.float32)
            x = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
            x_q = fake_quantize(x, ranges[name] if ranges is not None else None)  # dynamic: the whole tensor's, as fed
            rows_kept = data_mask(x).all(axis=1)
            x, x_q = x[rows_kept], x_q[rows_kept]
            sums[name].append(x.sum(axis=0, dtype=np.float64))
            quantized[name].append(x_q.sum(axis=0, dtype=np.float64))
            rows[name].append(x.shape[0])
    return {name: ActivationMeans(np.stack(sums[name]), np.stack(quantized[name]), np.asarray(rows[name]))
            for name in index}


def bias_shift(linear: Linear, q: QuantizedWeight, means: ActivationMeans,
               feeds: Sequence[int] | None = None) -> np.ndarray:
    """The mean output error ``e`` (float32, one value per output column) the int8 form of
    `linear` adds on the rows of the chosen calibration `feeds` (default: all); its corrected
    bias is ``bias - e``."""
    mean_x, mean_q = means.means(feeds)
    exact = mean_x @ linear.weight.astype(np.float64)
    quantized = mean_q @ q.dequantized().astype(np.float64)
    return (np.float64(linear.alpha) * (quantized - exact)).astype(np.float32)
