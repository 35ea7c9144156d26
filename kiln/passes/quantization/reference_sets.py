"""The feeds a quantization budget search scores its trials on, with the fp32 model's outputs on
each, run once and shared by every trial."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import onnx_ir as ir

from kiln.ir.inputs import Feeds
from kiln.passes.infra.contract import CosineBudget, ModelRunner, PassContext
from kiln.passes.infra.validation import OutputScore, score_outputs

__all__ = ["ReferenceSets", "held_out_inputs", "reference_sets", "score_trial", "within"]

#: "calibration" (and "held-out" when there are such inputs) -> the feeds and the fp32 model's outputs on them
ReferenceSets = dict[str, tuple[list[Feeds], list[list[Any]]]]


def held_out_inputs(ctx: PassContext, feeds: Sequence[Feeds]) -> Feeds | None:
    """The sample inputs validation will check, unless the search already runs on them."""
    samples = ctx.sample_inputs
    return samples if samples is not None and all(f is not samples for f in feeds) else None


def reference_sets(model: ir.Model, runner: ModelRunner, feeds: list[Feeds], held_out: Feeds | None) -> ReferenceSets:
    """The calibration `feeds` (and the `held_out` ones) with the unquantized model's outputs on each."""
    sets = {"calibration": (feeds, [runner(model, f) for f in feeds])}
    if held_out is not None:
        sets["held-out"] = ([held_out], [runner(model, held_out)])
    return sets


def score_trial(runner: ModelRunner, model: ir.Model, trial: ir.Model, inputs: Sequence[Feeds],
                reference: Sequence[Sequence[Any]], budget: CosineBudget) -> OutputScore:
    """A trial (a changed copy of `model`) scored against `model`'s `reference` outputs on
    `inputs`, per sample when the budget is."""
    names = [v.name or f"output_{i}" for i, v in enumerate(model.graph.outputs)]
    return score_outputs(runner, trial, inputs, names, reference, per_sample=budget.per_sample)


def within(budget: CosineBudget, score: OutputScore) -> bool:
    """Whether a trial's score keeps `budget` (a trial that could not be compared never does)."""
    return score.problem is None and budget.admits(score.cosine, score.max_abs)
