"""The cost model: hardware profiles, roofline times of nodes and fused groups, whole-model
latency and peak memory, the learned correction, lowering through ORT, and the CLI.

Times are checked against hand-computed roofline values on a synthetic profile; nothing here
asserts how fast this machine is."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import onnx_ir as ir
import pytest
from conftest import make_model, tensor_info
from onnx import helper, numpy_helper

from kiln.cost_model import learned
from kiln.cost_model.hardware import HardwareProfile, MemoryLevel, ProfileError, load, preset, preset_for_this_cpu
from kiln.cost_model.learned import LearnedCorrection, Sample, correction_path, fit, load_correction
from kiln.cost_model.measure.lowering import ort_compiled_model
from kiln.cost_model.model import CostModel, peak_memory_bytes
from kiln.cost_model.roofline import group_estimate, node_estimate, op_class

KIB, MIB = 1 << 10, 1 << 20


def _profile(**overrides) -> HardwareProfile:
    """100 GFLOP/s fp32, 400 GOP/s int8; L1 64 KiB @ 200 GB/s, L2 1 MiB @ 100, DRAM @ 10; 2 us launch;
    every efficiency 0.5."""
    values = dict(
        name="test",
        threads=2,
        peak_gflops={"fp32": 100.0, "int8": 400.0},
        gemm_gflops={"fp32": 80.0},
        memory=[MemoryLevel("L1", 64 * KIB, 200.0), MemoryLevel("L2", MIB, 100.0),
                MemoryLevel("DRAM", 1 << 34, 10.0)],
        launch_overhead_us=2.0,
        efficiency={c: 0.5 for c in ("gemm", "conv", "elementwise", "data_movement", "normalization")},
    )
    values.update(overrides)
    return HardwareProfile(**values)


def _model(proto) -> ir.Model:
    return ir.serde.deserialize_model(proto)


def _linear_relu(m: int = 64, k: int = 128, n: int = 256) -> ir.Model:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "b"], ["biased"], name="add"),
             helper.make_node("Relu", ["biased"], ["y"], name="relu")]
    proto = make_model(nodes, [tensor_info("x", [m, k])], [tensor_info("y", [m, n])], [w, b])
    model = _model(proto)
    from onnx_ir.passes.common import ShapeInferencePass

    ShapeInferencePass()(model)
    return model


# --- hardware profiles -----------------------------------------------------------------------


def test_profile_json_round_trip(tmp_path):
    profile = _profile()
    path = profile.save(tmp_path / "p.json")
    again = load(path)
    assert again == profile
    assert json.loads(path.read_text())["format"] == "kiln.hardware_profile/1"


def test_profile_errors_say_what_to_do(tmp_path):
    with pytest.raises(ProfileError, match="kiln calibrate"):
        load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ProfileError, match="kiln calibrate"):
        load(tmp_path / "bad.json")
    with pytest.raises(ProfileError, match="must be > 0"):
        _profile(peak_gflops={"fp32": 0.0})
    with pytest.raises(ProfileError, match="memory"):
        _profile(memory=[])
    (tmp_path / "other.json").write_text(json.dumps({"format": "something/9"}))
    with pytest.raises(ProfileError, match="format"):
        load(tmp_path / "other.json")


def test_presets_scale_with_threads_and_match_the_cpu():
    one, four = preset("generic-avx512-vnni", 1), preset("generic-avx512-vnni", 4)
    assert four.peak("fp32") == pytest.approx(4 * one.peak("fp32"))
    assert one.peak("int8") > one.peak("fp32")
    assert preset("generic-avx2", 2).peak("fp32") < preset("generic-avx512", 2).peak("fp32")
    assert preset_for_this_cpu(2).name in ("generic-avx2", "generic-avx512", "generic-avx512-vnni")
    with pytest.raises(ProfileError, match="Unknown hardware preset"):
        preset("generic-riscv")


def test_memory_level_and_peak_lookup():
    profile = _profile()
    assert profile.level_for(10 * KIB).name == "L1"
    assert profile.level_for(512 * KIB).name == "L2"
    assert profile.level_for(2 * MIB).name == "DRAM"
    assert profile.peak("int4") == 400.0  # int4 runs as int8
    assert profile.peak("bf16") == 100.0  # no bf16 peak: fp32
    assert profile.peak("fp32", gemm=True) == 80.0


# --- roofline --------------------------------------------------------------------------------


def test_op_classes():
    assert op_class("MatMul") == op_class("com.microsoft::FusedMatMul") == "gemm"
    assert op_class("com.microsoft.nchwc::Conv") == "conv"
    assert op_class("Reshape") == "view" and op_class("Shape") == "shape"
    assert op_class("Transpose") == "data_movement" and op_class("Relu") == "elementwise"
    assert op_class("com.microsoft::SkipLayerNormalization") == "normalization"
    assert op_class("custom.domain::Thing") == "other"


def test_node_estimate_compute_bound_matmul():
    model = _linear_relu(m=8, k=128, n=256)
    mm = next(n for n in model.graph if n.op_type == "MatMul")
    e = node_estimate(mm, _profile())
    flops = 2 * 8 * 128 * 256
    activations = (8 * 128 + 8 * 256) * 4  # 12 KiB: L1
    weights = 128 * 256 * 4  # 128 KiB, resident: L2
    assert (e.flops, e.activation_bytes, e.weight_bytes) == (flops, activations, weights)
    assert (e.memory_level, e.weight_level, e.op_class) == ("L1", "L2", "gemm")
    assert e.compute_ms == pytest.approx(flops / 100e9 * 1e3)
    assert e.memory_ms == pytest.approx((activations / 200e9 + weights / 100e9) * 1e3)
    assert e.ms == pytest.approx(e.compute_ms / 0.5 + 0.002)
    assert e.bound == "compute"
    # weights that do not stay in cache stream from DRAM: 128 KiB at 10 GB/s outweighs the FLOPs
    streamed = node_estimate(mm, _profile(), weights_resident=False)
    assert streamed.weight_level == "DRAM"
    assert streamed.memory_ms == pytest.approx((activations / 200e9 + weights / 10e9) * 1e3)
    assert streamed.bound == "memory"
    assert streamed.ms == pytest.approx(streamed.memory_ms / 0.5 + 0.002)


def test_views_cost_only_the_launch():
    proto = make_model([helper.make_node("Reshape", ["x", "s"], ["y"])], [tensor_info("x", [64, 64])],
                       [tensor_info("y", [4096])], [numpy_helper.from_array(np.array([4096], np.int64), "s")])
    node = next(iter(_model(proto).graph))
    e = node_estimate(node, _profile())
    assert e.ms == pytest.approx(0.002) and e.bound == "launch"


def test_fused_group_moves_only_its_boundary_tensors():
    model = _linear_relu(m=64, k=128, n=256)
    nodes = list(model.graph)
    group = group_estimate(nodes, _profile())
    flops = 2 * 64 * 128 * 256 + 64 * 256 + 64 * 256  # MatMul + Add + Relu
    assert group.flops == flops
    assert group.weight_bytes == (128 * 256 + 256) * 4
    assert group.activation_bytes == (64 * 128 + 64 * 256) * 4  # x in, y out; mm and biased never leave
    assert group.op_class == "gemm"
    separate = sum(node_estimate(n, _profile()).ms for n in nodes)
    assert group.ms < separate  # one launch, no intermediate traffic
    assert group.launch_ms == pytest.approx(0.002)


def test_cost_model_whole_model_and_compare():
    model = _linear_relu()
    cm = CostModel(_profile())
    estimate = cm.model_cost(model)
    assert estimate.latency_ms == pytest.approx(sum(e.ms for _, e in estimate.per_node))
    assert set(estimate.ms_by_op()) == {"MatMul", "Add", "Relu"}
    assert cm.group_cost(list(model.graph)).ms < estimate.latency_ms
    # removing the Relu makes the model cheaper, and compare says so
    after = model.clone()
    relu = next(n for n in after.graph if n.op_type == "Relu")
    biased = relu.inputs[0]
    after.graph.outputs[0] = biased
    after.graph.remove(relu, safe=True)
    comparison = cm.compare(model, after)
    assert comparison.ratio < 1.0 and comparison.saved_ms > 0


def test_peak_memory_of_a_chain():
    model = _linear_relu(m=64, k=128, n=256)
    peak, weights = peak_memory_bytes(model.graph)
    assert weights == (128 * 256 + 256) * 4
    x, hidden = 64 * 128 * 4, 64 * 256 * 4
    # while Add runs: mm and biased are live (x died after MatMul); while MatMul runs: x and mm
    assert peak == weights + max(x + hidden, 2 * hidden)


def test_compiled_pricing_prices_what_ort_runs():
    model = _linear_relu()
    compiled = CostModel(_profile()).model_cost(model, compiled=True)
    assert compiled.compiled
    # ORT fuses MatMul + Add (+ Relu) into fewer kernels; the work stays the same
    plain = CostModel(_profile()).model_cost(model)
    assert len(compiled.per_node) < len(plain.per_node)
    assert sum(e.flops for _, e in compiled.per_node) == pytest.approx(sum(e.flops for _, e in plain.per_node),
                                                                        rel=0.01)


def test_nchwc_convs_get_shapes_after_lowering():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((32, 16, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["y"])]
    proto = make_model(nodes, [tensor_info("x", [1, 16, 32, 32])], [tensor_info("y", [1, 32, 16, 16])], [w])
    compiled = ort_compiled_model(_model(proto))
    from kiln.cost_model.analytical import model_cost

    cost = model_cost(compiled)
    assert not cost.unknown_ops and not cost.missing_shapes
    conv_flops = 2 * 32 * 16 * 16 * 16 * 9
    assert cost.flops >= conv_flops


# --- learned correction ----------------------------------------------------------------------


def _synthetic_samples(efficiency: dict[str, float], launch_us: float, n: int = 60) -> list[Sample]:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        cls = ("gemm", "elementwise", "data_movement")[i % 3]
        # bodies from 0.1 us to 2 ms, so the launch overhead matters for the small ones
        compute, memory = float(10 ** rng.uniform(-4, 0.3)), float(10 ** rng.uniform(-4, 0.3))
        measured = max(compute, memory) / efficiency[cls] + launch_us / 1e3
        samples.append(Sample(op={"gemm": "MatMul", "elementwise": "Add", "data_movement": "Transpose"}[cls],
                              op_class=cls, precision="fp32", group_size=1, flops=int(compute * 1e8),
                              activation_bytes=int(memory * 1e7), weight_bytes=0, compute_ms=compute,
                              memory_ms=memory, measured_ms=measured, model=f"m{i % 2}"))
    return samples


def test_fit_recovers_known_efficiencies_and_overheads():
    truth = {"gemm": 0.8, "elementwise": 0.25, "data_movement": 0.1}
    correction = fit(_synthetic_samples(truth, launch_us=5.0, n=600), _profile(), residual=False)
    for cls, value in truth.items():  # the efficiency grid steps by 3 %
        assert correction.efficiency[cls] == pytest.approx(value, rel=0.07)
        assert correction.overhead_us[cls] == pytest.approx(5.0, rel=0.15)
    assert correction.launch_overhead_us == pytest.approx(5.0, rel=0.15)
    assert correction.fit_log_rmse["efficiencies"] < 0.05
    assert correction.trained_on == ["m0", "m1"]


def test_overhead_bound_kernels_leave_the_efficiency_at_its_prior():
    # bodies of 1 ns under a 20 us overhead: the data cannot tell the efficiency, the prior (0.5) stays
    samples = [Sample(op="Add", op_class="elementwise", precision="fp32", group_size=1, flops=10,
                      activation_bytes=40, weight_bytes=0, compute_ms=1e-6, memory_ms=1e-6,
                      measured_ms=0.02 * (1 + 0.01 * (i % 3)), model="m") for i in range(30)]
    correction = fit(samples, _profile(), residual=False)
    assert correction.efficiency["elementwise"] == pytest.approx(0.5, rel=0.1)
    assert correction.overhead_us["elementwise"] == pytest.approx(20.0, rel=0.1)


def test_fit_needs_enough_samples():
    with pytest.raises(ProfileError, match="at least 10"):
        fit(_synthetic_samples({"gemm": 1, "elementwise": 1, "data_movement": 1}, 1.0, n=5), _profile())


def test_correction_round_trips_and_is_used_by_the_cost_model(tmp_path):
    pytest.importorskip("lightgbm")
    samples = _synthetic_samples({"gemm": 0.8, "elementwise": 0.25, "data_movement": 0.1}, launch_us=5.0)
    correction = fit(samples, _profile())
    assert correction.booster_text
    profile_path = _profile().save(tmp_path / "hw.json")
    saved = correction.save(correction_path(profile_path))
    assert saved.name == "hw.learned.json"
    again = load_correction(saved)
    np.testing.assert_allclose(again.predict_samples(samples), correction.predict_samples(samples))
    cm = CostModel.from_file(profile_path)
    assert cm.correction is not None and cm.profile.efficiency["gemm"] == pytest.approx(correction.efficiency["gemm"])
    assert not math.isclose(cm.model_cost(_linear_relu()).latency_ms,
                            CostModel(_profile()).model_cost(_linear_relu()).latency_ms)
    (tmp_path / "hw.learned.json").write_text("\x80\x04pickle")
    with pytest.raises(ProfileError, match="Cannot read learned correction"):
        CostModel.from_file(profile_path)


def _models_with_an_op_effect(model_effect: bool) -> list[Sample]:
    """Samples of four models whose data-movement kernels are half Transposes, half Gathers. The
    Transposes run 3x slower than the Gathers in every model (a rule the booster should learn), or,
    with `model_effect`, kernels are off by random per-kernel and per-model factors instead (noise
    no feature explains: a booster only overfits it)."""
    rng = np.random.default_rng(1)
    samples = []
    for m in range(4):
        slow_model = float(np.exp(rng.normal(0, 0.1)))
        for i, base in enumerate(_synthetic_samples({"gemm": 0.5, "elementwise": 0.5, "data_movement": 0.5}, 5.0,
                                                    n=90)):
            if base.op == "Transpose" and i % 2:
                base = replace(base, op="Gather")
            if model_effect:
                factor = slow_model * float(np.exp(rng.normal(0, 0.5)))
            else:
                factor = 3.0 if base.op == "Transpose" else 1.0
            samples.append(replace(base, measured_ms=base.measured_ms * factor, model=f"model{m}"))
    return samples


def test_booster_weight_is_cross_validated_over_models(tmp_path):
    pytest.importorskip("lightgbm")
    rule = fit(_models_with_an_op_effect(model_effect=False), _profile())
    noise = fit(_models_with_an_op_effect(model_effect=True), _profile())
    for correction in (rule, noise):
        assert set(correction.residual_weight_scores) == {"0", "0.25", "0.5", "0.75", "1"}
        best = min(correction.residual_weight_scores.values())
        assert correction.residual_weight_scores[f"{correction.residual_weight:g}"] == best
    assert rule.residual_weight >= 0.75  # a shared effect survives on held-out models
    assert noise.residual_weight <= 0.25  # noise does not
    again = load_correction(rule.save(tmp_path / "c.learned.json"))
    assert again.residual_weight == rule.residual_weight


def test_a_booster_fitted_on_other_features_is_dropped_not_misread(caplog):
    pytest.importorskip("lightgbm")
    samples = _synthetic_samples({"gemm": 0.8, "elementwise": 0.25, "data_movement": 0.1}, 5.0)
    correction = fit(samples, _profile())
    assert correction.features == learned.FEATURES == len(learned._features(samples[0], "MatMul", 1, 1.0, []))
    old = replace(correction, features=learned.FEATURES - 1)  # saved by an older kiln
    np.testing.assert_allclose(old.predict_samples(samples), correction.predict_samples(samples, residual=False))
    assert "refit" in caplog.text and not old.booster_text


def test_booster_weight_needs_three_models():
    pytest.importorskip("lightgbm")
    correction = fit(_synthetic_samples({"gemm": 0.8, "elementwise": 0.25, "data_movement": 0.1}, 5.0), _profile())
    assert correction.residual_weight == 1.0 and not correction.residual_weight_scores


def test_correction_without_residual_uses_fitted_efficiencies_only():
    correction = LearnedCorrection(efficiency={"gemm": 0.5}, launch_overhead_us=0.0)
    sample = _synthetic_samples({"gemm": 0.5, "elementwise": 1, "data_movement": 1}, 0.0, n=3)[0]
    assert correction.predict_samples([sample])[0] == pytest.approx(sample.measured_ms)


# --- calibration and CLI ---------------------------------------------------------------------


def test_quick_calibration_fills_a_profile(tmp_path):
    from kiln.cost_model.measure.calibration import calibrate

    steps = []
    profile = calibrate(threads=1, quick=True, progress=lambda step, done, total: steps.append((done, total)))
    assert all(math.isfinite(v) and v > 0 for v in profile.peak_gflops.values())
    assert profile.memory[-1].name == "DRAM" and len(profile.memory) >= 2
    assert all(m.bandwidth_gbps > 0 for m in profile.memory)
    bandwidths = [m.bandwidth_gbps for m in profile.memory]
    assert bandwidths == sorted(bandwidths, reverse=True)  # made monotone
    assert steps[-1][0] == steps[-1][1]
    assert load(profile.save(tmp_path / "p.json")) == profile


def test_cli_cost_prints_the_table_and_writes_a_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from kiln.cli import main

    _profile().save(tmp_path / "hw.json")
    model = _linear_relu()
    ir.save(model, tmp_path / "m.onnx")
    code = main(["cost", str(tmp_path / "m.onnx"), "--profile", str(tmp_path / "hw.json"), "--measure",
                 "--repeats", "3", "--plot", str(tmp_path / "roof.png")])
    out = capsys.readouterr().out
    assert code == 0
    assert "predicted" in out and "measured" in out and "per op type" in out
    assert (tmp_path / "roof.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_cost_reports_a_missing_profile(tmp_path, capsys):
    from kiln.cli import main

    ir.save(_linear_relu(), tmp_path / "m.onnx")
    assert main(["cost", str(tmp_path / "m.onnx"), "--profile", str(tmp_path / "none.json")]) == 2
    assert "kiln calibrate" in capsys.readouterr().err


# --- wiring into kiln.optimize ---------------------------------------------------------------


def _model_with_dead_work() -> ir.Model:
    """y = Relu(x @ w) plus an Identity and a node nobody reads: level 1 removes both."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Identity", ["mm"], ["ident"]),
             helper.make_node("Relu", ["ident"], ["y"]), helper.make_node("Exp", ["mm"], ["unused"])]
    return _model(make_model(nodes, [tensor_info("x", [16, 32])], [tensor_info("y", [16, 32])], [w]))


def test_optimize_reports_predicted_latency_per_pass_and_measures_on_request():
    from kiln.api import optimize

    cm = CostModel(_profile())
    optimized = optimize(_model_with_dead_work(), level=1, cost_model=cm, measure=True)
    report = optimized.report
    applied = [p for p in report.passes if p.status == "applied"]
    assert applied and all(p.predicted_ms_before is not None and p.predicted_ms_after is not None for p in applied)
    assert all(p.predicted_ms_after <= p.predicted_ms_before for p in applied)  # removing work is cheaper
    assert report.predicted_ms_before == pytest.approx(cm.model_cost(_model_with_dead_work()).latency_ms)
    assert report.predicted_ms_after < report.predicted_ms_before
    assert report.measured_ms_before > 0 and report.measured_ms_after > 0
    from kiln.report.render import render_text

    text = render_text(report)
    assert "predicted ms" in text and "measured" in text and "CostModel('test', " in text
    assert report.to_dict()["predicted_ms_after"] == report.predicted_ms_after
    plain = optimize(_model_with_dead_work(), level=1, cost_model=None)
    assert plain.report.predicted_ms_before is None and plain.report.measured_ms_before is None


def test_a_class_nobody_measured_costs_what_a_kernel_doing_no_work_costs():
    # gemms with a large fitted fixed cost, and views at 6 us: an unseen class (shape ops, or
    # normalization here) is priced at the views' cost, not at the median of the fitted overheads
    samples = _synthetic_samples({"gemm": 0.8, "elementwise": 0.25, "data_movement": 0.1}, launch_us=40.0, n=90)
    samples += [Sample(op="Reshape", op_class="view", precision="fp32", group_size=1, flops=0, activation_bytes=0,
                       weight_bytes=0, compute_ms=0.0, memory_ms=0.0, measured_ms=0.006, model="m0")] * 10
    correction = fit(samples, _profile(), residual=False)
    assert correction.overhead_us["gemm"] == pytest.approx(40.0, rel=0.15)
    assert correction.launch_overhead_us == pytest.approx(6.0, rel=0.05)
    assert correction.overhead_us["shape"] == pytest.approx(6.0, rel=0.05)
    assert "normalization" not in correction.overhead_us


def test_the_executors_per_run_cost_reaches_the_whole_model_latency():
    correction = fit(_synthetic_samples({"gemm": 0.8, "elementwise": 0.25, "data_movement": 0.1}, 5.0),
                     _profile(), residual=False)
    model = _linear_relu()
    before = CostModel(_profile(), correction=correction).model_cost(model).latency_ms
    correction.executor_run_us = 50.0
    assert CostModel(_profile(), correction=correction).model_cost(model).latency_ms == pytest.approx(before + 0.05)
