"""Measured choices (kiln.cost_model.measure.choices) and the decisions they settle
(kiln.cost_model.decisions.measured_decision, as joining parallel MatMuls asks it), with fake timers: the logic, the cache, the errors. No
assertion depends on how fast anything ran."""

from __future__ import annotations

import json
import logging

import onnx_ir as ir
import pytest

from kiln.cost_model.decisions import MeasuredPolicy, measured_decision
from kiln.cost_model.measure.choices import (
    CACHE_VERSION,
    ChoiceMeasurement,
    MeasuredChoices,
    OrtPairTimer,
    default_cache_path,
)
from kiln.errors import MeasurementError
from kiln.optimizer import CostConfig, Optimizer
from kiln.passes.fusion.parallel_matmul_forms import GroupShape, alternatives
from kiln.target import Target

# Whisper-tiny's query / key / value: 1500 rows of 384, key without a bias.
WHISPER = GroupShape(x_shape=(1, 1500, 384), widths=(384, 384, 384), biased=(True, False, True),
                     dtype=ir.DataType.FLOAT)
SMALL = GroupShape(x_shape=(1, 6, 8), widths=(8, 8), biased=(True, True), dtype=ir.DataType.FLOAT)


class FakeTimer:
    """Returns pairs whose candidate / baseline ratio is `ratio`; counts its calls."""

    def __init__(self, ratio: float, baseline_ms: float = 2.0):
        self.ratio, self.baseline_ms, self.calls = ratio, baseline_ms, 0

    def __call__(self, baseline, candidate, pairs):
        self.calls += 1
        return [(self.baseline_ms, self.baseline_ms * self.ratio)] * pairs


MAX_MERGED_RATIO = MeasuredPolicy().max_ratio


def decide(shape: GroupShape, oracle, *, min_ms: float = 0.0, predicted_ms: float = 5.0, built: list | None = None):
    """The decision joining parallel MatMuls takes for `shape` (predicted `predicted_ms` each way)."""
    def build():
        if built is not None:
            built.append(shape)
        return alternatives(shape)

    return measured_decision(oracle, key=shape.key, subject=str(shape), question="join parallel MatMuls",
                             names=("separate", "joined"), build=build,
                             predicted={"separate": predicted_ms, "joined": predicted_ms},
                             policy=MeasuredPolicy(min_ms=min_ms), static=shape.static)


def joined(decision) -> bool:
    return decision.chosen == "joined"


def ratio(decision) -> float:
    return decision.alternative("joined").metrics["ratio"]


class FakeOracle:
    """Stands in for MeasuredChoices in `measured_decision`."""

    def __init__(self, ratio: float | None = None, error: Exception | None = None, trials: tuple = ()):
        self.ratio, self.error, self.trials, self.keys = ratio, error, trials or (ratio,) * 3, []

    def cached(self, key):
        return None

    def measure(self, key, baseline, candidate):
        self.keys.append(key)
        if self.error is not None:
            raise self.error
        return ChoiceMeasurement(key, self.ratio, 30, 2.0, 2.0 * self.ratio, trial_ratios=self.trials)


@pytest.fixture
def pair():
    return alternatives(SMALL)


def test_measure_returns_the_median_pair_ratio_and_stores_it(tmp_path, pair):
    timer = FakeTimer(0.8)
    choices = MeasuredChoices(Target(intra_op_threads=2), cache_path=tmp_path / "c.json", timer=timer, pairs=15)
    result = choices.measure("k", *pair)
    assert timer.calls == 3  # three trials, fresh sessions each
    assert result.ratio == pytest.approx(0.8) and result.pairs == 45 and not result.cached
    assert result.trial_ratios == pytest.approx((0.8, 0.8, 0.8))
    assert result.baseline_ms == pytest.approx(2.0) and result.candidate_ms == pytest.approx(1.6)
    data = json.loads((tmp_path / "c.json").read_text())
    (machine,) = data["machines"]
    assert "threads=2" in machine and data["machines"][machine]["k"]["ratio"] == pytest.approx(0.8)


def test_a_cache_hit_does_not_measure_again_in_this_or_a_new_process(tmp_path, pair):
    timer = FakeTimer(1.2)
    MeasuredChoices(cache_path=tmp_path / "c.json", timer=timer).measure("k", *pair)
    choices = MeasuredChoices(cache_path=tmp_path / "c.json", timer=timer)  # a later process reads the file
    again = choices.measure("k", *pair)
    assert again.cached and again.ratio == pytest.approx(1.2) and timer.calls == 3
    assert again.trial_ratios == pytest.approx((1.2, 1.2, 1.2))
    choices.measure("k", *pair)
    assert timer.calls == 3


def test_the_cache_is_per_thread_count(tmp_path, pair):
    timer = FakeTimer(0.9)
    MeasuredChoices(Target(intra_op_threads=2), cache_path=tmp_path / "c.json", timer=timer).measure("k", *pair)
    MeasuredChoices(Target(intra_op_threads=1), cache_path=tmp_path / "c.json", timer=timer).measure("k", *pair)
    assert timer.calls == 6
    assert len(json.loads((tmp_path / "c.json").read_text())["machines"]) == 2


@pytest.mark.parametrize("content", ["{not json", json.dumps([1, 2]), json.dumps({"version": 99, "machines": {}})])
def test_a_damaged_cache_file_is_ignored_with_a_warning_and_rewritten(tmp_path, pair, caplog, content):
    path = tmp_path / "c.json"
    path.write_text(content)
    timer = FakeTimer(0.7)
    with caplog.at_level(logging.WARNING, logger="kiln.cost_model.measure.choices"):
        result = MeasuredChoices(cache_path=path, timer=timer).measure("k", *pair)
    assert timer.calls == 3 and result.ratio == pytest.approx(0.7)
    assert any("Ignoring the measured-choices cache" in r.getMessage() for r in caplog.records)
    assert json.loads(path.read_text())["version"] == CACHE_VERSION  # valid again


def test_a_malformed_entry_is_measured_again(tmp_path, pair):
    path = tmp_path / "c.json"
    choices = MeasuredChoices(cache_path=path, timer=FakeTimer(0.7))
    path.write_text(json.dumps({"version": 1, "machines": {choices.machine: {"k": {"ratio": -1, "pairs": 15}}}}))
    assert not choices.measure("k", *pair).cached and choices.timer.calls == 3


def test_an_unwritable_cache_keeps_the_result_in_memory(tmp_path, pair, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    timer = FakeTimer(0.9)
    choices = MeasuredChoices(cache_path=blocker / "c.json", timer=timer)  # parent is a file
    with caplog.at_level(logging.WARNING, logger="kiln.cost_model.measure.choices"):
        choices.measure("k", *pair)
    assert choices.measure("k", *pair).cached and timer.calls == 3
    assert any("Could not write" in r.getMessage() for r in caplog.records)


def test_alternatives_with_different_outputs_or_a_bad_timer_raise_clear_errors(pair):
    other = alternatives(GroupShape((1, 6, 8), (8, 4), (True, True), ir.DataType.FLOAT))[1]
    with pytest.raises(MeasurementError, match="differ in their inputs or outputs"):
        MeasuredChoices(timer=FakeTimer(1.0)).measure("k", pair[0], other)
    with pytest.raises(MeasurementError, match="no usable pairs"):
        MeasuredChoices(timer=lambda a, b, n: [(1.0, 0.0)]).measure("k", *pair)
    with pytest.raises(MeasurementError, match="non-empty key"):
        MeasuredChoices(timer=FakeTimer(1.0)).measure("", *pair)
    with pytest.raises(MeasurementError, match="at least one pair"):
        MeasuredChoices(pairs=0)
    with pytest.raises(MeasurementError, match="at least one pair"):
        MeasuredChoices(trials=0)


def test_each_trial_keeps_its_median_and_the_worst_one_is_known(pair):
    ratios = iter([0.8, 0.7, 1.02])
    choices = MeasuredChoices(timer=lambda a, b, n: [(1.0, next(ratios))] * n)
    result = choices.measure("k", *pair)
    assert result.trial_ratios == pytest.approx((0.8, 0.7, 1.02)) and result.worst_trial == pytest.approx(1.02)
    assert result.ratio == pytest.approx(0.8)


def test_the_ort_timer_runs_both_alternatives_and_refuses_symbolic_shapes(pair):
    from kiln.ir.serialization import to_proto

    timer = OrtPairTimer(Target(intra_op_threads=1), warmup=1)
    timed = timer(to_proto(pair[0]), to_proto(pair[1]), 3)
    assert len(timed) == 3 and all(a > 0 and b > 0 for a, b in timed)
    symbolic = to_proto(pair[0])
    symbolic.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "rows"
    with pytest.raises(MeasurementError, match="no static shape"):
        timer(symbolic, to_proto(pair[1]), 3)


def test_other_backends_time_their_own_executables(pair):
    pytest.importorskip("openvino")
    from kiln.cost_model.measure.choices import BackendPairTimer, pair_timer
    from kiln.ir.serialization import to_proto

    target = Target(backend="openvino", intra_op_threads=1)
    timer = pair_timer(target)
    assert isinstance(timer, BackendPairTimer) and isinstance(pair_timer(Target()), OrtPairTimer)
    timed = timer(to_proto(pair[0]), to_proto(pair[1]), 3)
    assert len(timed) == 3 and all(a > 0 and b > 0 for a, b in timed)


def test_the_default_cache_follows_the_environment_and_cpu_backends_get_one(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_MEASURED_CHOICES", str(tmp_path / "x.json"))
    assert default_cache_path() == tmp_path / "x.json"
    choices = Optimizer(Target(intra_op_threads=2)).measured_choices()
    assert isinstance(choices, MeasuredChoices) and choices.cache_path == tmp_path / "x.json"
    from kiln.target import OpenVINOOptions

    openvino = Optimizer(Target(backend="openvino", intra_op_threads=2)).measured_choices()
    assert isinstance(openvino, MeasuredChoices) and "openvino" in openvino.machine and "f32" in openvino.machine
    assert openvino.machine != choices.machine  # one cache entry per backend
    assert Optimizer(Target(backend="openvino", openvino=OpenVINOOptions(device="GPU"))).measured_choices() is None
    assert Optimizer(Target(providers=("CUDAExecutionProvider",))).measured_choices() is None
    assert Optimizer(cost=CostConfig(measured_choices=None)).measured_choices() is None


# --- the decision -------------------------------------------------------------------------------


@pytest.mark.parametrize("measured, merge", [(0.8, True), (MAX_MERGED_RATIO, True), (0.97, False), (1.0, False),
                                             (1.3, False)])
def test_join_only_when_measured_clearly_faster(measured, merge):
    oracle = FakeOracle(measured)
    decision = decide(WHISPER, oracle)
    assert joined(decision) is merge and ratio(decision) == pytest.approx(measured)
    assert f"{measured:.3f}" in decision.reason and decision.decided_by == "measurement"
    assert decision.alternative("separate").measured_ms == pytest.approx(2.0)
    assert decision.alternative("joined").predicted_ms == pytest.approx(5.0)
    assert oracle.keys == ["parallel_matmul x=1x1500x384 widths=384+384+384 bias=b-b FLOAT"]


def test_a_cached_choice_is_used_without_building_the_alternatives(tmp_path):
    choices = MeasuredChoices(cache_path=tmp_path / "c.json", timer=FakeTimer(0.8))
    first = decide(WHISPER, choices)
    built: list = []
    again = decide(WHISPER, MeasuredChoices(cache_path=tmp_path / "c.json", timer=FakeTimer(1.5)), built=built)
    assert joined(first) and joined(again) and ratio(again) == pytest.approx(0.8) and "cached" in again.reason
    assert built == []


def test_no_oracle_a_fast_form_or_a_symbolic_shape_stays_apart_unmeasured():
    oracle = FakeOracle(0.5)
    assert not joined(decide(WHISPER, None))
    small = decide(SMALL, oracle, min_ms=0.1, predicted_ms=0.01)
    assert not joined(small) and "below the 0.1 ms" in small.reason and small.decided_by == "precondition"
    symbolic = GroupShape(("batch", 1500, 384), (384, 384), (True, True), ir.DataType.FLOAT)
    assert not joined(decide(symbolic, oracle))
    assert oracle.keys == []
    assert joined(decide(SMALL, oracle, min_ms=0.0, predicted_ms=0.01))  # the floor is a policy


def test_trials_that_disagree_leave_the_group_apart():
    # One trial at 0.8 among trials near 1 is the noise this VM shows, not a faster GEMM.
    decision = decide(WHISPER, FakeOracle(0.8, trials=(0.78, 0.8, 1.01)))
    assert not joined(decision) and "0.780/0.800/1.010" in decision.reason


def test_a_failed_measurement_leaves_the_group_apart_and_says_why():
    decision = decide(WHISPER, FakeOracle(error=MeasurementError("no kernel for Split")))
    assert not joined(decision) and "no kernel for Split" in decision.reason


def test_the_alternatives_share_their_input_and_outputs():
    separate, joined = alternatives(SMALL)
    assert [n.op_type for n in separate.graph] == ["MatMul", "Add", "MatMul", "Add"]
    assert [n.op_type for n in joined.graph] == ["MatMul", "Add", "Split"]
    assert [v.name for v in separate.graph.outputs] == [v.name for v in joined.graph.outputs] == ["y0", "y1"]
    assert [list(v.shape) for v in joined.graph.outputs] == [[1, 6, 8], [1, 6, 8]]
