"""The timing protocol (kiln.backends.timing) with a fake clock: warm-up, the rotating order
(A, B then B, A), per-pair ratios and their statistics, stopping rules, CPU share."""

from __future__ import annotations

import pytest
from conftest import FakeClock

from kiln.backends import timing


def _runners(clock: FakeClock, costs: dict[str, list[float]], calls: list[str]) -> list:
    """Runners that log their name and spend their next cost (ms) on `clock`, the last one repeating."""
    def runner(name: str):
        def run() -> None:
            calls.append(name)
            done = sum(1 for c in calls if c == name)
            clock.spend(costs[name][min(done, len(costs[name])) - 1])
        return run

    return [runner(name) for name in costs]


def test_alternate_warms_up_then_rotates_the_order_each_round():
    clock, calls = FakeClock(), []
    a, b = _runners(clock, {"a": [1.0], "b": [1.0]}, calls)
    result = timing.alternate(a, b, warmup=2, repeats=4, clock=clock)
    assert calls == ["a", "b"] * 2 + ["a", "b", "b", "a"] * 2  # 2 warm-up pairs, then A, B / B, A
    assert len(result.a_ms) == len(result.b_ms) == 4


def test_ratios_are_per_pair_and_the_summary_takes_their_median():
    clock, calls = FakeClock(), []
    # timed calls cost a: 2, 4, 30 ms and b: 1, 4, 10 ms (after one warm-up call each)
    a, b = _runners(clock, {"a": [9.0, 2.0, 4.0, 30.0], "b": [9.0, 1.0, 4.0, 10.0]}, calls)
    result = timing.alternate(a, b, warmup=1, repeats=3, clock=clock)
    assert result.a_ms == pytest.approx([2.0, 4.0, 30.0]) and result.b_ms == pytest.approx([1.0, 4.0, 10.0])
    assert result.ratios == pytest.approx([2.0, 1.0, 3.0])
    summary = result.summary()
    assert summary["ratio_vs_baseline"] == pytest.approx(2.0)  # not median(a) / median(b) = 1.0
    assert summary["median_ms"] == pytest.approx(4.0) and summary["baseline_median_ms"] == pytest.approx(4.0)
    assert summary["p90_ms"] == pytest.approx(24.8) and summary["calls"] == 3
    assert result.medians() == pytest.approx((4.0, 4.0))


def test_round_robin_of_three_starts_one_runner_later_each_round():
    clock, calls = FakeClock(), []
    times = timing.round_robin(_runners(clock, {"x": [1.0], "y": [2.0], "z": [3.0]}, calls), warmup=0, repeats=3,
                               clock=clock)
    assert calls == ["x", "y", "z", "y", "z", "x", "z", "x", "y"]
    assert times == [pytest.approx([1.0] * 3), pytest.approx([2.0] * 3), pytest.approx([3.0] * 3)]


def test_min_seconds_adds_rounds_until_every_runner_had_that_much_timed_time():
    clock, calls = FakeClock(), []
    fast, slow = _runners(clock, {"fast": [125.0], "slow": [500.0]}, calls)
    a_ms, b_ms = timing.round_robin([fast, slow], warmup=0, repeats=2, min_seconds=1.0, clock=clock)
    assert len(a_ms) == len(b_ms) == 8  # the faster runner needs 8 calls of 125 ms for 1 s


def test_max_seconds_stops_adding_rounds_but_keeps_min_rounds():
    clock, calls = FakeClock(), []
    fns = _runners(clock, {"a": [10.0], "b": [10.0]}, calls)
    assert [len(t) for t in timing.round_robin(fns, warmup=0, repeats=30, max_seconds=0.0, min_rounds=3,
                                               clock=clock)] == [3, 3]
    assert [len(t) for t in timing.round_robin(fns, warmup=0, repeats=30, max_seconds=0.0, clock=clock)] == [1, 1]


def test_a_runner_slower_than_slow_call_ms_ends_the_warm_up_after_one_round():
    clock, calls = FakeClock(), []
    timing.warm_up(_runners(clock, {"a": [2000.0], "b": [1.0]}, calls), 5, slow_call_ms=1000.0, clock=clock)
    assert calls == ["a"]
    calls.clear()
    timing.warm_up(_runners(clock, {"a": [10.0], "b": [1.0]}, calls), 2, slow_call_ms=1000.0, clock=clock)
    assert calls == ["a", "b", "a", "b"]


def test_time_calls_summarizes_the_timed_calls_only():
    clock, calls = FakeClock(), []
    (run,) = _runners(clock, {"f": [50.0, 50.0, 1.0, 2.0, 3.0, 4.0, 5.0]}, calls)
    result = timing.time_calls(run, warmup=2, repeats=5, clock=clock)
    assert len(calls) == 7 and result.repeats == 5 and result.warmup == 2
    assert (result.median_ms, result.min_ms, result.mean_ms) == pytest.approx((3.0, 1.0, 3.0))
    with pytest.raises(ValueError, match="at least one round"):
        timing.time_calls(run, repeats=0, clock=clock)


def test_verdict_is_a_tie_unless_the_median_ratios_interval_excludes_one():
    faster = timing.PairedTiming(a_ms=[90.0 + i % 3 for i in range(30)], b_ms=[100.0] * 30)
    assert faster.verdict() == "A faster" and faster.median_ratio_interval()[1] < 1
    slower = timing.PairedTiming(a_ms=[100.0] * 30, b_ms=[90.0 + i % 3 for i in range(30)])
    assert slower.verdict() == "B faster"
    # Ratios spread evenly on both sides of 1: the interval of their median contains 1.
    noisy = timing.PairedTiming(a_ms=[100.0 + (8 if i % 2 else -8) + i % 5 for i in range(30)], b_ms=[100.0] * 30)
    low, high = noisy.median_ratio_interval()
    assert low < 1 < high and noisy.verdict() == "tie"


def test_other_processes_share_is_busy_time_minus_this_process():
    loop = timing.CpuTimes(machine_busy_s=3.0, own_s=2.5) - timing.CpuTimes(machine_busy_s=1.0, own_s=1.0)
    assert loop.other_pct == pytest.approx(25.0)
    assert timing.CpuTimes(0.0, 0.0).other_pct == 0.0
    assert timing.CpuTimes(1.0, 2.0).other_pct == 0.0  # own time counted in another tick: no negative share


def test_alternate_records_the_cpu_share_of_the_timed_rounds(monkeypatch):
    readings = iter([timing.CpuTimes(10.0, 1.0), timing.CpuTimes(14.0, 4.0)])
    monkeypatch.setattr(timing.CpuTimes, "now", classmethod(lambda cls: next(readings)))
    clock, calls = FakeClock(), []
    result = timing.alternate(*_runners(clock, {"a": [1.0], "b": [1.0]}, calls), warmup=1, repeats=2, clock=clock)
    assert result.other_cpu_pct == pytest.approx(25.0) and result.summary()["other_cpu_pct"] == pytest.approx(25.0)
