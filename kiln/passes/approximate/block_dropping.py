"""Block dropping (issue 4, after LAPTOP-Diff and FoldGPT): skip whole residual blocks whose
removal barely changes the model's outputs, under an error budget the user gives.

On calibration inputs, each residual block (`kiln.passes.approximate.residual_blocks`) is scored alone by
how far the outputs move when it is skipped (cosine similarity of the flattened outputs with the
original model's, and max abs diff). Blocks are then dropped greedily, least important first, and
after every drop the model with all drops so far is run again: a block is kept when the *measured*
joint cosine would fall below the budget. LAPTOP-Diff assumes the errors add up; the report shows
the additive prediction (sum of solo errors, error = 1 - cosine) next to the measured joint error
after each drop, so whether they do is visible model by model.

The pass is approximate (`exact=False`) with a `CosineBudget`: the PassManager checks the
result against the original with that budget, and later exact passes against the dropped model.
It is opt-in: ``kiln.optimize(model, example_inputs, drop_blocks=BlockBudget(min_cosine=0.99))``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import onnx_ir as ir

from kiln.errors import InputError, PassError
from kiln.ir.edits import remove_unused_initializers
from kiln.ir.inputs import Feeds
from kiln.passes.approximate.residual_blocks import ResidualBlock, analyze_add, drop_block, find_residual_blocks
from kiln.passes.infra.contract import CosineBudget, ModelRunner, Pass, PassContext, PassResult
from kiln.passes.infra.recording import node_ref
from kiln.passes.infra.validation import OutputScore, score_outputs
from kiln.report.model import Alternative, Decision, Rewrite

logger = logging.getLogger(__name__)

__all__ = ["BlockBudget", "DropResidualBlocks"]


@dataclass(frozen=True)
class BlockBudget:
    """How much block dropping may change the outputs, measured against the original model on
    the calibration (sample) inputs: every float output keeps a cosine similarity of at least
    `min_cosine` (and, when given, a max abs diff of at most `max_abs`); at most `max_blocks`
    blocks are dropped (None: no limit)."""

    min_cosine: float = 0.99
    max_abs: float | None = None
    max_blocks: int | None = None

    def __post_init__(self) -> None:
        self.cosine_budget()  # validates min_cosine and max_abs
        if self.max_blocks is not None and self.max_blocks < 0:
            raise PassError(f"max_blocks={self.max_blocks} is negative; give a count >= 0 or None.")

    def cosine_budget(self) -> CosineBudget:
        """The budget the PassManager validates the pass with."""
        return CosineBudget(min_cosine=self.min_cosine, max_abs=self.max_abs)


class DropResidualBlocks(Pass):
    """Drops residual blocks greedily while the measured output cosine stays within the budget.

    Reads calibration inputs from `calibration` or else the context's (`ctx.calibration`, else
    its sample inputs), and runs models with `runner` or else `ctx.runner` (kiln.optimize
    provides both). Every block scored is a `Decision` row (keep / drop, priced by the cost
    model, with its solo and joint scores), in the order the blocks were considered.
    """

    name = "block_dropping"
    exact = False
    rule = "block_dropping"

    def __init__(self, budget: BlockBudget, *, calibration: Sequence[Feeds] | None = None,
                 runner: ModelRunner | None = None):
        self.budget = budget
        self.error_budget = budget.cosine_budget()
        self.calibration = list(calibration) if calibration is not None else None
        self.runner = runner

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        runner = self.runner or ctx.runner
        if runner is None:
            raise PassError("block_dropping runs the model to score blocks but has no runner: run it through "
                            "kiln.optimize(..., drop_blocks=...) or give DropResidualBlocks(runner=...).")
        feeds = self.calibration or ctx.calibration_feeds()
        if not feeds:
            raise InputError("block_dropping scores blocks on calibration inputs and none were given: pass "
                             "sample_inputs={name: array} (or example_inputs) to kiln.optimize, or "
                             "--sample-inputs NPZ to kiln optimize.")
        names = [v.name or f"output_{i}" for i, v in enumerate(model.graph.outputs)]
        reference = [runner(model, f) for f in feeds]
        blocks = find_residual_blocks(model)
        if not blocks:
            return PassResult(model, False, message="no droppable residual blocks found")
        positions = {node: index for index, node in enumerate(model.graph)}
        indices = [positions[b.add] for b in blocks]

        def measure(drop: list[int]) -> OutputScore:
            trial = model.clone()
            _drop_by_position(trial, drop)
            return score_outputs(runner, trial, feeds, names, reference)

        solo = [measure([index]) for index in indices]
        decisions = [self._solo(block, score, ctx) for block, score in zip(blocks, solo)]
        solo_errors = [score.error for score in solo]
        order = sorted(range(len(blocks)), key=lambda i: (solo_errors[i], solo[i].max_abs, i))
        dropped: list[int] = []
        predicted = 0.0
        for rank, i in enumerate(order):
            decision = decisions[i]
            if self.budget.max_blocks is not None and len(dropped) >= self.budget.max_blocks:
                decision.reason = f"max_blocks={self.budget.max_blocks} reached"
                continue
            if not self._within(solo[i].cosine, solo[i].max_abs) or solo[i].problem:
                for j in order[rank:]:  # solo errors only grow from here on
                    decisions[j].reason = solo[j].problem or "skipping it alone already breaks the budget"
                break
            joint = measure([indices[k] for k in [*dropped, i]])
            decision.alternative("drop").metrics.update({
                "predicted_joint_error": predicted + solo_errors[i], "measured_joint_error": joint.error,
                "joint_cosine": joint.cosine, "joint_max_abs": joint.max_abs})
            if joint.problem is None and self._within(joint.cosine, joint.max_abs):
                dropped.append(i)
                predicted += solo_errors[i]
                decision.chosen = "drop"
                decision.reason = f"joint cosine {joint.cosine:.6f} within {self.error_budget}"
            else:
                decision.reason = joint.problem or (f"with it the joint cosine would be {joint.cosine:.6f} "
                                                    f"(budget {self.error_budget})")
        for i in order:
            ctx.record(decisions[i])
        if not dropped:
            return PassResult(model, False, message=f"no block fits the budget {self.error_budget} "
                              f"({len(blocks)} blocks scored)")
        rewrites = self._apply(model, [blocks[i] for i in dropped], [decisions[i] for i in dropped])
        last = decisions[dropped[-1]].alternative("drop").metrics
        message = (f"dropped {len(dropped)} of {len(blocks)} blocks; measured cosine {last['joint_cosine']:.6f}, "
                   f"joint error {last['measured_joint_error']:.3g} (sum of solo errors "
                   f"{last['predicted_joint_error']:.3g})")
        logger.info("block_dropping: %s", message)
        return PassResult(model, True, rewrites=rewrites, message=message)

    def _within(self, cosine: float, max_abs: float) -> bool:
        return self.error_budget.admits(cosine, max_abs)

    @staticmethod
    def _solo(block: ResidualBlock, score: OutputScore, ctx: PassContext) -> Decision:
        """The block's decision row before the greedy pass: keep it (priced by the cost model at
        what the block's kernels take) or drop it (nothing runs; scored alone)."""
        keep_ms = ctx.cost.price(block.removed_nodes) if ctx.cost is not None else None
        drop = Alternative("drop", predicted_ms=0.0 if keep_ms is not None else None, metrics={
            "nodes": float(len(block.removed_nodes)),
            "solo_cosine": score.cosine if score.problem is None else float("nan"),
            "solo_max_abs": score.max_abs,
        })
        return Decision(subject=block.name, question="drop residual block", chosen="keep",
                        alternatives=[Alternative("keep", predicted_ms=keep_ms, metrics={"cosine": 1.0}), drop],
                        reason=score.problem or "", decided_by="budget")

    @staticmethod
    def _apply(model: ir.Model, blocks: list[ResidualBlock], decisions: list[Decision]) -> list[Rewrite]:
        """Drop `blocks` from `model` in place; one rewrite per block (a block nested in one
        dropped earlier is already gone and reports no nodes)."""
        rewrites: list[Rewrite] = []
        for block, decision in zip(blocks, decisions):
            drop = decision.alternative("drop")
            if block.add.graph is None:
                drop.metrics["nodes"] = 0.0
                decision.reason += "; already removed with an enclosing block"
                continue
            current = analyze_add(model.graph, block.add)
            if isinstance(current, str):  # cannot happen for a block dropped in the trials
                raise PassError(f"block {block.name} is no longer droppable: {current}")
            refs = [node_ref(n) for n in current.removed_nodes]
            skip = current.skip.name
            out = current.add.outputs[0].name
            weights = {id(v): v for n in current.removed_nodes for v in n.inputs if v is not None and v.is_initializer()}
            drop_block(model.graph, current)
            remove_unused_initializers(model.graph, weights.values())
            drop.metrics["nodes"] = float(len(refs))
            rewrites.append(Rewrite(
                rule=DropResidualBlocks.rule, nodes=refs,
                reason=(f"{decision.subject}: skipped alone the outputs keep cosine {drop.metrics['solo_cosine']:.6f}; "
                        f"with the blocks dropped before it, measured cosine {drop.metrics['joint_cosine']:.6f} "
                        f"(1 - sum of solo errors predicted {1 - drop.metrics['predicted_joint_error']:.6f})"),
                result=f"consumers of {out!r} read {skip!r}",
            ))
        return rewrites


def _drop_by_position(model: ir.Model, positions: list[int]) -> None:
    """Drop the blocks whose Adds sit at `positions` of the graph's node order (node identity
    does not survive `Model.clone()`, positions do). Each block is analysed again on the current
    graph, so nested blocks can be dropped in any order."""
    nodes = list(model.graph)
    for add in [nodes[p] for p in positions]:
        if add.graph is None:  # removed with an enclosing block
            continue
        block = analyze_add(model.graph, add)
        if isinstance(block, str):
            raise PassError(f"Add {add.name!r} is no longer a droppable block: {block}")
        drop_block(model.graph, block)
