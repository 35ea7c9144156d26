"""The pass contract: what a pass is (`Pass`), what it reads (`PassContext`), what it returns
(`PassResult`) and the error budgets approximate passes are validated with.

Modelled on onnx-ir's PassBase and torch.fx's PassResult (a pass returns the model and whether
it changed).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from kiln.cost_model.decisions import CostOracle, MeasuredChoiceOracle, MeasuredPolicy
from kiln.errors import PassError
from kiln.ir.inputs import Feeds
from kiln.passes.infra.options import PassOptions
from kiln.report.model import Decision, NearMiss, Rewrite
from kiln.target import Target

# Runs a model on feeds and returns its outputs in graph-output order.
ModelRunner = Callable[[ir.Model, Feeds], list[np.ndarray]]


@dataclass(frozen=True)
class Tolerance:
    """Outputs agree when |new - ref| <= atol + rtol * |ref| elementwise (NaN matches NaN)."""

    atol: float = 1e-4
    rtol: float = 1e-4

    def __str__(self) -> str:
        return f"atol={self.atol:g} rtol={self.rtol:g}"


@dataclass(frozen=True)
class CosineBudget:
    """The error budget of a pass that changes outputs on purpose (e.g. dropping blocks): each
    float output, flattened, keeps a cosine similarity of at least `min_cosine` with the original
    model's (and, when `max_abs` is given, stays within it elementwise); other outputs must match
    exactly. Elementwise atol/rtol would reject any such pass however close its outputs stay.
    With `per_sample`, every sample of an output (a slice along its first axis: one sentence's
    embedding in a batch) keeps `min_cosine`, not only the batch as a whole."""

    min_cosine: float = 0.99
    max_abs: float | None = None
    per_sample: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.min_cosine <= 1.0:
            raise PassError(f"min_cosine={self.min_cosine} is not in (0, 1]; use e.g. 0.99.")
        if self.max_abs is not None and self.max_abs < 0:
            raise PassError(f"max_abs={self.max_abs} is negative; give a bound >= 0 or None.")

    def admits(self, cosine: float, max_abs: float) -> bool:
        """A worst cosine and max abs diff measured the way this budget says are within it."""
        return cosine >= self.min_cosine and (self.max_abs is None or max_abs <= self.max_abs)

    def __str__(self) -> str:
        text = f"cosine>={self.min_cosine:g}" + (" per sample" if self.per_sample else "")
        return text + (f" max_abs<={self.max_abs:g}" if self.max_abs is not None else "")


# What an approximate pass may deviate from the original model by.
ErrorBudget = Tolerance | CosineBudget


@dataclass
class PassResult:
    """What a pass returns: the (possibly new) model, whether it changed, and optionally the
    rewrites it made. When `rewrites` is None the PassManager infers them from a graph diff.
    `near_misses` are the rules' reasons for not applying where their pattern matched."""

    model: ir.Model
    modified: bool
    rewrites: list[Rewrite] | None = None
    message: str = ""
    near_misses: list[NearMiss] = field(default_factory=list)


@dataclass
class PassContext:
    """What a pass may read, and the decision API it asks.

    - `target`: where the model runs (backend, threads).
    - `cost`: prices the alternatives of a trade-off for the target and thread count
      (`kiln.cost_model.decisions.CostOracle`); None when the caller runs without a cost model,
      and a pass then keeps the form the graph has.
    - `measured`: times two alternatives on the target for choices no model predicts
      (`kiln.cost_model.measure.choices.MeasuredChoices`, given by `kiln.optimize` for ONNX
      Runtime on this CPU); None: such choices keep the form the graph has.
    - `sample_inputs`: the feeds validation runs on; `calibration`: feeds for passes that look
      at activations (quantization, block dropping), by default the sample inputs.
    - `runner`: runs a model on feeds (the validation runner; passes never import a backend).
    - `target_runner`: runs a model compiled for the target backend, for passes whose error
      depends on the backend's kernels (OpenVINO's int8 GEMMs quantize activations themselves);
      None when the target is ONNX Runtime, where `runner` is that.
    - `options`: typed options (`PassOptions`; unknown keys are an error).

    Every decision a pass takes is kept with `record`; `decisions` is the running pass's
    report's list, so they land there.
    """

    target: Target = field(default_factory=Target)
    cost: CostOracle | None = None
    measured: MeasuredChoiceOracle | None = None
    sample_inputs: Feeds | None = None
    calibration: list[Feeds] = field(default_factory=list)
    options: PassOptions = field(default_factory=PassOptions)
    runner: ModelRunner | None = None
    target_runner: ModelRunner | None = None
    decisions: list[Decision] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.options = PassOptions.from_mapping(self.options)

    def record(self, decision: Decision) -> Decision:
        """Keep `decision` for the running pass's report (a later decision on the same question and
        subject replaces it: a rule's check may run again on one match); returns it."""
        for index, known in enumerate(self.decisions):
            if (known.question, known.subject) == (decision.question, decision.subject):
                self.decisions[index] = decision
                return decision
        self.decisions.append(decision)
        return decision

    @property
    def measured_policy(self) -> MeasuredPolicy:
        return MeasuredPolicy(max_ratio=self.options.measured_choice_max_ratio,
                              min_ms=self.options.measured_choice_min_ms)

    def calibration_feeds(self) -> list[Feeds]:
        """The calibration feeds, else the sample inputs as the one calibration set."""
        if self.calibration:
            return list(self.calibration)
        return [self.sample_inputs] if self.sample_inputs is not None else []


class Pass(abc.ABC):
    """A graph-to-graph rewrite.

    Subclasses set `name`, `exact` (outputs preserved to float tolerance) or give an
    `error_budget` (approximate passes), and implement `call`. A pass may modify the model in
    place; the PassManager keeps a snapshot to roll back to.
    """

    name: str = ""
    exact: bool = True
    # Approximate passes: what they may deviate from the original model by (elementwise
    # Tolerance, or CosineBudget for passes that change outputs on purpose).
    error_budget: ErrorBudget | None = None
    # Rule name and reason used when the PassManager infers rewrites from a graph diff.
    rule: str = ""

    def explain(self, removed: list[ir.Node], successors: list[ir.Value]) -> str:
        """Why a group of removed nodes could go (used in inferred rewrites)."""
        return ""

    @abc.abstractmethod
    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        """Rewrite `model` and say whether it changed."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
