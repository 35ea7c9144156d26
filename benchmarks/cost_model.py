"""`python -m benchmarks cost-model`: how well kiln's cost model predicts ORT on this machine.

For every zoo model (batch 1): lower it through ONNX Runtime's graph optimizer
(`kiln.cost_model.measure.lowering`), price every kernel with the calibrated hardware profile, and
measure every kernel with ORT's profiler (`kiln.cost_model.measure.profiling`) and the whole model with
the profiler off, in ``--passes`` rounds over all models (training and held-out models
interleaved, so the machine's drift hits them alike; medians pool every round). Then fit the learned correction on the training models and,
on each held-out model, print

    MODEL analytical spearman=<x> model_error=<y>      (calibrated profile, no fitting)
    MODEL efficiencies spearman=<x> model_error=<y>    (fitted per-class efficiencies + overheads)
    MODEL learned spearman=<x> model_error=<y>         (+ the boosted residual, cross-validated weight)

spearman: rank correlation over the model's kernels of predicted vs measured time;
model_error: |predicted - measured| / measured of the whole-model latency. Every fit also trains
on the kernel corpus (``--corpus N`` one-operator models per operator at sampled shapes,
`kiln.cost_model.measure.corpus`, measured with the models): a correction fitted on four
transformers alone has seen no depthwise conv, Slice or TopK. ``--save`` refits on every model
and the corpus and writes the correction beside the hardware profile, where
`CostModel.default()` picks it up.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.base import CACHE_DIR, THREADS
from kiln.backends.timing import CpuTimes

logger = logging.getLogger(__name__)

TRAIN = ("bert-base", "resnet50", "whisper-tiny-encoder", "llama-gqa")
TEST = ("gpt2", "vit-base", "minilm")
#: Names of the kernel corpus's one-operator models (`kiln.cost_model.measure.corpus`) start with
#: this; their kernels train every fit and are never held out, and they pool as one "model" in the
#: booster's cross-validation (hundreds of one-kernel groups would drown the real models).
CORPUS_PREFIX = "corpus:"
#: Configurations per operator (31 operators), chosen after fits with 6, 12 and 24 on the same
#: measurements (benchmarks/results/cost_model_user_models.md, "kernel corpus").
CORPUS_PER_OP = 12
#: unprofiled seconds per model per pass (`--min-seconds`): the test-retest Spearman of the small
#: models' kernel medians rises with the runs (benchmarks/results/cost_model_user_models.md)
MIN_PASS_SECONDS = 0.25
PROFILE_FILE = "hardware_profile.json"
#: The user zoo's models (`benchmarks.user_zoo`) are priced and measured at the sizes they are
#: deployed at, not at the test's small input sets: at a few microseconds a kernel is mostly the
#: profiler's own overhead. Inputs are kiln's sample inputs at these shapes.
DEPLOYED_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "crnn-captcha": {"input1": (1, 1, 64, 256)},
    "gru-tagger": {"input_ids": (1, 128)},
    "textcnn-max-len": {"input_ids": (1, 64)},
    "cnn-dynamic-hw": {"image": (1, 3, 224, 224)},
    "ocr-cls-neg-dims": {"x": (1, 3, 48, 192)},
    "conv-bn-relu-bn": {"input": (8, 3, 32, 32)},
    "conv-bn-training-export": {"input": (8, 3, 32, 32)},
    "bert-legacy-dynamic": {name: (1, 128) for name in ("input_ids", "attention_mask", "token_type_ids")},
    "detector": {"image": (1, 3, 320, 320)},
    "fpn-resize": {"images": (1, 3, 320, 320)},
    "audio-conv1d": {"waveform": (1, 16000)},
    "early-exit-if": {"pixel_values": (8, 3, 64, 64)},
}


@dataclass
class ModelData:
    """One model's kernels: roofline estimates, measured medians, and the whole-model figures."""

    name: str
    samples: list[Any]  # kiln.cost_model.learned.Sample, one per matched kernel
    measured_model_ms: float
    kernel_sum_ms: float
    kernels: int
    unmatched: list[str] = field(default_factory=list)  # profiled kernels the lowered graph lacks
    # percent of the machine's CPU time other processes used while this model was measured:
    # the profile's medians are only as good as the machine was quiet
    foreign_cpu_pct: float = 0.0
    # an If / Loop / Scan kernel (by its index in `samples`): its own node and the nodes of its
    # subgraphs, each a one-run Sample with how many times it runs; the kernel is predicted as
    # their sum, each part priced as its own class, and left out of fits (its measured time is
    # not one kernel's)
    parts: dict[str, list[tuple[Any, int]]] = field(default_factory=dict)

    def kernel_count(self) -> int:
        """Kernels ORT runs per model run, those inside control flow included (times their runs):
        what the executor's per-kernel term counts, as the profiler times every one of them."""
        return len(self.samples) + sum(sum(runs for _, runs in parts) - 1 for parts in self.parts.values())

    def training_samples(self) -> list[Any]:
        """The samples a correction may be fitted on: every kernel but the control-flow ones."""
        return [s for i, s in enumerate(self.samples) if str(i) not in self.parts]

    def predicted(self, price: Callable[[list[Any]], np.ndarray]) -> np.ndarray:
        """Each kernel's predicted ms by `price` (many samples -> their ms): a control-flow
        kernel's is the sum of its parts', each times its runs."""
        out = np.asarray(price(self.samples), dtype=float) if self.samples else np.zeros(0)
        for index, parts in self.parts.items():
            times = price([sample for sample, _ in parts])
            out[int(index)] = float(sum(t * runs for t, (_, runs) in zip(times, parts)))
        return out


def _profile(cache_dir: Path, recalibrate: bool, threads: int) -> Any:
    from kiln.cost_model.hardware import load
    from kiln.cost_model.measure.calibration import calibrate

    path = cache_dir / PROFILE_FILE
    if path.exists() and not recalibrate:
        return load(path)
    profile = calibrate(threads)
    profile.save(path)
    return profile


@dataclass
class _Priced:
    """A zoo model lowered and priced once; its profiles accumulate pass after pass."""

    name: str
    model: Any  # onnx_ir.Model of the export
    inputs: dict[str, Any]
    estimates: dict[str, Any]  # ORT kernel name -> roofline Estimate (no fitted correction)
    parts: dict[str, list[Any]] = field(default_factory=dict)  # control-flow kernel -> its parts' Estimates
    profiles: list[Any] = field(default_factory=list)  # kiln.cost_model.measure.ModelProfile per pass
    cpu: CpuTimes = CpuTimes(0.0, 0.0)  # over the profiled passes: machine busy and own CPU seconds


def _load(name: str) -> tuple[Any, dict[str, Any]]:
    """The model (as kiln loads it: -1 and placeholder dims read as unknown) and its inputs: a
    trained file from PyPI (`real_files`), a model like users bring (`user_zoo`), else a
    transformer of the benchmark zoo at batch 1."""
    import onnx_ir as ir

    import kiln
    from benchmarks import real_files, zoo
    from kiln.ir.inputs import random_inputs
    from kiln.ir.shapes import ShapeBinding, bind_shapes

    if name.startswith(CORPUS_PREFIX):
        kernel = _CORPUS[name]
        return ir.from_proto(kernel.model), dict(kernel.inputs)
    if name in real_files.FILES:
        case = real_files.load_case(name)
    elif name not in zoo.ZOO:
        from benchmarks import user_zoo

        model = kiln.load(user_zoo.load_case(name).onnx_path)
        inputs = [v for v in model.graph.inputs if not v.is_initializer()]
        shapes = bind_shapes(inputs, ShapeBinding(input_shapes=DEPLOYED_SHAPES.get(name, {})))
        return model, random_inputs(inputs, shapes=shapes)
    else:
        case = zoo.load_case(name, 1, calibration_samples=0, trust_cache=True)
    return kiln.load(case.onnx_path), dict(case.inputs)


#: the kernel corpus in use, by benchmark name (``corpus:<op>-<i>``); filled by `corpus_names`
_CORPUS: dict[str, Any] = {}


def corpus_names(per_op: int) -> list[str]:
    """Benchmark names of the kernel corpus with `per_op` cases of each operator (none for 0)."""
    from kiln.cost_model.measure.corpus import kernel_corpus

    _CORPUS.clear()
    _CORPUS.update({f"{CORPUS_PREFIX}{case.name}": case for case in kernel_corpus(per_op)} if per_op > 0 else {})
    return list(_CORPUS)


def _price(name: str, profile: Any) -> _Priced:
    from kiln.cost_model.measure.observed import price_at_inputs
    from kiln.cost_model.model import CostModel

    model, inputs = _load(name)
    # the roofline terms of every kernel ORT will run (no correction: that is what is fitted), at
    # the shapes of the inputs (observed on the lowered graph where inference cannot size a value)
    estimate, _ = price_at_inputs(CostModel(profile), model, inputs, compiled=True)
    main = estimate.per_node[0][0].graph if estimate.per_node else None  # the walk starts in the main graph
    estimates = {node.name: estimate.inclusive(node) for node, _ in estimate.per_node if node.graph is main}
    parts = {node.name: estimate.parts(node) for node, _ in estimate.per_node if node.graph is main}
    return _Priced(name, model, inputs, estimates, {k: v for k, v in parts.items() if len(v) > 1})


def _measure_pass(priced: _Priced, repeats: int, threads: int, min_seconds: float) -> None:
    """One profiled pass of a model: `repeats` runs, more for a zoo model until its unprofiled
    runs fill `min_seconds` (the corpus's one-operator models keep `repeats`: hundreds of them
    would each take the whole budget)."""
    from kiln.cost_model.measure.profiling import profile_model

    before = CpuTimes.now()
    budget = 0.0 if priced.name.startswith(CORPUS_PREFIX) else min_seconds
    priced.profiles.append(profile_model(priced.model, priced.inputs, repeats=repeats, threads=threads,
                                         min_seconds=budget))
    after = CpuTimes.now()
    if before and after:
        priced.cpu += after - before


def typical_us(samples: Sequence[float]) -> float:
    """A kernel's typical time over its runs: the median of its samples read as whole-microsecond
    bins, interpolated inside the median's bin (`statistics.median_grouped`). ORT's profiler
    reports whole microseconds, and the plain median of whole numbers is a whole number: the many
    kernels of a few microseconds would tie. Interpolating keeps the resolution the run-to-run
    jitter gives and the median's indifference to slow outliers."""
    return float(statistics.median_grouped(samples, interval=1.0))


def _model_data(priced: _Priced) -> ModelData:
    """Pool the passes: each kernel's median over the runs of every pass, and the median of the
    passes' whole-model medians."""
    from kiln.cost_model.learned import Sample

    pooled: dict[str, list[float]] = {}
    for measured in priced.profiles:
        for kernel in measured.kernels:
            if kernel.parent is None:  # a subgraph kernel: its parent's time includes it
                pooled.setdefault(kernel.ort_name, []).extend(kernel.samples_us)
    first = priced.profiles[0]
    samples, unmatched = [], []
    parts: dict[str, list[tuple[Any, int]]] = {}
    for kernel in first.kernels:
        if kernel.parent is not None:
            continue
        if kernel.ort_name not in priced.estimates:
            unmatched.append(kernel.ort_name)
            continue
        estimate = priced.estimates[kernel.ort_name]
        group = "corpus" if priced.name.startswith(CORPUS_PREFIX) else priced.name
        if kernel.ort_name in priced.parts:
            parts[str(len(samples))] = [(Sample.from_estimate(part.per_run(), part.op, 1, 0.0, group), part.runs)
                                        for part in priced.parts[kernel.ort_name]]
        samples.append(Sample.from_estimate(estimate, estimate.op, max(1, len(kernel.node_names)),
                                            typical_us(pooled[kernel.ort_name]) / 1e3, group))
    return ModelData(priced.name, samples, statistics.median(p.model_median_ms for p in priced.profiles),
                     statistics.median(p.kernel_sum_ms for p in priced.profiles), len(priced.estimates),
                     unmatched, priced.cpu.other_pct, parts)


def collect(names: list[str], profile: Any, repeats: int, passes: int = 1,
            min_seconds: float = 0.0) -> dict[str, ModelData]:
    """Price, then measure the kernels of the zoo models `names` at batch 1: `passes` rounds over
    all of them, `repeats` profiled runs of each model per round (more for a fast zoo model:
    `_measure_pass`). Interleaving the models spreads the machine's drift (its speed can move
    severalfold within an hour) over all of them alike, so efficiencies fitted on some models
    still hold for the others."""
    priced = [_price(name, profile) for name in names]
    for _ in range(passes):
        for entry in priced:
            _measure_pass(entry, repeats, profile.threads, min_seconds)
    return {entry.name: _model_data(entry) for entry in priced}


def _collect_cached(names: list[str], profile: Any, repeats: int, passes: int, cache_dir: Path,
                    reuse: bool, min_seconds: float = 0.0) -> dict[str, ModelData]:
    """`collect`, saving each model's result under ``cache_dir/cost_model/``; with `reuse`, saved
    results measured against the same profile are read back instead of measuring again (all or
    none: models measured in different windows would not be interleaved)."""
    from dataclasses import asdict

    from kiln.cost_model.learned import Sample

    paths = {name: cache_dir / "cost_model" / f"{name}.json" for name in names}
    if reuse:
        saved = {name: json.loads(path.read_text()) for name, path in paths.items() if path.exists()}
        if len(saved) == len(names) and all(d.get("profile_source") == profile.source for d in saved.values()):
            out = {}
            for name, d in saved.items():
                d = {k: v for k, v in d.items() if k in ModelData.__dataclass_fields__}
                d["samples"] = [Sample(**s) for s in d["samples"]]
                d["parts"] = {k: [(Sample(**s), runs) for s, runs in v] for k, v in d.get("parts", {}).items()}
                out[name] = ModelData(**d)
            return out
        logger.warning("no saved measurements of all of %s with this profile; measuring again", ", ".join(names))
    data = collect(names, profile, repeats, passes, min_seconds)
    for name, result in data.items():
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        paths[name].write_text(json.dumps({**asdict(result), "profile_source": profile.source,
                                           "passes": passes, "repeats": repeats, "min_seconds": min_seconds}))
    return data


def _spearman(predicted: np.ndarray, measured: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(predicted, measured).statistic)


@dataclass(frozen=True)
class Executor:
    """Whole-model latency from kernel times:
    ``scale * sum(kernels) + per_kernel_ms * kernels + per_run_ms``.
    The scale is the executor's share; the per-kernel term is what ORT's profiler adds to every
    kernel it times (negative) or the executor spends between kernels (positive): a model of a
    few hundred tiny kernels (PaddleOCR's classifier) runs in half its profiled kernel sum. The
    per-run term is what one ``run()`` costs around its kernels (binding inputs and outputs)."""

    scale: float
    per_kernel_ms: float
    per_run_ms: float = 0.0

    def total(self, kernel_sum_ms: float, kernels: int) -> float:
        return max(self.scale * kernel_sum_ms + self.per_kernel_ms * kernels + self.per_run_ms, 1e-6)

    def apply_to(self, correction: Any) -> None:
        """Write these terms into a `LearnedCorrection` (what `CostModel.model_cost` adds up)."""
        correction.executor_scale = self.scale
        correction.executor_overhead_us = self.per_kernel_ms * 1e3
        correction.executor_run_us = self.per_run_ms * 1e3


def evaluate(data: ModelData, predicted: np.ndarray, executor: Executor) -> dict[str, float]:
    """Spearman over kernels and the whole-model error (the executor's total of the predictions)."""
    measured = np.array([s.measured_ms for s in data.samples])
    total = executor.total(float(predicted.sum()), data.kernel_count())
    return {"spearman": _spearman(predicted, measured),
            "model_error": abs(total - data.measured_model_ms) / data.measured_model_ms,
            "predicted_ms": total, "measured_ms": data.measured_model_ms}


#: per-kernel and per-run terms tried by `fit_executor`, in microseconds
_PER_KERNEL_GRID_US = np.linspace(-20.0, 20.0, 81)
_PER_RUN_GRID_US = np.linspace(0.0, 100.0, 51)
#: the fit's prior: a model's wall time is expected within about 10 % (log-ratio sigma) of the
#: executor's total, and the per-kernel term within about 10 us of 0 (ORT's profiler adds a few
#: microseconds per kernel); a few large-kernel models alone then leave the term near 0
_LOG_RATIO_SIGMA = 0.1
_PER_KERNEL_PRIOR_US = 10.0


def fit_executor(models: list[ModelData], corpus: Sequence[ModelData] = ()) -> Executor:
    """The executor terms that best turn the training models' measured kernel medians into their
    unprofiled wall times (least squares of the log ratio under the prior above; for each
    per-kernel and per-run term the scale is the median ratio of what is left over the whole
    models). The kernel corpus's one-operator models, whose wall time is mostly the per-run cost,
    weigh as much together as the whole models do. Ratios, not gaps: a gap is a small difference
    of two large times, which a small wobble of the whole-model time swings by tens of microseconds."""
    def terms(group: list[ModelData]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.array([sum(s.measured_ms for s in d.samples) for d in group]),
                np.array([d.kernel_count() for d in group], dtype=float),
                np.array([d.measured_model_ms for d in group]))

    sums, counts, walls = terms(models)
    corpus = [d for d in corpus if d.samples]
    c_sums, c_counts, c_walls = terms(corpus)
    c_weight = len(models) / len(corpus) if corpus else 0.0
    run_grid = _PER_RUN_GRID_US if corpus else np.zeros(1)
    best: tuple[float, Executor] | None = None
    for per_kernel_us in _PER_KERNEL_GRID_US:
        for per_run_us in run_grid:
            fixed = (per_kernel_us * counts + per_run_us) / 1e3
            rest = walls - fixed
            if np.any(rest <= 0):
                continue
            executor = Executor(float(np.median(rest / sums)), per_kernel_us / 1e3, per_run_us / 1e3)
            loss = float(np.sum((np.log(np.maximum(executor.scale * sums + fixed, 1e-6) / walls)
                                 / _LOG_RATIO_SIGMA) ** 2) + (per_kernel_us / _PER_KERNEL_PRIOR_US) ** 2)
            if corpus:
                predicted = np.maximum(executor.scale * c_sums + (per_kernel_us * c_counts + per_run_us) / 1e3, 1e-6)
                loss += c_weight * float(np.sum((np.log(predicted / c_walls) / _LOG_RATIO_SIGMA) ** 2))
            if best is None or loss < best[0]:
                best = (loss, executor)
    assert best is not None
    return best[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks cost-model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", default=",".join(TRAIN), help="zoo models to fit on (comma-separated)")
    parser.add_argument("--test", default=",".join(TEST), help="held-out zoo models (comma-separated)")
    parser.add_argument("--repeats", type=int, default=10, help="profiled runs of each model per pass (at least)")
    parser.add_argument("--min-seconds", type=float, default=MIN_PASS_SECONDS, metavar="S",
                        help="profile a zoo model for more runs than --repeats until its unprofiled runs take S "
                             "seconds per pass (a millisecond model's kernel medians need hundreds of runs)")
    parser.add_argument("--passes", type=int, default=3,
                        help="rounds over all models (train and test interleaved, so machine drift hits all alike)")
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--recalibrate", action="store_true", help="measure the hardware profile again")
    parser.add_argument("--save", action="store_true",
                        help="refit on all models and save the correction beside the profile")
    parser.add_argument("--out", type=Path, help="also write the table and lines as markdown here")
    parser.add_argument("--leave-one-out", action="store_true",
                        help="also fit on all models but one, for each model, and test on that one")
    parser.add_argument("--corpus", type=int, default=CORPUS_PER_OP, metavar="N",
                        help="also train on N sampled one-operator models per operator of the kernel corpus "
                             "(kiln.cost_model.measure.corpus; measured with the models, never held out; 0: none)")
    parser.add_argument("--retest", action="store_true",
                        help="only measure the --test models in 4 interleaved passes and print how well the passes' "
                             "kernel medians agree (the Spearman ceiling of any predictor), then exit")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the kernels measured by the last run with the same profile (refit only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from kiln.cost_model.learned import correction_path, fit

    started = time.perf_counter()
    if args.retest:
        for line in retest(args.test.split(","), repeats=args.repeats, threads=args.threads,
                           min_seconds=args.min_seconds):
            print(line)
        print(f"({time.perf_counter() - started:.0f} s)")
        return 0
    cache_dir = CACHE_DIR
    profile = _profile(cache_dir, args.recalibrate, args.threads)
    train, test = args.train.split(","), args.test.split(",")
    if set(train) & set(test):
        parser.error(f"train and test overlap: {sorted(set(train) & set(test))}")
    corpus = corpus_names(args.corpus)
    data = _collect_cached([*train, *test, *corpus], profile, args.repeats, args.passes, cache_dir, args.reuse,
                           args.min_seconds)
    corpus_data = [data.pop(name) for name in corpus]
    corpus_samples = [s for d in corpus_data for s in d.samples]
    correction = fit([s for name in train for s in data[name].training_samples()] + corpus_samples, profile)
    # the executor maps a model's summed kernels to its wall time: the training models' scale and
    # per-kernel term, the corpus's per-run cost
    executor = fit_executor([data[name] for name in train], corpus_data)
    executor.apply_to(correction)

    lines, rows, diagnostics = [], [], []
    for name in test:
        d = data[name]
        analytical = evaluate(d, d.predicted(lambda samples: np.array([_analytical_ms(s, profile) for s in samples])),
                              Executor(1.0, 0.0))
        fitted = evaluate(d, d.predicted(lambda samples: correction.predict_samples(samples, residual=False)), executor)
        learned = evaluate(d, d.predicted(correction.predict_samples), executor)
        diagnostics.append(_by_class(d, d.predicted(correction.predict_samples)))
        for label, result in (("analytical", analytical), ("efficiencies", fitted), ("learned", learned)):
            lines.append(f"{name} {label} spearman={result['spearman']:.3f} model_error={result['model_error']:.3f}")
            rows.append(f"| {name} | {label} | {len(d.samples)} | {result['spearman']:.3f} | "
                        f"{result['predicted_ms']:.1f} | {result['measured_ms']:.1f} | {result['model_error']:.3f} |")
    header = [
        f"Hardware profile: {profile.source}",
        (f"Trained on {', '.join(train)}"
         + (f" + the kernel corpus ({len(corpus)} one-operator models, {len(corpus_samples)} kernels)" if corpus else "")
         + f" ({correction.samples} kernels; fit log-RMSE {correction.fit_log_rmse}); "
         f"wall = {executor.scale:.3f} x summed kernel medians {executor.per_kernel_ms * 1e3:+.1f} us per kernel "
         f"{executor.per_run_ms * 1e3:+.1f} us per run; "
         f"fitted per-kernel overhead (median over classes) "
         f"{correction.launch_overhead_us:.1f} us"),
        "Fitted efficiencies: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(correction.efficiency.items())),
        (f"Booster weight {correction.residual_weight:g}, chosen by leave-one-model-out cross-validation over the "
         f"training models (score per weight, lower is better: {correction.residual_weight_scores})"),
        "",
        "| model | predictor | kernels | spearman | predicted ms | measured ms | model error |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    header.insert(3, "CPU time taken by other processes while measuring: "
                  + ", ".join(f"{name} {d.foreign_cpu_pct:.0f}%" for name, d in data.items())
                  + (f", kernel corpus {statistics.median(d.foreign_cpu_pct for d in corpus_data):.0f}% (median)"
                     if corpus_data else ""))
    for name, d in data.items():
        if d.unmatched:
            header.insert(3, f"{name}: {len(d.unmatched)} profiled kernels not in the lowered graph: {d.unmatched[:5]}")
    footer = ["", *_leave_one_model_out(data, profile, corpus_data)] if args.leave_one_out else []
    text = "\n".join([*header, *rows, "", *diagnostics, "", *lines, *footer, "",
                      f"({time.perf_counter() - started:.0f} s)"])
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"`{' '.join(['python -m benchmarks cost-model', *(argv or [])])}`\n\n```\n{text}\n```\n")
    if args.save:  # where CostModel.default() (kiln optimize, kiln cost) reads them
        from kiln.cost_model.hardware import default_profile_path

        full = fit([s for d in data.values() for s in d.training_samples()] + corpus_samples, profile)
        fit_executor(list(data.values()), corpus_data).apply_to(full)
        profile.save(default_profile_path())
        path = full.save(correction_path(default_profile_path()))
        print(f"profile and correction fitted on {len(data)} models written to {default_profile_path()}, {path}")
    print(json.dumps({"train": train, "test": test}))
    return 0


def retest(names: list[str], passes: int = 4, repeats: int = 10, threads: int = THREADS,
           min_seconds: float = 0.0) -> list[str]:
    """Test-retest reliability of the kernel measurement: `passes` interleaved profiling passes of
    each model, then the Spearman of one pass's typical kernel times (`typical_us`) against
    another's (median and minimum over the pairs) and of the first half of the passes' runs pooled
    against the second half's.
    No predictor can correlate with the measurement better than it correlates with itself."""
    from kiln.cost_model.measure.profiling import profile_model

    loaded = {name: _load(name) for name in names}
    profiles: dict[str, list[Any]] = {name: [] for name in names}
    for _ in range(passes):
        for name, (model, inputs) in loaded.items():
            profiles[name].append(profile_model(model, inputs, repeats=repeats, threads=threads,
                                                min_seconds=min_seconds))
    lines = []
    for name, measured in profiles.items():
        runs = [{k.ort_name: k.samples_us for k in p.kernels if k.parent is None} for p in measured]
        medians = [{name: typical_us(samples) for name, samples in r.items()} for r in runs]
        keys = sorted(medians[0])
        pairs = [_spearman(np.array([medians[i][k] for k in keys]), np.array([medians[j][k] for k in keys]))
                 for i in range(passes) for j in range(i + 1, passes)]
        half = passes // 2
        pooled = [np.array([typical_us([v for r in group for v in r[k]]) for k in keys])
                  for group in (runs[:half], runs[half:])]
        walls = [p.model_median_ms for p in measured]
        lines.append(f"{name} retest kernels={len(keys)} pass_vs_pass={statistics.median(pairs):.3f} "
                     f"(min {min(pairs):.3f}) pooled_halves={_spearman(*pooled):.3f} "
                     f"wall_max/min={max(walls) / min(walls):.2f}")
    return lines


def _leave_one_model_out(data: dict[str, ModelData], profile: Any, corpus: list[ModelData]) -> list[str]:
    """For every measured model: the learned correction fitted on all the others (and the kernel
    corpus, if measured), tested on it - how far the held-out accuracy of the chosen split carries
    to other splits."""
    from kiln.cost_model.learned import fit

    lines = ["Leave one model out (learned correction fitted on the other models):"]
    for name, held in data.items():
        others = [d for other, d in data.items() if other != name]
        correction = fit([s for d in others for s in d.training_samples()] + [s for d in corpus for s in d.samples],
                         profile)
        result = evaluate(held, held.predicted(correction.predict_samples), fit_executor(others, corpus))
        lines.append(f"{name} leave-one-out spearman={result['spearman']:.3f} model_error={result['model_error']:.3f} "
                     f"(predicted {result['predicted_ms']:.1f} ms, measured {result['measured_ms']:.1f} ms, "
                     f"booster weight {correction.residual_weight:g})")
    return lines


def _by_class(data: ModelData, predicted: np.ndarray) -> str:
    """One line per held-out model: measured vs learned-predicted ms per op class, and the
    profiled kernel sum against the unprofiled wall time."""
    measured: dict[str, float] = {}
    guessed: dict[str, float] = {}
    for sample, value in zip(data.samples, predicted):
        measured[sample.op_class] = measured.get(sample.op_class, 0.0) + sample.measured_ms
        guessed[sample.op_class] = guessed.get(sample.op_class, 0.0) + float(value)
    parts = ", ".join(f"{c} {measured[c]:.1f}/{guessed[c]:.1f}" for c in sorted(measured, key=lambda c: -measured[c]))
    return (f"{data.name}: kernel sum {data.kernel_sum_ms:.1f} ms, wall {data.measured_model_ms:.1f} ms, "
            f"other processes {data.foreign_cpu_pct:.0f}% of the CPU time; "
            f"measured/predicted ms by class: {parts}")


def _analytical_ms(sample: Any, profile: Any) -> float:
    """The calibrated profile's roofline time of a sample (no fitted correction)."""
    return sample.body_ms / profile.efficiency_of(sample.op_class) + profile.launch_overhead_us / 1e3
