"""The timing protocol of BENCHMARKS.md: warm up, then alternate A and B on the same inputs,
and report medians, p90s and the median of per-pair ratios A/B."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
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

    def median_ratio_interval(self, confidence: float = 0.95, resamples: int = 2000,
                              seed: int = 0) -> tuple[float, float]:
        """Bootstrap interval of the median per-pair ratio: pairs resampled with replacement."""
        ratios = np.asarray(self.ratios)
        picks = np.random.default_rng(seed).integers(0, len(ratios), size=(resamples, len(ratios)))
        medians = np.median(ratios[picks], axis=1)
        tail = (1 - confidence) / 2 * 100
        low, high = np.percentile(medians, [tail, 100 - tail])
        return float(low), float(high)

    def verdict(self, confidence: float = 0.95) -> str:
        """"A faster" / "B faster" when the median ratio's interval excludes 1, else "tie"."""
        low, high = self.median_ratio_interval(confidence)
        return "A faster" if high < 1 else "B faster" if low > 1 else "tie"

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


def round_robin(fns: Sequence[Callable[[], Any]], *, warmup: int = 5, repeats: int = 30, min_seconds: float = 3.0,
                max_seconds: float = 120.0, min_rounds: int = 3) -> list[list[float]]:
    """Warm every runner up, then call them in turn, each round starting one runner later
    (1, 2, ..., n; 2, ..., n, 1; ...), until each ran `repeats` times and for at least
    `min_seconds` (but stop adding rounds after `max_seconds`, keeping at least `min_rounds`).
    Runners that take over a second per call are warmed up once. Returns the milliseconds of
    each runner's timed calls, round by round.

    The rotation spreads any cost of a position in the round (first after the loop's own work,
    or right after a given runner) over all runners instead of charging it to one. Two sessions
    running the same kernels (llama-gqa) measured 1.003-1.010 apart in A, B order (three runs),
    1.001 and 1.007 with the order swapped each round, 1.000-1.002 in standalone A/B scripts."""
    for index in range(warmup):
        slow = any(_timed(fn) > 1000.0 for fn in fns)
        if slow and index == 0:
            break
    times: list[list[float]] = [[] for _ in fns]
    started = time.perf_counter()
    while True:
        start = len(times[0]) % len(fns)
        for index in [*range(start, len(fns)), *range(start)]:
            times[index].append(_timed(fns[index]))
        rounds = len(times[0])
        enough = rounds >= repeats and min(sum(t) for t in times) / 1e3 >= min_seconds
        if enough or (time.perf_counter() - started >= max_seconds and rounds >= min_rounds):
            return times


def alternate(a: Callable[[], Any], b: Callable[[], Any], *, warmup: int = 5, repeats: int = 30,
              min_seconds: float = 3.0, max_seconds: float = 120.0, min_rounds: int = 3) -> PairedTiming:
    """A and B called alternately, in pairs A, B then B, A (`round_robin` of two)."""
    a_ms, b_ms = round_robin([a, b], warmup=warmup, repeats=repeats, min_seconds=min_seconds, max_seconds=max_seconds,
                             min_rounds=min_rounds)
    return PairedTiming(a_ms, b_ms)
