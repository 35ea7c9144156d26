"""Streaming range observers: the clip range [low, high] of an activation's uint8 grid, from the
values it took on the calibration inputs, kept as a running min/max or a fixed-range histogram
(never the tensors).

- ``minmax``: the whole range seen.
- ``percentile``: the central `percentile` % of the values (the rest clip to the edges).
- ``mse``: the range whose uint8 grid minimizes the expected squared error over the histogram:
  rounding inside, ``(b - a)^2 / (12 * 255^2)`` per value, plus clipping outside, ``(x - edge)^2``;
  every pair of histogram edges is tried exactly through prefix sums of the counts.
- ``entropy``: the TensorRT rule (KL divergence between the clipped histogram and its 255-level
  quantization), over symmetric thresholds ``[max(low, -t), min(high, t)]``.

Values at float32's extremes (``-inf``, ``finfo.min``, as attention masks hold) and NaN are not
data: they are counted and left out of every statistic, so a mask never stretches the range and
the histogram never has to span 1e38 (ORT's Entropy calibration fails there with "Too many bins
for data range"). They clip to the range edge in int8 as any value outside it does.

The histogram methods need the range first, so they observe twice (`needs_second_pass`): a
MinMax pass fixes the bin edges, the second fills them. kiln writes these rules itself rather
than using ORT's ``HistogramCollector``: that one prints on every call, keeps only symmetric
ranges around zero (half the uint8 grid unused after a GELU) and has no MSE rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from kiln.errors import InputError

__all__ = ["RANGE_METHODS", "HistogramObserver", "MinMaxObserver", "Observer", "RangeMethod", "check_method",
           "check_percentile", "data_mask", "make_observer"]

RangeMethod = Literal["minmax", "percentile", "mse", "entropy"]
#: method -> what it keeps, for messages and the CLI's help
RANGE_METHODS: dict[str, str] = {
    "minmax": "the whole range seen on the calibration inputs",
    "percentile": "the central `percentile` % of the values seen",
    "mse": "the clip that minimizes the expected squared uint8 quantization error",
    "entropy": "the clip that minimizes the KL divergence of the quantized histogram (TensorRT's rule)",
}
#: histogram resolution: 2048 bins, as TensorRT and ORT use for Percentile/Entropy
HISTOGRAM_BINS = 2048
#: levels of the uint8 grid
_LEVELS = 255
_EXTREME = float(np.finfo(np.float32).max)


def data_mask(values: np.ndarray) -> np.ndarray:
    """Which of `values` are data: inside float32's extremes (False for masks' ``finfo.min``,
    +-inf and NaN)."""
    return np.abs(values) < _EXTREME


def _data(values: np.ndarray) -> tuple[np.ndarray, int]:
    """The values that are data (`data_mask`), flat, and how many were not."""
    flat = np.asarray(values, np.float32).reshape(-1)
    keep = data_mask(flat)
    return flat[keep], int(flat.size - np.count_nonzero(keep))


@dataclass
class MinMaxObserver:
    """A running min and max of the data values."""

    low: float = np.inf
    high: float = -np.inf
    excluded: int = 0
    needs_second_pass: bool = field(default=False, init=False)

    def observe(self, values: np.ndarray, second_pass: bool = False) -> None:
        data, excluded = _data(values)
        self.excluded += excluded
        if data.size:
            self.low, self.high = min(self.low, float(data.min())), max(self.high, float(data.max()))

    @property
    def seen(self) -> bool:
        return bool(np.isfinite(self.low))

    def clip(self) -> tuple[float, float]:
        return self.low, self.high


@dataclass
class HistogramObserver:
    """A MinMax pass, then a `HISTOGRAM_BINS` histogram over [low, high], and a clip rule on it."""

    method: RangeMethod
    percentile: float = 99.99
    bins: int = HISTOGRAM_BINS
    minmax: MinMaxObserver = field(default_factory=MinMaxObserver)
    counts: np.ndarray | None = None
    needs_second_pass: bool = field(default=True, init=False)

    def observe(self, values: np.ndarray, second_pass: bool = False) -> None:
        if not second_pass:
            self.minmax.observe(values)
            return
        if not self.minmax.seen:
            return
        data, _ = _data(values)
        low, high = self.minmax.clip()
        counts, _ = np.histogram(data, bins=self.bins, range=(low, high if high > low else low + 1.0))
        self.counts = counts if self.counts is None else self.counts + counts

    @property
    def seen(self) -> bool:
        return self.minmax.seen

    @property
    def excluded(self) -> int:
        return self.minmax.excluded

    def clip(self) -> tuple[float, float]:
        low, high = self.minmax.clip()
        if self.counts is None or high <= low or not self.counts.any():
            return low, high
        edges = np.linspace(low, high, self.bins + 1)
        counts = self.counts.astype(np.float64)
        if self.method == "percentile":
            return _percentile_clip(counts, edges, self.percentile)
        if self.method == "mse":
            return _mse_clip(counts, edges)
        return _entropy_clip(counts, edges)


Observer = MinMaxObserver | HistogramObserver


def check_method(method: str) -> None:
    """Raise `InputError` with the choices unless `method` is one of `RANGE_METHODS`."""
    if method not in RANGE_METHODS:
        raise InputError(f"activation_range={method!r} is not a range method kiln knows; use one of "
                         + ", ".join(repr(name) for name in RANGE_METHODS) + ".")


def check_percentile(percentile: float) -> None:
    """Raise `InputError` unless `percentile` is a share of values a range can keep: (50, 100]."""
    if not 50.0 < percentile <= 100.0:
        raise InputError(f"percentile={percentile!r} must be in (50, 100]: the share of an activation's values its "
                         "static range keeps.")


def make_observer(method: RangeMethod, percentile: float = 99.99) -> Observer:
    """A fresh observer for `method` (see `RANGE_METHODS`)."""
    check_method(method)
    if method == "minmax":
        return MinMaxObserver()
    check_percentile(percentile)
    return HistogramObserver(method, percentile=percentile)


def _with_zero(low: float, high: float) -> tuple[float, float]:
    return min(low, 0.0), max(high, 0.0)


def _percentile_clip(counts: np.ndarray, edges: np.ndarray, percentile: float) -> tuple[float, float]:
    """The edges that leave (100 - percentile) / 2 % of the values outside on each side."""
    cdf = np.cumsum(counts) / counts.sum()
    tail = (100.0 - percentile) / 200.0
    first = int(np.searchsorted(cdf, tail, side="right"))
    last = int(np.searchsorted(cdf, 1.0 - tail, side="left"))
    return _with_zero(float(edges[first]), float(edges[min(last + 1, len(edges) - 1)]))


def _mse_clip(counts: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
    """The pair of histogram edges (widened to hold 0) whose uint8 grid has the least expected
    squared error: rounding ``step^2 / 12`` per value inside, ``(x - edge)^2`` per value outside
    (values at their bin's centre)."""
    centres = (edges[:-1] + edges[1:]) / 2
    n, s1, s2 = (np.concatenate([[0.0], np.cumsum(counts * centres**k)]) for k in (0, 1, 2))
    total = n[-1]
    # candidate edges: every 4th (and the last), so the pair table is 513 x 513, not 2049 x 2049
    candidates = np.unique(np.concatenate([np.arange(0, len(edges), 4), [len(edges) - 1]]))
    i, j = candidates[:, None], candidates[None, :]
    lows = np.minimum(edges[i], 0.0)   # candidate low at edge i: bins [0, i) lie below it
    highs = np.maximum(edges[j], 0.0)  # candidate high at edge j: bins [j, end) lie above it
    # sum over clipped values of (x - edge)^2 = S2 - 2 edge S1 + edge^2 N, over each tail
    below = s2[i] - 2 * lows * s1[i] + lows**2 * n[i]
    above = (s2[-1] - s2[j]) - 2 * highs * (s1[-1] - s1[j]) + highs**2 * (total - n[j])
    inside = n[j] - n[i]
    rounding = ((highs - lows) / _LEVELS) ** 2 / 12 * np.maximum(inside, 0.0)
    error = np.where(j > i, below + above + rounding, np.inf)
    best_i, best_j = np.unravel_index(int(np.argmin(error)), error.shape)
    return _with_zero(float(edges[candidates[best_i]]), float(edges[candidates[best_j]]))


def _entropy_clip(counts: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
    """TensorRT's KL rule over symmetric thresholds t: the bins inside [max(low,-t), min(high,t)]
    with the clipped tails added to the edge bins (P), against the inside bins merged into 255
    levels and spread back evenly over each level's non-empty bins (Q); the t with the least
    KL(P || Q)."""
    width = edges[1] - edges[0]
    low, high = float(edges[0]), float(edges[-1])
    bins = len(counts)
    best, best_range = np.inf, (low, high)
    # thresholds at every 8th bin edge (TensorRT tries every one; 8 keeps 2048 bins to 256 tries)
    for t in np.unique(np.abs(edges))[::8].tolist() + [max(abs(low), abs(high))]:
        first = int(np.clip(np.floor((max(low, -t) - low) / width + 1e-9), 0, bins))
        last = int(np.clip(np.ceil((min(high, t) - low) / width - 1e-9), 0, bins))
        if last - first < _LEVELS:
            continue
        inside = counts[first:last]
        p = inside.copy()
        p[0] += counts[:first].sum()
        p[-1] += counts[last:].sum()
        level = np.arange(last - first) * _LEVELS // (last - first)
        mass = np.bincount(level, weights=inside, minlength=_LEVELS)
        filled = np.bincount(level, weights=(inside > 0).astype(np.float64), minlength=_LEVELS)
        q = np.where(inside > 0, mass[level] / np.maximum(filled[level], 1.0), 0.0)
        divergence = _kl(p, q)
        if divergence < best:
            best, best_range = divergence, (float(edges[first]), float(edges[last]))
    return _with_zero(*best_range)


def _smoothed(hist: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """A normalized histogram whose empty bins hold `eps` of the mass, so a divergence against it
    stays finite (the smoothing of TensorRT's entropy rule, renormalized instead of taken from
    the other bins so no bin goes negative)."""
    hist = hist / hist.sum() + eps * (hist == 0)
    return hist / hist.sum()


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(P || Q) of two unnormalized histograms of the same bins."""
    if not q.any():
        return np.inf
    p, q = p / p.sum(), _smoothed(q)
    held = p > 0
    return float(np.sum(p[held] * np.log(p[held] / q[held])))
