"""`python -m benchmarks residual-add-as-sum [--models bert-base,minilm,gpt2] [--batch 8]`: what
writing the Add before a LayerNormalization as Sum (`kiln.passes.fusion.residual_add_as_sum`)
does on ONNX Runtime (ENABLE_ALL, 2 threads, no spinning).

Two parts:
- **kernels**: ORT's SkipLayerNormalization (what it fuses Add -> LayerNormalization into),
  against Add + LayerNormalization at level basic (nothing fused) and Sum + LayerNormalization at
  level all (what the pass hands ORT), at each model's hidden size, sequence 128, batch 1 and the given batch;
- **models**: kiln level 2 with its default pipeline against the same pipeline without the pass,
  in fp32 and with ``quantize="int8"``, the four called in rotation in one process
  (`kiln.backends.timing.round_robin`); a ratio is the median of per-round ratios.

One line per model and precision:

    MODEL precision=<fp32|int8> with_sum_vs_without=<ratio> sums=<rewritten>/<candidates>
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MODELS = ("bert-base", "minilm", "gpt2")
CALIBRATION = 4


def _kernel_forms(shape: tuple[int, ...]) -> dict[str, tuple[bytes, str]]:
    """The three forms of x + s -> LayerNormalization over the last axis, with the ORT level each
    runs at."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    hidden = shape[-1]
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), n) for n in ("g", "b")]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape)) for n in ("x", "s")]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))
    norm = helper.make_node("LayerNormalization", ["u", "g", "b"], ["y"], axis=-1, epsilon=1e-12)

    def model(nodes: list[Any]) -> bytes:
        graph = helper.make_graph(nodes, "g", inputs, [output], weights)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
        proto.ir_version = 8
        onnx.checker.check_model(proto)
        return proto.SerializeToString()

    return {
        "SkipLayerNormalization": (model([helper.make_node("SkipLayerNormalization", ["x", "s", "g", "b"], ["y"],
                                                           domain="com.microsoft", epsilon=1e-12)]), "all"),
        "Add+LayerNorm (basic)": (model([helper.make_node("Add", ["x", "s"], ["u"]), norm]), "basic"),
        "Sum+LayerNorm (all)": (model([helper.make_node("Sum", ["x", "s"], ["u"]), norm]), "all"),
    }


def kernels(shape: tuple[int, ...]) -> str:
    """A markdown row: each form's median ms and its ratio to SkipLayerNormalization."""
    from benchmarks.configs import ort_session
    from kiln.backends.timing import round_robin

    rng = np.random.default_rng(1)
    feeds = {n: rng.standard_normal(shape).astype(np.float32) for n in ("x", "s")}
    forms = _kernel_forms(shape)
    sessions = {name: ort_session(proto, level) for name, (proto, level) in forms.items()}
    samples = dict(zip(sessions, round_robin([lambda s=s: s.run(None, feeds) for s in sessions.values()],
                                              repeats=100, min_seconds=2.0, max_seconds=30.0)))
    fused = samples["SkipLayerNormalization"]
    cells = [f"{statistics.median(v):.3f} ms ({statistics.median(a / b for a, b in zip(v, fused)):.2f}x)"
             for v in samples.values()]
    return f"| {'x'.join(map(str, shape))} | " + " | ".join(cells) + " |"


def models(name: str, batch: int, *, repeats: int = 20, min_seconds: float = 5.0) -> list[str]:
    """Lines for one model: kiln level 2 with and without the pass, fp32 and int8."""
    import kiln
    from benchmarks import zoo
    from benchmarks.base import MAX_SECONDS, MIN_ROUNDS, SLOW_CALL_MS
    from benchmarks.configs import ort_session
    from kiln.backends.timing import CpuTimes, round_robin
    from kiln.passes.fusion.residual_add_as_sum import WriteResidualAddsAsSum
    from kiln.passes.pipeline import passes_for_level

    case = zoo.load_case(name, batch, calibration_samples=CALIBRATION)
    without = [step for step in passes_for_level(2) if not isinstance(step, WriteResidualAddsAsSum)]
    sessions, counts = {}, {}
    with tempfile.TemporaryDirectory(prefix=f"kiln-sum-{name}-") as tmp:
        for precision, quantize in (("fp32", None), ("int8", "int8")):
            for form, passes in (("with", None), ("without", without)):
                optimized = kiln.optimize(case.onnx_path, level=2, passes=passes, quantize=quantize,
                                          calibration=case.calibration if quantize else None, sample_inputs=case.inputs)
                entry = next((p for p in optimized.report.passes if p.name == "residual_add_as_sum"), None)
                if entry is not None:
                    counts[precision] = entry.message or "0 candidates"
                path = optimized.save(Path(tmp) / f"{precision}-{form}.onnx")
                sessions[(precision, form)] = ort_session(path)
        calls = [lambda s=s: s.run(None, case.inputs) for s in sessions.values()]
        before = CpuTimes.now()
        samples = dict(zip(sessions, round_robin(calls, repeats=repeats, min_seconds=min_seconds,
                                                 max_seconds=MAX_SECONDS, min_rounds=MIN_ROUNDS,
                                                 slow_call_ms=SLOW_CALL_MS)))
        after = CpuTimes.now()
    other = f"{(after - before).other_pct:.0f} %" if before and after else "?"
    lines = []
    for precision in ("fp32", "int8"):
        with_sum, without_sum = samples[(precision, "with")], samples[(precision, "without")]
        ratio = statistics.median(a / b for a, b in zip(with_sum, without_sum))
        lines.append(f"{name} precision={precision} with_sum_vs_without={ratio:.3f} sums={counts.get(precision, '?')} "
                     f"(median {statistics.median(with_sum):.1f} vs {statistics.median(without_sum):.1f} ms, "
                     f"{len(with_sum)} rounds, other processes {other} of the busy CPU time)")
        print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks residual-add-as-sum", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated zoo names")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--quick", action="store_true", help="fewer timed rounds")
    parser.add_argument("--out", help="markdown file to write the results to")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import onnxruntime as ort

    from kiln.cost_model.machine import cpu_facts

    facts = cpu_facts()
    names = [n for n in args.models.split(",") if n]
    command = "python -m benchmarks residual-add-as-sum " + " ".join(argv if argv is not None else sys.argv[2:])
    out = [f"Command: `{command.strip()}`", "",
           (f"Machine: {facts.get('cpu_model', 'unknown CPU')} (family {facts.get('cpu_family')} model "
            f"{facts.get('cpu_model_number')}), {facts.get('usable_cores')} cores; onnxruntime {ort.__version__}"), "",
           "| batch x sequence x hidden | SkipLayerNormalization | Add+LayerNorm (basic) | Sum+LayerNorm (all) |",
           "|---|---|---|---|"]
    from benchmarks import zoo

    hidden = {"bert-base": 768, "gpt2": 768, "minilm": 384}
    for size in sorted({hidden.get(n, 768) for n in names}):
        for batch in (1, args.batch):
            out.append(kernels((batch, 128, size)))
            print(out[-1], flush=True)
    out.append("")
    settings = {"repeats": 6, "min_seconds": 1.0} if args.quick else {}
    for name in names:
        if name not in zoo.ZOO:
            parser.error(f"unknown model {name!r}; models: {sorted(zoo.ZOO)}")
        out += [f"    {line}" for line in models(name, args.batch, **settings)]
    text = "\n".join(out)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0
