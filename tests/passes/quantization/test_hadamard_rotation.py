"""Block-Hadamard rotation of a linear's input: the matrix, the exact rewrite (weights and graph),
and the budget search taking a rotated int8 form before fp32 where an outlier channel breaks the
budget, with the outlier statistics in its decision row; the trained MiniLM's FFN outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import make_model, tensor_info
from onnx import helper, numpy_helper

import kiln
from kiln.errors import InputError
from kiln.passes.infra.contract import CosineBudget
from kiln.passes.quantization import QuantConfig
from kiln.passes.quantization.hadamard_rotation import (
    PeakObserver,
    hadamard,
    rotate_input,
    rotated_weight,
    rotation_blocks,
)
from kiln.passes.quantization.linears import find_linears

ROWS, WIDTH, OUTLIER = 64, 256, 5
_QUESTION = "quantize linear to dynamic int8"


def _outlier_input(seed: int, peak: float = 300.0) -> np.ndarray:
    """Rows of unit-normal channels but one, which is ~`peak`: the shape of a GELU output's outlier."""
    x = np.random.default_rng(seed).standard_normal((ROWS, WIDTH)).astype(np.float32)
    x[:, OUTLIER] = peak + x[:, OUTLIER]
    return x


X = _outlier_input(0)


def _outlier_linear() -> onnx.ModelProto:
    """fc: x @ W + b, with the outlier channel's weight row small (as trained models have it), so
    the output is carried by the ordinary channels the outlier's int8 range crushes."""
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((WIDTH, WIDTH)) * 0.05).astype(np.float32)
    w[OUTLIER] *= 1e-3
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"), helper.make_node("Add", ["h", "b"], ["y"])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(rng.standard_normal(WIDTH).astype(np.float32), "b")]
    return make_model(nodes, [tensor_info("x", [ROWS, WIDTH])], [tensor_info("y", [ROWS, WIDTH])], inits)


def _three_readers() -> onnx.ModelProto:
    """Three linears reading the outlier activation, as Q, K and V read a LayerNorm's output."""
    rng = np.random.default_rng(5)
    nodes, inits, outputs = [], [], []
    for name in ("q", "k", "v"):
        w = (rng.standard_normal((WIDTH, WIDTH)) * 0.05).astype(np.float32)
        w[OUTLIER] *= 1e-3
        nodes.append(helper.make_node("MatMul", ["x", f"w_{name}"], [name], name=name))
        inits.append(numpy_helper.from_array(w, f"w_{name}"))
        outputs.append(tensor_info(name, [ROWS, WIDTH]))
    return make_model(nodes, [tensor_info("x", [ROWS, WIDTH])], outputs, inits)


def _rows(optimized) -> dict:
    return {d.subject: d for d in optimized.report.decisions if d.question == _QUESTION}


def _optimize(budget: float, **config):
    return kiln.optimize(_outlier_linear(), level=1, sample_inputs={"x": X}, calibration=[{"x": _outlier_input(2)}],
                         quantize=QuantConfig(budget=CosineBudget(min_cosine=budget, per_sample=True), **config))


# --- the matrix and the exact rewrite ---------------------------------------------------------

@pytest.mark.parametrize("order", [1, 2, 16, 64])
def test_the_hadamard_matrix_is_orthonormal(order):
    h = hadamard(order)
    assert h.dtype == np.float32 and h.shape == (order, order)
    np.testing.assert_allclose(h @ h.T, np.eye(order), atol=1e-6)
    assert np.allclose(np.abs(h), 1 / np.sqrt(order))  # every entry spreads a channel evenly


@pytest.mark.parametrize("order", [0, 3, 24])
def test_a_hadamard_matrix_needs_a_power_of_two_order(order):
    with pytest.raises(ValueError, match="power-of-two"):
        hadamard(order)


def test_the_rotated_weight_undoes_the_activation_rotation():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((5, 96)), rng.standard_normal((96, 7)).astype(np.float32)
    rotated_x = (x.reshape(5, -1, 32) @ hadamard(32)).reshape(5, 96)
    np.testing.assert_allclose(rotated_x @ rotated_weight(w, 32), x @ w, rtol=1e-5, atol=1e-5)
    assert not np.allclose(rotated_weight(w, 32), w)


def test_a_rotated_input_keeps_the_model_exact_with_symbolic_leading_dims():
    """Rotation inserted into a graph whose activation is [batch, seq, K] (symbolic) computes what
    the linear did, on inputs of two batch sizes."""
    import onnxruntime as ort

    rng = np.random.default_rng(4)
    w = rng.standard_normal((64, 8)).astype(np.float32)
    proto = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
                       [tensor_info("x", ["batch", "seq", 64])], [tensor_info("y", ["batch", "seq", 8])],
                       [numpy_helper.from_array(w, "w")])
    model = ir.serde.deserialize_model(proto)
    (linear,), _ = find_linears(model.graph)
    rotated, added = rotate_input(model.graph, linear, 16)
    linear.node.replace_input_with(0, rotated.activation)
    linear.node.replace_input_with(1, ir.Value(name="w_rotated", const_value=ir.tensor(rotated.weight, name="w_rotated"),
                                               shape=ir.Shape(rotated.weight.shape), type=ir.TensorType(ir.DataType.FLOAT)))
    model.graph.register_initializer(linear.node.inputs[1])
    assert [n.op_type for n in added] == ["Reshape", "MatMul", "Reshape"]
    assert rotated.activation.shape == ir.Shape(["batch", "seq", 64])
    session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = rng.standard_normal((batch, 5, 64)).astype(np.float32)
        x[..., 9] *= 100
        np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ w, rtol=1e-4, atol=1e-3)


def test_only_block_sizes_that_divide_the_channels_apply():
    model = ir.serde.deserialize_model(_outlier_linear())
    (linear,), _ = find_linears(model.graph)
    assert rotation_blocks(linear, (16, 24, 512)) == ((16,), "")
    blocks, why = rotation_blocks(linear, (512,))
    assert blocks == () and "divides its 256 input channels" in why


def test_the_peak_statistics_show_the_outlier_spread():
    observer = PeakObserver(16)
    for seed in (0, 1):
        observer.observe(_outlier_input(seed))
    ratios = observer.ratios()
    assert ratios.channel == OUTLIER
    # the outlier (300) over the RMS (~300 / sqrt(256)) is ~16; spread over 16 channels, ~4
    assert ratios.plain > 14 and ratios.rotated < ratios.plain / 3
    assert "channel 5" in str(ratios)


@pytest.mark.parametrize("blocks", [(24,), (0,), (16, 1)])
def test_rotation_blocks_must_be_powers_of_two(blocks):
    with pytest.raises(InputError, match="rotation_blocks"):
        QuantConfig(rotation_blocks=blocks)


def test_the_cli_sets_the_budget_and_turns_rotation_off_only_when_quantizing(tmp_path, capsys):
    from kiln.cli import _optimize_kwargs, build_parser, main

    path = tmp_path / "fc.onnx"
    onnx.save(_outlier_linear(), path)
    out = str(tmp_path / "out.onnx")
    args = build_parser().parse_args(["optimize", str(path), "-o", out, "--quantize", "int8", "--no-rotation",
                                      "--quantize-min-cosine", "0.995"])
    config = _optimize_kwargs(args)["quantize"]
    assert config.rotation_blocks == () and config.budget == CosineBudget(min_cosine=0.995, per_sample=True)
    assert _optimize_kwargs(build_parser().parse_args(["optimize", str(path), "-o", out, "--quantize", "int8"])
                            )["quantize"] == "int8"  # the defaults: rotation on, cosine 0.99
    for flag in (["--no-rotation"], ["--quantize-min-cosine", "0.995"]):
        assert main(["optimize", str(path), "-o", out, *flag]) != 0
        assert f"{flag[0]} is about --quantize's int8 linears" in capsys.readouterr().err


# --- the budget search ------------------------------------------------------------------------

def _plain_int8_cosine() -> float:
    loose = _optimize(0.5)
    row = _rows(loose)["fc"]
    assert row.chosen == "int8", row.reason
    return row.alternative("int8").metrics["joint_cosine"]


def test_an_outlier_channel_breaking_the_budget_is_rotated_instead_of_kept_fp32():
    plain = _plain_int8_cosine()
    budget = 1.0 - (1.0 - plain) / 3  # plain int8 cannot keep it
    never = _optimize(budget, rotation_blocks=())
    assert _rows(never)["fc"].chosen == "fp32"
    assert "DynamicQuantizeMatMul" not in [n.op_type for n in never.model.graph]

    optimized = _optimize(budget)
    row = _rows(optimized)["fc"]
    assert row.chosen.startswith("int8 hadamard-"), row.reason
    assert row.decided_by == "budget"
    chosen = row.alternative(row.chosen)
    block = chosen.metrics["block"]
    assert chosen.metrics["joint_cosine"] >= budget > plain
    assert chosen.metrics["solo_cosine"] > row.alternative("int8").metrics["solo_cosine"]
    # every rotated form is priced, and the one taken is no cheaper than plain int8 (it adds work)
    priced = [a for a in row.alternatives if a.name.startswith("int8 hadamard-")]
    assert {a.metrics["block"] for a in priced} == {16, 32, 64}
    assert chosen.predicted_ms > row.alternative("int8").predicted_ms
    # the outlier statistics that triggered it
    assert chosen.metrics["peak_over_rms"] > chosen.metrics["rotated_peak_over_rms"]
    assert f"channel {OUTLIER}" in row.reason
    ops = [n.op_type for n in optimized.model.graph]
    assert ops == ["Reshape", "MatMul", "Reshape", "DynamicQuantizeMatMul", "Add"]
    assert f"hadamard_{block}" in optimized.model.graph.initializers
    assert "reading their activation Hadamard-rotated" in next(
        p for p in optimized.report.passes if p.name == "quantize_int8").message
    assert optimized.report.passes[-1].error.min_cosine >= budget


def test_linears_that_share_an_activation_share_its_one_rotation():
    def optimize(budget: float):  # a smaller outlier than fc's: a block of 64 must be able to tame it
        return kiln.optimize(_three_readers(), level=1, sample_inputs={"x": _outlier_input(0, peak=60.0)},
                             calibration=[{"x": _outlier_input(2, peak=60.0)}],
                             quantize=QuantConfig(budget=CosineBudget(min_cosine=budget, per_sample=True)))

    loose = _rows(optimize(0.5))
    plain = min(row.alternative("int8").metrics["joint_cosine"] for row in loose.values())
    optimized = optimize(1.0 - (1.0 - plain) / 3)
    rows = _rows(optimized)
    assert {row.chosen for row in rows.values()} == {next(iter(rows.values())).chosen}, {
        n: (r.chosen, r.reason) for n, r in rows.items()}
    assert next(iter(rows.values())).chosen.startswith("int8 hadamard-")
    graph = optimized.model.graph
    rotations = [n for n in graph if n.op_type == "MatMul" and n.name.endswith(tuple(f".hadamard_{b}" for b in (16, 32, 64)))]
    assert len(rotations) == 1  # one rotation of x, read by all three
    rotated = next(n for n in graph if n.op_type == "Reshape" and n.inputs[0] is rotations[0].outputs[0]).outputs[0]
    quantized = [n for n in graph if n.op_type in ("DynamicQuantizeMatMul", "DynamicQuantizeLinear")]
    assert quantized and all(n.inputs[0] is rotated for n in quantized)
    assert optimized.report.passes[-1].error.min_cosine >= 1.0 - (1.0 - plain) / 3


@pytest.mark.slow
def test_trained_minilm_rotates_ffn_outputs_rather_than_falling_back_to_fp32():
    """A budget the plain int8 MiniLM misses: the FFN down-projections (whose input, a GELU
    output, has outlier channels) take a rotated form, and the embeddings keep the budget."""
    import torch

    from tests import models

    module, inputs = models.minilm()
    budget = CosineBudget(min_cosine=0.998, per_sample=True)
    optimized = kiln.optimize(module, inputs, level=2, quantize=QuantConfig(budget=budget))
    rows = [d for d in optimized.report.decisions if d.question == _QUESTION]
    rotated = [d for d in rows if d.chosen.startswith("int8 hadamard-")]
    assert rotated, [(d.subject, d.chosen, d.reason) for d in rows]
    assert all(d.alternative(d.chosen).metrics["peak_over_rms"] > d.alternative(d.chosen).metrics[
        "rotated_peak_over_rms"] for d in rotated)
    assert len([d for d in rows if d.chosen == "fp32"]) < len(rotated)
    cosine, nearest = models.sentence_agreement(module, inputs, optimized)
    assert cosine.min().item() >= 0.995, cosine.tolist()
    assert (nearest == torch.arange(len(nearest))).all()


def test_steps_the_final_forms_made_unneeded_are_undone_largest_saving_first():
    """`_relax` on a search's end state: fc1 went to fp32 and fc2 to a rotated form; with the
    others' final forms the budget holds with fc1 back in int8 but not with fc2 plain. The
    measurements are a stand-in that says which trial keeps the budget."""
    from kiln.passes.infra.validation import OutputScore
    from kiln.passes.quantization.quantize_int8 import QuantizeInt8, _Ladder
    from kiln.report.model import Alternative, Decision

    def row(name: str, fp32_ms: float, int8_ms: float) -> Decision:
        return Decision(name, _QUESTION, [Alternative("fp32", predicted_ms=fp32_ms), Alternative("int8", predicted_ms=int8_ms),
                                          Alternative("int8 hadamard-16", predicted_ms=int8_ms + 0.2)],
                        chosen="int8", reason="priced", decided_by="budget")

    decisions = [row("fc0", 1.0, 0.5), row("fc1", 4.0, 2.0), row("fc2", 3.0, 1.5)]
    decisions[1].chosen = "fp32"
    ladder = _Ladder([("int8 hadamard-16", 16)])
    ladders = {0: _Ladder([]), 1: _Ladder([]), 2: ladder}
    keep, own, blocks, scores = [0, 2], {2: 0}, {2: 16}, {}
    tried = []

    def measure(subset, on):
        tried.append((tuple(subset), dict(blocks)))
        ok = 2 not in subset or blocks.get(2) == 16  # fc2 needs its rotation, fc1 may come back
        return OutputScore(0.999 if ok else 0.9, 0.0)

    def sync(i, quiet=False):
        if 2 in own:
            blocks[2] = 16
        else:
            blocks.pop(2, None)

    def form_name(i):
        return "int8 hadamard-16" if i in blocks else "int8"

    sets = {"calibration": ([], []), "held-out": ([], [])}
    QuantizeInt8(QuantConfig(budget=CosineBudget(min_cosine=0.99)))._relax(
        [0, 1, 2], keep, own, blocks, decisions, ladders, sets, scores, measure, sync, form_name)
    assert keep == [0, 1, 2]  # fc1 back, in graph order
    assert decisions[1].chosen == "int8" and "back to int8" in decisions[1].reason
    assert own == {2: 0} and blocks == {2: 16}  # fc2's plain form broke the budget: kept rotated
    assert "back to" not in decisions[2].reason
    assert tried[0][0] == (0, 1, 2)  # fc1 first: its saving (2.0 ms) beats fc2's (0.2 ms)
    assert set(scores) == {"calibration", "held-out"}
