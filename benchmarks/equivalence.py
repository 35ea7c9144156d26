"""`python -m benchmarks equivalence --base REV`: does the working tree's ``kiln.optimize`` still
produce what REV's produced on the zoo?

A refactor that must not change kiln's output is checked on real models, not only by unit tests:
both trees optimize the same exports, and what they produce is compared case by case.

Cases, for every zoo model at batch 1 (:data:`CASE_SPECS`): levels 0, 1 and 2 with default
arguments; level 2 with ``measured_choices=None``; and level 2 once more with the measured choices
the *base* tree's own level-2 run recorded replayed from a pre-filled cache ("replayed_choices"),
so that timing noise cannot flip a join decision between the trees (``replay_exact`` says whether
anything new was measured).

Snapshot: each case runs in a fresh worker process of its tree (cwd and ``PYTHONPATH`` set to the
tree, checked by where ``kiln`` was imported from), with ``KILN_MEASURED_CHOICES`` pointing at a
fresh file, so no choice cached in ``~/.cache`` leaks in. The worker records, from the saved ONNX
file (independent of kiln's internals): node count, op histogram, initializer count and bytes;
from kiln's report: pass names and statuses; and the outputs on the zoo inputs (ONNX Runtime,
no graph optimizations, the benchmarks' thread count) in an npz.

Comparison (:func:`compare_case`): node counts, op histograms, initializers, outputs (max abs diff
and cosine) and failed / rolled-back passes of the new tree. Verdicts: "same" (same structure,
outputs bitwise identical), "close" (same structure, outputs within ``atol``), "differs: ..."
and/or "failed pass in new: ...", or "not compared (...)" when a side errored, was skipped, or
cannot express the variant ("unsupported").

The base tree is a temporary ``git worktree add --detach`` of REV, removed afterwards even on
error. Exports come from the current tree's :mod:`benchmarks.zoo` (its cache), so both trees
read the same ``model.onnx`` and inputs.

The worker half of this file runs under the *other* tree's kiln: it is started as a script
(``python -P benchmarks/equivalence.py worker ...``; ``-P`` keeps this ``benchmarks/`` folder off
``sys.path``) and so imports only the standard library at module level and nothing from
``benchmarks``. The base tree may name ``optimize``'s keywords differently: the worker finds them
with ``inspect.signature`` (:func:`call_forms`, :func:`input_keyword`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER_SCRIPT = Path(__file__).resolve()

VARIANTS = ("default", "no_measured_choices", "replayed_choices")
# (level, variant) per model, in run order: "replayed_choices" needs the base's L2 "default" first
CASE_SPECS: tuple[tuple[int, str], ...] = (
    (0, "default"), (1, "default"), (2, "default"), (2, "no_measured_choices"), (2, "replayed_choices"))
BAD_STATUSES = ("failed", "rolled_back")
# outputs within this max abs diff (but not bitwise equal) are "close"
DEFAULT_ATOL = 1e-5
DEFAULT_TIMEOUT = 3600.0
# kiln's default PassOptions.measured_choice_max_ratio: a join is taken when every trial is at or
# below it; used only to say which measured decisions differ between the trees
JOIN_MAX_RATIO = 0.95
SNAPSHOT_FILE = "snapshot.json"


class EquivalenceError(RuntimeError):
    """The comparison cannot run: unknown revision, git failure, failed export."""


@dataclass(frozen=True)
class Case:
    """One (model, level, variant) run of ``kiln.optimize``."""

    model: str
    level: int
    variant: str

    @property
    def id(self) -> str:
        return case_id(self.model, self.level, self.variant)


def case_id(model: str, level: int, variant: str) -> str:
    """The name of a case in snapshots and file names, e.g. ``gpt2-L2-default``."""
    return f"{model}-L{level}-{variant}"


def cases_for(model: str) -> list[Case]:
    """Every case of `model`, in run order."""
    return [Case(model, level, variant) for level, variant in CASE_SPECS]


# ---------------------------------------------------------------------------------------------
# Worker: one case in a fresh process of one tree (standard library at module level only)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _tensor_nbytes(tensor: Any) -> int:
    import numpy as np
    import onnx

    count = math.prod(tensor.dims)
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (count + 1) // 2
    try:
        return count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return 0


def analyze_onnx(path: Path) -> dict[str, Any]:
    """Structure of a saved ONNX file, read with onnx alone (not kiln, so both trees are measured
    the same way): top-level node count and op histogram (``domain:op_type``), nodes in subgraphs
    and functions, initializer count and bytes, graph inputs / outputs and an order-sensitive
    fingerprint of the op sequence."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    histogram: dict[str, int] = {}
    subgraph_nodes = 0

    def visit(nodes: Any, top: bool) -> None:
        nonlocal subgraph_nodes
        for node in nodes:
            if top:
                key = f"{node.domain or 'ai.onnx'}:{node.op_type}"
                histogram[key] = histogram.get(key, 0) + 1
            else:
                subgraph_nodes += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g.node, False)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        visit(sub.node, False)

    visit(graph.node, True)
    initializer_names = {t.name for t in graph.initializer}
    sequence = "\n".join(f"{n.domain}:{n.op_type}" for n in graph.node)
    return {
        "nodes": len(graph.node),
        "op_histogram": dict(sorted(histogram.items())),
        "subgraph_nodes": subgraph_nodes,
        "functions": len(model.functions),
        "function_nodes": sum(len(f.node) for f in model.functions),
        "initializers": len(graph.initializer),
        "initializer_bytes": sum(_tensor_nbytes(t) for t in graph.initializer),
        "inputs": [i.name for i in graph.input if i.name not in initializer_names],
        "outputs": [o.name for o in graph.output],
        "op_sequence_sha": hashlib.sha256(sequence.encode()).hexdigest(),
    }


def input_keyword(optimize: Callable[..., Any]) -> str:
    """The keyword this tree's ``kiln.optimize`` takes sample inputs by (older trees differ)."""
    params = inspect.signature(optimize).parameters
    for name in ("sample_inputs", "inputs", "feeds", "validation_inputs", "sample_feeds"):
        if name in params:
            return name
    return "sample_inputs"


def call_forms(kiln: Any, variant: str) -> list[tuple[dict[str, Any], str]]:
    """Candidate extra keyword arguments (besides model, level and inputs) that express `variant`
    in this tree, each with a description, to try in order; empty: the tree cannot express it.

    "no_measured_choices" is whatever turns measured choices off: ``measured_choices=None`` (or
    an older spelling), a ``...=False`` switch, or an ``options`` dataclass with a
    ``measured_choices`` field -- never a plain dict of pass options, where an unknown key could be
    silently ignored and the case would quietly be the default."""
    if variant in ("default", "replayed_choices"):
        return [({}, "default arguments")]
    if variant != "no_measured_choices":
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    params = inspect.signature(kiln.optimize).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    forms: list[tuple[dict[str, Any], str]] = []
    for name in ("measured_choices", "measured_choice", "choices"):
        if name in params or (takes_any and name == "measured_choices"):
            forms.append(({name: None}, f"{name}=None"))
    for name in ("measure_choices", "measured_choices_enabled", "use_measured_choices"):
        if name in params:
            forms.append(({name: False}, f"{name}=False"))
    if "options" in params:
        for attr in dir(kiln):
            obj = getattr(kiln, attr, None)
            fields = getattr(obj, "__dataclass_fields__", None)
            if isinstance(obj, type) and fields and "measured_choices" in fields and attr != "PassContext":
                try:
                    forms.append(({"options": obj(measured_choices=None)}, f"options={attr}(measured_choices=None)"))
                except Exception:  # noqa: BLE001 - a class that cannot be built this way is no candidate
                    pass
    return forms


def pass_status(value: Any) -> str:
    """A pass status as 'applied' / 'unchanged' / 'rolled_back' / 'failed' / ..., also from an enum
    or a string like 'PassStatus.ROLLED_BACK' (trees differ)."""
    value = getattr(value, "value", value)
    text = str(value).split(".")[-1].strip().lower().replace("-", "_").replace(" ", "_")
    return {"rolledback": "rolled_back", "rollback": "rolled_back"}.get(text, text)


def report_summary(report: Any) -> dict[str, Any]:
    """The parts of kiln's OptimizationReport the comparison reads, read by attribute name (with
    defaults) so an older or newer report class works."""
    out: dict[str, Any] = {}
    for key in ("nodes_before", "nodes_after", "parameter_bytes_before", "parameter_bytes_after", "seconds",
                "validation_seconds", "validated", "sample_inputs", "level", "cost_model",
                "predicted_ms_before", "predicted_ms_after"):
        if hasattr(report, key):
            value = getattr(report, key)
            out[key] = value if isinstance(value, (int, float, str, bool, type(None))) else repr(value)
    final = getattr(report, "final_error", None)
    if final is not None:
        out["final_error"] = {k: getattr(final, k, None) for k in ("max_abs", "max_rel", "worst_output", "min_cosine")}
    passes = []
    for p in getattr(report, "passes", None) or []:
        error = getattr(p, "error", None)
        try:
            rule_counts = p.rule_counts()
        except Exception:  # noqa: BLE001 - optional in older trees
            rule_counts = {}
        passes.append({
            "name": getattr(p, "name", type(p).__name__),
            "status": pass_status(getattr(p, "status", "?")),
            "nodes_before": getattr(p, "nodes_before", None),
            "nodes_after": getattr(p, "nodes_after", None),
            "parameter_bytes_after": getattr(p, "parameter_bytes_after", None),
            "rewrites": len(getattr(p, "rewrites", None) or []),
            "rule_counts": rule_counts,
            "max_abs": getattr(error, "max_abs", None),
            "message": str(getattr(p, "message", "") or "")[:500],
        })
    out["passes"] = passes
    return out


def _save_optimized(result: Any, path: Path) -> None:
    """``OptimizedModel.save`` when the tree has it, else onnx_ir with external data."""
    save = getattr(result, "save", None)
    if save is not None:
        save(path)
        return
    import onnx_ir as ir

    ir.save(result.model, str(path), external_data=path.name + ".data")


def _run_outputs(path: Path, feeds: Mapping[str, Any], threads: int) -> dict[str, Any]:
    """Outputs of the saved model in ONNX Runtime on CPU without graph optimizations (so that ORT's
    own rewrites cannot hide or add differences), sequential, `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {i.name: feeds[i.name] for i in session.get_inputs()})
    return dict(zip(names, values))


def _read_choices(path: str | None) -> Any:
    """The measured-choices cache file's content; None when absent."""
    if not path or not Path(path).exists():
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable: {exc}"


def _optimize(kiln: Any, model_path: Path, level: int, variant: str, feeds: Mapping[str, Any],
              record: dict[str, Any]) -> Any:
    """Calls ``kiln.optimize`` with the first accepted form of `variant`; None: unsupported (the
    reason in ``record["call"]``). Only a TypeError from binding optimize's own arguments (no frame
    inside it) means "form not accepted"; one raised deeper inside kiln is a real error."""
    forms = call_forms(kiln, variant)
    if not forms:
        record["call"] = f"no measured_choices-like parameter in kiln.optimize{inspect.signature(kiln.optimize)}"
        return None
    keyword = input_keyword(kiln.optimize)
    record["input_kwarg"] = keyword
    tried = []
    for extra, description in forms:
        started = time.perf_counter()
        try:
            result = kiln.optimize(str(model_path), level=level, **{keyword: dict(feeds)}, **extra)
        except TypeError as exc:
            if exc.__traceback__ is not None and exc.__traceback__.tb_next is None and variant == "no_measured_choices":
                tried.append(f"{description}: TypeError: {exc}")
                continue
            raise
        record["call"] = description
        record["optimize_seconds"] = round(time.perf_counter() - started, 3)
        record["tried_forms"] = tried
        return result
    record["call"] = "every form raised TypeError: " + "; ".join(tried)
    return None


def optimize_and_record(tree: Path, model_path: Path, inputs_path: Path, level: int, variant: str, npz_path: Path,
                        threads: int) -> dict[str, Any]:
    """The worker's job: optimize `model_path` with this process's kiln (which must come from
    `tree`), write the outputs to `npz_path` and return the case's record. Errors become
    ``status="error"`` records (the traceback goes to stderr, i.e. the tree's worker log)."""
    import numpy as np

    tree = tree.resolve()
    record: dict[str, Any] = {"level": level, "variant": variant, "status": "error"}
    started = time.perf_counter()
    try:
        import kiln

        record["kiln_file"] = kiln.__file__
        if not Path(kiln.__file__).resolve().is_relative_to(tree):
            raise RuntimeError(f"imported kiln from {kiln.__file__}, not from the tree {tree}")
        record["kiln_optimize_signature"] = str(inspect.signature(kiln.optimize))
        choices_file = os.environ.get("KILN_MEASURED_CHOICES")
        seeded = _read_choices(choices_file)
        original = analyze_onnx(model_path)
        record["original"] = {k: original[k] for k in ("nodes", "initializers", "initializer_bytes", "functions")}
        record["model_sha256"] = _sha256(model_path)
        record["inputs_sha256"] = _sha256(inputs_path)
        with np.load(inputs_path) as data:
            feeds = {name: data[name] for name in original["inputs"]}
        record["inputs"] = {n: [list(v.shape), str(v.dtype)] for n, v in feeds.items()}

        result = _optimize(kiln, model_path, level, variant, feeds, record)
        if result is None:
            record["status"] = "unsupported"
            return record
        record["report"] = report_summary(result.report)
        record["measured_choices_file"] = _read_choices(choices_file)
        if variant == "replayed_choices":
            record["replay_seeded_with"] = seeded
            # True: nothing new was measured, every decision came from the replayed cache
            record["replay_exact"] = record["measured_choices_file"] == seeded
        with tempfile.TemporaryDirectory(prefix="kiln-equivalence-") as tmp:
            saved = Path(tmp) / "optimized.onnx"
            _save_optimized(result, saved)
            del result
            record["optimized"] = analyze_onnx(saved)
            outputs = _run_outputs(saved, feeds, threads)
        np.savez(npz_path, **outputs)
        record["outputs"] = {n: {"shape": list(v.shape), "dtype": str(v.dtype),
                                 "sha256": hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()}
                             for n, v in outputs.items()}
        record["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - recorded, the driver goes on with the next case
        record["status"] = "error"
        record["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
    finally:
        record["seconds"] = round(time.perf_counter() - started, 2)
    return record


def worker_main(argv: Sequence[str]) -> int:
    """``equivalence.py worker ...``: one case; the record goes to ``--record`` as JSON."""
    parser = argparse.ArgumentParser(prog="benchmarks/equivalence.py worker")
    parser.add_argument("--tree", type=Path, required=True, help="the tree kiln must be imported from")
    parser.add_argument("--model", type=Path, required=True, help="the export (ONNX file)")
    parser.add_argument("--inputs", type=Path, required=True, help="npz of the inputs by ONNX input name")
    parser.add_argument("--level", type=int, required=True)
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--npz", type=Path, required=True, help="where the outputs go")
    parser.add_argument("--record", type=Path, required=True, help="where the record goes (JSON)")
    parser.add_argument("--threads", type=int, required=True, help="ONNX Runtime intra-op threads for the outputs")
    args = parser.parse_args(argv)
    record = optimize_and_record(args.tree, args.model, args.inputs, args.level, args.variant, args.npz, args.threads)
    args.record.parent.mkdir(parents=True, exist_ok=True)
    args.record.write_text(json.dumps(record, indent=1, default=str))
    return 0


# ---------------------------------------------------------------------------------------------
# Driver: git trees, exports, one worker per case


def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise EquivalenceError(f"git {' '.join(args)} failed in {repo}: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout.strip()


def resolve_commit(repo: Path, rev: str) -> str:
    """The full commit id of `rev` in `repo`; an EquivalenceError naming `rev` if there is none."""
    proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", "--end-of-options",
                           f"{rev}^{{commit}}"], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        detail = proc.stderr.strip()
        raise EquivalenceError(f"--base {rev!r}: no such commit in {repo}" + (f" ({detail})" if detail else ""))
    return proc.stdout.strip()


def describe_commit(repo: Path, commit: str) -> str:
    """``<short id> <subject>``, cut to 80 characters."""
    text = _git(repo, "log", "-1", "--format=%h %s", commit)
    return text if len(text) <= 80 else text[:77] + "..."


def describe_working_tree(repo: Path) -> str:
    """The tree's HEAD and whether it has uncommitted changes (what "new" is)."""
    head = describe_commit(repo, "HEAD")
    changed = len(_git(repo, "status", "--porcelain").splitlines())
    return f"working tree at {head}" + (f" + uncommitted changes in {changed} files" if changed else "")


@contextlib.contextmanager
def base_worktree(repo: Path, commit: str) -> Iterator[Path]:
    """A temporary detached ``git worktree`` of `commit`, removed on exit (also on error)."""
    parent = Path(tempfile.mkdtemp(prefix="kiln-equivalence-base-"))
    tree = parent / "tree"
    try:
        _git(repo, "worktree", "add", "--detach", str(tree), commit)
        yield tree
    finally:
        if tree.exists():
            proc = subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", "--force", str(tree)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"warning: could not remove the worktree {tree} ({proc.stderr.strip()}); "
                      "run `git worktree prune` after deleting it", file=sys.stderr)
        shutil.rmtree(parent, ignore_errors=True)


def tree_env(tree: Path, choices_file: Path | None = None) -> dict[str, str]:
    """The environment of a process that must import `tree`'s kiln (and leave the tree as it was)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    if choices_file is not None:
        env["KILN_MEASURED_CHOICES"] = str(choices_file)
    return env


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(line for line in text.strip().splitlines()[-lines:] if line.strip())


# Runs in the current tree: the zoo's ModelCase gives the export and its inputs by ONNX name.
_EXPORT_SCRIPT = """
import sys
from pathlib import Path
import numpy as np
from benchmarks import zoo
case = zoo.load_case(sys.argv[1], 1, cache_dir=Path(sys.argv[2]), calibration_samples=0)
np.savez(sys.argv[3], **case.inputs)
print(case.onnx_path.resolve())
"""


def ensure_export(model: str, cache_dir: Path, inputs_path: Path, *, repo: Path = REPO_ROOT,
                  log: TextIO | None = None) -> Path:
    """The zoo's batch-1 export of `model` (made when its cache is missing or stale) and its inputs
    written to `inputs_path`; runs `repo`'s zoo in a subprocess, so torch and the module never
    stay in this process. Returns the ONNX path."""
    proc = subprocess.run([sys.executable, "-c", _EXPORT_SCRIPT, model, str(cache_dir), str(inputs_path)], cwd=repo,
                          env=tree_env(repo), capture_output=True, text=True)
    if log is not None:
        log.write(f"\n==== export {model} ====\n{proc.stdout}{proc.stderr}")
        log.flush()
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not Path(lines[-1]).exists():
        raise EquivalenceError(f"the zoo export of {model!r} failed (exit {proc.returncode}): {_tail(proc.stderr)}")
    return Path(lines[-1])


def snapshot_case(tree: Path, model_path: Path, inputs_path: Path, case: Case, out_dir: Path, *,
                  seed_choices: Any = None, threads: int, timeout: float, log: TextIO) -> dict[str, Any]:
    """Runs `case` in a worker process of `tree` and returns its record (outputs in
    ``out_dir/<case>.npz``). The worker's ``KILN_MEASURED_CHOICES`` is a fresh file, pre-filled
    with `seed_choices` when given (the replayed case). A crash or timeout is an error record."""
    record_path, npz_path = out_dir / "cases" / f"{case.id}.json", out_dir / f"{case.id}.npz"
    record_path.unlink(missing_ok=True)  # nothing of an earlier run into the same folder (--keep) survives
    npz_path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="kiln-choices-") as choices_dir:
        choices = Path(choices_dir) / "measured_choices.json"
        if seed_choices is not None:
            choices.write_text(json.dumps(seed_choices))
        command = [sys.executable, "-P", str(WORKER_SCRIPT), "worker", "--tree", str(tree), "--model", str(model_path),
                   "--inputs", str(inputs_path), "--level", str(case.level), "--variant", case.variant,
                   "--npz", str(npz_path), "--record", str(record_path), "--threads", str(threads)]
        started = time.perf_counter()
        try:
            proc = subprocess.run(command, cwd=tree, env=tree_env(tree, choices), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout)
            output, status = proc.stdout, f"exit {proc.returncode}"
            finished = proc.returncode == 0
        except subprocess.TimeoutExpired as exc:
            output = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            status, finished = f"timeout after {timeout:g} s", False
    log.write(f"\n==== {case.id} ({status}) ====\n{output}")
    log.flush()
    if finished and record_path.exists():
        record = json.loads(record_path.read_text())
    else:
        record = {"status": "error", "error": f"worker {status}: {_tail(output) or 'no output'}"}
    record.update(model=case.model, level=case.level, variant=case.variant,
                  wall_seconds=round(time.perf_counter() - started, 1))
    return record


def _replay_seed(case: Case, base_cases: Mapping[str, dict[str, Any]]) -> tuple[Any, str]:
    """(choices to pre-fill, reason to skip) for `case`: the replayed case takes the measured
    choices of the base tree's own L2 default run of the model, and is skipped without one."""
    if case.variant != "replayed_choices":
        return None, ""
    source = base_cases.get(case_id(case.model, 2, "default"), {})
    if source.get("status") != "ok":
        return None, "the base tree's L2 default run did not succeed: no choices to replay"
    return source.get("measured_choices_file"), ""  # None: it measured nothing, the file stays absent


def save_snapshot(folder: Path, snapshot: Mapping[str, Any]) -> None:
    """Writes ``folder/snapshot.json`` (rewritten after every case, so an interrupted run keeps its cases)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SNAPSHOT_FILE).write_text(json.dumps(snapshot, indent=1, default=str))


def load_snapshot(folder: Path) -> dict[str, Any]:
    """A snapshot written by :func:`save_snapshot`: ``{"tree": description, "cases": {case id: record}}``."""
    path = folder / SNAPSHOT_FILE
    if not path.exists():
        raise EquivalenceError(f"no snapshot in {folder} ({SNAPSHOT_FILE} missing)")
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------
# Comparison


@dataclass
class OutputDiff:
    """New outputs against base outputs: worst max abs diff and cosine over all outputs."""

    max_abs: float | None  # None: not compared (an npz is missing)
    min_cosine: float | None
    identical: bool  # same names, shapes, dtypes and bits
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        if self.max_abs is None:
            return "outputs n/a"
        if self.identical:
            return "outputs bitwise identical"
        return f"outputs max|new-base| {self.max_abs:.3g} cos {self.min_cosine:.9f}"


def _cosine(x: Any, y: Any) -> float:
    import numpy as np

    x, y = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    if nx == 0 and ny == 0:
        return 1.0
    if nx == 0 or ny == 0:
        return 0.0
    return float(np.dot(x, y) / (nx * ny))


def compare_outputs(base_npz: Path, new_npz: Path) -> OutputDiff:
    """Compares two outputs files output by output (by position when the names differ)."""
    import numpy as np

    missing = [label for label, path in (("base", base_npz), ("new", new_npz)) if not path.exists()]
    if missing:
        return OutputDiff(None, None, False, [f"missing outputs of {' and '.join(missing)}"])
    with np.load(base_npz) as base, np.load(new_npz) as new:
        names_base, names_new = list(base.files), list(new.files)
        notes = [] if names_base == names_new else [f"output names differ: base {names_base}, new {names_new}"]
        if len(names_base) == len(names_new):
            pairs = list(zip(names_base, names_new))
        else:
            pairs = [(n, n) for n in names_base if n in names_new]
        identical = not notes and len(pairs) == len(names_base)
        worst_abs, worst_cos = 0.0, 1.0
        for name_base, name_new in pairs:
            a, b = base[name_base], new[name_new]
            if a.shape != b.shape:
                notes.append(f"{name_base}: shape base {a.shape}, new {b.shape}")
                identical, worst_abs, worst_cos = False, math.inf, 0.0
                continue
            same = a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
            identical &= same
            if a.size == 0:
                continue
            if np.issubdtype(a.dtype, np.number) and np.issubdtype(b.dtype, np.number):
                diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
                cos = _cosine(a, b)
            else:
                diff, cos = (0.0, 1.0) if same else (math.inf, 0.0)
            worst_abs, worst_cos = max(worst_abs, diff), min(worst_cos, cos)
            if len(pairs) > 1:
                notes.append(f"{name_base}: max|new-base| {diff:.3g} cos {cos:.9f}")
        return OutputDiff(worst_abs, worst_cos, identical, notes)


@dataclass
class CaseComparison:
    """One case of the base tree against the same case of the new tree."""

    case_id: str
    model: str
    level: int | None
    variant: str
    base_status: str
    new_status: str
    atol: float = DEFAULT_ATOL
    reason: str = ""  # why the case was not compared
    original_nodes: int | None = None
    base_nodes: int | None = None
    new_nodes: int | None = None
    outputs: OutputDiff | None = None
    differences: list[str] = field(default_factory=list)  # what differs: nodes, op histogram, initializers, outputs
    failed_passes: list[str] = field(default_factory=list)  # "name=status" of the new tree's failed/rolled-back passes
    details: list[str] = field(default_factory=list)  # everything else worth reading

    @property
    def compared(self) -> bool:
        return self.base_status == "ok" and self.new_status == "ok"

    @property
    def verdict(self) -> str:
        """"same", "close", "differs: ...", "failed pass in new: ..." or "not compared (...)"."""
        if not self.compared:
            return f"not compared (base {self.base_status}, new {self.new_status})"
        parts = []
        if self.differences:
            parts.append("differs: " + ", ".join(self.differences))
        if self.failed_passes:
            parts.append("failed pass in new: " + ", ".join(self.failed_passes))
        if parts:
            return "; ".join(parts)
        return "same" if self.outputs is not None and self.outputs.identical else "close"

    @property
    def problem(self) -> bool:
        """True when the case needs a look: it differs, a pass failed in new, or a side errored
        (a variant a tree cannot express, or a skipped replay, is no problem)."""
        if not self.compared:
            return "error" in (self.base_status, self.new_status) or "missing" in (self.base_status, self.new_status)
        return bool(self.differences or self.failed_passes)

    def line(self) -> str:
        """One line for the console."""
        head = f"{self.model} L{self.level} {self.variant:<19}"
        if not self.compared:
            return f"{head} {self.verdict}: {self.reason}"
        nodes = f"nodes {self.original_nodes} -> base {self.base_nodes} / new {self.new_nodes}"
        return f"{head} {nodes}, {self.outputs.text() if self.outputs else 'outputs n/a'} => {self.verdict}"


def _pass_notes(base_passes: list[dict[str, Any]], new_passes: list[dict[str, Any]]) -> list[str]:
    notes = []
    base_bad = [f"{p['name']}={p['status']}" for p in base_passes if p["status"] in BAD_STATUSES]
    if base_bad:
        notes.append(f"base had failed/rolled_back passes too: {', '.join(base_bad)}")
    for p in new_passes:
        if p["status"] in BAD_STATUSES and p.get("message"):
            notes.append(f"new pass {p['name']} {p['status']}: {p['message'][:300]}")
    listed_base = [(p["name"], p["status"]) for p in base_passes]
    listed_new = [(p["name"], p["status"]) for p in new_passes]
    if listed_base != listed_new:
        if [s for _, s in listed_base] == [s for _, s in listed_new]:
            renamed = [f"{x}->{y}" for (x, _), (y, _) in zip(listed_base, listed_new) if x != y]
            notes.append(f"pass statuses same, passes renamed: {', '.join(renamed)}")
        else:
            notes.append(f"pass list base: {', '.join(f'{n}={s}' for n, s in listed_base)}")
            notes.append(f"pass list new:  {', '.join(f'{n}={s}' for n, s in listed_new)}")
    return notes


def _choice_decisions(data: Any) -> dict[str, tuple[float, float, bool]]:
    """Measured-choices cache content -> {key: (ratio, worst trial, joined by kiln's default rule)}."""
    out: dict[str, tuple[float, float, bool]] = {}
    if not isinstance(data, dict):
        return out
    for machine in (data.get("machines") or {}).values():
        for key, entry in (machine or {}).items():
            try:
                ratio = float(entry["ratio"])
                worst = max([float(r) for r in entry.get("trial_ratios") or []] or [ratio])
            except (KeyError, TypeError, ValueError):
                continue
            out[key] = (ratio, worst, worst <= JOIN_MAX_RATIO)
    return out


def _choice_notes(base: dict[str, Any], new: dict[str, Any]) -> list[str]:
    notes = []
    if "replay_exact" in new and not new["replay_exact"]:
        notes.append("new tree measured again despite the replayed cache (its cache format or keys changed?)")
    if "replay_exact" in base and not base["replay_exact"]:
        notes.append("base tree measured again despite the replayed cache")
    decisions_base = _choice_decisions(base.get("measured_choices_file"))
    decisions_new = _choice_decisions(new.get("measured_choices_file"))

    def describe(d: tuple[float, float, bool] | None) -> str:
        return "absent" if d is None else f"ratio {d[0]:.3f} worst {d[1]:.3f} {'join' if d[2] else 'keep'}"

    for key in sorted(set(decisions_base) | set(decisions_new)):
        a, b = decisions_base.get(key), decisions_new.get(key)
        if a is None or b is None or a[2] != b[2]:
            notes.append(f"measured decision differs on {key}: base {describe(a)} | new {describe(b)} "
                         "(timing noise, not the change, if only L2 default differs)")
    return notes


def compare_case(cid: str, base: Mapping[str, Any] | None, new: Mapping[str, Any] | None, base_dir: Path,
                 new_dir: Path, atol: float = DEFAULT_ATOL) -> CaseComparison:
    """Compares the records of one case (a missing record: the case ran in one tree only), reading
    the outputs from ``<dir>/<case id>.npz``."""
    either = base or new or {}
    comparison = CaseComparison(
        case_id=cid, model=either.get("model", cid), level=either.get("level"), variant=either.get("variant", ""),
        base_status=base.get("status", "?") if base is not None else "missing",
        new_status=new.get("status", "?") if new is not None else "missing", atol=atol)
    if not comparison.compared:
        reasons = []
        for label, record in (("base", base), ("new", new)):
            if record is None:
                reasons.append(f"{label}: not run")
            elif record.get("status") != "ok":
                reasons.append(f"{label}: {record.get('error') or record.get('call') or record.get('status')}")
        comparison.reason = "; ".join(reasons)
        return comparison
    assert base is not None and new is not None
    details = comparison.details
    if (base.get("model_sha256"), base.get("inputs_sha256")) != (new.get("model_sha256"), new.get("inputs_sha256")):
        details.append("WARNING: the trees ran on different model / inputs files")
    if base.get("call") != new.get("call"):
        details.append(f"call base: {base.get('call')} | new: {new.get('call')}")
    opt_base, opt_new = base["optimized"], new["optimized"]
    comparison.original_nodes = base.get("original", {}).get("nodes")
    comparison.base_nodes, comparison.new_nodes = opt_base["nodes"], opt_new["nodes"]
    if opt_base["nodes"] != opt_new["nodes"]:
        comparison.differences.append("nodes")
    hist_base, hist_new = opt_base["op_histogram"], opt_new["op_histogram"]
    changed = {k: (hist_base.get(k, 0), hist_new.get(k, 0)) for k in sorted(set(hist_base) | set(hist_new))
               if hist_base.get(k, 0) != hist_new.get(k, 0)}
    if changed:
        comparison.differences.append("op histogram")
        details.append("op histogram (base -> new): " + ", ".join(f"{k} {x}->{y}" for k, (x, y) in changed.items()))
    elif opt_base.get("op_sequence_sha") != opt_new.get("op_sequence_sha"):
        details.append("op histogram same, node order differs")
    init_base = (opt_base.get("initializers"), opt_base.get("initializer_bytes"))
    init_new = (opt_new.get("initializers"), opt_new.get("initializer_bytes"))
    if init_base != init_new:
        comparison.differences.append("initializers")
        details.append(f"initializers base {init_base[0]} ({init_base[1]} B), new {init_new[0]} ({init_new[1]} B)")
    report_base, report_new = base.get("report", {}), new.get("report", {})
    if report_base.get("parameter_bytes_after") != report_new.get("parameter_bytes_after"):
        details.append(f"report parameter_bytes_after base {report_base.get('parameter_bytes_after')}, "
                       f"new {report_new.get('parameter_bytes_after')}")
    passes_base, passes_new = report_base.get("passes", []), report_new.get("passes", [])
    comparison.failed_passes = [f"{p['name']}={p['status']}" for p in passes_new if p["status"] in BAD_STATUSES]
    details.extend(_pass_notes(passes_base, passes_new))
    details.extend(_choice_notes(base, new))
    comparison.outputs = compare_outputs(base_dir / f"{cid}.npz", new_dir / f"{cid}.npz")
    details.extend(comparison.outputs.notes)
    if comparison.outputs.max_abs is None or comparison.outputs.max_abs > atol:
        comparison.differences.append("outputs")
    return comparison


def _order_key(case: Mapping[str, Any], cid: str) -> tuple[str, int, int]:
    variant = case.get("variant", "")
    return (case.get("model", cid), case.get("level", 0), VARIANTS.index(variant) if variant in VARIANTS else 99)


def compare_snapshots(base_dir: Path, new_dir: Path, atol: float = DEFAULT_ATOL) -> list[CaseComparison]:
    """Every case of two snapshot folders, compared (cases in one snapshot only are "not compared")."""
    base_cases = load_snapshot(base_dir).get("cases", {})
    new_cases = load_snapshot(new_dir).get("cases", {})
    ids = sorted(set(base_cases) | set(new_cases),
                 key=lambda c: _order_key(base_cases.get(c) or new_cases.get(c), c))
    return [compare_case(c, base_cases.get(c), new_cases.get(c), base_dir, new_dir, atol) for c in ids]


def summary_line(comparisons: Sequence[CaseComparison], atol: float = DEFAULT_ATOL) -> str:
    """The last line of a run: how many cases are same / close / differ / flagged / not compared."""
    compared = [c for c in comparisons if c.compared]
    count = {verdict: sum(c.verdict == verdict for c in compared) for verdict in ("same", "close")}
    differ = sum(bool(c.differences) for c in compared)
    flagged = sum(bool(c.failed_passes) for c in compared)
    same_nodes = sum(c.base_nodes == c.new_nodes for c in compared)
    histograms = sum("op histogram" in c.differences for c in compared)
    beyond = sum("outputs" in c.differences for c in compared)
    return (f"SUMMARY: {len(comparisons)} cases: {count['same']} same, {count['close']} close (outputs within atol "
            f"{atol:g}), {differ} differ, {flagged} with failed/rolled_back passes in new, "
            f"{len(comparisons) - len(compared)} not compared; node counts identical in {same_nodes}/{len(compared)}, "
            f"op histograms differ in {histograms}, outputs beyond atol in {beyond}")


# ---------------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True)
class RunInfo:
    """What the markdown table is headed by."""

    command: str
    base: str  # "REV = <short id> <subject>"
    new: str  # "working tree at <short id> <subject> + uncommitted changes in N files"
    cpu: str
    atol: float = DEFAULT_ATOL


@dataclass
class EquivalenceReport:
    """A finished comparison: its header and one CaseComparison per case."""

    info: RunInfo
    comparisons: list[CaseComparison]

    @property
    def ok(self) -> bool:
        return not any(c.problem for c in self.comparisons)

    def summary(self) -> str:
        return summary_line(self.comparisons, self.info.atol)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _max_abs_cell(comparison: CaseComparison) -> str:
    outputs = comparison.outputs
    if outputs is None or outputs.max_abs is None:
        return "n/a"
    return "0 (bitwise)" if outputs.identical else f"{outputs.max_abs:.3g}"


def render_markdown(report: EquivalenceReport) -> str:
    """The comparison as markdown: header (command, both commits, CPU), one table row per case
    (model, level, variant, nodes base / new, outputs max abs diff, verdict), the SUMMARY line and
    the details of every case that is not "same"."""
    info = report.info
    lines = [
        "# kiln.optimize equivalence", "",
        f"`{info.command}`", "",
        f"- base: {_cell(info.base)}",
        f"- new: {_cell(info.new)}",
        f"- CPU: {_cell(info.cpu)}",
        "- outputs: ONNX Runtime CPU, no graph optimizations, on the zoo inputs (batch 1); "
        f"\"close\" = same graph structure, outputs within {info.atol:g}",
        "",
        "| model | level | variant | nodes base / new | outputs max abs diff | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for c in report.comparisons:
        nodes = f"{c.base_nodes} / {c.new_nodes}" if c.compared else "-"
        lines.append(f"| {_cell(c.model)} | {c.level} | {_cell(c.variant)} | {nodes} | {_max_abs_cell(c)} | "
                     f"{_cell(c.verdict)} |")
    lines += ["", report.summary()]
    noted = [c for c in report.comparisons if c.verdict != "same" and (c.details or c.reason)]
    if noted:
        lines += ["", "## Details", ""]
        for c in noted:
            lines.append(f"- {c.case_id}: " + "; ".join(_cell(d) for d in ([c.reason] if c.reason else []) + c.details))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The run


def cpu_description() -> str:
    """CPU model and usable cores of this machine (kiln's own reading of /proc/cpuinfo)."""
    from kiln.cost_model.machine import cpu_facts

    facts = cpu_facts()
    return f"{facts['cpu_model']} ({facts['usable_cores']} usable cores)"


@contextlib.contextmanager
def _snapshot_root(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="kiln-equivalence-") as tmp:
        yield Path(tmp)


def run_equivalence(base_rev: str, models: Sequence[str], *, cache_dir: Path, atol: float = DEFAULT_ATOL,
                    timeout: float = DEFAULT_TIMEOUT, keep: Path | None = None, command: str = "",
                    repo: Path = REPO_ROOT, export: Callable[..., Path] = ensure_export,
                    run_case: Callable[..., dict[str, Any]] = snapshot_case,
                    echo: Callable[[str], None] = print) -> EquivalenceReport:
    """Snapshots `models` with `base_rev` (a temporary worktree) and with `repo`'s working tree,
    case by case (base first, then new), echoing one line per case and the SUMMARY.

    Snapshots (``base/`` and ``new/``: snapshot.json, outputs, worker.log) go to `keep`, or to a
    temporary folder removed at the end. `export` and `run_case` are :func:`ensure_export` and
    :func:`snapshot_case` unless a test replaces them."""
    from benchmarks.base import THREADS

    base_commit = resolve_commit(repo, base_rev)
    info = RunInfo(command=command, base=f"{base_rev} = {describe_commit(repo, base_commit)}",
                   new=describe_working_tree(repo), cpu=cpu_description(), atol=atol)
    echo(f"base: {info.base}\nnew:  {info.new}\nCPU:  {info.cpu}")
    comparisons: list[CaseComparison] = []
    with _snapshot_root(keep) as root, base_worktree(repo, base_commit) as base_tree, contextlib.ExitStack() as stack:
        trees = {"base": base_tree, "new": repo}
        dirs = {label: root / label for label in trees}
        snapshots: dict[str, dict[str, Any]] = {
            "base": {"tree": f"{base_rev} ({base_commit})", "cases": {}}, "new": {"tree": info.new, "cases": {}}}
        logs = {}
        for label, folder in dirs.items():
            (folder / "cases").mkdir(parents=True, exist_ok=True)
            logs[label] = stack.enter_context(open(folder / "worker.log", "a"))
        (root / "inputs").mkdir(exist_ok=True)
        for model in models:
            echo(f"[{model}] export (zoo cache {cache_dir}) ...")
            inputs_path = root / "inputs" / f"{model}.npz"
            model_path, export_error = None, ""
            try:
                model_path = export(model, cache_dir, inputs_path, log=logs["new"])
            except EquivalenceError as exc:
                echo(f"[{model}] {exc}")
                export_error = str(exc)
            for case in cases_for(model):
                seed, skip = _replay_seed(case, snapshots["base"]["cases"])
                for label, tree in trees.items():
                    if model_path is None:
                        record = {"status": "error", "error": export_error}
                    elif skip:
                        record = {"status": "skipped", "error": skip}
                    else:
                        record = run_case(tree, model_path, inputs_path, case, dirs[label], seed_choices=seed,
                                          threads=THREADS, timeout=timeout, log=logs[label])
                    record.update(model=case.model, level=case.level, variant=case.variant)
                    snapshots[label]["cases"][case.id] = record
                    save_snapshot(dirs[label], snapshots[label])
                comparison = compare_case(case.id, snapshots["base"]["cases"][case.id],
                                          snapshots["new"]["cases"][case.id], dirs["base"], dirs["new"], atol)
                comparisons.append(comparison)
                echo(comparison.line())
                for detail in comparison.details:
                    echo(f"    {detail}")
    report = EquivalenceReport(info, comparisons)
    echo(report.summary())
    return report


def main(args: argparse.Namespace, command: str = "") -> int:
    """``python -m benchmarks equivalence`` (arguments parsed by benchmarks/__main__.py; `command`
    is the command line for the markdown header). Exit status 0 when every case is same, close,
    unsupported or skipped; 1 when any case differs, flags a failed pass or errored; 2 when the
    comparison could not run (unknown revision or model)."""
    try:
        resolve_commit(REPO_ROOT, args.base)  # before importing the zoo (torch): a typo fails at once
    except EquivalenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from benchmarks import zoo
    from benchmarks.base import CACHE_DIR

    names = [m for m in (args.models or "").split(",") if m]
    models = names or [name for name, entry in zoo.ZOO.items() if entry.quick == args.quick]
    unknown = [m for m in models if m not in zoo.ZOO]
    if unknown:
        print(f"unknown zoo model(s) {', '.join(unknown)}; known: {', '.join(zoo.ZOO)}", file=sys.stderr)
        return 2
    cache_dir = Path(args.cache_dir).resolve() if args.cache_dir else (REPO_ROOT / CACHE_DIR)
    atol = DEFAULT_ATOL if args.atol is None else args.atol
    try:
        report = run_equivalence(args.base, models, cache_dir=cache_dir, atol=atol, timeout=args.timeout,
                                 keep=Path(args.keep).resolve() if args.keep else None, command=command)
    except EquivalenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(render_markdown(report))
        print(f"wrote {args.out}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"]:
        sys.exit("usage: python -m benchmarks equivalence --base REV ... (this file runs directly only as a worker)")
    sys.exit(worker_main(sys.argv[2:]))
