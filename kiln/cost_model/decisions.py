"""The decision API passes ask: price the alternatives of a rewrite on the target and take the
cheaper one (`CostOracle`), or, for what no model predicts, measure both on the target
(`MeasuredChoiceOracle`, settled by `measured_decision`). Either way the answer is a
`kiln.report.model.Decision` row that the report renders: the alternatives with their predicted
(and measured) cost, the choice and the reason.

Pure: nothing here runs a backend. `kiln.cost_model.measure.choices.MeasuredChoices` is the
measuring implementation of the oracle protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import onnx_ir as ir

from kiln.cost_model.model import CostModel
from kiln.errors import KilnError
from kiln.report.model import Alternative, Decision

logger = logging.getLogger(__name__)

__all__ = ["CostOracle", "MeasuredChoiceOracle", "MeasuredPolicy", "measured_decision"]

# One alternative: the nodes it runs, each its own kernel (a list), or fused into one kernel
# (a `Fused` group).
Form = Sequence[ir.Node]


@dataclass(frozen=True)
class Fused:
    """Nodes the target runs as one kernel (its graph optimizer fuses them): priced as a group,
    boundary tensors only and one launch."""

    nodes: Sequence[ir.Node]


class CostOracle:
    """Prices the alternatives of a rewrite with a `CostModel` (whose profile is the target's
    hardware at its thread count).

    An alternative is a sequence of nodes (real graph nodes for the form that exists, sketched
    ones from `kiln.ir.edits.sketch_node` for a form that does not yet), priced kernel by kernel
    from the shapes on their values, or a `Fused` group priced as one kernel. `resolution` is
    the relative difference below which the model cannot tell two forms apart: closer than that,
    the decision keeps the form that exists (`keep`) and says so.
    """

    def __init__(self, cost_model: CostModel, *, resolution: float = 0.0) -> None:
        if not 0.0 <= resolution < 1.0:
            raise KilnError(f"resolution={resolution} is not in [0, 1): give the relative difference the cost model "
                            "cannot resolve, e.g. 0.02.")
        self.cost_model = cost_model
        self.resolution = resolution

    @property
    def threads(self) -> int:
        return self.cost_model.profile.threads

    def __repr__(self) -> str:
        return f"CostOracle({self.cost_model!r}, threads={self.threads})"

    def price(self, form: Form | Fused) -> float:
        """Predicted milliseconds of one alternative."""
        if isinstance(form, Fused):
            return self.cost_model.group_cost(list(form.nodes)).ms if form.nodes else 0.0
        return sum(self.cost_model.node_cost(node).ms for node in form)

    def choose(self, subject: str, question: str, alternatives: Mapping[str, Form | Fused], *, keep: str,
               metrics: Mapping[str, Mapping[str, float]] | None = None, why: Mapping[str, str] | None = None,
               ) -> Decision:
        """Price every alternative and take the cheapest; `keep` (the form the graph has) wins
        unless another is cheaper by more than the resolution. `why` adds a sentence per chosen
        alternative to the reason (what makes it cheaper)."""
        if keep not in alternatives:
            raise KilnError(f"keep={keep!r} is not one of the alternatives {sorted(alternatives)}.")
        priced = {name: self.price(form) for name, form in alternatives.items()}
        best = min(priced, key=lambda name: (priced[name], name != keep))
        kept_ms = priced[keep]
        gain = (kept_ms - priced[best]) / kept_ms if kept_ms > 0 else 0.0
        chosen = best if best != keep and gain > self.resolution else keep
        if chosen == keep and best != keep:
            reason = (f"{best} is predicted {gain:.1%} faster, within the cost model's resolution "
                      f"({self.resolution:.0%}): {keep} stays")
        elif chosen == keep:
            reason = f"{keep} is predicted fastest"
        else:
            reason = f"{chosen} is predicted {gain:.1%} faster than {keep}"
        if why and why.get(chosen):
            reason += f"; {why[chosen]}"
        rows = [Alternative(name, predicted_ms=ms, metrics=dict((metrics or {}).get(name, {})))
                for name, ms in priced.items()]
        return Decision(subject=subject, question=question, alternatives=rows, chosen=chosen, reason=reason,
                        decided_by="cost_model")


class Measurement(Protocol):
    """What a measured choice returns (`kiln.cost_model.measure.choices.ChoiceMeasurement`)."""

    ratio: float
    pairs: int
    baseline_ms: float
    candidate_ms: float
    trial_ratios: tuple[float, ...]
    cached: bool

    @property
    def worst_trial(self) -> float: ...


class MeasuredChoiceOracle(Protocol):
    """Times two alternatives on the target once per key and remembers the result
    (`kiln.cost_model.measure.choices.MeasuredChoices`)."""

    def cached(self, key: str) -> Measurement | None:
        """The remembered result for `key`, or None (asked before building the alternatives)."""

    def measure(self, key: str, baseline: ir.Model, candidate: ir.Model) -> Measurement:
        """Time `candidate` against `baseline` (same inputs and outputs) on the target."""


@dataclass(frozen=True)
class MeasuredPolicy:
    """When a measurement settles a choice: the candidate is taken only when every independent
    trial's median ratio candidate / baseline is at most `max_ratio` (one trial on a shared
    machine can be off by more than any real gain); forms the cost model prices under
    `min_ms` are not measured, being below what the timing resolves."""

    max_ratio: float = 0.95
    min_ms: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.max_ratio <= 1.0:
            raise KilnError(f"max_ratio={self.max_ratio} is not in (0, 1]: take the candidate when it measured at "
                            "most this fraction of the baseline's time, e.g. 0.95.")
        if self.min_ms < 0:
            raise KilnError(f"min_ms={self.min_ms} is negative; give the smallest predicted time worth measuring.")


def measured_decision(oracle: MeasuredChoiceOracle | None, *, key: str, subject: str, question: str,
                      names: tuple[str, str], build: Callable[[], tuple[ir.Model, ir.Model]],
                      predicted: Mapping[str, float] | None = None, policy: MeasuredPolicy = MeasuredPolicy(),
                      static: bool = True) -> Decision:
    """Settle baseline (``names[0]``, the form the graph has) against candidate (``names[1]``) by
    measuring both on the target: `build` makes the two forms as small models (only when the
    result is not cached). Without an oracle, with a non-static shape or a form too fast to
    measure, the baseline stays and the reason says why. `predicted` are the cost model's times,
    shown beside the measurement."""
    baseline, candidate = names
    predicted = dict(predicted or {})
    rows = {name: Alternative(name, predicted_ms=predicted.get(name)) for name in names}

    def decision(chosen: str, reason: str, decided_by: Any) -> Decision:
        return Decision(subject=subject, question=question, alternatives=list(rows.values()), chosen=chosen,
                        reason=reason, decided_by=decided_by)

    if oracle is None:
        return decision(baseline, "no measured choices for this target (kiln.optimize measures on ONNX Runtime on "
                                  "this CPU), and no model predicts the difference", "precondition")
    if not static:
        return decision(baseline, "the shapes are not static, so the forms cannot be measured", "precondition")
    fastest = min(predicted.values(), default=None)
    if fastest is not None and fastest < policy.min_ms:
        return decision(baseline, f"predicted {fastest:.3f} ms, below the {policy.min_ms:g} ms the timing resolves",
                        "precondition")
    try:
        measured = oracle.cached(key) or oracle.measure(key, *build())
    except KilnError as exc:
        logger.info("%s not measured: %s", subject, exc)
        return decision(baseline, f"not measured: {exc}", "precondition")
    rows[baseline].measured_ms = float(measured.baseline_ms)
    rows[candidate].measured_ms = float(measured.candidate_ms)
    rows[candidate].metrics = {"ratio": float(measured.ratio), "worst_trial_ratio": float(measured.worst_trial)}
    source = "cached" if measured.cached else "measured"
    trials = "/".join(f"{r:.3f}" for r in measured.trial_ratios)
    detail = (f"{candidate}/{baseline} time {measured.ratio:.3f} ({source} on this machine, median of "
              f"{measured.pairs} pairs; trials {trials}; {candidate} is taken when every trial is <= "
              f"{policy.max_ratio:g})")
    chosen = candidate if measured.worst_trial <= policy.max_ratio else baseline
    return decision(chosen, detail, "measurement")
