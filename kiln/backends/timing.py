"""The one timing protocol (BENCHMARKS.md): warm up, then call the runners in turn, each round
starting one runner later (A, B then B, A), and summarize each runner (median, p90) and each
pair of calls (ratios A/B, their median and its bootstrap interval), with the share of the
machine's CPU time other processes took meanwhile.

Alternating on the same inputs in one process makes load drift on a shared machine hit both
runners alike; rotating the start spreads the cost of a position in the round (first after the
loop's own work, or right after a given runner) over all runners instead of charging it to one.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Seconds from an arbitrary origin (`time.perf_counter`; tests pass a fake one).
Clock = Callable[[], float]


@dataclass(frozen=True)
class BenchmarkResult:
    """Latency figures of repeated runs, in milliseconds."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    repeats: int
    warmup: int

    @classmethod
    def of(cls, samples_ms: Sequence[float], warmup: int) -> BenchmarkResult:
        """The figures of `samples_ms`, timed after `warmup` untimed calls."""
        ordered = sorted(samples_ms)
        return cls(median_ms=float(statistics.median(ordered)), p90_ms=float(np.percentile(ordered, 90)),
                   mean_ms=float(statistics.fmean(ordered)), min_ms=ordered[0], repeats=len(ordered), warmup=warmup)

    def __str__(self) -> str:
        return (f"median {self.median_ms:.3f} ms, p90 {self.p90_ms:.3f} ms, min {self.min_ms:.3f} ms "
                f"({self.repeats} runs after {self.warmup} warm-up)")


def proc_stat() -> list[int] | None:
    """The aggregate line of /proc/stat in clock ticks (user nice system idle iowait irq softirq
    steal ...); None where there is no /proc."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds: busy on the whole machine (/proc/stat without idle and iowait) and used by
    this process (`os.times`, all threads). The difference of two readings covers a loop."""

    machine_busy_s: float
    own_s: float

    @classmethod
    def now(cls) -> CpuTimes | None:
        """This moment's reading; None where /proc/stat cannot be read."""
        ticks = proc_stat()
        if not ticks or len(ticks) < 8:
            return None
        own = os.times()
        busy = sum(ticks[:8]) - ticks[3] - ticks[4]
        return cls(busy / os.sysconf("SC_CLK_TCK"), own.user + own.system)

    def __add__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.machine_busy_s + other.machine_busy_s, self.own_s + other.own_s)

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.machine_busy_s - other.machine_busy_s, self.own_s - other.own_s)

    @property
    def other_pct(self) -> float:
        """Percent of the machine's busy CPU time that other processes took (0 when idle)."""
        busy = self.machine_busy_s
        return 100.0 * max(0.0, busy - self.own_s) / busy if busy > 0 else 0.0


def _check_rounds(repeats: int, min_rounds: int) -> None:
    if repeats < 1 or min_rounds < 1:
        raise ValueError(f"repeats={repeats}, min_rounds={min_rounds}: time at least one round.")


def timed_ms(fn: Callable[[], Any], clock: Clock = time.perf_counter) -> float:
    """Milliseconds one call of `fn` takes on `clock`."""
    start = clock()
    fn()
    return (clock() - start) * 1e3


def warm_up(fns: Sequence[Callable[[], Any]], warmup: int, *, slow_call_ms: float = math.inf,
            clock: Clock = time.perf_counter) -> None:
    """Call every runner `warmup` times in turn; a runner slower than `slow_call_ms` in the first
    round ends the warm-up (a call that long leaves the runner warm, and a budget would not fit
    more of them)."""
    for index in range(warmup):
        slow = any(timed_ms(fn, clock) > slow_call_ms for fn in fns)
        if slow and index == 0:
            return


def rotate(fns: Sequence[Callable[[], Any]], *, repeats: int = 30, min_seconds: float = 0.0,
           max_seconds: float = math.inf, min_rounds: int = 1, clock: Clock = time.perf_counter) -> list[list[float]]:
    """Call the runners in rounds, each round starting one runner later (1, 2, ..., n; 2, ..., n,
    1; ...), until each ran `repeats` times and for at least `min_seconds` of timed calls (but
    add no round after `max_seconds`, keeping at least `min_rounds`). Returns each runner's
    milliseconds, round by round."""
    _check_rounds(repeats, min_rounds)
    times: list[list[float]] = [[] for _ in fns]
    started = clock()
    while True:
        start = len(times[0]) % len(fns)
        for index in [*range(start, len(fns)), *range(start)]:
            times[index].append(timed_ms(fns[index], clock))
        rounds = len(times[0])
        enough = rounds >= repeats and min(sum(t) for t in times) / 1e3 >= min_seconds
        if enough or (clock() - started >= max_seconds and rounds >= min_rounds):
            return times


def round_robin(fns: Sequence[Callable[[], Any]], *, warmup: int = 5, repeats: int = 30, min_seconds: float = 0.0,
                max_seconds: float = math.inf, min_rounds: int = 1, slow_call_ms: float = math.inf,
                clock: Clock = time.perf_counter) -> list[list[float]]:
    """`warm_up`, then `rotate`: the protocol for any number of runners."""
    _check_rounds(repeats, min_rounds)
    warm_up(fns, warmup, slow_call_ms=slow_call_ms, clock=clock)
    return rotate(fns, repeats=repeats, min_seconds=min_seconds, max_seconds=max_seconds, min_rounds=min_rounds,
                  clock=clock)


@dataclass(frozen=True)
class PairedTiming:
    """Milliseconds per call of A and B measured alternately, the per-pair ratios A/B, and the
    percent of the machine's busy CPU time other processes took during the timed rounds."""

    a_ms: list[float]
    b_ms: list[float]
    other_cpu_pct: float | None = None

    @property
    def ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.a_ms, self.b_ms)]

    def medians(self) -> tuple[float, float]:
        """The median milliseconds of A and of B."""
        return float(statistics.median(self.a_ms)), float(statistics.median(self.b_ms))

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

    def summary(self) -> dict[str, float | int | None]:
        """A's and B's (the baseline's) medians and p90s, the median ratio, the pair count."""
        a_median, b_median = self.medians()
        return {
            "median_ms": a_median,
            "p90_ms": float(np.percentile(self.a_ms, 90)),
            "baseline_median_ms": b_median,
            "baseline_p90_ms": float(np.percentile(self.b_ms, 90)),
            "ratio_vs_baseline": statistics.median(self.ratios),
            "calls": len(self.a_ms),
            "other_cpu_pct": self.other_cpu_pct,
        }


def alternate(a: Callable[[], Any], b: Callable[[], Any], *, warmup: int = 5, repeats: int = 30,
              min_seconds: float = 0.0, max_seconds: float = math.inf, min_rounds: int = 1,
              slow_call_ms: float = math.inf, clock: Clock = time.perf_counter) -> PairedTiming:
    """A and B called alternately, in pairs A, B then B, A (`round_robin` of two), with the CPU
    share other processes took during the timed rounds."""
    _check_rounds(repeats, min_rounds)
    warm_up([a, b], warmup, slow_call_ms=slow_call_ms, clock=clock)
    before = CpuTimes.now()
    a_ms, b_ms = rotate([a, b], repeats=repeats, min_seconds=min_seconds, max_seconds=max_seconds,
                        min_rounds=min_rounds, clock=clock)
    after = CpuTimes.now()
    return PairedTiming(a_ms, b_ms, (after - before).other_pct if before and after else None)


def time_calls(fn: Callable[[], Any], *, warmup: int = 5, repeats: int = 30, min_seconds: float = 0.0,
               clock: Clock = time.perf_counter) -> BenchmarkResult:
    """Call `fn` `warmup` times, then at least `repeats` times (and for at least `min_seconds`)."""
    (samples,) = round_robin([fn], warmup=warmup, repeats=repeats, min_seconds=min_seconds, clock=clock)
    return BenchmarkResult.of(samples, warmup)
