"""`python -m benchmarks openvino-cost`: how well `kiln cost --backend openvino` predicts OpenVINO.

For each model (default: the benchmark zoo at batch 1, the user zoo and the trained real files, on
their zoo inputs), the
kernels OpenVINO executes are profiled with its performance counters (`--repeats` runs, median per
kernel) and priced by the cost model with the OpenVINO profile (`kiln calibrate --backend
openvino`, else the preset); the whole model is timed on a compilation without counters. One
markdown row per model: kernels, predicted and measured latency, the model error
|predicted - measured| / measured, the rank correlation of predicted and measured kernel times,
and the other processes' share of the machine's busy CPU time while measuring. Nothing is fitted to these models.
"""

from __future__ import annotations

import argparse
import logging
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks openvino-cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated names (default: every zoo, user-zoo and real-file model)")
    parser.add_argument("--repeats", type=int, default=20, help="profiled runs per model (default 20)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    import numpy as np

    from benchmarks import real_files, user_zoo, zoo
    from benchmarks.base import outcome
    from benchmarks.cost_model import _load, _spearman
    from kiln.backends.openvino import OpenVINOExecutable
    from kiln.backends.openvino.kernels import runtime_kernels
    from kiln.backends.timing import CpuTimes
    from kiln.cost_model.measure.openvino_lowering import openvino_model_cost
    from kiln.cost_model.model import CostModel
    from kiln.target import Target

    cost_model = CostModel.default(args.threads, backend="openvino")
    target = Target(backend="openvino", intra_op_threads=args.threads)
    print(f"profile: {cost_model.profile.name} ({cost_model.profile.source})")
    print("| model | kernels | predicted ms | measured ms | model error | Spearman | kernel sum ms | others' CPU % |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")

    def row(name: str) -> str:
        model, inputs = _load(name)
        before = CpuTimes.now()
        kernels = runtime_kernels(model, inputs, target, repeats=args.repeats, warmup=3)
        executable = OpenVINOExecutable(model, target, input_shapes={k: np.shape(v) for k, v in inputs.items()})
        measured = executable.benchmark(**inputs, repeats=args.repeats).median_ms
        after = CpuTimes.now()
        others = f"{(after - before).other_pct:.0f}" if before and after else "-"
        estimate = openvino_model_cost(cost_model, model, inputs, kernels=kernels)
        predicted = np.array([e.ms for _, e in estimate.per_node])
        observed = np.array([k.median_us / 1e3 for k in kernels])
        error = abs(estimate.latency_ms - measured) / measured
        return (f"| {name} | {len(kernels)} | {estimate.latency_ms:.3f} | {measured:.3f} | {error:.3f} | "
                f"{_spearman(predicted, observed):.3f} | {observed.sum():.3f} | {others} |")

    names = args.models.split(",") if args.models else [*zoo.ZOO, *user_zoo.USER_ZOO, *real_files.FILES]
    failed = 0
    for name in names:
        started = time.perf_counter()
        text, status = outcome(lambda name=name: row(name), 200)
        failed += status == "raw"
        print(text if status == "ok" else f"| {name} | {text} |||||||", flush=True)
        logging.getLogger(__name__).info("%s took %.1f s", name, time.perf_counter() - started)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
