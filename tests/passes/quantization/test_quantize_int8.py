"""Dynamic int8 quantization: the weight arithmetic, which linears are found (MatMul, Gemm with
transB/alpha/beta, GPT-2's MatMul(x, Transpose(W))), the cost model's per-linear choice, the
budget's layer-by-layer fallback, errors for what is not built, the API and CLI, and the trained
MiniLM's sentence embeddings."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import make_model, tensor_info
from onnx import helper, numpy_helper

import kiln
from kiln.cli import main
from kiln.errors import BackendError, InputError
from kiln.passes.infra.contract import CosineBudget
from kiln.passes.infra.validation import cosine_similarity
from kiln.passes.quantization import QuantConfig
from kiln.passes.quantization.linears import find_linears
from kiln.passes.quantization.weights import quantize_weight

RNG = np.random.default_rng(7)
ROWS, WIDTH = 64, 256
X = RNG.standard_normal((ROWS, WIDTH)).astype(np.float32)


def _w(*shape: int, scale: float = 0.05, rng: np.random.Generator = RNG) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _mlp() -> onnx.ModelProto:
    """MatMul + Add + Relu, a Gemm (transB, alpha, beta, per-column C), a MatMul reading a
    transposed constant (GPT-2's LM head), and an activation x activation MatMul (left)."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
        helper.make_node("Add", ["h1", "b1"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("Gemm", ["r1", "w2", "c2"], ["h2"], name="fc2", transB=1, alpha=0.5, beta=2.0),
        helper.make_node("Transpose", ["table"], ["table_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["h2", "table_t"], ["logits"], name="head"),
        helper.make_node("Transpose", ["h2"], ["h2_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["h2", "h2_t"], ["gram"], name="gram"),
    ]
    rng = np.random.default_rng(3)  # the same weights on every call
    inits = [numpy_helper.from_array(_w(*shape, rng=rng), n) for n, shape in
             (("w1", (WIDTH, WIDTH)), ("b1", (WIDTH,)), ("w2", (WIDTH, WIDTH)), ("c2", (WIDTH,)), ("table", (512, WIDTH)))]
    return make_model(nodes, [tensor_info("x", [ROWS, WIDTH])],
                      [tensor_info("logits", [ROWS, 512]), tensor_info("gram", [ROWS, ROWS])], inits)


def _reference(proto: onnx.ModelProto) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": X})


def _quant_pass(optimized):
    return next(p for p in optimized.report.passes if p.name == "quantize_int8")


def _linear_rows(report) -> list:
    """The pass's decision rows about single linears (not its bias correction or shared activations)."""
    return [d for d in report.decisions if d.question == "quantize linear to dynamic int8"]


def _ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


# --- weights ---------------------------------------------------------------------------------

@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("reduce_range", [False, True])
def test_weights_round_to_within_half_a_step(per_channel, reduce_range):
    w = _w(64, 32, scale=1.0)
    w[:, 3] = 0.0  # an all-zero column keeps scale 1 and q 0
    q = quantize_weight(w, per_channel=per_channel, reduce_range=reduce_range)
    qmax = 63 if reduce_range else 127
    assert q.values.dtype == np.int8 and np.abs(q.values).max() == qmax
    assert q.scale.shape == ((32,) if per_channel else ())
    assert np.all(np.abs(q.dequantized() - w) <= q.scale / 2 + 1e-7)
    if per_channel:
        assert q.scale[3] == 1.0 and not q.values[:, 3].any()
    assert not q.zero_point.any() and q.zero_point.shape == q.scale.shape


# --- which linears ---------------------------------------------------------------------------

def test_linears_are_found_in_every_form_and_the_rest_is_explained():
    model = ir.from_proto(_mlp())
    linears, left = find_linears(model.graph)
    by_name = {linear.node.name: linear for linear in linears}
    assert sorted(by_name) == ["fc1", "fc2", "head"]
    proto = {i.name: numpy_helper.to_array(i) for i in _mlp().graph.initializer}
    np.testing.assert_array_equal(by_name["fc2"].weight, proto["w2"].T)  # transB read
    np.testing.assert_allclose(by_name["fc2"].bias, 2.0 * proto["c2"])  # beta applied
    assert by_name["fc2"].alpha == 0.5
    np.testing.assert_array_equal(by_name["head"].weight, proto["table"].T)
    assert by_name["head"].transpose is not None and by_name["fc1"].transpose is None
    assert left == {"the second input is not a constant (a product of two activations, as in attention)": 1}


def test_a_gemm_with_a_bias_per_row_is_left():
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="g")]
    proto = make_model(nodes, [tensor_info("x", [4, 8])], [tensor_info("y", [4, 8])],
                       [numpy_helper.from_array(_w(8, 8), "w"), numpy_helper.from_array(_w(4, 8), "c")])
    linears, left = find_linears(ir.from_proto(proto).graph)
    assert not linears and "one value per output column" in next(iter(left))


# --- the pass --------------------------------------------------------------------------------

def test_int8_rewrites_the_linears_the_cost_model_prices_faster_within_the_budget():
    proto = _mlp()
    optimized = kiln.optimize(proto, level=1, sample_inputs={"x": X}, quantize="int8")
    report = _quant_pass(optimized)
    assert report.status == "applied", report.message
    ops = _ops(optimized.model)
    assert ops.count("DynamicQuantizeMatMul") == 3 and ops.count("MatMul") == 1  # the gram MatMul stays
    assert "Gemm" not in ops and "Transpose" in ops  # the head's Transpose went; the gram's stays
    assert "table" not in optimized.model.graph.initializers  # read only through the Transpose
    decisions = {d.subject: d for d in _linear_rows(report)}
    assert set(decisions) == {"fc1", "fc2", "head"}
    for decision in decisions.values():
        fp32, int8 = decision.alternative("fp32"), decision.alternative("int8")
        assert decision.chosen == "int8" and decision.decided_by == "cost_model"
        assert int8.predicted_ms < fp32.predicted_ms
        assert int8.metrics["weight_bytes"] * 4 == fp32.metrics["weight_bytes"]
        assert int8.metrics["joint_cosine"] >= 0.99
    expected, actual = _reference(proto), optimized(x=X)
    for e, a in zip(expected, actual):
        assert cosine_similarity(e, a) > 0.999
    assert report.rewrites and all(r.rule == "quantize_int8" for r in report.rewrites)


def test_a_tight_budget_keeps_the_most_sensitive_linears_in_fp32():
    proto = _mlp()
    loose = kiln.optimize(proto, level=1, sample_inputs={"x": X}, quantize="int8")
    solo = {d.subject: d.alternative("int8").metrics for d in _linear_rows(_quant_pass(loose))}
    joint = next(iter(solo.values()))["joint_cosine"]
    # a budget between the joint cosine and 1: some linears must go back to fp32, worst first
    budget = CosineBudget(min_cosine=1.0 - (1.0 - joint) / 3, per_sample=True)
    tight = kiln.optimize(proto, level=1, sample_inputs={"x": X}, quantize=QuantConfig(budget=budget))
    decisions = {d.subject: d for d in _linear_rows(_quant_pass(tight))}
    reverted = [name for name, d in decisions.items() if d.decided_by == "budget"]
    assert reverted and all(decisions[name].chosen == "fp32" for name in reverted)
    kept = [name for name, d in decisions.items() if d.chosen == "int8"]
    worst_kept = min((decisions[n].alternative("int8").metrics["solo_cosine"] for n in kept), default=1.0)
    assert all(decisions[n].alternative("int8").metrics["solo_cosine"] <= worst_kept for n in reverted)
    assert tight.report.passes[-1].error.min_cosine >= budget.min_cosine
    assert _ops(tight.model).count("DynamicQuantizeMatMul") == len(kept)


def test_the_default_budget_holds_for_every_sample_not_only_the_batch():
    from kiln.passes.infra.validation import sample_cosine

    assert QuantConfig().budget == CosineBudget(min_cosine=0.99, per_sample=True)
    assert str(QuantConfig().budget) == "cosine>=0.99 per sample"
    reference = np.ones((4, 8), np.float32)
    actual = reference.copy()
    actual[2] = -1.0  # one sample flipped: the batch keeps cosine 0.5, that sample has -1
    assert cosine_similarity(reference, actual) == pytest.approx(0.5)
    assert sample_cosine(reference, actual) == pytest.approx(-1.0)
    assert sample_cosine(reference[:1], actual[:1]) == pytest.approx(1.0)  # one sample: flattened
    optimized = kiln.optimize(_mlp(), level=1, sample_inputs={"x": X}, quantize="int8")
    decisions = _linear_rows(_quant_pass(optimized))
    joint = next(d for d in decisions if d.chosen == "int8").alternative("int8").metrics["joint_cosine"]
    expected, actual_outputs = _reference(_mlp()), optimized(x=X)
    assert joint == pytest.approx(min(sample_cosine(e, a) for e, a in zip(expected, actual_outputs)), abs=1e-4)


def test_a_budget_broken_only_on_the_validation_inputs_sends_linears_back_one_at_a_time():
    outliers = X.copy()
    outliers[:, 0] = 40.0  # validation inputs unlike the calibration ones: a coarser activation scale
    loose = kiln.optimize(_mlp(), level=1, sample_inputs={"x": outliers}, calibration=[{"x": X}],
                          quantize=QuantConfig(budget=CosineBudget(min_cosine=0.9, per_sample=True)))
    metrics = _linear_rows(_quant_pass(loose))[0].alternative("int8").metrics
    calibration, held_out = metrics["joint_cosine"], metrics["held_out_cosine"]
    assert held_out < calibration
    budget = CosineBudget(min_cosine=(calibration + held_out) / 2, per_sample=True)
    optimized = kiln.optimize(_mlp(), level=1, sample_inputs={"x": outliers}, calibration=[{"x": X}],
                              quantize=QuantConfig(budget=budget))
    report = _quant_pass(optimized)
    assert report.status == "applied", report.message  # not rolled back as a whole
    reverted = [d for d in _linear_rows(report) if d.decided_by == "budget"]
    kept = [d for d in _linear_rows(report) if d.chosen == "int8"]
    assert reverted and kept and all("held-out inputs" in d.reason for d in reverted)
    for d in kept:
        assert d.alternative("int8").metrics["held_out_cosine"] >= budget.min_cosine
    assert report.error.min_cosine >= budget.min_cosine


def test_an_unreachable_budget_leaves_the_model_fp32():
    optimized = kiln.optimize(_mlp(), level=1, sample_inputs={"x": X},
                              quantize=QuantConfig(budget=CosineBudget(min_cosine=1.0)))
    report = _quant_pass(optimized)
    assert report.status == "unchanged" and "budget" in report.message
    assert "DynamicQuantizeMatMul" not in _ops(optimized.model)
    assert len(_linear_rows(report)) == 3
    assert all(d.chosen == "fp32" and d.decided_by == "budget" for d in _linear_rows(report))


def test_without_a_cost_model_or_when_excluded_a_linear_stays_fp32():
    plain = kiln.optimize(_mlp(), level=1, sample_inputs={"x": X}, quantize="int8", cost_model=None)
    report = _quant_pass(plain)
    assert report.status == "unchanged" and "DynamicQuantizeMatMul" not in _ops(plain.model)
    assert len(_linear_rows(report)) == 3
    assert all(d.decided_by == "precondition" and "no cost model" in d.reason for d in _linear_rows(report))
    excluded = kiln.optimize(_mlp(), level=1, sample_inputs={"x": X}, quantize=QuantConfig(exclude=("head",)))
    decisions = {d.subject: d for d in _linear_rows(_quant_pass(excluded))}
    assert decisions["head"].chosen == "fp32" and "exclude" in decisions["head"].reason
    assert _ops(excluded.model).count("DynamicQuantizeMatMul") == 2


def test_unknown_schemes_and_other_backends_are_refused_with_what_to_do():
    with pytest.raises(InputError, match="not a quantization scheme.*'int4-weights'"):
        kiln.optimize(_mlp(), quantize="fp8")
    with pytest.raises(BackendError, match="choose the backend"):
        kiln.optimize(_mlp(), quantize="int8", backend="auto")


def test_on_openvino_the_linears_keep_int8_weights_behind_a_dequantize_and_the_budget_is_openvinos():
    """OpenVINO's form: int8 weights read through DequantizeLinear by the same MatMul (no
    com.microsoft op); the speed choice is measured (a fake timer here) and the final check on
    OpenVINO holds the cosine budget, not the exact tolerance."""
    pytest.importorskip("openvino")
    from conftest import FakeTimer, fake_measured_choices

    timer = FakeTimer(0.5)
    optimized = kiln.optimize(_mlp(), level=1, sample_inputs={"x": X}, quantize="int8", backend="openvino",
                              measured_choices=fake_measured_choices(timer), options={"measured_choice_min_ms": 0})
    report = _quant_pass(optimized)
    assert report.status == "applied", report.message
    ops = _ops(optimized.model)
    assert ops.count("DequantizeLinear") == 3 and "DynamicQuantizeMatMul" not in ops
    assert not any(n.domain == "com.microsoft" for n in optimized.model.graph)
    assert "Transpose" in ops  # the attention-like product keeps its own; the LM head's went with its fp32 table
    assert timer.calls == 3 * 3  # three linear shapes (fc2 adds its bias, fc1 does not), three trials each
    decisions = {d.subject: d for d in _linear_rows(report)}
    assert decisions["head"].decided_by == "measurement" and decisions["head"].chosen == "int8"
    assert "joint cosine" in decisions["head"].reason
    assert "min cosine" in optimized.report.backend_check
    got = optimized(x=X)
    for want, have in zip(_reference(_mlp()), got):
        assert cosine_similarity(want, have) > 0.99
    slower = kiln.optimize(_mlp(), level=1, sample_inputs={"x": X}, quantize="int8", backend="openvino",
                           measured_choices=fake_measured_choices(FakeTimer(1.2)), options={"measured_choice_min_ms": 0})
    assert _quant_pass(slower).status == "unchanged" and "DequantizeLinear" not in _ops(slower.model)


def test_static_int8_on_openvino_fixes_activation_scales_where_the_budget_holds_and_says_what_it_needs():
    """static-int8: the dynamic search first, then static activation scales (the calibration
    range) for the linears where they measured faster and the budget still holds; on ONNX
    Runtime, or without calibration inputs, a clear error says what to do."""
    pytest.importorskip("openvino")
    from conftest import FakeTimer, fake_measured_choices

    from kiln.passes.quantization.static_activations import ActivationRange

    calibration = [{"x": RNG.standard_normal((ROWS, WIDTH)).astype(np.float32)} for _ in range(2)]
    optimized = kiln.optimize(_mlp(), level=1, sample_inputs={"x": X}, quantize="static-int8", backend="openvino",
                              calibration=calibration, measured_choices=fake_measured_choices(FakeTimer(0.5)),
                              options={"measured_choice_min_ms": 0})
    report = _quant_pass(optimized)
    assert report.status == "applied" and "with static activation scales" in report.message, report.message
    ops = _ops(optimized.model)
    statics = [d for d in report.decisions if d.chosen == "int8 static" and d.question.startswith("quantize linear")]
    assert statics and ops.count("QuantizeLinear") == len(statics)
    assert all("joint cosine" in d.reason for d in statics)
    # the scale of fc1's activation is the calibration inputs' range of x, widened to hold 0
    low = min(float(f["x"].min()) for f in calibration)
    high = max(float(f["x"].max()) for f in calibration)
    scale = next(t.const_value.numpy() for t in optimized.model.graph.initializers.values()
                 if t.name == "fc1.activation_scale")
    assert scale == pytest.approx(ActivationRange(low, high).scale)
    assert "min cosine" in optimized.report.backend_check
    with pytest.raises(InputError, match="calibration=.*quantize='int8'"):
        kiln.optimize(_mlp(), sample_inputs={"x": X}, quantize="static-int8", backend="openvino")
    with pytest.raises(BackendError, match="OpenVINO only"):
        kiln.optimize(_mlp(), sample_inputs={"x": X}, quantize="static-int8", calibration=calibration)


def test_static_int8_takes_each_activation_range_from_the_observer_the_config_names():
    """QuantConfig(activation_range="mse"): fc1's fixed scale is the MSE clip of x over the
    calibration feeds (observed feed by feed), and the report names the method."""
    pytest.importorskip("openvino")
    from conftest import FakeTimer, fake_measured_choices

    from kiln.passes.quantization.observers import make_observer
    from kiln.passes.quantization.static_activations import ActivationRange

    calibration = [{"x": RNG.laplace(size=(ROWS, WIDTH)).astype(np.float32)} for _ in range(2)]
    optimized = kiln.optimize(_mlp(), level=1, sample_inputs={"x": X}, backend="openvino",
                              quantize=QuantConfig(scheme="static-int8", activation_range="mse"),
                              calibration=calibration, measured_choices=fake_measured_choices(FakeTimer(0.5)),
                              options={"measured_choice_min_ms": 0})
    report = _quant_pass(optimized)
    assert "static activation scales (mse ranges)" in report.message, report.message
    observer = make_observer("mse")
    for second_pass in (False, True):
        for feed in calibration:
            observer.observe(feed["x"], second_pass=second_pass)
    low, high = observer.clip()
    assert low > min(float(f["x"].min()) for f in calibration)  # the MSE clip cut the laplace tail
    scale = next(t.const_value.numpy() for t in optimized.model.graph.initializers.values()
                 if t.name == "fc1.activation_scale")
    assert scale == pytest.approx(ActivationRange(low, high).scale)


def test_cli_activation_range_needs_static_quantization(tmp_path, capsys):
    path = tmp_path / "mlp.onnx"
    onnx.save(_mlp(), path)
    assert main(["optimize", str(path), "-o", str(tmp_path / "out.onnx"), "--activation-range", "mse"]) != 0
    assert "--activation-range sets how --quantize static-int8" in capsys.readouterr().err


def test_cli_quantizes_and_saves_a_model_ort_loads(tmp_path):
    src, out, npz = tmp_path / "mlp.onnx", tmp_path / "mlp.int8.onnx", tmp_path / "calib.npz"
    onnx.save(_mlp(), src)
    np.savez(npz, x=X)
    assert main(["optimize", str(src), "-o", str(out), "--quantize", "int8", "--calibration", str(npz),
                 "--sample-inputs", str(npz)]) == 0
    saved = onnx.load(out)
    assert [n.op_type for n in saved.graph.node].count("DynamicQuantizeMatMul") == 3
    actual = _reference(saved)
    for e, a in zip(_reference(_mlp()), actual):
        assert cosine_similarity(e, a) > 0.999


@pytest.mark.slow
def test_trained_minilm_sentence_embeddings_keep_their_direction_in_int8():
    import torch

    from tests import models

    module, inputs = models.minilm()
    optimized = kiln.optimize(module, inputs, level=2, quantize="int8")
    report = _quant_pass(optimized)
    assert report.status == "applied", report.message
    cosine, nearest = models.sentence_agreement(module, inputs, optimized)
    # ORT quantize_dynamic per-channel on this model: mean 0.9937, min 0.99 (BENCHMARKS.md)
    assert cosine.min().item() >= 0.99 and cosine.mean().item() >= 0.9937, cosine.tolist()
    assert (nearest == torch.arange(len(nearest))).all()


def _three_heads() -> onnx.ModelProto:
    """Three linears reading one activation, as a transformer layer's Q, K and V do."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=f"proj{i}") for i in range(3)]
    inits = [numpy_helper.from_array(_w(WIDTH, WIDTH, rng=rng), f"w{i}") for i in range(3)]
    return make_model(nodes, [tensor_info("x", [ROWS, WIDTH])], [tensor_info(f"y{i}", [ROWS, WIDTH]) for i in range(3)],
                      inits)


# measure the forms however fast the cost model prices them (these test shapes take microseconds)
MEASURE_ANY = {"measured_choice_min_ms": 0.0}


class _Always:
    """A measured-choice oracle whose candidate always wins (`shared`) or always loses, after
    checking that both forms it is handed run and agree on their outputs' names."""

    def __init__(self, winner: str) -> None:
        self.winner, self.keys = winner, []

    def cached(self, key):
        return None

    def measure(self, key, baseline, candidate):
        from types import SimpleNamespace

        import onnxruntime as ort

        self.keys.append(key)
        feeds = {"x": X}
        for model in (baseline, candidate):
            session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
            assert [o.name for o in session.get_outputs()] == ["y0", "y1", "y2"]
            session.run(None, feeds)
        ratio = 0.5 if self.winner == "shared" else 1.5
        return SimpleNamespace(ratio=ratio, pairs=10, baseline_ms=1.0, candidate_ms=ratio, trial_ratios=(ratio,),
                               cached=False, worst_trial=ratio)


def test_when_measured_slower_each_linear_quantizes_its_activation_itself():
    optimized = kiln.optimize(_three_heads(), level=1, sample_inputs={"x": X}, quantize="int8",
                              measured_choices=_Always("per linear"), options=MEASURE_ANY)
    ops = _ops(optimized.model)
    assert ops.count("DynamicQuantizeMatMul") == 3 and "DynamicQuantizeLinear" not in ops
    shared = next(d for d in _quant_pass(optimized).decisions if d.question.startswith("quantize an activation"))
    assert shared.chosen == "per linear" and shared.decided_by == "measurement"


def test_an_activation_several_linears_read_is_quantized_once_with_the_same_products():
    import onnxruntime as ort

    from kiln.passes.quantization.quantize_int8 import _quantize

    optimized = kiln.optimize(_three_heads(), level=1, sample_inputs={"x": X}, quantize="int8",
                              measured_choices=_Always("shared"), options=MEASURE_ANY)
    report = _quant_pass(optimized)
    shared = next(d for d in report.decisions if d.question.startswith("quantize an activation"))
    assert shared.subject == f"{ROWS}x{WIDTH} -> {WIDTH}+{WIDTH}+{WIDTH} int8" and shared.chosen == "shared"
    assert shared.decided_by == "measurement"
    assert all(a.predicted_ms is not None and a.measured_ms is not None for a in shared.alternatives)
    ops = _ops(optimized.model)
    assert ops.count("DynamicQuantizeLinear") == 1 and ops.count("MatMulIntegerToFloat") == 3
    assert "DynamicQuantizeMatMul" not in ops and "1 activations quantized once" in report.message
    # the same products as one DynamicQuantizeMatMul per linear (with the pass's weight range:
    # 7-bit where a CPU without VNNI measured it more accurate)
    separate = ir.from_proto(_three_heads())
    _quantize(separate, [0, 1, 2], per_channel=True, reduce_range="7-bit weights" in report.message)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    expected = ort.InferenceSession(ir.to_proto(separate).SerializeToString(), options,
                                    providers=["CPUExecutionProvider"]).run(None, {"x": X})
    for e, a in zip(expected, optimized(x=X)):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("vnni", [False, True])
def test_without_vnni_the_weight_range_is_the_one_measured_more_accurate(vnni, monkeypatch):
    """On a CPU without VNNI ORT's u8 x s8 GEMM may saturate 8-bit weights' products in 16 bits:
    both ranges are scored on the calibration inputs and the model gets the more accurate one (7-bit
    on a tie); with VNNI, or when the config names the range, nothing is measured."""
    import kiln.passes.quantization.quantize_int8 as quantize_int8

    monkeypatch.setattr(quantize_int8, "_cpu_has_vnni", lambda: vnni)
    calibration = [{"x": RNG.standard_normal((ROWS, WIDTH)).astype(np.float32)} for _ in range(2)]
    optimized = kiln.optimize(_mlp(), level=1, sample_inputs={"x": X}, quantize="int8", calibration=calibration)
    report = _quant_pass(optimized)
    rows = [d for d in report.decisions if d.question == "7-bit or 8-bit int8 weights without VNNI"]
    weights = [t.const_value.numpy() for t in optimized.model.graph.initializers.values() if t.name.endswith("weight_int8")]
    assert weights and report.status == "applied"
    if vnni:
        assert not rows and "7-bit" not in report.message
        assert max(int(np.abs(w).max()) for w in weights) == 127
        return
    [row] = rows
    seven, eight = (row.alternative(name).metrics["cosine"] for name in ("7-bit", "8-bit"))
    assert row.decided_by == "measurement" and row.chosen == ("8-bit" if eight > seven else "7-bit"), row.reason
    assert ("7-bit weights" in report.message) == (row.chosen == "7-bit")
    assert max(int(np.abs(w).max()) for w in weights) == (63 if row.chosen == "7-bit" else 127)
    fixed = kiln.optimize(_mlp(), level=1, sample_inputs={"x": X}, calibration=calibration,
                          quantize=QuantConfig(reduce_range=True))
    assert not [d for d in _quant_pass(fixed).decisions if d.question.startswith("7-bit or 8-bit")]
    assert "7-bit weights" in _quant_pass(fixed).message

