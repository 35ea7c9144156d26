"""The timing protocol of BENCHMARKS.md: warm up, then alternate A and B on the same inputs,
and report medians, p90s and the median of per-pair ratios A/B."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PairedTiming:
    """Milliseconds per call of A and B measured alternately, and the per-pair ratios A/B."""

    a_ms: list[float]
    b_ms: list[float]

    @property
    def ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.a_ms, self.b_ms)]

    def summary(self) -> dict[str, float | int]:
        return {
            "median_ms": statistics.median(self.a_ms),
            "p90_ms": float(np.percentile(self.a_ms, 90)),
            "baseline_median_ms": statistics.median(self.b_ms),
            "baseline_p90_ms": float(np.percentile(self.b_ms, 90)),
            "ratio_vs_baseline": statistics.median(self.ratios),
            "calls": len(self.a_ms),
        }


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def alternate(a: Callable[[], Any], b: Callable[[], Any], *, warmup: int = 5, repeats: int = 30,
              min_seconds: float = 3.0, max_seconds: float = 120.0) -> PairedTiming:
    """Warm both up, then call A, B, A, B ... until each ran `repeats` times and for at least
    `min_seconds` in total (but stop adding calls after `max_seconds`, keeping at least 3 pairs).
    A configuration that takes over a second per call (untuned TVM) is warmed up once."""
    for index in range(warmup):
        slow = _timed(a) > 1000.0
        b()
        if slow and index == 0:
            break
    a_ms: list[float] = []
    b_ms: list[float] = []
    started = time.perf_counter()
    while True:
        a_ms.append(_timed(a))
        b_ms.append(_timed(b))
        elapsed = time.perf_counter() - started
        enough = len(a_ms) >= repeats and min(sum(a_ms), sum(b_ms)) / 1e3 >= min_seconds
        if enough or (elapsed >= max_seconds and len(a_ms) >= 3):
            return PairedTiming(a_ms, b_ms)
