"""`python -m benchmarks quantization`'s own pieces: the paraphrase hit rate, the paraphrase input
sets, and both tables rendered from results (with the ORT peers that could not run noted)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.quantization import (
    OPENVINO_CONFIGS,
    Accuracy,
    ModelResult,
    OpenVINOResult,
    paraphrase_hit_rate,
    render,
    render_openvino,
)


def test_the_paraphrase_hit_rate_counts_sentences_whose_nearest_is_their_partner():
    eye = np.eye(6)
    embeddings = np.stack([eye[k] + 0.1 * eye[k + 3] * (row % 2) for k in range(3) for row in range(2)])
    assert paraphrase_hit_rate(embeddings) == 1.0  # rows 2k and 2k+1 share topic k
    swapped = embeddings[[0, 3, 2, 1, 4, 5]]  # the second sentences of pairs 0 and 1 trade places
    assert paraphrase_hit_rate(swapped) == pytest.approx(2 / 6)  # only pair 2 still finds itself


def test_the_paraphrase_sets_hold_every_pair_in_order():
    pytest.importorskip("transformers")
    from benchmarks import zoo

    for batch in (8, 5):
        feeds, count = zoo.paraphrase_feeds(batch)
        assert count == 2 * len(zoo.PARAPHRASES)
        assert len(feeds) == -(-count // batch) and all(f["input_ids"].shape == (batch, zoo.MINILM_SEQ) for f in feeds)
        ids = np.concatenate([f["input_ids"] for f in feeds])
        # the filler repeats the first sentences; the pairs' sentences differ from one another
        assert len({tuple(row) for row in ids[:count]}) == count
        np.testing.assert_array_equal(ids[count:], ids[:len(ids) - count])


def _accuracy(cos: float, paraphrase: float | None = 0.9375) -> Accuracy:
    return Accuracy(cos, cos + 0.001, 0.9, paraphrase)


def test_both_tables_render_every_configuration_with_its_accuracy():
    configs = ["fp32", "kiln", "ort-dynamic", "ort-dynamic-per-channel", "ort-static-minmax"]
    ort = ModelResult("minilm", 8, accuracy={c: _accuracy(0.98) for c in configs[1:]},
                      median_ms={c: 10.0 + i for i, c in enumerate(configs)},
                      ratio_vs_fp32={c: 1.0 for c in configs}, kiln_vs_peer={c: 0.9 for c in configs[2:]},
                      configs=configs, fp32_paraphrase=1.0, notes=["ort-nbits4: not run: no MatMul"])
    table = render([ort], "python -m benchmarks quantization", "Machine: test")
    rows = [line for line in table.splitlines() if line.startswith("| minilm")]
    assert [row.split(" | ")[2] for row in rows] == configs
    assert "reference (paraphrase 1.000)" in rows[0] and "paraphrase 0.938" in rows[1]
    assert "; ort-nbits4: not run: no MatMul" in table and "backend=onnxruntime kiln_vs_best_peer=0.900" in table
    ov = OpenVINOResult("minilm", 8, accuracy={c: _accuracy(0.99, None) for c in OPENVINO_CONFIGS[1:]},
                        median_ms={c: 5.0 for c in OPENVINO_CONFIGS}, vs_ort_per_channel={c: 1.0 for c in OPENVINO_CONFIGS},
                        vs_ort_fp32={c: 1.0 for c in OPENVINO_CONFIGS}, kiln_vs_peer={"nncf-int8": 1.0, "nncf-w8": 0.8},
                        group_size=32)
    rows = [line for line in render_openvino([ov]).splitlines() if line.startswith("| minilm")]
    assert [row.split(" | ")[2] for row in rows] == list(OPENVINO_CONFIGS)
    assert rows[0].split(" | ")[6] == "reference"


def test_the_nbits_shapes_table_has_a_ratio_per_format(capsys):
    from benchmarks import nbits_shapes

    assert nbits_shapes.main(["--rows", "2", "--k", "32", "--n", "16", "--threads", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 2 |")]
    assert len(rows) == 1 and len(rows[0].split("|")) == 2 + 2 + 8  # rows, fp32 ms, 8 formats


def test_an_openvino_only_run_prints_no_empty_onnx_runtime_table():
    text = render([], "python -m benchmarks quantization --backends openvino", "Machine: test")
    assert "Command: `python -m benchmarks quantization --backends openvino`" in text
    assert "| model |" not in text and "```" not in text
