"""Symmetric int8 quantization of a weight matrix: ``w ~ scale * q`` with q in [-127, 127] (or
[-63, 63] with `reduce_range`), one scale per output column or one for the whole matrix.

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
    """A K x N weight as int8 `values` and float32 `scale` ([N] per channel, else a scalar)."""

    values: np.ndarray
    scale: np.ndarray

    def dequantized(self) -> np.ndarray:
        return self.values.astype(np.float32) * self.scale

    @property
    def zero_point(self) -> np.ndarray:
        """Zeros of the scale's shape (int8): the weights are symmetric."""
        return np.zeros(self.scale.shape, np.int8)


def quantize_weight(weight: np.ndarray, *, per_channel: bool, reduce_range: bool = False) -> QuantizedWeight:
    """Quantize a K x N float weight (columns are output channels): scale = max |w| / qmax per
    column (or overall), q = round(w / scale). An all-zero column gets scale 1 (its q are 0)."""
    if weight.ndim != 2:
        raise ValueError(f"expected a K x N weight, got shape {weight.shape}")
    qmax = 63.0 if reduce_range else 127.0
    w = weight.astype(np.float32)
    peak = np.abs(w).max(axis=0) if per_channel else np.abs(w).max(keepdims=False)
    scale = np.where(peak > 0, peak / qmax, 1.0).astype(np.float32)
    values = np.clip(np.rint(w / scale), -qmax, qmax).astype(np.int8)
    return QuantizedWeight(values, np.asarray(scale, np.float32))
