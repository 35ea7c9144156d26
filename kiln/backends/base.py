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
        samples.append(_timed_ms(fn))
    return _summary(samples, warmup)


def _timed_ms(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _summary(samples: list[float], warmup: int) -> BenchmarkResult:
    ordered = sorted(samples)
    return BenchmarkResult(
        median_ms=float(statistics.median(ordered)), p90_ms=float(np.percentile(ordered, 90)),
        mean_ms=float(statistics.fmean(ordered)), min_ms=ordered[0], repeats=len(ordered), warmup=warmup,
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
    a_ms: list[float] = []
    b_ms: list[float] = []
    for _ in range(repeats):
        a_ms.append(_timed_ms(a))
        b_ms.append(_timed_ms(b))
    return _summary(a_ms, warmup), _summary(b_ms, warmup)


class Executable(Protocol):
    """A compiled model: call it like the original, run it on feeds, benchmark it."""

    input_names: list[str]
    output_names: list[str]

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def run(self, feeds: Feeds) -> list[np.ndarray]: ...

    def benchmark(self, *args: Any, warmup: int = 5, repeats: int = 30, min_seconds: float = 0.0,
                  **kwargs: Any) -> BenchmarkResult: ...
