"""Symmetric int8 quantization of a weight: ``w ~ scale * q`` with q in [-127, 127] (or [-63, 63]
with `reduce_range`), one scale per output channel (a linear's column, a convolution's filter) or
one for the whole tensor.

Symmetric, because ONNX Runtime's integer GEMMs take a zero weight zero-point fastest and the
activations' own zero point already absorbs asymmetry; -128 is left unused so that q and -q are
both representable (the usual convention of ORT's quantizer and PyTorch's qint8).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["QuantizedWeight", "quantize_weight"]


@dataclass(frozen=True)
class QuantizedWeight:
    """A weight as int8 `values` and float32 `scale` (one per output channel, else a scalar), the
    channels on `axis` of `values`."""

    values: np.ndarray
    scale: np.ndarray
    axis: int = 1

    def dequantized(self) -> np.ndarray:
        shape = [1] * self.values.ndim
        if self.scale.ndim:
            shape[self.axis] = self.scale.size
        return self.values.astype(np.float32) * self.scale.reshape(shape)

    @property
    def zero_point(self) -> np.ndarray:
        """Zeros of the scale's shape (int8): the weights are symmetric."""
        return np.zeros(self.scale.shape, np.int8)


def quantize_weight(weight: np.ndarray, *, per_channel: bool, reduce_range: bool = False,
                    axis: int = 1) -> QuantizedWeight:
    """Quantize a float weight whose output channels lie on `axis` (1: the columns of a K x N
    linear weight; 0: the filters of a convolution's O x I x kH x kW): scale = max |w| / qmax per
    channel (or overall), q = round(w / scale). An all-zero channel gets scale 1 (its q are 0)."""
    if weight.ndim < 2 or not -weight.ndim <= axis < weight.ndim:
        raise ValueError(f"expected a weight of rank >= 2 with channels on axis {axis}, got shape {weight.shape}")
    axis %= weight.ndim
    qmax = 63.0 if reduce_range else 127.0
    w = weight.astype(np.float32)
    others = tuple(d for d in range(w.ndim) if d != axis)
    peak = np.abs(w).max(axis=others) if per_channel else np.abs(w).max(keepdims=False)
    scale = np.where(peak > 0, peak / qmax, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    if per_channel:
        shape[axis] = scale.size
    values = np.clip(np.rint(w / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return QuantizedWeight(values, np.asarray(scale, np.float32), axis)
