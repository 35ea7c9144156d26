"""End-to-end checks on real architectures: kiln.optimize(model, inputs, level=1) must match
PyTorch within 1e-4, validate every pass, and keep nn.Module provenance on the nodes.

Models are small random-init configs of BERT, GPT-2, ViT, ResNet and Llama (grouped-query
attention), all built offline, plus the trained all-MiniLM-L6-v2 on real sentences. Each model
is captured and optimized once per test session and shared by the tests below.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import onnx_ir as ir
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import models  # noqa: E402  (tests/models.py; pytest puts tests/ on sys.path)

import kiln  # noqa: E402
from kiln.ir.provenance import Origin, get_provenance  # noqa: E402

pytestmark = pytest.mark.slow

ATOL = 1e-4
OK_STATUSES = {"applied", "unchanged"}

BUILDERS: dict[str, Callable[[], tuple[torch.nn.Module, Any]]] = {**models.SMALL_MODELS, "minilm": models.minilm}

# A module path that must appear in some node's provenance after optimization (a submodule
# inside the repeated block of each architecture).
EXPECTED_MODULE = {
    "bert": "encoder.layer.1.attention",
    "gpt2": "transformer.h.1.attn",
    "vit": "layers.1.attention",
    "resnet": "resnet.encoder.stages.1",
    "llama": "model.layers.1.self_attn",
    "minilm": "encoder.layer.5.attention",
}


@dataclass
class Result:
    module: torch.nn.Module
    inputs: Any
    optimized: kiln.OptimizedModel
    expected: torch.Tensor
    actual: torch.Tensor


def call(fn: Callable[..., Any], inputs: Any) -> Any:
    return fn(**inputs) if isinstance(inputs, dict) else fn(*inputs)


@cache
def optimized(name: str) -> Result:
    module, inputs = BUILDERS[name]()
    with torch.no_grad():
        expected = call(module, inputs)
    opt = kiln.optimize(module, inputs, level=1)
    actual = call(opt, inputs)
    return Result(module, inputs, opt, expected, actual)


def provenance(model: ir.Model) -> list[Origin]:
    return [o for node in ir.traversal.RecursiveGraphIterator(model.graph) for o in get_provenance(node)]


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("name", list(BUILDERS))
def test_output_matches_pytorch(name: str) -> None:
    r = optimized(name)
    assert isinstance(r.actual, torch.Tensor), f"{name}: expected one torch.Tensor, got {type(r.actual)}"
    assert r.actual.shape == r.expected.shape
    assert r.actual.dtype == r.expected.dtype
    diff = max_abs_diff(r.actual, r.expected)
    assert diff <= ATOL, f"{name}: max abs diff {diff:.3g} > {ATOL}\n{r.optimized.report}"


@pytest.mark.parametrize("name", list(BUILDERS))
def test_report_validated_and_no_pass_rolled_back(name: str) -> None:
    report = optimized(name).optimized.report
    assert report.validated, f"{name}: the report is not validated\n{report}"
    assert report.sample_inputs == "the example inputs", f"{name}: validated on {report.sample_inputs}\n{report}"
    bad = [(p.name, p.status, p.message) for p in report.passes if p.status not in OK_STATUSES]
    assert not bad, f"{name}: passes not applied/unchanged: {bad}\n{report}"
    assert any(p.status == "applied" for p in report.passes), f"{name}: no pass changed the model\n{report}"
    assert report.nodes_after < report.nodes_before, f"{name}: level 1 removed no node\n{report}"
    assert report.final_error is not None and report.final_error.max_abs <= ATOL, f"{name}\n{report}"


@pytest.mark.parametrize("name", list(BUILDERS))
def test_provenance_survives_optimization(name: str) -> None:
    r = optimized(name)
    origins = provenance(r.optimized.model)
    modules = {o.module for o in origins if o.module}
    assert modules, f"{name}: no node of the optimized model has a module path in kiln.provenance"
    wanted = EXPECTED_MODULE[name]
    assert any(wanted in m for m in modules), (
        f"{name}: no provenance module path contains {wanted!r}; some paths: {sorted(modules)[:8]}"
    )


@pytest.mark.parametrize("name", list(BUILDERS))
def test_provenance_module_paths_are_real_submodules(name: str) -> None:
    r = optimized(name)
    modules = {o.module for o in provenance(r.optimized.model) if o.module}
    # torch's name scopes are cumulative ('', 'model', 'model.encoder', ...): the recorded path
    # must be the innermost one, not the scopes joined together.
    missing = []
    for path in sorted(modules):
        try:
            r.module.get_submodule(path)
        except AttributeError:
            missing.append(path)
    assert not missing, f"{name}: {len(missing)} provenance paths name no submodule, e.g. {missing[:3]}"


def test_minilm_sentence_embeddings_match_pytorch() -> None:
    r = optimized("minilm")
    mask = r.inputs["attention_mask"]
    expected = models.mean_pool(r.expected, mask)
    actual = models.mean_pool(r.actual, mask)
    assert expected.shape == (len(models.MINILM_SENTENCES), 384)
    cosine = torch.nn.functional.cosine_similarity(actual.double(), expected.double(), dim=-1)
    assert cosine.min().item() > 0.9999, f"cosine per sentence: {cosine.tolist()}"
    # The trained model tells the sentences apart (a sanity check that real weights were used).
    normalized = torch.nn.functional.normalize(expected, dim=-1)
    similarity = normalized @ normalized.T
    off_diagonal = similarity[~torch.eye(len(similarity), dtype=torch.bool)]
    assert off_diagonal.max().item() < 0.9, f"sentence similarities: {similarity.tolist()}"


def test_saved_model_keeps_outputs_and_provenance(tmp_path) -> None:
    r = optimized("bert")
    path = r.optimized.save(tmp_path / "bert.opt.onnx")
    loaded = kiln.load(path)
    assert any(o.module for o in provenance(loaded)), "provenance did not survive save/load"
    reloaded = kiln.optimize(path, level=0, validate=False)
    diff = max_abs_diff(call(reloaded, r.inputs), r.expected)
    assert diff <= ATOL, f"saved model differs from PyTorch by {diff:.3g}"
