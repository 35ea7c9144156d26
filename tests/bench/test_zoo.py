"""The benchmark model zoo (benchmarks/zoo.py): only the quick entries are exported here (seconds);
the full-size ones take minutes each and are checked by ``python -m benchmarks.zoo``."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks import zoo  # noqa: E402
from benchmarks.base import ModelCase  # noqa: E402

QUICK = ("bert-tiny", "resnet-tiny")
EXPECTED = {"bert-base", "gpt2", "gpt2-prompt8", "vit-base", "resnet50", "whisper-tiny-encoder", "llama-gqa", "minilm", *QUICK}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo-cache")


@pytest.fixture(scope="module")
def cases(cache_dir) -> dict[str, ModelCase]:
    return {name: zoo.load_case(name, 1, cache_dir=cache_dir) for name in QUICK}


def _ort(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _count_exports(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = torch.onnx.export

    def counting(model, *args, **kwargs):
        calls.append(type(model).__name__)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", counting)
    return calls


def test_zoo_names():
    assert set(zoo.ZOO) == EXPECTED
    assert {name for name, entry in zoo.ZOO.items() if entry.quick} == set(QUICK)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_entry_is_valid(name):
    entry = zoo.ZOO[name]
    assert entry.name == name
    assert entry.kind in zoo.KINDS
    assert entry.batches == ((1,) if entry.quick else (1, 8))
    assert entry.description
    assert (entry.kind == "sentence-embedding") == (name == "minilm")


@pytest.mark.parametrize("name", QUICK)
def test_export_matches_reference(cases, name):
    case = cases[name]
    assert case.name == name and case.batch == 1 and case.kind == zoo.ZOO[name].kind
    assert case.onnx_path.exists()
    graph_inputs = [i.name for i in onnx.load(case.onnx_path, load_external_data=False).graph.input]
    assert list(case.inputs) == graph_inputs
    output = _ort(case.onnx_path).run(None, case.inputs)[0]
    assert output.shape == case.reference.shape and output.dtype == np.float32
    np.testing.assert_allclose(output, case.reference, rtol=0, atol=1e-4)
    # The reference is the module's own output on the torch inputs.
    with torch.no_grad():
        again = case.module(**case.torch_inputs)
    np.testing.assert_allclose(again.numpy(), case.reference, rtol=0, atol=1e-6)
    assert not case.module.training


@pytest.mark.parametrize("name", QUICK)
def test_second_load_hits_cache(cases, cache_dir, name, monkeypatch):
    model = cases[name].onnx_path
    mtime = model.stat().st_mtime_ns
    calls = _count_exports(monkeypatch)
    case = zoo.load_case(name, 1, cache_dir=cache_dir)
    assert calls == []
    assert case.onnx_path == model and model.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(case.reference, cases[name].reference)
    for key, value in cases[name].inputs.items():
        np.testing.assert_array_equal(case.inputs[key], value)


def test_stale_cache_is_reexported(cases, tmp_path, monkeypatch):
    name = "resnet-tiny"
    folder = tmp_path / f"{name}-b1"
    shutil.copytree(cases[name].onnx_path.parent, folder)
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "torch": "0.0-old"}))
    calls = _count_exports(monkeypatch)
    case = zoo.load_case(name, 1, cache_dir=tmp_path)
    assert len(calls) == 1
    assert json.loads((folder / "meta.json").read_text())["torch"] == torch.__version__
    np.testing.assert_allclose(_ort(case.onnx_path).run(None, case.inputs)[0], case.reference, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", QUICK)
def test_calibration_sets(cases, name):
    case = cases[name]
    assert len(case.calibration) == 16
    for sample in case.calibration:
        assert list(sample) == list(case.inputs)
        for key, value in sample.items():
            assert value.shape == case.inputs[key].shape and value.dtype == case.inputs[key].dtype
        assert any(not np.array_equal(sample[k], case.inputs[k]) for k in sample)
    first = case.calibration[0]
    assert any(not np.array_equal(first[k], case.calibration[1][k]) for k in first)
    assert len(zoo.load_case(name, 1, cache_dir=cases[name].onnx_path.parent.parent,
                             calibration_samples=3).calibration) == 3


def test_token_inputs_look_real():
    entry = zoo.ZOO["bert-tiny"]
    config = entry.make_config()
    inputs = entry.make_inputs(config, 4, 0)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert ids.shape == mask.shape == inputs["token_type_ids"].shape == (4, 32)
    assert ids.dtype == mask.dtype == torch.long
    lengths = mask.sum(1).tolist()
    assert lengths[0] == 32 and all(n < 32 for n in lengths[1:])  # padded tails for batch > 1
    for row, n in enumerate(lengths):
        assert mask[row, :n].all() and not mask[row, n:].any()
        assert ids[row, 0] == 101 and ids[row, n - 1] == 102 and (ids[row, n:] == 0).all()
        words = ids[row, 1:n - 1]
        assert (words >= 1996).all() and (words < config.vocab_size).all()
    assert len(set(ids[0].tolist())) > 16  # drawn from the vocabulary, not a handful of ids
    again = entry.make_inputs(config, 4, 0)
    assert all(torch.equal(again[k], inputs[k]) for k in inputs)  # seeded
    assert not torch.equal(entry.make_inputs(config, 4, 1)["input_ids"], ids)


def test_minilm_inputs_are_real_sentences():
    entry = zoo.ZOO["minilm"]
    config = entry.make_config()
    main = entry.make_inputs(config, 2, 0)
    assert set(main) == {"input_ids", "attention_mask", "token_type_ids"}
    assert main["input_ids"].shape == (2, zoo.MINILM_SEQ)
    assert (main["input_ids"][:, 0] == 101).all()  # [CLS]
    assert 0 < int(main["attention_mask"].sum()) < 2 * zoo.MINILM_SEQ
    other = entry.make_inputs(config, 2, 1)
    assert not torch.equal(other["input_ids"], main["input_ids"])
    for batch in (1, 8):  # the main set and 16 calibration sets are all different sentences
        sets = [tuple(entry.make_inputs(config, batch, seed)["input_ids"].flatten().tolist()) for seed in range(17)]
        assert len(set(sets)) == 17
    lengths = entry.make_inputs(config, len(zoo._sentences()), 0)["attention_mask"].sum(1)
    assert lengths.min() < 16 and lengths.max() == zoo.MINILM_SEQ  # short sentences and a truncated paragraph


def test_export_failure_names_the_model(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(zoo.ZooExportError, match="resnet-tiny.*unsupported operator"):
        zoo.load_case("resnet-tiny", 1, cache_dir=tmp_path)
    assert not (tmp_path / "resnet-tiny-b1").exists()
    assert [p for p in tmp_path.iterdir() if "tmp" in p.name] == []


def test_dropped_inputs_are_left_out():
    inputs = {"input_ids": np.zeros((1, 4), np.int64), "attention_mask": np.ones((1, 4), np.int64),
              "token_type_ids": np.zeros((1, 4), np.int64)}
    kept = zoo._by_onnx_names("m", inputs, ["attention_mask", "input_ids"])
    assert list(kept) == ["attention_mask", "input_ids"]
    with pytest.raises(zoo.ZooExportError, match="'m'"):
        zoo._by_onnx_names("m", inputs, ["input_ids", "pixel_values"])


def test_unknown_model():
    with pytest.raises(KeyError, match="no-such-model"):
        zoo.load_case("no-such-model", 1)
