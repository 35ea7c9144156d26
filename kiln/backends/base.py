"""What every backend returns: an Executable (callable, benchmarkable) and benchmark figures."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from kiln.ir.inputs import Feeds


@dataclass(frozen=True)
class BenchmarkResult:
    """Latency figures of repeated runs, in milliseconds."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    repeats: int
    warmup: int

    def __str__(self) -> str:
        return (f"median {self.median_ms:.3f} ms, p90 {self.p90_ms:.3f} ms, min {self.min_ms:.3f} ms "
                f"({self.repeats} runs after {self.warmup} warm-up)")


def time_calls(fn: Callable[[], Any], *, warmup: int = 5, repeats: int = 30, min_seconds: float = 0.0) -> BenchmarkResult:
    """Call `fn` `warmup` times, then at least `repeats` times (and at least `min_seconds`)."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < repeats or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    p90 = float(np.percentile(samples, 90))
    return BenchmarkResult(
        median_ms=float(statistics.median(samples)), p90_ms=p90, mean_ms=float(statistics.fmean(samples)),
        min_ms=samples[0], repeats=len(samples), warmup=warmup,
    )


def time_alternately(a: Callable[[], Any], b: Callable[[], Any], *, warmup: int = 3,
                     repeats: int = 15) -> tuple[BenchmarkResult, BenchmarkResult]:
    """Time `a` and `b` called in turn (a, b, a, b, ...) so load drift on a shared machine hits
    both alike; returns their results in that order."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    for _ in range(warmup):
        a()
        b()
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, times in zip((a, b), samples):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    results = []
    for times in samples:
        times.sort()
        results.append(BenchmarkResult(
            median_ms=float(statistics.median(times)), p90_ms=float(np.percentile(times, 90)),
            mean_ms=float(statistics.fmean(times)), min_ms=times[0], repeats=len(times), warmup=warmup,
        ))
    return results[0], results[1]


class Executable(Protocol):
    """A compiled model: call it like the original, run it on feeds, benchmark it."""

    input_names: list[str]
    output_names: list[str]

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def run(self, feeds: Feeds) -> list[np.ndarray]: ...

    def benchmark(self, *args: Any, warmup: int = 5, repeats: int = 30, min_seconds: float = 0.0,
                  **kwargs: Any) -> BenchmarkResult: ...
