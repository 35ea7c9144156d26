"""The pass contract: what a pass is (`Pass`), what it reads (`PassContext`), what it returns
(`PassResult`) and the error budgets approximate passes are validated with.

Modelled on onnx-ir's PassBase and torch.fx's PassResult (a pass returns the model and whether
it changed).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from kiln.errors import PassError
from kiln.ir.inputs import Feeds
from kiln.report.model import BlockDecision, Rewrite
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
    exactly. Elementwise atol/rtol would reject any such pass however close its outputs stay."""

    min_cosine: float = 0.99
    max_abs: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.min_cosine <= 1.0:
            raise PassError(f"min_cosine={self.min_cosine} is not in (0, 1]; use e.g. 0.99.")
        if self.max_abs is not None and self.max_abs < 0:
            raise PassError(f"max_abs={self.max_abs} is negative; give a bound >= 0 or None.")

    def __str__(self) -> str:
        text = f"cosine>={self.min_cosine:g}"
        return text + (f" max_abs<={self.max_abs:g}" if self.max_abs is not None else "")


# What an approximate pass may deviate from the original model by.
ErrorBudget = Tolerance | CosineBudget


@dataclass
class PassResult:
    """What a pass returns: the (possibly new) model, whether it changed, and optionally the
    rewrites it made. When `rewrites` is None the PassManager infers them from a graph diff."""

    model: ir.Model
    modified: bool
    rewrites: list[Rewrite] | None = None
    message: str = ""
    # block dropping: the per-block scores and decisions, copied into the PassReport
    blocks: list[BlockDecision] = field(default_factory=list)


@dataclass
class PassContext:
    """What a pass may read: the target, the cost model, sample inputs, a model runner and options.

    `cost_model` is filled by the cost_model package when one is configured; passes that need a
    trade-off decision must ask it (and fall back to a documented heuristic when it is None).
    `runner` runs a model on feeds (the validation runner `kiln.optimize` injects, since passes
    never import a backend); passes that measure outputs (block dropping) use it.
    `measured_choices` times two small alternatives on the target and remembers the ratio
    (`kiln.cost_model.measured_choice.MeasuredChoices`, given by `kiln.optimize` for ONNX Runtime
    on this machine); choices no model predicts (joining parallel MatMuls) ask it, and are not
    made when it is None.
    """

    target: Target = field(default_factory=Target)
    cost_model: Any = None
    sample_inputs: Feeds | None = None
    options: dict[str, Any] = field(default_factory=dict)
    runner: ModelRunner | None = None
    measured_choices: Any = None


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
