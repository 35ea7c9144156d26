"""Choices settled by measuring both alternatives on this machine, like an autotuner (TVM
MetaSchedule, cuDNN's benchmark mode), and remembered per machine.

Some trade-offs have no model that predicts them. Joining the query, key and value projections
into one MatMul and a Split keeps FLOPs and bytes the same, yet ONNX Runtime's MLAS GEMM runs
the joined GEMM slower at some shapes and faster at others (benchmarks/results/notes.md): MLAS
picks its blocking and thread partition by shape, and no rows / bytes rule or roofline fits that.
So the caller builds the two alternatives as small ONNX models and this module times them on the
target with `kiln.backends.timing` (alternately in one process, so load drift hits both): a few
warm-up calls, then 3 independent trials (fresh sessions each) of 10 pairs. It returns the
median of all per-pair ratios candidate / baseline and the worst trial's median: on a shared
machine a single trial can be far off the others, so a caller that wants "clearly faster"
should require every trial to agree (`ChoiceMeasurement.worst_trial`).

Results are cached as JSON beside the hardware profile (``~/.cache/kiln/measured_choices.json``,
or ``$KILN_MEASURED_CHOICES``), keyed by the CPU model, the thread count, the backend (ONNX
Runtime's version and optimization level; OpenVINO's version, precision, hint and streams), and
the caller's key (op shapes and dtype), so each shape is measured once per machine and backend. A damaged cache file is ignored with a warning and rewritten.

This is a measuring module: like `kiln.cost_model.measure.profiling`, it runs the backend (ONNX Runtime
sessions from `kiln.backends.onnxruntime`); passes reach it only through
``PassContext.measured_choices``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
import onnxruntime as ort

from kiln.backends.onnxruntime import create_session, to_ort_value
from kiln.backends.timing import round_robin
from kiln.cost_model.hardware import default_profile_path
from kiln.cost_model.machine import cpuinfo
from kiln.errors import KilnError, MeasurementError
from kiln.ir.inputs import Feeds, random_inputs
from kiln.ir.serialization import to_proto
from kiln.target import Target

logger = logging.getLogger(__name__)

CACHE_VERSION = 2
#: Timed pairs per trial and trials per choice: the alternatives are one or a few ops of
#: milliseconds each, so 3 x 10 pairs keep a measurement short.
DEFAULT_PAIRS = 10
DEFAULT_TRIALS = 3
DEFAULT_WARMUP = 3

Alternative = ir.Model | onnx.ModelProto
# (baseline, candidate, pairs) -> one (baseline_ms, candidate_ms) tuple per pair
PairTimer = Callable[[onnx.ModelProto, onnx.ModelProto, int], list[tuple[float, float]]]


def default_cache_path() -> Path:
    """``$KILN_MEASURED_CHOICES``, else ``measured_choices.json`` beside the hardware profile."""
    env = os.environ.get("KILN_MEASURED_CHOICES")
    return Path(env) if env else default_profile_path().parent / "measured_choices.json"


@dataclass(frozen=True)
class ChoiceMeasurement:
    """How the candidate compared with the baseline: `ratio` is the median per-pair
    candidate_ms / baseline_ms (below 1: the candidate is faster)."""

    key: str
    ratio: float
    pairs: int
    baseline_ms: float
    candidate_ms: float
    trial_ratios: tuple[float, ...] = ()  # the median ratio of each independent trial
    cached: bool = False

    @property
    def worst_trial(self) -> float:
        """The largest trial median (the candidate's least favourable trial)."""
        return max(self.trial_ratios, default=self.ratio)

    def __str__(self) -> str:
        source = "cached" if self.cached else "measured"
        trials = "/".join(f"{r:.2f}" for r in self.trial_ratios)
        return (f"candidate/baseline {self.ratio:.3f} (median of {self.pairs} pairs; trials {trials}; "
                f"{self.candidate_ms:.3f} vs {self.baseline_ms:.3f} ms; {source})")


def _feeds(model: onnx.ModelProto) -> Feeds:
    """Random inputs (`kiln.ir.inputs.random_inputs`) of the declared static shapes: a symbolic
    dim would be timed at a size nobody chose."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [ir.serde.deserialize_value_info_proto(v, None) for v in model.graph.input if v.name not in initializers]
    for value in inputs:
        dims = list(value.shape) if value.shape is not None else None
        if dims is None or not all(isinstance(d, int) and d > 0 for d in dims):
            raise MeasurementError(f"Input {value.name!r} has no static shape ({dims}); measure alternatives "
                                   "whose inputs have fixed sizes.")
    return random_inputs(inputs)


def _signature(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    initializers = {t.name for t in model.graph.initializer}
    inputs = [str(v).replace("\n", " ") for v in model.graph.input if v.name not in initializers]
    return inputs, [str(v).replace("\n", " ") for v in model.graph.output]


class OrtPairTimer:
    """Times two models alternately in ONNX Runtime (`kiln.backends.timing.round_robin`: the
    order inside a pair alternates too, so neither model always runs on a warmer cache), with
    idle spinning off (an idle session's spinning threads would take the cores from the running
    one, `Target.allow_spinning`)."""

    def __init__(self, target: Target, warmup: int = DEFAULT_WARMUP):
        self.target = Target(intra_op_threads=target.intra_op_threads, inter_op_threads=1,
                             graph_optimization_level=target.graph_optimization_level,
                             providers=target.providers, allow_spinning=False)
        self.warmup = warmup

    def _runner(self, model: onnx.ModelProto, feeds: Feeds) -> Callable[[], Any]:
        try:
            session = create_session(model, self.target, purpose="(an alternative to time)")
        except KilnError as exc:
            raise MeasurementError(str(exc)) from exc
        names = [o.name for o in session.get_outputs()]
        values = {k: to_ort_value(v) for k, v in feeds.items()}
        return lambda: session.run_with_ort_values(names, values)

    def __call__(self, baseline: onnx.ModelProto, candidate: onnx.ModelProto, pairs: int) -> list[tuple[float, float]]:
        feeds = _feeds(baseline)
        runs = [self._runner(baseline, feeds), self._runner(candidate, feeds)]
        try:
            baseline_ms, candidate_ms = round_robin(runs, warmup=self.warmup, repeats=pairs)
        except Exception as exc:
            raise MeasurementError(f"ONNX Runtime failed to run an alternative: {str(exc)[:300]}") from exc
        return list(zip(baseline_ms, candidate_ms))


class BackendPairTimer:
    """Times two models alternately on any backend through its `Executable` (`run` on the same
    numpy feeds; `round_robin` as `OrtPairTimer`). The call includes kiln's thin wrapper around
    the runtime, the same for both alternatives."""

    def __init__(self, target: Target, warmup: int = DEFAULT_WARMUP):
        self.target = target
        self.warmup = warmup

    def __call__(self, baseline: onnx.ModelProto, candidate: onnx.ModelProto, pairs: int) -> list[tuple[float, float]]:
        from kiln.backends import compile_model

        feeds = _feeds(baseline)
        try:
            runs = [compile_model(ir.from_proto(m), self.target) for m in (baseline, candidate)]
            baseline_ms, candidate_ms = round_robin([lambda r=r: r.run(feeds) for r in runs], warmup=self.warmup,
                                                    repeats=pairs)
        except KilnError as exc:
            raise MeasurementError(f"{self.target.backend} could not run an alternative: {str(exc)[:300]}") from exc
        return list(zip(baseline_ms, candidate_ms))


def pair_timer(target: Target) -> PairTimer:
    """The timer of `target`'s backend: bare ORT sessions for ONNX Runtime, else the backend's
    executables."""
    return OrtPairTimer(target) if target.backend == "onnxruntime" else BackendPairTimer(target)


class MeasuredChoices:
    """Measure two alternatives on this machine once per key; remember the ratio on disk.

    `timer` times the pairs (default: `pair_timer(target)`); tests pass a fake one.
    `cache_path=None` keeps results in memory only; `MeasuredChoices.default(target)` uses
    `default_cache_path()`.
    """

    def __init__(self, target: Target | None = None, *, cache_path: str | os.PathLike | None = None,
                 timer: PairTimer | None = None, pairs: int = DEFAULT_PAIRS, trials: int = DEFAULT_TRIALS):
        if pairs < 1 or trials < 1:
            raise MeasurementError(f"pairs={pairs}, trials={trials}: time at least one pair in one trial (kiln uses "
                                   f"{DEFAULT_TRIALS} trials of {DEFAULT_PAIRS}).")
        self.trials = trials
        self.target = target or Target()
        self.timer: PairTimer = timer or pair_timer(self.target)
        self.pairs = pairs
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._entries: dict[str, dict[str, Any]] | None = None  # this machine's, loaded on first use

    @classmethod
    def default(cls, target: Target) -> MeasuredChoices:
        """Measured on `target` (its backend on this CPU), cached at `default_cache_path()`."""
        return cls(target, cache_path=default_cache_path())

    @property
    def machine(self) -> str:
        """What the cache is keyed by besides the choice: CPU, threads, the backend and its
        version and settings (ORT's level; OpenVINO's precision, hint and streams)."""
        cpu = cpuinfo().get("model name", "unknown cpu")
        if self.target.backend == "onnxruntime":
            return (f"{cpu} | threads={self.target.intra_op_threads} | onnxruntime {ort.__version__} | "
                    f"level={self.target.graph_optimization_level}")
        from importlib.metadata import version

        options = self.target.openvino if self.target.backend == "openvino" else None
        settings = (f" | {options.device} {options.inference_precision} {options.performance_hint} "
                    f"streams={options.streams}"
                    + (f" dq_group={options.dynamic_quantization_group_size}"
                       if options.dynamic_quantization_group_size is not None else "")) if options is not None else ""
        return (f"{cpu} | threads={self.target.intra_op_threads} | {self.target.backend} "
                f"{version(self.target.backend)}{settings}")

    def _read_file(self, warn: bool = True) -> dict[str, Any]:
        """The whole cache file; {} (with a warning) when it is missing or damaged."""
        if self.cache_path is None or not self.cache_path.exists():
            return {}
        try:
            data = json.loads(self.cache_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            if warn:
                logger.warning("Ignoring the measured-choices cache %s (%s); its shapes are measured again and the "
                               "file rewritten.", self.cache_path, exc)
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(
                data.get("machines"), dict):
            if warn:
                logger.warning("Ignoring the measured-choices cache %s: not a version-%d cache; its shapes are "
                               "measured again and the file rewritten.", self.cache_path, CACHE_VERSION)
            return {}
        return data

    def _machine_entries(self) -> dict[str, dict[str, Any]]:
        if self._entries is None:
            stored = self._read_file().get("machines", {}).get(self.machine, {})
            self._entries = {k: v for k, v in stored.items() if _valid_entry(v)} if isinstance(stored, dict) else {}
            if isinstance(stored, dict) and len(self._entries) != len(stored):
                logger.warning("Dropped %d malformed entries of the measured-choices cache %s.",
                               len(stored) - len(self._entries), self.cache_path)
        return self._entries

    def _save(self, key: str, entry: dict[str, Any]) -> None:
        if self.cache_path is None:
            return
        data = self._read_file(warn=False) or {"version": CACHE_VERSION, "machines": {}}
        machines = data["machines"]
        if not isinstance(machines.get(self.machine), dict):
            machines[self.machine] = {}
        machines[self.machine][key] = entry
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self.cache_path.parent, suffix=".tmp", delete=False) as tmp:
                json.dump(data, tmp, indent=1, sort_keys=True)
            os.replace(tmp.name, self.cache_path)
        except OSError as exc:
            logger.warning("Could not write the measured-choices cache %s (%s); the result is kept for this "
                           "process only. Set KILN_MEASURED_CHOICES to a writable file.", self.cache_path, exc)

    def cached(self, key: str) -> ChoiceMeasurement | None:
        """The remembered measurement for `key` on this machine, if any."""
        entry = self._machine_entries().get(key)
        if entry is None:
            return None
        return ChoiceMeasurement(key=key, ratio=entry["ratio"], pairs=entry["pairs"], baseline_ms=entry["baseline_ms"],
                                 candidate_ms=entry["candidate_ms"], trial_ratios=tuple(entry["trial_ratios"]),
                                 cached=True)

    def measure(self, key: str, baseline: Alternative, candidate: Alternative) -> ChoiceMeasurement:
        """How `candidate` runs against `baseline` (same inputs and outputs) on this machine:
        from the cache, else timed now and remembered."""
        if not isinstance(key, str) or not key:
            raise MeasurementError("A measured choice needs a non-empty key (the op shapes and dtype).")
        found = self.cached(key)
        if found is not None:
            logger.debug("measured choice %s: %s", key, found)
            return found
        protos = [to_proto(m) if isinstance(m, ir.Model) else m for m in (baseline, candidate)]
        if not all(isinstance(p, onnx.ModelProto) for p in protos):
            raise MeasurementError("Alternatives must be onnx_ir.Model or onnx.ModelProto objects.")
        if _signature(protos[0]) != _signature(protos[1]):
            raise MeasurementError(f"The alternatives for {key!r} differ in their inputs or outputs; build both "
                                   "with the same names, dtypes and shapes.")
        trials = []
        for _ in range(self.trials):  # each trial: fresh sessions, its own warm-up
            timed = self.timer(protos[0], protos[1], self.pairs)
            if not timed or not all(len(p) == 2 and all(math.isfinite(t) and t > 0 for t in p) for p in timed):
                raise MeasurementError(f"The timer returned no usable pairs for {key!r}: {timed[:3]!r}.")
            trials.append(timed)
        timed = [pair for trial in trials for pair in trial]
        result = ChoiceMeasurement(
            key=key, ratio=float(statistics.median(c / b for b, c in timed)), pairs=len(timed),
            baseline_ms=float(statistics.median(b for b, _ in timed)),
            candidate_ms=float(statistics.median(c for _, c in timed)),
            trial_ratios=tuple(float(statistics.median(c / b for b, c in trial)) for trial in trials),
        )
        logger.info("measured choice %s: %s", key, result)
        entry = {k: v for k, v in asdict(result).items() if k not in ("key", "cached")}
        entry["trial_ratios"] = list(result.trial_ratios)
        self._machine_entries()[key] = entry
        self._save(key, entry)
        return result


def _valid_entry(entry: Any) -> bool:
    if not isinstance(entry, dict):
        return False
    trials = entry.get("trial_ratios")
    if not isinstance(trials, list) or not trials:
        return False
    numbers = [entry.get(k) for k in ("ratio", "baseline_ms", "candidate_ms")] + trials
    return (all(isinstance(n, (int, float)) and math.isfinite(n) and n > 0 for n in numbers)
            and isinstance(entry.get("pairs"), int) and entry["pairs"] > 0)
