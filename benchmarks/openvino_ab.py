"""`python -m benchmarks openvino-ab`: kiln's level-2 graph against the original export, both on
OpenVINO f32, timed against each other.

The harness times every configuration against ONNX Runtime; comparing two of its cells divides two
ratios, each with its own noise (a percent or two). Here the two OpenVINO runners of one zoo case
alternate call by call in one process (`kiln.backends.timing.alternate`, the harness's budget), so
the ratio kiln / export is measured directly. One markdown row per model and batch: both medians,
the median per-pair ratio with its 95 % bootstrap interval and the verdict (a tie when the interval
holds 1), the pairs timed and the other processes' share of the busy CPU time.

`--null` times a second compilation of the export instead (the comparison's noise floor);
`--bisect` times the export, level 2, and level 2 without each of its steps, all in rotating
order in one process, to find the pass that costs a model on OpenVINO.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks openvino-ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated zoo names (default: the full zoo)")
    parser.add_argument("--batches", help="comma-separated batch sizes (default: each model's)")
    parser.add_argument("--bisect", action="store_true",
                        help="also time level 2 without each of its steps (one line per graph)")
    parser.add_argument("--null", action="store_true",
                        help="time a second compilation of the export instead of kiln's graph: the spread "
                             "between two compilations of one file, the noise floor of the comparison")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    import kiln
    from benchmarks import zoo
    from benchmarks.base import MAX_SECONDS, MIN_ROUNDS, MIN_SECONDS, SLOW_CALL_MS, THREADS
    from benchmarks.configs import openvino_prepared
    from kiln.backends.timing import alternate

    names = args.models.split(",") if args.models else [n for n, e in zoo.ZOO.items() if not e.quick]
    given = [int(b) for b in args.batches.split(",")] if args.batches else None
    cells = [(name, batch) for name in names for batch in given or zoo.ZOO[name].batches]
    if args.bisect:
        for name, batch in cells:
            _bisect(zoo.load_case(name, batch, calibration_samples=0, trust_cache=True))
        return 0
    other = "second compile" if args.null else "kiln-l2"
    print(f"| model | batch | export ms | {other} ms | {other} / export | 95 % interval | verdict | pairs | "
          "others' CPU % |")
    print("|---|---:|---:|---:|---:|---|---|---:|---:|")
    for name, batch in cells:
        started = time.perf_counter()
        case = zoo.load_case(name, batch, calibration_samples=0, trust_cache=True)
        with tempfile.TemporaryDirectory(prefix="kiln-openvino-ab-") as workdir:
            target = kiln.Target(backend="openvino", intra_op_threads=THREADS)
            if args.null:
                path = case.onnx_path
            else:
                optimized = kiln.optimize(str(case.onnx_path), level=2, sample_inputs=case.inputs, target=target)
                path = optimized.save(Path(workdir) / "kiln-l2.onnx")
            ours = openvino_prepared(case, path, "f32")
            export = openvino_prepared(case, case.onnx_path, "f32")
            timing = alternate(ours.run, export.run, warmup=5, repeats=30, min_seconds=MIN_SECONDS,
                               max_seconds=MAX_SECONDS, min_rounds=MIN_ROUNDS, slow_call_ms=SLOW_CALL_MS)
        s = timing.summary()
        others = f"{s['other_cpu_pct']:.0f}" if s["other_cpu_pct"] is not None else "-"
        low, high = timing.median_ratio_interval()
        verdict = {"A faster": f"{other} faster", "B faster": "export faster"}.get(timing.verdict(), "tie")
        print(f"| {name} | {batch} | {s['baseline_median_ms']:.2f} | {s['median_ms']:.2f} | "
              f"{s['ratio_vs_baseline']:.3f} | {low:.3f}-{high:.3f} | {verdict} | {s['calls']} | {others} |",
              flush=True)
        logging.getLogger(__name__).info("%s b%d took %.0f s", name, batch, time.perf_counter() - started)
    return 0


def _bisect(case: Any) -> None:
    """The export, level 2 and level 2 without each step on OpenVINO f32, called in rotating
    order (30 rounds at least); median ms and median per-round ratio to the export."""
    import statistics

    import kiln
    from benchmarks.base import MAX_SECONDS, THREADS
    from benchmarks.configs import openvino_prepared
    from kiln.backends.timing import CpuTimes, round_robin
    from kiln.passes.pipeline import passes_for_level

    steps = passes_for_level(2)
    target = kiln.Target(backend="openvino", intra_op_threads=THREADS)
    with tempfile.TemporaryDirectory(prefix="kiln-openvino-bisect-") as workdir:
        paths: dict[str, Any] = {"export": case.onnx_path}
        variants = {"level 2": steps, **{f"level 2 without {step.name}": steps[:i] + steps[i + 1:]
                                         for i, step in enumerate(steps)}}
        for label, passes in variants.items():
            optimized = kiln.optimize(str(case.onnx_path), passes=passes, sample_inputs=case.inputs, target=target)
            paths[label] = optimized.save(Path(workdir) / f"{len(paths)}.onnx")
        runners = {label: openvino_prepared(case, path, "f32").run for label, path in paths.items()}
        before = CpuTimes.now()
        times = round_robin(list(runners.values()), warmup=3, repeats=30, max_seconds=MAX_SECONDS)
        after = CpuTimes.now()
    others = f"{(after - before).other_pct:.1f}" if before and after else "-"
    print(f"{case.name} b{case.batch}: bisection on OpenVINO f32, {len(times[0])} rounds, others' CPU {others} %")
    for label, samples in zip(runners, times):
        ratio = statistics.median(a / b for a, b in zip(samples, times[0]))
        print(f"  {label:48s} {statistics.median(samples):10.3f} ms  {ratio:.4f}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
