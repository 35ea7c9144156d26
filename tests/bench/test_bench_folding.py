"""The folding benchmark's latency protocol: a round-robin selection phase picks the fastest
peer, then a separate alternating phase gives the kiln / peer ratio (fake runners, fake times)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
from conftest import FakeClock

from benchmarks import folding

SELECTION_CALLS = 1 + 4  # warmup=1, repeats=4 below


@pytest.fixture
def clock():
    """Time that passes only as the fake runners spend it."""
    return FakeClock()


def _runners(clock: FakeClock, costs: dict[str, tuple[float, float]], calls: list[str]) -> dict[str, Callable[[], None]]:
    """Runners costing costs[name][0] ms during the selection phase and costs[name][1] after it."""
    counts: Counter[str] = Counter()

    def runner(name: str) -> Callable[[], None]:
        def run() -> None:
            counts[name] += 1
            calls.append(name)
            clock.spend(costs[name][0 if counts[name] <= SELECTION_CALLS else 1])
        return run

    return {name: runner(name) for name in costs}


def test_fastest_peer_is_chosen_by_selection_and_ratio_comes_from_a_fresh_alternation(clock):
    calls: list[str] = []
    costs = {folding.KILN: (10.0, 22.0), "onnxsim+ort": (12.0, 9.0), "onnxslim+ort": (11.0, 20.0),
             "onnxoptimizer+ort": (13.0, 1.0)}
    phases = folding.time_phases(_runners(clock, costs, calls), warmup=1, repeats=4, min_seconds=0.0, clock=clock)

    assert phases.best_peer == "onnxslim+ort"  # lowest selection median, not the cheapest afterwards
    assert {name: len(ms) for name, ms in phases.selection_ms.items()} == dict.fromkeys(costs, 4)
    assert phases.selection_ms[folding.KILN] == pytest.approx([10.0] * 4)
    confirmation = calls[4 * SELECTION_CALLS:]
    pair = [folding.KILN, "onnxslim+ort"]  # only the pair, alternated call by call, order swapped each round
    assert confirmation == pair + (pair + pair[::-1]) * 2
    assert phases.confirmation is not None
    assert phases.confirmation.a_ms == pytest.approx([22.0] * 4)
    assert phases.confirmation.b_ms == pytest.approx([20.0] * 4)
    assert phases.latency_vs_best_peer == pytest.approx(1.1)  # the selection rounds would say 10/11


def test_without_kiln_or_peers_there_is_no_ratio(clock):
    only_peers = folding.time_phases(_runners(clock, {"onnxsim+ort": (2.0, 2.0), "onnxslim+ort": (1.0, 1.0)}, []),
                                     warmup=1, repeats=4, min_seconds=0.0, clock=clock)
    assert only_peers.best_peer == "onnxslim+ort" and only_peers.confirmation is None
    assert only_peers.latency_vs_best_peer is None
    only_kiln = folding.time_phases(_runners(clock, {folding.KILN: (1.0, 1.0)}, []), warmup=1, repeats=4,
                                    min_seconds=0.0, clock=clock)
    assert only_kiln.best_peer == "" and only_kiln.latency_vs_best_peer is None


def test_render_keeps_the_summary_line_and_explains_the_phases(clock):
    calls: list[str] = []
    phases = folding.time_phases(_runners(clock, {folding.KILN: (10.0, 9.0), "onnxsim+ort": (11.0, 10.0)}, calls),
                                 warmup=1, repeats=4, min_seconds=0.0, clock=clock)
    result = folding.FoldingComparison("m", [folding.ToolResult(folding.KILN, nodes=5, seconds=1.0),
                                             folding.ToolResult("onnxsim+ort", nodes=6, seconds=2.0),
                                             folding.ToolResult("onnxslim+ort", error="boom"),
                                             folding.ToolResult("onnxoptimizer+ort", nodes=7, seconds=1.0)],
                                       latency_vs_best_peer=phases.latency_vs_best_peer, best_peer=phases.best_peer,
                                       confirmation=phases.confirmation)
    text = folding.render([result])
    assert text.splitlines()[-1] == "m kiln_nodes=5 best_peer_nodes=6 time_vs_onnxsim=0.500 latency_vs_best_peer=0.900"
    assert "separate phase that alternates only those two" in text
    assert "| m | onnxsim+ort | 4 | 9.00 | 10.00 | 0.900 | 0.900-0.900 |" in text


def test_compare_on_a_tiny_model_times_every_tool_from_its_saved_file():
    result = folding.compare("bert-tiny", warmup=1, repeats=2, min_seconds=0.0)
    assert all(not t.error and t.nodes and t.median_ms for t in result.tools), [t.error for t in result.tools]
    assert result.best_peer in folding.PEERS and result.latency_vs_best_peer is not None
    assert result.summary_line().startswith("bert-tiny kiln_nodes=")
