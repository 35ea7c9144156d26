"""Outlier migration: which LayerNorms are sites (through row-keeping Reshapes; what is left and
why) and which activations get an explicit division, the rewrite is exact for every form (scale,
shift and scale; Gemm, MatMul, a residual reader, a GELU's output), the measured choice cuts the
int8 error of an outlier channel, and the pass runs before quantization in `kiln.optimize` and
the CLI."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from conftest import make_model, tensor_info
from onnx import helper, numpy_helper

import kiln
from kiln.cli import main
from kiln.errors import InputError
from kiln.passes.quantization import QuantConfig
from kiln.passes.quantization.migration_sites import find_migration_sites
from kiln.passes.quantization.outlier_migration import Migration, candidate_migrations, channel_ranges, migrate

BATCH, SEQ, WIDTH = 2, 8, 32
OUTLIER = 5  # the channel the norm's gamma blows up, as in trained transformers


def _inputs(seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((BATCH, SEQ, WIDTH)).astype(np.float32)}


def _block() -> onnx.ModelProto:
    """x -> LayerNorm (one channel's gamma 40x, its beta 6) -> Reshape to rows -> a Gemm (transB,
    alpha, beta, bias) and a MatMul (no bias); the norm's output also feeds a residual Add (a
    reader that is not a linear)."""
    rng = np.random.default_rng(11)
    gamma = np.ones(WIDTH, np.float32)
    gamma[OUTLIER] = 40.0
    beta = (rng.standard_normal(WIDTH) * 0.1).astype(np.float32)
    beta[OUTLIER] = 6.0  # an asymmetric outlier: shifting it pays
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"], name="norm", axis=-1),
        helper.make_node("Reshape", ["y", "rows"], ["y_rows"], name="to_rows"),
        helper.make_node("Gemm", ["y_rows", "wq", "bq"], ["q"], name="query", transB=1, alpha=0.5, beta=2.0),
        helper.make_node("MatMul", ["y_rows", "wk"], ["k"], name="key"),
        helper.make_node("Add", ["y", "x"], ["residual"], name="residual"),
    ]
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("gamma", gamma), ("beta", beta), ("rows", np.array([-1, WIDTH], np.int64)),
        ("wq", (rng.standard_normal((WIDTH, WIDTH)) * 0.2).astype(np.float32)),
        ("bq", (rng.standard_normal(WIDTH) * 0.1).astype(np.float32)),
        ("wk", (rng.standard_normal((WIDTH, 16)) * 0.2).astype(np.float32)))]
    return make_model(nodes, [tensor_info("x", [BATCH, SEQ, WIDTH])],
                      [tensor_info("q", [BATCH * SEQ, WIDTH]), tensor_info("k", [BATCH * SEQ, 16]),
                       tensor_info("residual", [BATCH, SEQ, WIDTH])], inits, opset=17)


def _run(model: ir.Model | onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _ir(proto: onnx.ModelProto) -> ir.Model:
    model = ir.from_proto(proto)
    onnx_model = onnx.shape_inference.infer_shapes(proto)
    shapes = {v.name: v for v in onnx_model.graph.value_info}
    for node in model.graph:
        for out in node.outputs:
            info = shapes.get(out.name)
            if info is not None and out.shape is None:
                out.shape = ir.Shape([d.dim_value for d in info.type.tensor_type.shape.dim])
    return model


def test_a_norm_read_by_linears_is_a_site_through_a_row_reshape_and_the_rest_is_explained():
    sites, left = find_migration_sites(_ir(_block()).graph)
    assert len(sites) == 1 and not left
    site = sites[0]
    assert [linear.node.name for linear in site.linears] == ["query", "key"]
    assert [node.name for node, _ in site.others] == ["residual"]
    assert not site.shiftable  # the MatMul has no bias to absorb a shift

    sites, left = find_migration_sites(_ir(_exposed_norm()).graph, explicit=False)
    assert not sites and left == {"the norm's output is a graph output": 1}
    # the linears still read an activation: an explicit division in front of them
    sites, _ = find_migration_sites(_ir(_exposed_norm()).graph)
    assert [(site.norm, site.value.name, [lin.node.name for lin in site.linears]) for site in sites] == \
        [(None, "y_rows", ["query", "key"])]


def _exposed_norm() -> onnx.ModelProto:
    """The block with the norm's output a graph output too: only an explicit site."""
    proto = _block()
    proto.graph.output.append(tensor_info("y", [BATCH, SEQ, WIDTH]))
    return proto


def _shiftable() -> onnx.ModelProto:
    """The block with the MatMul replaced by a biased Gemm, so every linear can absorb a shift."""
    proto = _block()
    key = next(n for n in proto.graph.node if n.name == "key")
    key.op_type = "Gemm"
    key.input.append("bk")
    proto.graph.initializer.append(numpy_helper.from_array(np.full(16, 0.3, np.float32), "bk"))
    return proto


def _gelu() -> onnx.ModelProto:
    """x -> Gelu(x * 3) -> a biased Gemm, the GELU's output also a graph output: an explicit site
    whose shift the Gemm's bias absorbs, as a transformer's FFN down-projection."""
    rng = np.random.default_rng(12)
    nodes = [helper.make_node("Mul", ["x", "three"], ["h"]),
             helper.make_node("Gelu", ["h"], ["g"], domain="com.microsoft"),
             helper.make_node("Reshape", ["g", "rows"], ["g_rows"]),
             helper.make_node("Gemm", ["g_rows", "w", "b"], ["y"], name="down")]
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("three", np.linspace(0.5, 12.0, WIDTH).astype(np.float32)), ("rows", np.array([-1, WIDTH], np.int64)),
        ("w", (rng.standard_normal((WIDTH, 8)) * 0.2).astype(np.float32)), ("b", np.full(8, 0.1, np.float32)))]
    proto = make_model(nodes, [tensor_info("x", [BATCH, SEQ, WIDTH])],
                       [tensor_info("y", [BATCH * SEQ, 8]), tensor_info("g", [BATCH, SEQ, WIDTH])], inits, opset=17)
    proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return proto


@pytest.mark.parametrize("build", [_block, _shiftable, _exposed_norm, _gelu])
def test_every_form_computes_the_same_outputs(build):
    feeds = _inputs(0)
    expected = _run(build(), feeds)
    model = _ir(build())
    site = find_migration_sites(model.graph)[0][0]
    low, high = channel_ranges(model, lambda m, f: _run(m, f), [feeds], [site])[site.value.name]
    forms = candidate_migrations(site, low, high)
    assert [f.name for f in forms][0] == "none"
    assert any(f.shift is not None for f in forms) == site.shiftable
    for form in forms[1:]:
        trial = _ir(build())
        added = migrate(trial.graph, find_migration_sites(trial.graph)[0][0], form)
        assert [n.op_type for n in added] == (["Mul", "Add"] if form.shift is not None else ["Mul"])
        for got, want in zip(_run(trial, feeds), expected):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=form.name)


def test_the_pass_migrates_the_outlier_and_quantizes_the_linears_better():
    calibration = [_inputs(seed) for seed in range(1, 17)]
    optimized = kiln.optimize(_shiftable(), level=1, quantize=QuantConfig(migrate_outliers=True),
                              calibration=calibration, sample_inputs=_inputs(9))
    report = next(p for p in optimized.report.passes if p.name == "migrate_activation_outliers")
    assert report.status == "applied", report.message
    decision = next(d for d in optimized.report.decisions if d.question.startswith("migrate activation outliers"))
    errors = {a.name: a.metrics["relative_error"] for a in decision.alternatives}
    assert decision.chosen != "none" and errors[decision.chosen] < errors["none"] / 3, errors
    assert decision.alternatives[0].metrics["peak_over_median"] > 10  # the statistics that triggered it
    assert f"channel {OUTLIER}" in decision.reason
    # the migrated model still computes the original's outputs (the PassManager checked it as exact)
    names = [p.name for p in optimized.report.passes]
    assert names.index("migrate_activation_outliers") < names.index("quantize_int8")


def test_channel_ranges_skip_infinite_values():
    model = _ir(_block())
    site = find_migration_sites(model.graph)[0][0]
    feeds = _inputs(0)

    def runner(m, f):
        outputs = _run(m, f)
        outputs[-1] = outputs[-1].copy()
        outputs[-1].reshape(-1, WIDTH)[0, 0] = -np.inf
        return outputs
    low, high = channel_ranges(model, runner, [feeds], [site])[site.value.name]
    assert np.isfinite(low).all() and np.isfinite(high).all()


def test_an_identity_form_is_kept_as_is():
    assert Migration("none", np.ones(4, np.float32)).is_identity
    assert not Migration("scale", np.full(4, 2.0, np.float32)).is_identity
    assert not Migration("shift", np.ones(4, np.float32), np.zeros(4, np.float32)).is_identity


def test_cli_migrate_outliers_needs_quantize(tmp_path, capsys):
    path = tmp_path / "block.onnx"
    onnx.save(_block(), path)
    assert main(["optimize", str(path), "-o", str(tmp_path / "out.onnx"), "--migrate-outliers"]) != 0
    assert "--migrate-outliers prepares the linears for --quantize" in capsys.readouterr().err


@pytest.mark.slow
def test_trained_minilm_norm_outputs_migrate_exactly_and_quantize_better():
    import torch

    from tests import models

    module, inputs = models.minilm()
    feeds = {name: value.numpy() for name, value in inputs.items()}
    config = QuantConfig(migrate_outliers=True, migration_sites="norms")
    optimized = kiln.optimize(module, inputs, level=2, quantize=config, calibration=[feeds])
    report = next(p for p in optimized.report.passes if p.name == "migrate_activation_outliers")
    assert report.status == "applied", report.message  # validated as exact against the original
    rows = [d for d in optimized.report.decisions if d.question.startswith("migrate activation outliers")]
    assert len(rows) == 12 and "0 of 0 other activations" in report.message, report.message  # 6 layers x 2 norms
    for d in rows:
        errors = {a.name: a.metrics["relative_error"] for a in d.alternatives}
        assert errors[d.chosen] < errors["none"], (d.subject, errors)
    expected = models.mean_pool(module(**inputs), inputs["attention_mask"])
    actual = models.mean_pool(torch.from_numpy(optimized(**feeds)), inputs["attention_mask"])
    cosine = torch.nn.functional.cosine_similarity(actual.double(), expected.double(), dim=-1)
    assert cosine.min().item() >= 0.99, cosine.tolist()


def test_with_all_sites_a_gelu_output_is_divided_in_front_of_its_linear():
    calibration = [_inputs(seed) for seed in range(1, 9)]
    for sites, migrated in (("norms", False), ("all", True)):
        optimized = kiln.optimize(_gelu(), level=1, quantize=QuantConfig(migrate_outliers=True, migration_sites=sites),
                                  calibration=calibration, sample_inputs=_inputs(9))
        report = next(p for p in optimized.report.passes if p.name == "migrate_activation_outliers")
        assert (report.status == "applied") == migrated, report.message
    decision = next(d for d in optimized.report.decisions if d.question.startswith("migrate activation outliers"))
    assert decision.chosen != "none" and "in front of the linears" in decision.reason
    chosen = decision.alternative(decision.chosen)
    assert chosen.predicted_ms is not None and chosen.predicted_ms > 0  # the Mul it adds, priced
    with pytest.raises(InputError, match="migration_sites"):
        QuantConfig(migrate_outliers=True, migration_sites="everywhere")
