"""Every benchmark configuration prepares a tiny exported model and reproduces its output (or
declares itself not applicable)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.base import ModelCase, NotApplicable, Prepared
from benchmarks.configs import CONFIGS, node_count, onnx_file_bytes

# Largest deviation from the fp32 PyTorch output allowed per precision (outputs are LayerNorm'd,
# so of order 1), and the smallest cosine similarity.
ATOL = {"fp32": 1e-4, "fp16": 0.02, "bf16": 0.1, "int8": 0.15, "int4": 0.3}
MIN_COSINE = {"fp32": 0.99999, "fp16": 0.9999, "bf16": 0.999, "int8": 0.99, "int4": 0.97}

EXPECTED = {
    "torch-eager", "torch-compile", "ort-disable", "ort-basic", "ort-all", "ort-transformers", "onnxsim+ort",
    "onnxslim+ort", "onnxoptimizer+ort", "ort-quant-dynamic", "ort-quant-static", "ort-matmulnbits",
    "tvm-relax-untuned", "openvino-fp32", "openvino-f16", "openvino-bf16", "kiln-l0", "kiln-l1", "kiln-l2",
    "kiln-l2-openvino", "nncf-int8+openvino",
}


class TinyMLP(torch.nn.Module):
    """Two linear layers with GELU and LayerNorm, on [batch, seq, hidden] like a transformer block."""

    def __init__(self, hidden: int = 64, inner: int = 128):
        super().__init__()
        self.up = torch.nn.Linear(hidden, inner)
        self.down = torch.nn.Linear(inner, hidden)
        self.norm = torch.nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.down(torch.nn.functional.gelu(self.up(x))))


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> ModelCase:
    torch.manual_seed(0)
    module = TinyMLP().eval()
    x = torch.randn(2, 8, 64)
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    # Weights in an external-data file, as the zoo's exports have them.
    torch.onnx.export(module, (), str(path), kwargs={"x": x}, dynamo=True, external_data=True, verbose=False)
    with torch.inference_mode():
        reference = module(x).numpy()
    rng = np.random.default_rng(1)
    calibration = [{"x": rng.standard_normal((2, 8, 64)).astype(np.float32)} for _ in range(4)]
    return ModelCase(name="tiny-mlp", batch=2, module=module, torch_inputs={"x": x}, inputs={"x": x.numpy()},
                     onnx_path=path, reference=reference, calibration=calibration, kind="text-encoder")


def test_every_configuration_is_registered() -> None:
    assert set(CONFIGS) == EXPECTED
    for name, config in CONFIGS.items():
        assert config.name == name
        assert config.description and "\n" not in config.description
        assert config.precision in ATOL


# The third-party tool a configuration needs, from the `bench` extra. Skipped (with the reason)
# only where the extra is not installed, e.g. a venv made with `pip install -e '.[test]'`.
BENCH_EXTRA = {"onnxsim+ort": "onnxsim", "onnxslim+ort": "onnxslim", "onnxoptimizer+ort": "onnxoptimizer",
               "tvm-relax-untuned": "tvm", "openvino-fp32": "openvino", "openvino-f16": "openvino",
               "openvino-bf16": "openvino", "kiln-l2-openvino": "openvino", "nncf-int8+openvino": "nncf"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_configuration_reproduces_reference(name: str, case: ModelCase, tmp_path: Path) -> None:
    if name in BENCH_EXTRA:
        pytest.importorskip(BENCH_EXTRA[name], reason="the bench extra is not installed: pip install -e '.[bench]'")
    config = CONFIGS[name]
    try:
        prepared = config.prepare(case, tmp_path)
    except NotApplicable:
        return
    assert isinstance(prepared, Prepared)
    prepared.run()
    out = prepared.outputs()
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert out.shape == case.reference.shape
    diff = float(np.max(np.abs(out - case.reference)))
    cosine = float(np.dot(out.ravel(), case.reference.ravel())
                   / (np.linalg.norm(out) * np.linalg.norm(case.reference)))
    assert diff <= ATOL[config.precision], f"{name}: max abs diff {diff:.3g}"
    assert cosine >= MIN_COSINE[config.precision], f"{name}: cosine {cosine:.6f}"
    assert prepared.optimize_seconds >= 0
    if name.startswith(("ort-", "onnx", "kiln-", "nncf-")):
        assert prepared.node_count and prepared.node_count > 0
        assert prepared.model_bytes and prepared.model_bytes > 0


def test_graph_facts_count_external_data(case: ModelCase) -> None:
    on_disk = case.onnx_path.stat().st_size + sum(p.stat().st_size for p in case.onnx_path.parent.glob("*.data"))
    assert onnx_file_bytes(case.onnx_path) == on_disk
    assert node_count(case.onnx_path) > 0


def test_transformers_optimizer_skips_cnns_and_whisper(case: ModelCase, tmp_path: Path) -> None:
    for name, kind in (("resnet50", "vision"), ("whisper-tiny", "audio")):
        other = ModelCase(name=name, batch=1, module=None, torch_inputs={}, inputs={}, onnx_path=case.onnx_path,
                          reference=case.reference, kind=kind)
        with pytest.raises(NotApplicable):
            CONFIGS["ort-transformers"].prepare(other, tmp_path)


def test_timed_ort_call_is_the_bare_session_run(case: ModelCase, tmp_path: Path) -> None:
    prepared = CONFIGS["ort-all"].prepare(case, tmp_path)
    result = prepared.run()
    assert isinstance(result, list) and isinstance(result[0], np.ndarray)  # session.run's own result
    # the timed closure holds only the session and its feeds: nothing else runs per call
    cells = {type(c.cell_contents).__name__ for c in prepared.run.__closure__ or ()}
    assert cells == {"InferenceSession", "dict"}, cells


@pytest.mark.parametrize("peer", ["static-percentile", "nbits8"])
def test_the_quantization_benchmarks_other_ort_peers_reproduce_the_model(peer: str, case: ModelCase,
                                                                          tmp_path: Path) -> None:
    """`python -m benchmarks quantization --ort-peers`: quantize_static calibrated by Percentile and
    8-bit MatMulNBits, the two forms the harness's configurations do not cover."""
    from benchmarks.configs import ort_session
    from benchmarks.quantization import _ort_peer

    path, note = _ort_peer(peer, case.onnx_path, tmp_path, case.calibration)
    assert path is not None and path.name == f"ort-{peer}.onnx", note
    if peer == "nbits8":
        assert note == "2 MatMulNBits"
    out = ort_session(path).run(None, case.inputs)[0]
    cosine = float(np.dot(out.ravel(), case.reference.ravel()) / (np.linalg.norm(out) * np.linalg.norm(case.reference)))
    assert cosine >= MIN_COSINE["int8"], f"{peer}: cosine {cosine:.6f}"
