"""`python -m benchmarks quantization [--models minilm,bert-base,gpt2] [--batch 8]`: kiln's int8
against ORT's dynamic quantizer, on ONNX Runtime (ENABLE_ALL, 2 threads, no spinning).

Configurations, all on the zoo's dynamo export:
- ``fp32``: the export as is;
- ``ort-dynamic`` / ``ort-dynamic-per-channel``: ORT ``quantize_dynamic`` (QInt8 weights,
  pre-processed as the harness does), per tensor / per channel;
- with ``--ort-peers`` (default all): ``ort-static-minmax`` / ``ort-static-percentile``, ORT
  ``quantize_static`` QDQ (U8S8, per-channel weights) calibrated by MinMax / Percentile on the
  same calibration sets kiln uses, and ``ort-nbits4`` / ``ort-nbits8``, ORT's MatMulNBits
  weight-only quantizer (symmetric, blocks of 32); a table row each, with kiln's ratio to it
  (the line's best peer is the faster dynamic one, the issue's anchor, except for --scheme int4-weights);
- ``kiln``: ``kiln.optimize(level=2, quantize=QuantConfig(scheme=--scheme, budget=...))`` (by
  default ``quantize="int8"``'s: every sample keeps cosine 0.99) with 4 calibration input sets
  (zoo seeds 1-4) for its budget search; the PassManager checks the budget on the main inputs.
  With ``--scheme int4-weights`` the line's peers are ORT's weight-only ``ort-nbits4`` /
  ``ort-nbits8`` where they ran (the dynamic ones where they could not).

Accuracy against fp32 on 4 held-out input sets (seeds 5-8; kiln's search ran on seeds 1-4, then
on the main inputs that validation checks): MiniLM's sentence
embeddings by their mean and smallest cosine, by top-1 nearest-neighbour agreement (each
sentence's nearest other sentence, fp32 vs quantized, over all held-out sentences) and by the
paraphrase hit rate (the share of `zoo.PARAPHRASES`' sentences whose nearest is their partner,
fp32's own in the reference row); other models
by the cosine of the flattened output (smallest over the sets). Latency: the four configurations
called in rotation in one process (`kiln.backends.timing.round_robin`); a ratio is the median of
per-round ratios. One line per model:

    MODEL backend=onnxruntime kiln_vs_best_peer=<ratio> kiln_cos=<x> peer_cos=<y> (...)

(the best peer is the faster ORT quantization, named in the parentheses with kiln's ratio to the
per-channel one; cos is the accuracy figure above: MiniLM's smallest sentence cosine).

`--backends` (default both): ``openvino`` times kiln's int8 lowered to OpenVINO (int8 weights
behind DequantizeLinear; the CPU plugin quantizes the activations per group) against OpenVINO
CPU f32 and the NNCF peers, NNCF int8 (`nncf.quantize`, calibration sets 1-4), NNCF int8
weight compression (`compress_weights` INT8_SYM, the plugin's default group size kept) and NNCF
4-bit weight compression (`nncf-w4`, INT4_SYM with NNCF's defaults; the line's peer for
``--scheme int4-weights``), in rotation with ORT per-channel as the anchor; one line per model:

    MODEL backend=openvino kiln_vs_best_peer=<ratio> kiln_cos=<x> peer_cos=<y> (...)
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.accuracy import cosine

CALIBRATION = 4  # zoo input sets 1..4: kiln's budget search
HELD_OUT = 4  # zoo input sets 5..8: accuracy
DEFAULT_MODELS = ("minilm", "bert-base", "gpt2")
PEERS = ("ort-dynamic", "ort-dynamic-per-channel")
#: --ort-peers names: ORT's other quantizers, rows ``ort-<name>`` beside the dynamic ones
ORT_PEERS = ("static-minmax", "static-percentile", "nbits4", "nbits8")
#: the line's peers for kiln's weight-only scheme, where they ran
WEIGHT_ONLY_PEERS = ("ort-nbits4", "ort-nbits8")
#: kiln's quantization passes, one per scheme family
KILN_PASSES = ("quantize_int8", "quantize_weights_blockwise")


@dataclass
class Accuracy:
    """Against fp32 on the held-out sets: the smallest (and mean) cosine; top-1 neighbour agreement
    for sentence embeddings."""

    min_cosine: float
    mean_cosine: float
    top1: float | None = None
    paraphrase: float | None = None  # MiniLM: share of `zoo.PARAPHRASES` sentences whose nearest is their partner

    def text(self) -> str:
        top1 = f", top-1 {self.top1:.3f}" if self.top1 is not None else ""
        paraphrase = f", paraphrase {self.paraphrase:.3f}" if self.paraphrase is not None else ""
        return f"min {self.min_cosine:.5f}, mean {self.mean_cosine:.5f}{top1}{paraphrase}"


@dataclass
class ModelResult:
    model: str
    batch: int
    accuracy: dict[str, Accuracy] = field(default_factory=dict)
    median_ms: dict[str, float] = field(default_factory=dict)
    ratio_vs_fp32: dict[str, float] = field(default_factory=dict)
    kiln_vs_peer: dict[str, float] = field(default_factory=dict)
    other_cpu_pct: float | None = None
    kiln_linears: str = ""
    optimize_seconds: float = 0.0
    fp32_paraphrase: float | None = None  # the reference's own paraphrase hit rate (MiniLM)
    configs: list[str] = field(default_factory=list)  # in table order
    notes: list[str] = field(default_factory=list)  # peers that could not run, and why
    line_peers: tuple[str, ...] = PEERS  # the peers the line names the best of

    def best_peer(self) -> str:
        return min(self.line_peers, key=lambda p: self.median_ms[p])

    def line(self) -> str:
        peer = self.best_peer()
        return (f"{self.model} backend=onnxruntime kiln_vs_best_peer={self.kiln_vs_peer[peer]:.3f} "
                f"kiln_cos={self.accuracy['kiln'].min_cosine:.5f} peer_cos={self.accuracy[peer].min_cosine:.5f} "
                f"(best peer {peer}; kiln_vs_ort_per_channel={self.kiln_vs_peer['ort-dynamic-per-channel']:.3f})")


def _embedding_accuracy(references: list[np.ndarray], outputs: list[np.ndarray]) -> Accuracy:
    ref, out = np.concatenate(references).astype(np.float64), np.concatenate(outputs).astype(np.float64)
    rows = np.sum(ref * out, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1))

    return Accuracy(float(rows.min()), float(rows.mean()), float(np.mean(_nearest_other(ref) == _nearest_other(out))))


def _nearest_other(x: np.ndarray) -> np.ndarray:
    """For each row of `x`, the index of the other row with the largest cosine."""
    unit = x.astype(np.float64) / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(axis=1)


def paraphrase_hit_rate(embeddings: np.ndarray) -> float:
    """The share of sentences whose nearest other sentence (by cosine) is their paraphrase, for
    embeddings of pairs laid out as rows 2k and 2k+1."""
    return float(np.mean(_nearest_other(embeddings) == np.arange(len(embeddings)) ^ 1))


def _record_paraphrases(result: ModelResult | OpenVINOResult, runners: dict[str, Any], batch: int,
                        reference: str) -> None:
    """Each configuration's `paraphrase_hit_rate` on `zoo.PARAPHRASES` (MiniLM) into its accuracy,
    the `reference` configuration's into ``result.fp32_paraphrase``."""
    from benchmarks import zoo

    feeds, count = zoo.paraphrase_feeds(batch)
    rates = {config: paraphrase_hit_rate(np.concatenate([np.asarray(run(f)) for f in feeds])[:count])
             for config, run in runners.items()}
    result.fp32_paraphrase = rates[reference]
    for config, accuracy in result.accuracy.items():
        accuracy.paraphrase = rates[config]


def _output_accuracy(references: list[np.ndarray], outputs: list[np.ndarray]) -> Accuracy:
    values = [cosine(r, o) for r, o in zip(references, outputs)]
    return Accuracy(min(values), float(np.mean(values)))


def _ort_dynamic(source: Path, workdir: Path, per_channel: bool) -> Path:
    from benchmarks.configs import ort_quantize_dynamic

    name = "ort-dynamic-per-channel" if per_channel else "ort-dynamic"
    out, note = ort_quantize_dynamic(source, workdir, name, per_channel=per_channel)
    if note:
        logging.getLogger(__name__).warning("%s: %s", name, note)
    return out


def _ort_peer(peer: str, source: Path, workdir: Path, calibration: list[dict[str, np.ndarray]]) -> tuple[Path | None, str]:
    """The model one of `ORT_PEERS` makes of `source` (``workdir/ort-<peer>.onnx``), or None and
    why it cannot."""
    from benchmarks.configs import ort_matmul_nbits, ort_quantize_static

    config = f"ort-{peer}"
    if peer.startswith("static-"):
        return ort_quantize_static(source, workdir, config, calibration,
                                   method="MinMax" if peer == "static-minmax" else "Percentile")
    out = workdir / f"{config}.onnx"
    made = ort_matmul_nbits(source, out, bits=int(peer.removeprefix("nbits")), block_size=32)
    return (out, f"{made} MatMulNBits") if made else (None, "no MatMul with a constant 2-D weight (linears exported as Gemm?)")


def run_model(name: str, batch: int, *, repeats: int = 20, min_seconds: float = 5.0,
              quantize: Any = "int8", ort_peers: tuple[str, ...] = ()) -> ModelResult:
    import kiln
    from benchmarks import zoo
    from benchmarks.base import MAX_SECONDS, MIN_ROUNDS, SLOW_CALL_MS
    from benchmarks.configs import ort_session
    from kiln.backends.timing import CpuTimes, round_robin

    case = zoo.load_case(name, batch, calibration_samples=CALIBRATION + HELD_OUT)
    calibration = case.calibration[:CALIBRATION]
    held_out = case.calibration[CALIBRATION:]  # kiln searches on the calibration sets and the main inputs
    result = ModelResult(name, batch)
    with tempfile.TemporaryDirectory(prefix=f"kiln-quant-{name}-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        optimized = kiln.optimize(case.onnx_path, level=2, quantize=quantize, calibration=calibration,
                                  sample_inputs=case.inputs)
        result.optimize_seconds = time.perf_counter() - started
        entry = next(p for p in optimized.report.passes if p.name in KILN_PASSES)
        result.kiln_linears = f"{entry.status}: {entry.message}"
        paths = {"fp32": Path(case.onnx_path), "kiln": optimized.save(workdir / "kiln.onnx"),
                 "ort-dynamic": _ort_dynamic(Path(case.onnx_path), workdir, per_channel=False),
                 "ort-dynamic-per-channel": _ort_dynamic(Path(case.onnx_path), workdir, per_channel=True)}
        for peer in ort_peers:
            path, note = _ort_peer(peer, Path(case.onnx_path), workdir, calibration)
            if path is None:
                result.notes.append(f"ort-{peer}: not run: {note}")
            else:
                paths[f"ort-{peer}"] = path
                if note:
                    result.notes.append(f"ort-{peer}: {note}")
        result.configs = list(paths)
        weight_only = tuple(p for p in WEIGHT_ONLY_PEERS if p in paths)
        if getattr(quantize, "scheme", quantize) == "int4-weights" and weight_only:
            result.line_peers = weight_only
        sessions = {config: ort_session(path) for config, path in paths.items()}
        outputs = {config: [s.run(None, feeds)[0] for feeds in held_out] for config, s in sessions.items()}
        measure = _embedding_accuracy if case.kind == "sentence-embedding" else _output_accuracy
        result.accuracy = {config: measure(outputs["fp32"], outs) for config, outs in outputs.items() if config != "fp32"}
        if case.kind == "sentence-embedding":
            _record_paraphrases(result, {c: lambda f, s=s: s.run(None, f)[0] for c, s in sessions.items()}, batch, "fp32")
        configs = list(sessions)
        calls = [lambda s=sessions[c]: s.run(None, case.inputs) for c in configs]
        before = CpuTimes.now()
        samples = dict(zip(configs, round_robin(calls, repeats=repeats, min_seconds=min_seconds, max_seconds=MAX_SECONDS,
                                                min_rounds=MIN_ROUNDS, slow_call_ms=SLOW_CALL_MS)))
        after = CpuTimes.now()
    result.other_cpu_pct = (after - before).other_pct if before and after else None
    result.median_ms = {c: float(statistics.median(v)) for c, v in samples.items()}
    result.ratio_vs_fp32 = {c: statistics.median(a / b for a, b in zip(v, samples["fp32"])) for c, v in samples.items()}
    result.kiln_vs_peer = {p: statistics.median(a / b for a, b in zip(samples["kiln"], samples[p]))
                           for p in configs if p not in ("fp32", "kiln")}
    print(result.line(), flush=True)
    return result


OPENVINO_PEERS = ("nncf-int8", "nncf-w8")
#: the OpenVINO line's peer for kiln's weight-only scheme: NNCF's 4-bit weight compression
OPENVINO_WEIGHT_ONLY_PEERS = ("nncf-w4",)
OPENVINO_CONFIGS = ("ov-fp32", *OPENVINO_PEERS, *OPENVINO_WEIGHT_ONLY_PEERS, "kiln", "ort-dynamic-per-channel",
                    "ort-fp32")


@dataclass
class OpenVINOResult:
    """kiln int8 on OpenVINO and the NNCF peers of one model, timed in rotation with ORT
    per-channel as the anchor between the two backends."""

    model: str
    batch: int
    accuracy: dict[str, Accuracy] = field(default_factory=dict)
    median_ms: dict[str, float] = field(default_factory=dict)
    vs_ort_per_channel: dict[str, float] = field(default_factory=dict)
    vs_ort_fp32: dict[str, float] = field(default_factory=dict)
    other_cpu_pct: float | None = None
    group_size: int | None = None
    kiln_vs_peer: dict[str, float] = field(default_factory=dict)
    kiln_linears: str = ""
    optimize_seconds: float = 0.0
    fp32_paraphrase: float | None = None  # the reference's own paraphrase hit rate (MiniLM)
    line_peers: tuple[str, ...] = OPENVINO_PEERS  # the peers the line names the best of

    def line(self) -> str:
        best = min(self.line_peers, key=lambda c: self.median_ms[c])
        others = ", ".join(f"{c} {self.vs_ort_per_channel[c]:.3f}x ORT per-channel, cos {self.accuracy[c].min_cosine:.5f}"
                           for c in (*OPENVINO_PEERS, *OPENVINO_WEIGHT_ONLY_PEERS))
        return (f"{self.model} backend=openvino kiln_vs_best_peer={self.kiln_vs_peer[best]:.3f} "
                f"kiln_cos={self.accuracy['kiln'].min_cosine:.5f} peer_cos={self.accuracy[best].min_cosine:.5f} "
                f"(best peer {best}; kiln {self.vs_ort_per_channel['kiln']:.3f}x ORT per-channel, "
                f"{self.vs_ort_fp32['kiln']:.3f}x ORT fp32; {others})")


def run_openvino(name: str, batch: int, *, repeats: int = 20, min_seconds: float = 5.0,
                 quantize: Any = "int8", group_size: int | None = None) -> OpenVINOResult:
    """OpenVINO CPU f32 (protocol properties), NNCF int8 (`nncf.quantize` on the calibration sets),
    NNCF int8 weight compression (`compress_weights` INT8_SYM: int8 weights, activations
    quantized per group of `DYNAMIC_QUANTIZATION_GROUP_SIZE` by the CPU plugin, its default kept),
    NNCF 4-bit weight compression (`nncf-w4`: INT4_SYM, NNCF's defaults: groups of 128, the
    embeddings and last layer int8; the line's peer for ``--scheme int4-weights``)
    and kiln (`quantize` with backend openvino, the same calibration sets), with ORT per-channel
    dynamic as the anchor; accuracy on the held-out sets as for ORT. `group_size` sets the
    activation group of kiln and `nncf-w8` alike (None: OpenVINO's default)."""
    import nncf
    import openvino as ov

    import kiln
    from benchmarks import zoo
    from benchmarks.base import MAX_SECONDS, MIN_ROUNDS, SLOW_CALL_MS, THREADS
    from benchmarks.configs import nncf_int8_model, openvino_properties, ort_session
    from kiln.backends.timing import CpuTimes, round_robin

    case = zoo.load_case(name, batch, calibration_samples=CALIBRATION + HELD_OUT)
    calibration, held_out = case.calibration[:CALIBRATION], case.calibration[CALIBRATION:]
    core = ov.Core()
    result = OpenVINOResult(name, batch)
    models = {"ov-fp32": core.read_model(str(case.onnx_path)),
              "nncf-int8": nncf_int8_model(case, calibration),
              "nncf-w8": nncf.compress_weights(core.read_model(str(case.onnx_path)),
                                               mode=nncf.CompressWeightsMode.INT8_SYM),
              "nncf-w4": nncf.compress_weights(core.read_model(str(case.onnx_path)),
                                               mode=nncf.CompressWeightsMode.INT4_SYM)}
    if getattr(quantize, "scheme", quantize) == "int4-weights":
        result.line_peers = OPENVINO_WEIGHT_ONLY_PEERS
    with tempfile.TemporaryDirectory(prefix=f"kiln-quant-ov-{name}-") as tmp:
        started = time.perf_counter()
        optimized = kiln.optimize(case.onnx_path, level=2, quantize=quantize, calibration=calibration,
                                  sample_inputs=case.inputs, target=kiln.Target(
                                      backend="openvino", intra_op_threads=THREADS,
                                      openvino=kiln.OpenVINOOptions(dynamic_quantization_group_size=group_size)))
        result.optimize_seconds = time.perf_counter() - started
        entry = next(p for p in optimized.report.passes if p.name in KILN_PASSES)
        result.kiln_linears = f"{entry.status}: {entry.message}"
        models["kiln"] = core.read_model(str(optimized.save(Path(tmp) / "kiln.onnx")))
        grouped = {} if group_size is None else {"DYNAMIC_QUANTIZATION_GROUP_SIZE": group_size}
        compiled = {c: core.compile_model(m, "CPU", openvino_properties("f32", **(grouped if c in ("nncf-w8", "nncf-w4", "kiln")
                                                                                   else {})))
                    for c, m in models.items()}
        result.group_size = int(compiled["nncf-w8"].get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE"))
        session = ort_session(_ort_dynamic(Path(case.onnx_path), Path(tmp), per_channel=True))
        fp32_session = ort_session(case.onnx_path)
        requests = {c: m.create_infer_request() for c, m in compiled.items()}
        names = {c: {n for port in m.inputs for n in port.get_names()} for c, m in compiled.items()}

        def runner(config: str) -> Any:
            if config == "ort-dynamic-per-channel":
                return lambda feeds: session.run(None, feeds)[0]
            if config == "ort-fp32":
                return lambda feeds: fp32_session.run(None, feeds)[0]
            request, wanted, first = requests[config], names[config], compiled[config].outputs[0]
            return lambda feeds: np.asarray(request.infer({k: v for k, v in feeds.items() if k in wanted})[first])

        runners = {c: runner(c) for c in OPENVINO_CONFIGS}
        outputs = {c: [run(feeds) for feeds in held_out] for c, run in runners.items()}
        references = outputs["ov-fp32"]
        measure = _embedding_accuracy if case.kind == "sentence-embedding" else _output_accuracy
        result.accuracy = {c: measure(references, outs) for c, outs in outputs.items() if c != "ov-fp32"}
        if case.kind == "sentence-embedding":
            _record_paraphrases(result, runners, batch, "ov-fp32")
        before = CpuTimes.now()
        samples = dict(zip(runners, round_robin([lambda run=run: run(case.inputs) for run in runners.values()],
                                                repeats=repeats, min_seconds=min_seconds, max_seconds=MAX_SECONDS,
                                                min_rounds=MIN_ROUNDS, slow_call_ms=SLOW_CALL_MS)))
        after = CpuTimes.now()
    result.other_cpu_pct = (after - before).other_pct if before and after else None
    result.median_ms = {c: float(statistics.median(v)) for c, v in samples.items()}
    anchor = samples["ort-dynamic-per-channel"]
    result.vs_ort_per_channel = {c: statistics.median(a / b for a, b in zip(v, anchor)) for c, v in samples.items()}
    result.vs_ort_fp32 = {c: statistics.median(a / b for a, b in zip(v, samples["ort-fp32"])) for c, v in samples.items()}
    result.kiln_vs_peer = {p: statistics.median(a / b for a, b in zip(samples["kiln"], samples[p]))
                           for p in (*OPENVINO_PEERS, *OPENVINO_WEIGHT_ONLY_PEERS)}
    print(result.line(), flush=True)
    return result


def render_openvino(results: list[OpenVINOResult]) -> str:
    group = results[0].group_size if results else "?"
    lines = ["", ("OpenVINO CPU (f32 inference precision, the protocol's threads / stream / LATENCY hint), "
                  "accuracy against OpenVINO fp32 on the same held-out sets; `nncf-w8` and `nncf-w4` run with "
                  f"DYNAMIC_QUANTIZATION_GROUP_SIZE {group} (activations quantized per group of a row), as does kiln."), "",
             "| model | batch | config | ms | / ORT per-channel | / ORT fp32 | accuracy | others' CPU % |",
             "|---|---:|---|---:|---:|---:|---|---:|"]
    for r in results:
        other = f"{r.other_cpu_pct:.0f}" if r.other_cpu_pct is not None else "?"
        for config in OPENVINO_CONFIGS:
            accuracy = r.accuracy[config].text() if config in r.accuracy else _reference(r.fp32_paraphrase)
            lines.append(f"| {r.model} | {r.batch} | {config} | {r.median_ms[config]:.2f} | "
                         f"{r.vs_ort_per_channel[config]:.3f} | {r.vs_ort_fp32[config]:.3f} | {accuracy} | {other} |")
    lines += ["", *(f"- {r.model}: kiln's pass {r.kiln_linears} (optimize {r.optimize_seconds:.0f} s)" for r in results),
              "", "```", *(r.line() for r in results), "```"]
    return "\n".join(lines)


def _reference(paraphrase: float | None) -> str:
    return "reference" + (f" (paraphrase {paraphrase:.3f})" if paraphrase is not None else "")


def render(results: list[ModelResult], command: str, machine: str) -> str:
    lines = [
        "# Quantization (issue 14): kiln's quantization against ORT's and NNCF's", "",
        (f"Command: `{command}`. {machine}. ORT ENABLE_ALL, 2 threads, spinning off; the configurations called in "
         "rotation in one process, ratios are medians of per-round ratios. Accuracy against fp32 on 4 held-out "
         "input sets (MiniLM: sentence-embedding cosine min / mean and top-1 neighbour agreement; others: cosine of "
         "the flattened output)."),
    ]
    if not results:  # an OpenVINO-only run: its own table follows
        return "\n".join(lines)
    lines += ["", "| model | batch | config | ms | / fp32 | kiln / it | accuracy | others' CPU % |",
              "|---|---:|---|---:|---:|---:|---|---:|"]
    for r in results:
        for config in r.configs or ("fp32", *PEERS, "kiln"):
            vs = f"{r.kiln_vs_peer[config]:.3f}" if config in r.kiln_vs_peer else ""
            accuracy = r.accuracy[config].text() if config in r.accuracy else _reference(r.fp32_paraphrase)
            cpu = f"{r.other_cpu_pct:.0f}" if r.other_cpu_pct is not None else "-"
            lines.append(f"| {r.model} | {r.batch} | {config} | {r.median_ms[config]:.2f} | "
                         f"{r.ratio_vs_fp32[config]:.3f} | {vs} | {accuracy} | {cpu} |")
    lines += ["", *(f"- {r.model}: kiln's pass {r.kiln_linears} (optimize {r.optimize_seconds:.0f} s)"
                    + "".join(f"; {note}" for note in r.notes) for r in results),
              "", "```", *(r.line() for r in results), "```"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks quantization", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated zoo names")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--out", help="markdown file to write the table to")
    parser.add_argument("--quick", action="store_true", help="fewer timed rounds")
    parser.add_argument("--min-cosine", type=float, default=0.99,
                        help="kiln's budget: the cosine every sample keeps (default 0.99, QuantConfig's)")
    parser.add_argument("--whole-batch", action="store_true",
                        help="kiln's budget on the flattened batch instead of every sample")
    parser.add_argument("--scheme", default="dynamic-int8", choices=["dynamic-int8", "static-int8", "int4-weights"],
                        help="kiln's QuantConfig scheme (static-int8 lowers to OpenVINO only: use --backends openvino)")
    parser.add_argument("--activation-range", default="minmax", choices=["minmax", "percentile", "mse", "entropy"],
                        help="how static-int8 fixes activation ranges (QuantConfig.activation_range, default minmax)")
    parser.add_argument("--migrate-outliers", nargs="?", const="norms", choices=["norms", "all"],
                        help="kiln migrates activation outliers into the weights first (QuantConfig.migrate_outliers; "
                             "at LayerNorm outputs by default, everywhere with 'all')")
    parser.add_argument("--openvino-group", type=int, default=None, metavar="N",
                        help="OpenVINO's DYNAMIC_QUANTIZATION_GROUP_SIZE for kiln int8 and nncf-w8 (default: OpenVINO's)")
    parser.add_argument("--ort-peers", default=",".join(ORT_PEERS),
                        help="ORT's other quantizers timed beside its dynamic one, comma-separated from "
                             f"{', '.join(ORT_PEERS)} (default all), or 'none'")
    parser.add_argument("--no-bias-correction", action="store_true",
                        help="kiln leaves its int8 linears' biases as they are (QuantConfig.bias_correction=False)")
    parser.add_argument("--no-rotation", action="store_true",
                        help="kiln never Hadamard-rotates a linear's input (QuantConfig.rotation_blocks=())")
    parser.add_argument("--backends", default="onnxruntime,openvino",
                        help="onnxruntime (kiln against ORT's quantizer) and/or openvino (the NNCF peers)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from kiln.cost_model.machine import cpu_facts

    facts = cpu_facts()
    machine = (f"Machine: {facts.get('cpu_model', 'unknown CPU')} (family {facts.get('cpu_family')} model "
               f"{facts.get('cpu_model_number')}), {facts.get('usable_cores')} cores")
    from kiln.passes.infra.contract import CosineBudget
    from kiln.passes.quantization import QuantConfig

    settings: dict[str, Any] = {"repeats": 6, "min_seconds": 1.0} if args.quick else {}
    options: dict[str, Any] = ({"migrate_outliers": True, "migration_sites": args.migrate_outliers}
                               if args.migrate_outliers else {})
    if args.no_bias_correction:
        options["bias_correction"] = False
    if args.no_rotation:
        options["rotation_blocks"] = ()
    settings["quantize"] = QuantConfig(scheme=args.scheme, activation_range=args.activation_range, **options,
                                       budget=CosineBudget(min_cosine=args.min_cosine, per_sample=not args.whole_batch))
    machine += f"; kiln's budget {settings['quantize'].budget}"
    if args.scheme == "static-int8":
        machine += f"; static activation ranges: {args.activation_range}"
    if args.migrate_outliers:
        machine += f"; activation outliers migrated into the weights first ({args.migrate_outliers} sites)"
    if args.no_bias_correction:
        machine += "; no bias correction"
    if args.no_rotation:
        machine += "; no Hadamard rotation"
    names = [name for name in args.models.split(",") if name]
    backends = {b for b in args.backends.split(",") if b}
    if backends - {"onnxruntime", "openvino"}:
        parser.error(f"unknown backend(s) {sorted(backends - {'onnxruntime', 'openvino'})}: onnxruntime, openvino")
    ort_peers = tuple(p for p in args.ort_peers.split(",") if p and p != "none")
    if set(ort_peers) - set(ORT_PEERS):
        parser.error(f"unknown --ort-peers {sorted(set(ort_peers) - set(ORT_PEERS))}: {', '.join(ORT_PEERS)} or none")
    results = ([run_model(name, args.batch, ort_peers=ort_peers, **settings) for name in names]
               if "onnxruntime" in backends else [])
    openvino = ([run_openvino(name, args.batch, group_size=args.openvino_group, **settings) for name in names]
                if "openvino" in backends else [])
    command = "python -m benchmarks quantization " + " ".join(argv if argv is not None else sys.argv[2:])
    table = render(results, command.strip(), machine) + (render_openvino(openvino) if openvino else "")
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0
