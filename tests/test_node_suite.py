"""The ONNX node test suite through kiln: no case that ONNX Runtime passes may break in kiln.

For every case of ``onnx.backend.test.loader.load_node_model_tests()``:

* baseline: the original model in ONNX Runtime (default graph optimization level, one intra-op
  thread) must reproduce the expected outputs of every data set; cases that do not are not
  kiln's business (ORT lacks the op/type, or disagrees with the reference) and are only counted;
* round trip: ``kiln.capture`` -> ``kiln.ir.serialization.save_model`` -> ORT must pass too;
* optimized: ``kiln.optimize(level=L, sample_inputs=<first data set>)`` at every level L >= 1 -> ``save`` -> ORT must
  pass too.

Any mismatch, or any exception raised by kiln, on a case that passes as given is a regression.
The counts are printed at the end of the test (visible in ``pytest -q``).
"""

from __future__ import annotations

import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort

import kiln
from kiln.backends.onnxruntime import ort_value_to_numpy, to_ort_value
from kiln.ir.serialization import save_model
from kiln.passes.infra.validation import is_ml_dtype
from kiln.passes.pipeline import MAX_LEVEL

# Every optimization level kiln offers must keep every case ORT passes passing.
LEVELS = tuple(range(1, MAX_LEVEL + 1))


def to_ort_feed(value: Any) -> Any:
    """Numpy arrays as they are; types ORT's numpy bridge lacks (bfloat16, float8...) as OrtValues."""
    if isinstance(value, list):
        return [to_ort_feed(v) for v in value]
    if isinstance(value, np.ndarray) and is_ml_dtype(value.dtype):
        return to_ort_value(value)
    return value

# ----------------------------------------------------------------------------- loading


def load_cases() -> list[Any]:
    """The node test cases; the generators emit numpy RuntimeWarnings (overflow, divide by zero)."""
    from onnx.backend.test.loader import load_node_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(load_node_model_tests())


def input_names(model: onnx.ModelProto) -> list[str]:
    """Graph inputs that are not initializers, in order (the order of a data set's inputs)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def normalize(value: Any) -> Any:
    """A data-set entry as ORT takes/gives it: TensorProto -> ndarray, numpy scalar -> 0-d array,
    sequences -> lists, None (an empty optional) stays None."""
    if value is None:
        return None
    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    return np.asarray(value)


# ----------------------------------------------------------------------------- comparison


def assert_close(expected: Any, actual: Any, rtol: float, atol: float, where: str = "output") -> None:
    """np.testing.assert_allclose semantics (NaN == NaN), recursing into sequences; strings and
    booleans compare exactly; ml_dtypes types (bfloat16, float8, int4...) compare as float32."""
    if expected is None:
        if actual is not None:
            raise AssertionError(f"{where}: expected an empty optional, got {type(actual).__name__}")
        return
    if isinstance(expected, list):
        if not isinstance(actual, (list, tuple)):
            raise AssertionError(f"{where}: expected a sequence, got {type(actual).__name__}")
        if len(actual) != len(expected):
            raise AssertionError(f"{where}: sequence of {len(actual)} instead of {len(expected)}")
        for k, (e, a) in enumerate(zip(expected, actual)):
            assert_close(e, a, rtol, atol, f"{where}[{k}]")
        return
    if actual is None or isinstance(actual, (list, tuple)):
        raise AssertionError(f"{where}: expected a tensor, got {type(actual).__name__}")
    actual = np.asarray(actual)
    if actual.shape != expected.shape:
        raise AssertionError(f"{where}: shape {actual.shape} instead of {expected.shape}")
    if expected.dtype == object or expected.dtype.kind in "USO":
        np.testing.assert_array_equal(actual, expected, err_msg=where)
        return
    if is_ml_dtype(expected.dtype) and actual.dtype.kind == "u" and actual.dtype.itemsize == expected.dtype.itemsize:
        actual = actual.view(expected.dtype)  # ORT hands some 8/16-bit float types back as raw uint
    if actual.dtype != expected.dtype:
        raise AssertionError(f"{where}: dtype {actual.dtype} instead of {expected.dtype}")
    if expected.dtype == np.bool_:
        np.testing.assert_array_equal(actual, expected, err_msg=where)
        return
    if is_ml_dtype(expected.dtype):
        if expected.dtype.name == "bfloat16":
            rtol = max(rtol, 2**-6)  # two bfloat16 ulps, as onnx's own backend runner allows
        expected = expected.astype(np.float32)
        actual = actual.astype(np.float32)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True, err_msg=where)


# ----------------------------------------------------------------------------- running


def session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()  # default graph optimization level
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # load failures are reported as exceptions
    return options


def fetch(session: ort.InferenceSession, feeds: dict[str, Any]) -> list[Any]:
    """Every output, in graph-output order."""
    try:
        return session.run(None, feeds)
    except Exception as exc:
        if "No corresponding Numpy type" not in str(exc):
            raise
    values = {k: v if isinstance(v, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(v) for k, v in feeds.items()}
    return [ort_value_to_numpy(v) for v in session.run_with_ort_values(None, values)]


def run_and_compare(model: bytes | str, case: Any, names: list[str]) -> None:
    """Load `model` (serialized bytes or a path) in ORT and check every data set of `case`."""
    session = ort.InferenceSession(model, session_options(), providers=["CPUExecutionProvider"])
    for index, (inputs, outputs) in enumerate(case.data_sets):
        feeds = {name: to_ort_feed(normalize(x)) for name, x in zip(names, inputs)}
        feeds = {k: v for k, v in feeds.items() if v is not None}  # an empty optional input is omitted
        got = fetch(session, feeds)
        expected = [normalize(o) for o in outputs]
        if len(got) != len(expected):
            raise AssertionError(f"{len(got)} outputs instead of {len(expected)}")
        for k, (e, a) in enumerate(zip(expected, got)):
            assert_close(e, a, case.rtol, case.atol, f"data set {index} output {k}")


def short(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}"


@dataclass
class CaseResult:
    name: str
    ort_pass: bool = False
    ort_error: str = ""
    roundtrip_error: str | None = None  # None: passed (or not run because ORT fails the case)
    optimized_errors: dict[int, str] = field(default_factory=dict)  # level -> error (absent: passed)
    pass_problems: list[str] = field(default_factory=list)  # kiln passes that raised / were rolled back
    seconds: dict[str, float] = field(default_factory=dict)  # per stage


def _keep_failed(path: Path, case: Any, stage: str) -> None:
    """Leave the failing model next to the scratch file for debugging."""
    if path.exists():
        path.replace(path.with_name(f"{case.name}.{stage}.onnx"))


def evaluate_case(case: Any, workdir: Path) -> CaseResult:
    """Baseline, round trip and optimized checks of one case (kiln runs only if ORT passes)."""
    result = CaseResult(case.name)
    names = input_names(case.model)
    started = time.perf_counter()
    try:
        run_and_compare(case.model.SerializeToString(), case, names)
        result.ort_pass = True
    except Exception as exc:  # ORT cannot load/run it, or disagrees with the reference
        result.ort_error = short(exc, 200)
    result.seconds["ort"] = time.perf_counter() - started
    if not result.ort_pass:
        return result

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        started = time.perf_counter()
        path = workdir / "roundtrip.onnx"
        try:
            save_model(kiln.capture(case.model), path)
            run_and_compare(str(path), case, names)
        except Exception as exc:
            result.roundtrip_error = short(exc)
            _keep_failed(path, case, "roundtrip")
        result.seconds["roundtrip"] = time.perf_counter() - started

        sample = {name: normalize(x) for name, x in zip(names, case.data_sets[0][0])}
        for level in LEVELS:
            started = time.perf_counter()
            path = workdir / f"optimized-l{level}.onnx"
            try:
                optimized = kiln.optimize(case.model, level=level, sample_inputs=sample)
                for entry in optimized.report.passes:
                    if entry.status in ("failed", "rolled_back"):
                        result.pass_problems.append(
                            f"level {level} {entry.name}: {' '.join(entry.message.split())[:160]}")
                optimized.save(path)
                run_and_compare(str(path), case, names)
            except Exception as exc:
                result.optimized_errors[level] = short(exc)
                _keep_failed(path, case, f"optimized-l{level}")
            result.seconds[f"level {level}"] = time.perf_counter() - started
    return result


def run_suite(cases: list[Any], workdir: Path) -> list[CaseResult]:
    results = []
    for case in cases:
        try:
            results.append(evaluate_case(case, workdir))
        except Exception as exc:  # a bug in this harness: counted as a failure, loudly
            failed = CaseResult(case.name, ort_pass=True)
            failed.roundtrip_error = f"harness error {short(exc)}\n{traceback.format_exc()}"
            results.append(failed)
    return results


def summarize(results: list[CaseResult], load_seconds: float = 0.0) -> tuple[str, list[str], list[str]]:
    """The counts line, the regressions, and notes on kiln passes that were rolled back."""
    ort_pass = [r for r in results if r.ort_pass]
    roundtrip_pass = sum(1 for r in ort_pass if r.roundtrip_error is None)
    optimized_pass = {level: sum(1 for r in ort_pass if level not in r.optimized_errors) for level in LEVELS}
    regressions = []
    for r in ort_pass:
        if r.roundtrip_error is not None:
            regressions.append(f"{r.name} [roundtrip] {r.roundtrip_error}")
        for level, error in r.optimized_errors.items():
            regressions.append(f"{r.name} [optimized level {level}] {error}")
    notes = [f"{r.name}: {p}" for r in ort_pass for p in r.pass_problems]
    stage = Counter()
    for r in results:
        stage.update(r.seconds)
    times = ", ".join(f"{k} {v:.1f} s" for k, v in [("load", load_seconds), *stage.items()])
    line = (f"node suite: total={len(results)} ort_pass={len(ort_pass)} roundtrip_pass={roundtrip_pass} "
            + " ".join(f"optimized_l{level}_pass={n}" for level, n in optimized_pass.items())
            + f" regressions={len(regressions)} "
            f"passes_rolled_back={len(notes)} ({times})")
    return line, regressions, notes


# ----------------------------------------------------------------------------- the test


def test_onnx_node_suite_has_no_kiln_regressions(tmp_path, capsys):
    started = time.perf_counter()
    cases = load_cases()
    load_seconds = time.perf_counter() - started
    assert len(cases) > 1000, f"the ONNX node suite has only {len(cases)} cases"
    results = run_suite(cases, tmp_path)
    line, regressions, notes = summarize(results, load_seconds)
    line += f" wall={time.perf_counter() - started:.1f} s"
    with capsys.disabled():  # show the counts under `pytest -q` too, pass or fail
        print("\n" + line)
        for note in notes:  # passes kiln rolled back: not regressions, but kiln bugs worth fixing
            print(f"  note: {note}")
    assert sum(r.ort_pass for r in results) > 1000, f"ONNX Runtime passes too few cases: {line}"
    assert len(regressions) == 0, f"{line}\n{len(regressions)} regression(s):\n" + "\n".join(regressions)


if __name__ == "__main__":  # python tests/test_node_suite.py [name-substring ...]: a quick report
    t0 = time.perf_counter()
    selected = load_cases()
    t_load = time.perf_counter() - t0
    if len(sys.argv) > 1:
        selected = [c for c in selected if any(s in c.name for s in sys.argv[1:])]
    with tempfile.TemporaryDirectory() as d:
        res = run_suite(selected, Path(d))
    summary, regs, rolled_back = summarize(res, t_load)
    print(summary, f"wall={time.perf_counter() - t0:.1f} s")
    print("\n".join(regs))
    print("\n".join(f"  note: {n}" for n in rolled_back))
    slowest = sorted(res, key=lambda r: -sum(r.seconds.values()))[:5]
    print("slowest:", ", ".join(f"{r.name} {sum(r.seconds.values()):.2f}s" for r in slowest))
