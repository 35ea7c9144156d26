"""`python -m benchmarks equivalence`: comparing two snapshots (synthetic, written to tmp_path),
the markdown table, the keyword detection for older trees, the temporary base worktree, the run's
order and replay seeding (fake worker), and one real worker process on a tiny model."""

from __future__ import annotations

import io
import json
import subprocess
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_model, tensor_info
from onnx import helper, numpy_helper

from benchmarks import equivalence as eq


def _export(path: Path, identities: int = 0) -> Path:
    """y = Relu(x + B) followed by `identities` Identity nodes (a different node count)."""
    bias = numpy_helper.from_array(np.arange(3, dtype=np.float32), "B")
    nodes = [helper.make_node("Add", ["x", "B"], ["s"]), helper.make_node("Relu", ["s"], ["r0"])]
    for i in range(identities):
        nodes.append(helper.make_node("Identity", [f"r{i}"], [f"r{i + 1}"]))
    nodes.append(helper.make_node("Identity", [f"r{identities}"], ["y"]))
    onnx.save(make_model(nodes, [tensor_info("x", [2, 3])], [tensor_info("y", [2, 3])], [bias]), path)
    return path


def _record(model: Path, passes: tuple[tuple[str, str], ...] = (), **extra) -> dict:
    """A worker record of case bert-tiny-L1-default whose optimized model is `model`."""
    return {"model": "bert-tiny", "level": 1, "variant": "default", "status": "ok", "call": "default arguments",
            "model_sha256": "m", "inputs_sha256": "i", "original": {"nodes": 9},
            "optimized": eq.analyze_onnx(model),
            "report": {"passes": [{"name": n, "status": s, "message": ""} for n, s in passes]}, **extra}


CID = "bert-tiny-L1-default"
OUTPUT = np.linspace(-1.0, 1.0, 6, dtype=np.float32).reshape(2, 3)


def _snapshot(folder: Path, records: dict[str, dict], outputs: dict[str, np.ndarray]) -> Path:
    eq.save_snapshot(folder, {"tree": folder.name, "cases": records})
    for cid, value in outputs.items():
        np.savez(folder / f"{cid}.npz", y=value)
    return folder


def _pair(tmp_path: Path, new_record: dict, new_output: np.ndarray = OUTPUT,
          base_record: dict | None = None) -> list[eq.CaseComparison]:
    base_record = base_record or _record(_export(tmp_path / "base.onnx"))
    base = _snapshot(tmp_path / "base", {CID: base_record}, {CID: OUTPUT})
    new = _snapshot(tmp_path / "new", {CID: new_record}, {CID: new_output})
    return eq.compare_snapshots(base, new)


def test_identical_snapshots_are_the_same(tmp_path):
    [c] = _pair(tmp_path, _record(_export(tmp_path / "new.onnx")))
    assert c.compared and c.verdict == "same" and not c.problem
    assert (c.base_nodes, c.new_nodes, c.original_nodes) == (3, 3, 9)
    assert c.outputs.identical and c.outputs.max_abs == 0.0 and c.outputs.min_cosine == pytest.approx(1.0)
    assert c.details == []
    summary = eq.summary_line([c])
    assert summary.startswith("SUMMARY: 1 cases: 1 same, 0 close") and "0 differ" in summary
    assert "node counts identical in 1/1" in summary


def test_a_different_node_count_and_output_are_reported(tmp_path):
    new = _record(_export(tmp_path / "new.onnx", identities=2))
    [c] = _pair(tmp_path, new, OUTPUT + 0.5)
    assert c.verdict == "differs: nodes, op histogram, outputs" and c.problem
    assert (c.base_nodes, c.new_nodes) == (3, 5)
    assert c.outputs.max_abs == pytest.approx(0.5) and not c.outputs.identical
    assert "op histogram (base -> new): ai.onnx:Identity 1->3" in c.details
    summary = eq.summary_line([c])
    assert "0 same" in summary and "1 differ" in summary and "outputs beyond atol in 1" in summary
    assert "node counts identical in 0/1" in summary


def test_outputs_within_atol_are_close_and_beyond_it_differ(tmp_path):
    new = _record(_export(tmp_path / "new.onnx"))
    [close] = _pair(tmp_path / "a", new, OUTPUT + 1e-7, base_record=_record(_export(tmp_path / "b.onnx")))
    assert close.verdict == "close" and not close.problem
    [wrong_shape] = _pair(tmp_path / "c", new, OUTPUT[:1], base_record=_record(_export(tmp_path / "d.onnx")))
    assert wrong_shape.verdict == "differs: outputs"
    assert any("shape base (2, 3), new (1, 3)" in d for d in wrong_shape.details)


def test_a_failed_pass_in_the_new_tree_is_flagged(tmp_path):
    passes = (("fold_constants", "applied"), ("fuse_gelu", "failed"), ("cse", "rolled_back"))
    [c] = _pair(tmp_path, _record(_export(tmp_path / "new.onnx"), passes=passes),
                base_record=_record(_export(tmp_path / "base.onnx"), passes=(("fold_constants", "applied"),)))
    assert c.verdict == "failed pass in new: fuse_gelu=failed, cse=rolled_back" and c.problem
    assert "1 with failed/rolled_back passes in new" in eq.summary_line([c])
    assert any(d.startswith("pass list new:") for d in c.details)


def test_a_failed_pass_in_the_base_tree_only_is_a_note(tmp_path):
    base = _record(_export(tmp_path / "base.onnx"), passes=(("cse", "failed"),))
    [c] = _pair(tmp_path, _record(_export(tmp_path / "new.onnx"), passes=(("cse", "applied"),)), base_record=base)
    assert c.verdict == "same"
    assert "base had failed/rolled_back passes too: cse=failed" in c.details


def test_unsupported_variants_are_not_compared_and_missing_cases_are_problems(tmp_path):
    model = _export(tmp_path / "m.onnx")
    unsupported = {**_record(model), "status": "unsupported", "call": "no measured_choices-like parameter"}
    base = _snapshot(tmp_path / "base", {CID: unsupported, "gpt2-L0-default": _record(model)}, {})
    new = _snapshot(tmp_path / "new", {CID: _record(model)}, {CID: OUTPUT})
    by_id = {c.case_id: c for c in eq.compare_snapshots(base, new)}
    assert by_id[CID].verdict == "not compared (base unsupported, new ok)" and not by_id[CID].problem
    assert "no measured_choices-like parameter" in by_id[CID].reason
    missing = by_id["gpt2-L0-default"]
    assert missing.new_status == "missing" and missing.problem and missing.reason == "new: not run"
    assert "2 not compared" in eq.summary_line(list(by_id.values()))


def test_markdown_table_with_header(tmp_path):
    same = _pair(tmp_path / "a", _record(_export(tmp_path / "n1.onnx")),
                 base_record=_record(_export(tmp_path / "b1.onnx")))
    differs = _pair(tmp_path / "c", _record(_export(tmp_path / "n2.onnx", identities=1)), OUTPUT * 2,
                    base_record=_record(_export(tmp_path / "b2.onnx")))
    info = eq.RunInfo(command="python -m benchmarks equivalence --base HEAD~1 --quick", base="HEAD~1 = abc1234 old",
                      new="working tree at def5678 new + uncommitted changes in 2 files",
                      cpu="Test CPU (2 usable cores)")
    report = eq.EquivalenceReport(info, same + differs)
    text = eq.render_markdown(report)
    assert not report.ok
    assert "`python -m benchmarks equivalence --base HEAD~1 --quick`" in text
    assert "- base: HEAD~1 = abc1234 old" in text and "def5678 new + uncommitted" in text and "Test CPU" in text
    rows = [line for line in text.splitlines() if line.startswith("| bert-tiny")]
    assert rows == ["| bert-tiny | 1 | default | 3 / 3 | 0 (bitwise) | same |",
                    "| bert-tiny | 1 | default | 3 / 4 | 1 | differs: nodes, op histogram, outputs |"]
    assert report.summary() in text and "## Details" in text and "ai.onnx:Identity 1->2" in text


def test_call_forms_follow_each_trees_signature():
    def new_api(model, *, level=1, sample_inputs=None, options=None, measured_choices="default"):
        pass

    def old_api(model, *, level=1, inputs=None, choices=None):
        pass

    def no_switch(model, *, level=1, sample_inputs=None, options=None):
        pass

    assert eq.call_forms(types.SimpleNamespace(optimize=new_api), "no_measured_choices") == [
        ({"measured_choices": None}, "measured_choices=None")]
    assert eq.input_keyword(old_api) == "inputs" and eq.input_keyword(new_api) == "sample_inputs"
    assert eq.call_forms(types.SimpleNamespace(optimize=old_api), "no_measured_choices") == [
        ({"choices": None}, "choices=None")]
    # a plain options dict is never used (an unknown key could be ignored): the variant is unsupported
    assert eq.call_forms(types.SimpleNamespace(optimize=no_switch), "no_measured_choices") == []
    assert eq.call_forms(types.SimpleNamespace(optimize=no_switch), "replayed_choices") == [({}, "default arguments")]
    assert eq.pass_status("PassStatus.ROLLED_BACK") == "rolled_back" and eq.pass_status("rollback") == "rolled_back"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git repository with two commits of file.txt ("one", then "two")."""
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    for text in ("one", "two"):
        (root / "file.txt").write_text(text)
        _git(root, "add", "file.txt")
        _git(root, "commit", "-q", "-m", f"file {text}")
    return root


def test_an_unknown_revision_is_named(repo):
    with pytest.raises(eq.EquivalenceError, match="--base 'no-such-rev': no such commit in"):
        eq.resolve_commit(repo, "no-such-rev")


def test_the_base_worktree_is_removed_even_on_error(repo):
    with pytest.raises(RuntimeError, match="boom"):
        with eq.base_worktree(repo, eq.resolve_commit(repo, "HEAD~1")) as tree:
            assert (tree / "file.txt").read_text() == "one"
            raise RuntimeError("boom")
    assert not tree.exists() and len(_git(repo, "worktree", "list").splitlines()) == 1


def test_the_run_replays_the_base_choices_in_both_trees_and_compares_each_case(repo, tmp_path):
    choices = {"version": 2, "machines": {"cpu": {"qkv": {"ratio": 0.9, "trial_ratios": [0.9, 0.92]}}}}
    export = _export(tmp_path / "model.onnx")
    calls = []

    def fake_export(model, cache_dir, inputs_path, log):
        np.savez(inputs_path, x=OUTPUT)
        return export

    def fake_case(tree, model_path, inputs_path, case, out_dir, *, seed_choices, threads, timeout, log):
        label = "base" if tree != repo else "new"
        calls.append((label, case.id, seed_choices))
        assert (tree / "file.txt").read_text() == ("one" if label == "base" else "two")
        output = OUTPUT + (1.0 if label == "new" and case.level == 1 else 0.0)  # the new tree changes level 1
        np.savez(out_dir / f"{case.id}.npz", y=output)
        record = _record(export, measured_choices_file=choices if case.id == "tiny-L2-default" else seed_choices)
        if case.variant == "replayed_choices":
            record["replay_exact"] = True
        return record

    lines = []
    report = eq.run_equivalence("HEAD~1", ["tiny"], cache_dir=tmp_path / "cache", keep=tmp_path / "kept", repo=repo,
                                command="cmd", export=fake_export, run_case=fake_case, echo=lines.append)
    assert [c[:2] for c in calls] == [(label, case.id) for case in eq.cases_for("tiny") for label in ("base", "new")]
    assert [seed for _, cid, seed in calls if cid == "tiny-L2-replayed_choices"] == [choices, choices]
    assert all(seed is None for _, cid, seed in calls if cid != "tiny-L2-replayed_choices")
    verdicts = {c.case_id: c.verdict for c in report.comparisons}
    assert verdicts == {"tiny-L0-default": "same", "tiny-L1-default": "differs: outputs", "tiny-L2-default": "same",
                        "tiny-L2-no_measured_choices": "same", "tiny-L2-replayed_choices": "same"}
    assert not report.ok and report.info.base.startswith("HEAD~1 = ") and "file one" in report.info.base
    assert lines[-1] == report.summary() and any(line.startswith("tiny L1 default") for line in lines)
    kept = eq.compare_snapshots(tmp_path / "kept" / "base", tmp_path / "kept" / "new")
    assert {c.case_id: c.verdict for c in kept} == verdicts
    assert len(_git(repo, "worktree", "list").splitlines()) == 1


def test_the_replayed_case_is_skipped_when_the_base_level_2_run_failed():
    seed, skip = eq._replay_seed(eq.Case("m", 2, "replayed_choices"), {"m-L2-default": {"status": "error"}})
    assert seed is None and "did not succeed" in skip
    assert eq._replay_seed(eq.Case("m", 2, "default"), {}) == (None, "")


def test_a_worker_process_optimizes_with_the_trees_kiln(tmp_path):
    """The real worker, as a subprocess of this tree, on a 4-node model (level 2 without
    measured choices: no timing)."""
    model = _export(tmp_path / "model.onnx", identities=1)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=OUTPUT)
    out = tmp_path / "snap"
    (out / "cases").mkdir(parents=True)
    log = io.StringIO()
    record = eq.snapshot_case(eq.REPO_ROOT, model, inputs, eq.Case("tiny", 2, "no_measured_choices"), out,
                              threads=1, timeout=300, log=log)
    assert record["status"] == "ok", log.getvalue()
    assert record["call"] == "measured_choices=None" and record["input_kwarg"] == "sample_inputs"
    assert Path(record["kiln_file"]).resolve().is_relative_to(eq.REPO_ROOT)
    assert record["original"]["nodes"] == 4 and record["optimized"]["nodes"] < 4
    assert all(p["status"] not in eq.BAD_STATUSES for p in record["report"]["passes"])
    with np.load(out / "tiny-L2-no_measured_choices.npz") as data:
        np.testing.assert_array_equal(data["y"], np.maximum(OUTPUT + np.arange(3, dtype=np.float32), 0))
    assert json.loads((out / "cases" / "tiny-L2-no_measured_choices.json").read_text())["status"] == "ok"
