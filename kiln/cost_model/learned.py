"""Learned correction of the roofline from measured kernel times.

Two layers, both fitted to `Sample`s (one per measured kernel: its roofline terms and the
measured median):

1. per-op-class efficiencies and fixed per-kernel overheads, fitted in log space (a kernel
   twice too slow and one twice too fast weigh the same; kernels weigh by the square root of
   their time, so the few long GEMMs that make a model's latency are not outvoted by hundreds
   of tiny kernels): what fraction of the roofline ONNX Runtime's GEMMs, convs, element-wise
   kernels... really reach on this machine;
2. a small gradient-boosted residual model (LightGBM) over kernel features (op type, class,
   precision, FLOPs, bytes, intensity, group size, the roofline time) that predicts the log of
   measured / roofline-with-fitted-efficiencies. Its prediction is scaled by a weight in [0, 1]
   chosen by leave-one-model-out cross-validation when the samples come from three or more
   models: a booster fitted on a few models can learn one model's odd kernel (a large-weight LM
   head far below the GEMM roofline) as a rule and misprice every other model's,
   and the weight is how much of it survives on models it has not seen.

The correction is saved as JSON beside the hardware profile (``<profile>.learned.json``): the
efficiencies, the launch overhead and the booster in LightGBM's own text format - never a
pickle, so loading a correction cannot run code. Without LightGBM installed (the ``cost`` extra)
only the first layer is fitted and used.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.cost_model.hardware import OP_CLASSES, PRECISIONS, HardwareProfile, ProfileError
from kiln.cost_model.roofline import Estimate

logger = logging.getLogger(__name__)

__all__ = ["LearnedCorrection", "Sample", "body_ms", "correction_path", "fit", "load_correction"]

_FORMAT = "kiln.learned_correction/1"
#: Efficiency search range: below 1 the kernels reach part of the roofline; above 1 they beat
#: the roofline *as modelled* (activations reused from a cache level the model did not assume).
_EFFICIENCY_GRID = np.logspace(-3, 1, 321)
_LAUNCH_GRID_US = np.concatenate([[0.0], np.logspace(-1, 2.0, 141)])  # fixed costs 0.1-100 us
#: Weight of the efficiency prior (the calibrated or preset efficiency) against the data, in
#: units of one average kernel's squared log error.
_PRIOR_WEIGHT = 4.0
#: Residual model size: small on purpose (a few thousand kernels train it).
_GBM_PARAMS = {"n_estimators": 150, "num_leaves": 15, "learning_rate": 0.05, "min_child_samples": 5,
               "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.9, "verbose": -1, "random_state": 0}


def body_ms(terms: Sample | Estimate) -> float:
    """A kernel's roofline time at efficiency 1 without launch: the slower of its compute and
    memory terms; views and shape ops do no work."""
    return 0.0 if terms.op_class in ("view", "shape") else max(terms.compute_ms, terms.memory_ms)


@dataclass(frozen=True)
class Sample:
    """One measured kernel with its roofline terms (before efficiency) and its measured time."""

    op: str
    op_class: str
    precision: str
    group_size: int
    flops: int
    activation_bytes: int
    weight_bytes: int
    compute_ms: float
    memory_ms: float
    measured_ms: float
    model: str = ""
    output_bytes: int = 0

    @classmethod
    def from_estimate(cls, estimate: Estimate, op: str, group_size: int, measured_ms: float,
                      model: str = "") -> Sample:
        return cls(op, estimate.op_class, estimate.precision, group_size, estimate.flops,
                   estimate.activation_bytes, estimate.weight_bytes, estimate.compute_ms, estimate.memory_ms,
                   measured_ms, model, estimate.output_bytes)

    @property
    def body_ms(self) -> float:
        """The roofline time at efficiency 1, without launch."""
        return body_ms(self)


def _features(terms: Sample | Estimate, op: str, group_size: int, roofline_ms: float,
              ops: Sequence[str]) -> list[float]:
    total = terms.activation_bytes + terms.weight_bytes
    return [
        float(ops.index(op)) if op in ops else float(len(ops)),  # categorical: unseen ops share a code
        float(OP_CLASSES.index(terms.op_class)) if terms.op_class in OP_CLASSES else float(len(OP_CLASSES)),
        float(PRECISIONS.index(terms.precision)) if terms.precision in PRECISIONS else float(len(PRECISIONS)),
        float(group_size),
        math.log1p(terms.flops),
        math.log1p(terms.activation_bytes),
        math.log1p(terms.weight_bytes),
        math.log1p(terms.flops / total) if total else 0.0,
        math.log(max(roofline_ms, 1e-6)),
        # written vs read: BERT's 768->3072 and 3072->768 GEMMs have the same FLOPs and bytes,
        # and the second runs measurably slower
        math.log1p(terms.output_bytes),
    ]


#: Length of a `_features` row; a correction saved with another length keeps its efficiencies
#: and drops the booster (which cannot read these rows) until refitted.
FEATURES = 10
_CATEGORICAL = [0, 1, 2]
#: op classes that do no work (ONNX Runtime aliases views; shape ops write a few integers)
_ZERO_WORK = ("view", "shape")
#: Candidate weights of the booster's log-residual, tried by cross-validation.
_RESIDUAL_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class LearnedCorrection:
    """Fitted efficiencies and launch overhead, plus an optional residual booster."""

    efficiency: dict[str, float]
    launch_overhead_us: float  # fixed cost of a kernel of a class that was not in the training data
    overhead_us: dict[str, float] = field(default_factory=dict)  # fitted fixed cost per op class
    ops: list[str] = field(default_factory=list)  # vocabulary of the op feature
    booster_text: str = ""  # LightGBM model_to_string(); "" when no residual model
    trained_on: list[str] = field(default_factory=list)
    samples: int = 0
    fit_log_rmse: dict[str, float] = field(default_factory=dict)  # training error per layer
    # added once per kernel to whole-model latency: time the executor spends between kernels
    # (positive), or what ORT's profiler adds to every kernel it times (negative)
    executor_overhead_us: float = 0.0
    # whole-model wall time / summed kernel medians on the training models: the executor's own
    # time net of what ORT's profiler adds to each kernel; scales the summed kernel times
    executor_scale: float = 1.0
    # added once per run: what a call costs around its kernels (binding inputs and outputs)
    executor_run_us: float = 0.0
    # share of the booster's log-residual applied (cross-validated over models; see fit)
    residual_weight: float = 1.0
    # per candidate weight, the cross-validation score (lower is better) it was chosen by
    residual_weight_scores: dict[str, float] = field(default_factory=dict)
    features: int = 9  # length of the booster's feature rows (9 before output bytes were one)
    _booster: Any = field(default=None, repr=False, compare=False)

    def roofline_ms(self, sample_or_estimate: Sample | Estimate) -> float:
        """Roofline time with the fitted efficiency and launch overhead."""
        s = sample_or_estimate
        overhead = self.overhead_us.get(s.op_class, self.launch_overhead_us)
        return body_ms(s) / self.efficiency.get(s.op_class, 1.0) + overhead / 1e3

    def _residual(self, rows: list[list[float]]) -> np.ndarray:
        if not self.booster_text:
            return np.zeros(len(rows))
        if self.features != FEATURES:
            logger.warning("the learned correction's booster was fitted on %d features, kiln now computes %d; "
                           "using its efficiencies only (refit: python -m benchmarks cost-model --save)",
                           self.features, FEATURES)
            self.booster_text = ""
            return np.zeros(len(rows))
        if self._booster is None:
            try:
                import lightgbm
            except ImportError:
                logger.warning("lightgbm is not installed (pip install 'kiln[cost]'); using efficiencies only")
                self.booster_text = ""
                return np.zeros(len(rows))
            self._booster = lightgbm.Booster(model_str=self.booster_text)
        return np.asarray(self._booster.predict(np.asarray(rows, dtype=np.float64)))

    def predict_many(self, estimates: Sequence[Estimate | Sample], ops: Sequence[str],
                     group_sizes: Sequence[int], residual: bool = True) -> np.ndarray:
        """Corrected times of kernels whose roofline terms are `estimates` (their ``ms`` is not
        used: the fitted efficiencies replace the profile's), with one call of the booster (a call
        costs ~0.1 ms whatever its size: 400 kernels priced one by one took seconds). With
        ``residual=False`` only the fitted efficiencies and overheads apply."""
        base = np.array([self.roofline_ms(e) for e in estimates])
        if not residual or not self.booster_text or not len(base):
            return base
        rows = [_features(e, op, size, b, self.ops) for e, op, size, b in zip(estimates, ops, group_sizes, base)]
        return base * np.exp(self.residual_weight * self._residual(rows))

    def predict_samples(self, samples: Sequence[Sample], residual: bool = True) -> np.ndarray:
        """Corrected times of many samples at once (ms)."""
        return self.predict_many(samples, [s.op for s in samples], [s.group_size for s in samples], residual)

    # --- persistence -----------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        data = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"format": _FORMAT, **data}, indent=1))
        return path


def correction_path(profile_path: str | os.PathLike) -> Path:
    """Where the correction of the profile at `profile_path` lives: ``<stem>.learned.json``."""
    path = Path(profile_path)
    return path.with_name(f"{path.stem}.learned.json")


def load_correction(path: str | os.PathLike) -> LearnedCorrection:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ProfileError(f"Cannot read learned correction {path}: {exc}. Refit it with "
                           "`python -m benchmarks cost-model --save`.") from exc
    if not isinstance(data, dict) or data.pop("format", None) != _FORMAT:
        raise ProfileError(f"{path} is not a kiln learned correction ({_FORMAT}).")
    try:
        return LearnedCorrection(**data)
    except TypeError as exc:
        raise ProfileError(f"Learned correction {path} has unexpected fields: {exc}") from exc


# --- fitting ---------------------------------------------------------------------------------


def _log_error(predicted: np.ndarray, measured: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.log(np.maximum(predicted, 1e-9)) - np.log(measured)) ** 2)))


def _weights(measured: np.ndarray) -> np.ndarray:
    """Sample weights: the square root of each kernel's time, so the kernels that make up most of
    a model's latency count more than the hundreds of microsecond-long ones (which still count:
    per-kernel rank correlation needs them), normalised to mean 1."""
    w = np.sqrt(np.maximum(measured, 1e-9))
    return w / w.mean()


def _fit_class(body: np.ndarray, measured: np.ndarray, prior_efficiency: float) -> tuple[float, float]:
    """(efficiency, fixed overhead in ms) of one op class: argmin over a grid of
    sum w (log(body / e + o) - log measured)^2 + PRIOR_WEIGHT (log e - log prior)^2.

    The prior matters when the class's kernels are all small (overhead-bound: their data cannot
    tell the efficiency apart from the overhead) and fades when large kernels are measured: a
    class fitted on 128-token models then still prices a 1500-token Softmax near the bandwidth
    the calibration measured, instead of extrapolating a tiny kernel's slowness to it."""
    w = _weights(measured)
    e = _EFFICIENCY_GRID[:, None, None]
    o = (_LAUNCH_GRID_US / 1e3)[None, :, None]
    errors = np.sum(w * (np.log(body / e + o + 1e-9) - np.log(measured)) ** 2, axis=2)
    errors += _PRIOR_WEIGHT * (np.log(_EFFICIENCY_GRID) - math.log(prior_efficiency))[:, None] ** 2
    i, j = np.unravel_index(int(np.argmin(errors)), errors.shape)
    return float(_EFFICIENCY_GRID[i]), float(_LAUNCH_GRID_US[j] / 1e3)


def _fit_overhead(measured: np.ndarray) -> float:
    """Fixed time (ms) of a class with no work to price (views, shape ops): log-space fit of a constant."""
    return float(np.exp(np.average(np.log(measured), weights=_weights(measured))))


def _fit_layers(samples: Sequence[Sample], profile: HardwareProfile, residual: bool) -> LearnedCorrection:
    """Both layers fitted to `samples` (the booster only with `residual` and LightGBM installed)."""
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_class[sample.op_class].append(sample)
    efficiency = dict(profile.efficiency)
    overhead_us: dict[str, float] = {}
    for cls, members in by_class.items():
        body = np.array([m.body_ms for m in members])
        measured = np.array([m.measured_ms for m in members])
        if body.any():
            efficiency[cls], overhead_ms = _fit_class(body, measured, profile.efficiency_of(cls))
        else:  # views and shape ops: only a fixed cost
            overhead_ms = _fit_overhead(measured)
        overhead_us[cls] = overhead_ms * 1e3
    # the launch overhead of a class nobody measured is what a kernel doing no work costs (views
    # and shape ops), not the median of the classes' overheads: those absorb what the roofline
    # misses of their mid-sized kernels and run to tens of microseconds
    zero_work = [s.measured_ms for s in samples if s.op_class in _ZERO_WORK]
    launch_us = (_fit_overhead(np.array(zero_work)) * 1e3 if zero_work
                 else float(np.median(list(overhead_us.values()))))
    for cls in _ZERO_WORK:
        overhead_us.setdefault(cls, launch_us)
    correction = LearnedCorrection(
        efficiency=efficiency,
        launch_overhead_us=launch_us,
        overhead_us=overhead_us,
        ops=sorted({s.op for s in samples}),
        trained_on=sorted({s.model for s in samples if s.model}),
        samples=len(samples),
    )
    measured = np.array([s.measured_ms for s in samples])
    base = correction.predict_samples(samples, residual=False)
    correction.fit_log_rmse["efficiencies"] = _log_error(base, measured)
    if residual:
        try:
            import lightgbm
        except ImportError:
            logger.warning("lightgbm is not installed (pip install 'kiln[cost]'): fitting efficiencies only")
            return correction
        rows = np.array([_features(s, s.op, s.group_size, b, correction.ops) for s, b in zip(samples, base)])
        target = np.log(measured) - np.log(np.maximum(base, 1e-9))
        model = lightgbm.LGBMRegressor(**_GBM_PARAMS)
        model.fit(rows, target, sample_weight=_weights(measured), categorical_feature=_CATEGORICAL)
        correction.booster_text = model.booster_.model_to_string()
        correction.features = FEATURES
        correction.fit_log_rmse["residual"] = _log_error(correction.predict_samples(samples), measured)
    return correction


def _held_out_score(predicted: np.ndarray, measured: np.ndarray) -> float:
    """How wrong a prediction of a model nobody fitted on is, in log units: the kernels'
    time-weighted log-RMSE (what the booster minimises) plus the log error of their sum (the
    whole-model latency passes compare)."""
    w = _weights(measured)
    per_kernel = float(np.sqrt(np.average((np.log(np.maximum(predicted, 1e-9)) - np.log(measured)) ** 2, weights=w)))
    return per_kernel + abs(math.log(float(predicted.sum()) / float(measured.sum())))


def _cross_validated_weight(samples: Sequence[Sample], profile: HardwareProfile) -> dict[float, float]:
    """Mean held-out score of each candidate residual weight, leaving one model out at a time."""
    models = sorted({s.model for s in samples})
    scores: dict[float, list[float]] = {w: [] for w in _RESIDUAL_WEIGHTS}
    for held in models:
        train = [s for s in samples if s.model != held]
        test = [s for s in samples if s.model == held]
        if len(train) < 10:
            continue
        correction = _fit_layers(train, profile, residual=True)
        if not correction.booster_text:
            return {}
        measured = np.array([s.measured_ms for s in test])
        base = correction.predict_samples(test, residual=False)
        log_residual = np.log(correction.predict_samples(test)) - np.log(base)
        for weight in _RESIDUAL_WEIGHTS:
            scores[weight].append(_held_out_score(base * np.exp(weight * log_residual), measured))
    return {w: float(np.mean(v)) for w, v in scores.items() if v}


def fit(samples: Sequence[Sample], profile: HardwareProfile, *, residual: bool = True) -> LearnedCorrection:
    """Fit each op class's efficiency and fixed overhead, then the residual booster; with samples
    of three or more models, the booster's weight is cross-validated over models (see the module
    docstring), else it applies in full."""
    samples = [s for s in samples if s.measured_ms > 0 and math.isfinite(s.measured_ms)]
    if len(samples) < 10:
        raise ProfileError(f"Need at least 10 measured kernels to fit a correction, got {len(samples)}.")
    correction = _fit_layers(samples, profile, residual)
    if correction.booster_text and len({s.model for s in samples}) >= 3:
        scores = _cross_validated_weight(samples, profile)
        if scores:
            correction.residual_weight = min(scores, key=lambda w: (round(scores[w], 6), -w))
            correction.residual_weight_scores = {f"{w:g}": round(v, 4) for w, v in scores.items()}
            logger.info("booster weight %.2f by leave-one-model-out cross-validation (scores %s)",
                        correction.residual_weight, correction.residual_weight_scores)
    return correction
