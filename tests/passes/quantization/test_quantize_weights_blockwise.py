"""Weight-only block-wise quantization (``quantize="int4-weights"``): the packed weights are what
MatMulNBits computes with, the formats' order, the per-linear measured choice, the budget's
step down (4-bit -> finer -> 8-bit -> fp32), both backends, the CLI, and the trained MiniLM."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import FakeTimer, fake_measured_choices
from test_quantize_int8 import X, _mlp, _reference

import kiln
from kiln.cli import main
from kiln.errors import BackendError, InputError
from kiln.passes.infra.contract import CosineBudget
from kiln.passes.infra.validation import cosine_similarity
from kiln.passes.quantization import QuantConfig
from kiln.passes.quantization.blockwise_weights import (
    BlockFormat,
    BlockwiseWeight,
    NBitsShape,
    alternatives,
    block_formats,
    quantize_blockwise,
)

QUESTION = "quantize linear's weights block-wise (weight-only)"
MEASURE_ANY = {"measured_choice_min_ms": 0}


def _optimize(model, ratio: float = 0.5, **kwargs):
    timer = FakeTimer(ratio)
    optimized = kiln.optimize(model, level=1, sample_inputs={"x": X}, measured_choices=fake_measured_choices(timer),
                              options=MEASURE_ANY, **{"quantize": "int4-weights", **kwargs})
    return optimized, timer


def _pass(optimized):
    return next(p for p in optimized.report.passes if p.name == "quantize_weights_blockwise")


def _rows(optimized) -> dict:
    return {d.subject: d for d in optimized.report.decisions if d.question == QUESTION}


def _ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


# --- the weights -----------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("block_size", [32, 128])
@pytest.mark.parametrize("k", [256, 200])  # 200: a last block padded
def test_the_packed_weights_are_what_matmul_nbits_multiplies_by(bits, block_size, k):
    """ORT's MatMulNBits (float compute) on the packed weight equals x @ `dequantized()`, and each
    weight is within one step of its block's scale (ORT's symmetric grid clips one end by one
    step)."""
    fmt = BlockFormat(bits, block_size, "fp32")
    shape = NBitsShape((16, k), k, 48, False)
    _, model = alternatives(shape, fmt, seed=3)
    weight = (np.random.default_rng(3).standard_normal((k, 48)) * 0.05).astype(np.float32)
    q = quantize_blockwise(weight, fmt)
    w = q.dequantized()
    assert w.shape == (k, 48)
    block_of_row = np.arange(k) // block_size
    step = np.abs(q.scales[:, block_of_row].T)  # [k, 48]; a scale is negative where the block's extreme is positive
    assert np.all(np.abs(w - weight) <= step * 1.0001)
    x = np.random.default_rng(0).standard_normal((16, k)).astype(np.float32)
    np.testing.assert_allclose(_run(model, x), x @ w, rtol=1e-4, atol=1e-5)
    # 8-bit blocks are finer than 4-bit ones
    if bits == 4:
        finer = quantize_blockwise(weight, BlockFormat(8, block_size, "fp32")).dequantized()
        assert np.abs(finer - weight).max() < np.abs(w - weight).max()


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("block_size", [32, 128])
@pytest.mark.parametrize("k", [256, 200])
def test_the_packing_is_onnx_runtimes(bits, block_size, k):
    """kiln's numpy packer against ORT's own (the one its MatMulNBitsQuantizer calls): the same
    scales, and the same values except, rarely, one step apart at a float32 rounding tie."""
    import math

    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    weight = (np.random.default_rng(k + bits).standard_normal((k, 96)) * 0.05).astype(np.float32)
    weight[:, 5] = 0.0  # a block of zeros
    weight[3, 7] = 1.5  # an outlier
    q = quantize_blockwise(weight, BlockFormat(bits, block_size))
    k_blocks = math.ceil(k / block_size)
    padded = np.ascontiguousarray(np.pad(weight, ((0, k_blocks * block_size - k), (0, 0))))
    packed = np.zeros((96, k_blocks, block_size * bits // 8), np.uint8)
    scales = np.zeros((96, k_blocks), np.float32)
    zero_points = np.zeros((96, math.ceil(k_blocks * bits / 8)), np.uint8)
    packer = quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits
    packer(packed, padded, scales, zero_points, block_size, 96, padded.shape[0], True)
    np.testing.assert_array_equal(q.scales, scales)
    theirs = BlockwiseWeight(packed, scales, q.fmt, k)
    step = np.abs(q.scales[:, np.arange(k) // block_size].T)
    assert np.all(np.abs(q.dequantized() - theirs.dequantized()) <= step * 1.0001)
    assert np.count_nonzero(packed != q.packed) <= 2


def test_alpha_goes_into_the_scales():
    weight = np.random.default_rng(1).standard_normal((64, 8)).astype(np.float32)
    fmt = BlockFormat(8, 32)
    np.testing.assert_allclose(quantize_blockwise(weight, fmt, alpha=0.5).dequantized(),
                               0.5 * quantize_blockwise(weight, fmt).dequantized(), rtol=1e-6, atol=1e-7)


def test_formats_are_ordered_by_how_fine_they_are_and_bad_ones_refused():
    coarse, finer_blocks, more_bits = BlockFormat(4, 128, "int8"), BlockFormat(4, 32, "int8"), BlockFormat(8, 128, "int8")
    exact = BlockFormat(4, 128, "fp32")
    for finer in (finer_blocks, more_bits, exact):
        assert finer.at_least_as_accurate_as(coarse) and not coarse.at_least_as_accurate_as(finer)
    assert not more_bits.at_least_as_accurate_as(finer_blocks)  # a trade: neither is finer in every respect
    assert [f.name for f in block_formats((4,), (32, 128), ("fp32",))] == ["int4 b32 fp32 compute", "int4 b128 fp32 compute"]
    for bad in ((3, 32), (4, 48), (4, 8)):
        with pytest.raises(ValueError):
            BlockFormat(*bad)
    with pytest.raises(InputError, match="block_sizes"):
        QuantConfig(scheme="int4-weights", block_sizes=(100,))
    with pytest.raises(InputError, match="4 or 8 bits"):
        QuantConfig(scheme="int4-weights", block_bits=(2,))
    with pytest.raises(InputError, match="block_compute"):
        QuantConfig(scheme="int4-weights", block_compute=("fp16",))


# --- the pass --------------------------------------------------------------------------------

def test_int4_weights_rewrites_every_linear_measured_faster_within_the_budget():
    """The MatMul, the Gemm (transB, alpha, beta, C as the op's bias) and the LM head reading a
    transposed constant all become MatMulNBits; each format was timed once per shape; the rows
    hold every format's measured time; the outputs keep the budget."""
    optimized, timer = _optimize(_mlp())
    report = _pass(optimized)
    assert report.status == "applied", report.message
    ops = _ops(optimized.model)
    assert ops.count("MatMulNBits") == 3 and "Gemm" not in ops
    assert ops.count("Transpose") == 1  # the attention-like product keeps its own; the LM head's is gone
    assert timer.calls == 3 * 8 * 3  # three shapes (fc2 adds its bias in the op) x (2 bits x 2 blocks x 2 computes) x 3 trials
    rows = _rows(optimized)
    assert set(rows) == {"fc1", "fc2", "head"}
    for row in rows.values():
        assert len(row.alternatives) == 9 and all(a.measured_ms is not None for a in row.alternatives)
        assert row.chosen.startswith("int") and "joint cosine" in row.reason
        assert row.alternative(row.chosen).metrics["joint_cosine"] >= 0.99
    assert "int4" in report.message
    for want, have in zip(_reference(_mlp()), optimized(x=X)):
        assert cosine_similarity(want, have) > 0.99
    saved = optimized.model
    assert saved.opset_imports.get("com.microsoft") == 1


def test_a_linear_whose_4_bit_form_breaks_the_budget_steps_down_to_a_finer_format_then_fp32():
    loose, _ = _optimize(_mlp(), quantize=QuantConfig(scheme="int4-weights", budget=CosineBudget(min_cosine=0.99)))
    tight, _ = _optimize(_mlp(), quantize=QuantConfig(scheme="int4-weights", budget=CosineBudget(min_cosine=0.9999)))
    loose_bits = sorted(r.chosen for r in _rows(loose).values())
    tight_rows = _rows(tight)
    assert any(r.decided_by == "budget" and "instead" in r.reason for r in tight_rows.values())
    assert all(r.chosen == "fp32" or r.chosen.startswith("int8") for r in tight_rows.values()), \
        {s: r.chosen for s, r in tight_rows.items()}
    assert loose_bits != sorted(r.chosen for r in tight_rows.values())
    for want, have in zip(_reference(_mlp()), tight(x=X)):
        assert cosine_similarity(want, have) >= 0.9999
    unreachable, _ = _optimize(_mlp(), quantize=QuantConfig(scheme="int4-weights",
                                                             budget=CosineBudget(min_cosine=0.99999999)))
    assert _pass(unreachable).status == "unchanged" and "MatMulNBits" not in _ops(unreachable.model)
    assert all(r.chosen == "fp32" and r.decided_by == "budget" for r in _rows(unreachable).values())


def test_when_measured_slower_or_excluded_a_linear_stays_fp32_and_says_so():
    slower, _ = _optimize(_mlp(), ratio=1.2)
    assert _pass(slower).status == "unchanged" and "MatMulNBits" not in _ops(slower.model)
    for row in _rows(slower).values():
        assert row.chosen == "fp32" and row.decided_by == "measurement" and "1.200x" in row.reason
    excluded, _ = _optimize(_mlp(), quantize=QuantConfig(scheme="int4-weights", exclude=("head",)))
    rows = _rows(excluded)
    assert rows["head"].chosen == "fp32" and "exclude" in rows["head"].reason
    assert _ops(excluded.model).count("MatMulNBits") == 2


def test_only_the_formats_the_config_names_are_tried():
    optimized, timer = _optimize(_mlp(), quantize=QuantConfig(scheme="int4-weights", block_sizes=(64,), block_bits=(4,),
                                                                block_compute=("int8",)))
    assert timer.calls == 3 * 3  # three shapes, one format, three trials
    assert {r.chosen for r in _rows(optimized).values()} <= {"int4 b64 int8 compute", "fp32"}
    node = next(n for n in optimized.model.graph if n.op_type == "MatMulNBits")
    assert node.attributes["block_size"].as_int() == 64 and node.attributes["accuracy_level"].as_int() == 4


def test_on_openvino_the_same_op_runs_and_the_final_check_is_openvinos():
    pytest.importorskip("openvino")
    optimized, timer = _optimize(_mlp(), backend="openvino")
    assert _pass(optimized).status == "applied"
    assert timer.calls == 3 * 4 * 3  # OpenVINO picks its own arithmetic: 2 bits x 2 blocks
    node = next(n for n in optimized.model.graph if n.op_type == "MatMulNBits")
    assert "accuracy_level" not in node.attributes
    assert "min cosine" in optimized.report.backend_check
    for want, have in zip(_reference(_mlp()), optimized(x=X)):
        assert cosine_similarity(want, have) > 0.99


def test_other_backends_are_refused():
    with pytest.raises(BackendError, match="choose the backend"):
        kiln.optimize(_mlp(), quantize="int4-weights", backend="auto")


def test_cli_int4_weights_saves_a_model_ort_loads(tmp_path):
    src, out, npz = tmp_path / "mlp.onnx", tmp_path / "mlp.int4.onnx", tmp_path / "x.npz"
    onnx.save(_mlp(), src)
    np.savez(npz, x=X)
    assert main(["optimize", str(src), "-o", str(out), "--quantize", "int4-weights", "--sample-inputs", str(npz)]) == 0
    saved = onnx.load(out)
    assert "DynamicQuantizeMatMul" not in [n.op_type for n in saved.graph.node]
    for want, have in zip(_reference(_mlp()), _reference(saved)):
        assert cosine_similarity(want, have) > 0.99


@pytest.mark.slow
def test_trained_minilm_keeps_its_sentence_embeddings_with_block_wise_weights():
    """On trained weights the budget search decides: every linear is timed as faster (a fake
    timer), so it is the accuracy search alone that sets each format; the held-out sentences keep
    the budget and their nearest neighbours."""
    import torch

    from tests import models

    module, inputs = models.minilm()
    timer = FakeTimer(0.5)
    optimized = kiln.optimize(module, inputs, level=2, quantize="int4-weights",
                              measured_choices=fake_measured_choices(timer), options=MEASURE_ANY)
    report = _pass(optimized)
    assert report.status == "applied", report.message
    cosine, nearest = models.sentence_agreement(module, inputs, optimized)
    assert cosine.min().item() >= 0.99, cosine.tolist()
    assert (nearest == torch.arange(len(nearest))).all()
    assert _ops(optimized.model).count("MatMulNBits") >= 18, report.message


def test_outlier_migration_is_refused_for_weight_only_quantization():
    with pytest.raises(InputError, match="int4-weights keeps the activations float"):
        QuantConfig(scheme="int4-weights", migrate_outliers=True)
