"""`python -m benchmarks openvino-node-suite`: which ONNX node test cases the OpenVINO backend runs.

For every case of ``onnx.backend.test.loader.load_node_model_tests()`` that ONNX Runtime passes
(the node suite's baseline, `tests/test_node_suite.py`), the model captured by kiln is compiled
by kiln's OpenVINO backend (f32, one thread) and run on every data set, compared with the
expected outputs at the case's tolerance. Each case lands in one bucket: matches, differs, does
not convert (the operators the frontend names), or does not compile / run. Prints the counts,
the operators that do not convert and the cases that differ, as markdown (``--out FILE`` also
writes it).
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any



def _bucket(case: Any, names: list[str]) -> tuple[str, str]:
    """("matches" | "differs" | "does not convert" | "does not compile or run", detail)."""
    import kiln
    from kiln.backends import compile_model
    from kiln.errors import UnsupportedOperatorError
    from tests.test_node_suite import assert_close, normalize

    try:
        exe = compile_model(kiln.capture(case.model), kiln.Target(backend="openvino", intra_op_threads=1))
    except UnsupportedOperatorError as exc:
        return "does not convert", ", ".join(exc.op_types) or str(exc)[:120]
    except Exception as exc:  # noqa: BLE001 - any failure is a bucket, not a crash
        return "does not compile or run", " ".join(str(exc).split())[:160]
    for index, (inputs, outputs) in enumerate(case.data_sets):
        feeds = {name: normalize(x) for name, x in zip(names, inputs)}
        feeds = {k: v for k, v in feeds.items() if v is not None}
        if any(isinstance(v, list) for v in feeds.values()):
            return "does not compile or run", "sequence inputs"
        try:
            got = exe.run(feeds)
        except Exception as exc:  # noqa: BLE001
            return "does not compile or run", " ".join(str(exc).split())[:160]
        try:
            for k, (expected, actual) in enumerate(zip([normalize(o) for o in outputs], got)):
                assert_close(expected, actual, case.rtol, case.atol, f"data set {index} output {k}")
        except AssertionError as exc:
            return "differs", " ".join(str(exc).split())[:160]
    return "matches", ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks openvino-node-suite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    args = parser.parse_args(argv)
    import openvino

    from tests.test_node_suite import input_names, load_cases, run_and_compare

    started = time.perf_counter()
    buckets: Counter[str] = Counter()
    unconverted: dict[str, list[str]] = defaultdict(list)
    details: dict[str, list[tuple[str, str]]] = defaultdict(list)
    cases = load_cases()
    ort_pass = 0
    for case in cases:
        names = input_names(case.model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                run_and_compare(case.model.SerializeToString(), case, names)
            except Exception:  # noqa: BLE001 - not an ORT-passing case: not counted
                continue
            ort_pass += 1
            bucket, detail = _bucket(case, names)
        buckets[bucket] += 1
        if bucket == "does not convert":
            for op in detail.split(", "):
                unconverted[op].append(case.name)
        elif bucket != "matches":
            details[bucket].append((case.name, detail))
    lines = [
        f"OpenVINO {openvino.__version__.split('-')[0]} on the ONNX node test cases ONNX Runtime passes "
        f"({ort_pass} of {len(cases)}), through kiln's OpenVINO backend (f32, one thread):",
        "",
        "| result | cases |",
        "|---|---:|",
        *[f"| {b} | {buckets[b]} |" for b in ("matches", "differs", "does not convert", "does not compile or run")],
        "",
        "Operators the ONNX frontend does not convert (cases):",
        "",
        *[f"- {op}: {len(names)} ({', '.join(sorted(names)[:4])}{', ...' if len(names) > 4 else ''})"
          for op, names in sorted(unconverted.items(), key=lambda kv: (-len(kv[1]), kv[0]))],
    ]
    for bucket, title in (("differs", "Cases whose outputs differ"), ("does not compile or run",
                                                                     "Cases that do not compile or run")):
        lines += ["", f"{title}:", ""]
        lines += [f"- {name}: {detail}" for name, detail in sorted(details[bucket])]
    lines += ["", f"({time.perf_counter() - started:.0f} s)"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("`python -m benchmarks openvino-node-suite`\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
