"""Optimization levels: which passes run, in the DESIGN order
(folding -> cache insertion -> quantization -> fusion -> memory mapping).

Level 0 runs nothing (capture and validation only). Level 1 runs the exact clean-up passes
and constant folding. Level 2 adds exact layer folding (BatchNorm / affine into Conv and Gemm),
Reciprocal into Div, merging of consecutive linear maps, layout-chain simplification (with
batch-transpose layouts for MatMul readers) and duplicate-initializer merging.

Block dropping (`kiln.passes.approximate.block_dropping`) is approximate and opt-in: given a `BlockBudget`,
it runs first, on the graph as captured (its names and module paths are intact), and the exact
passes then clean up after it.
"""

from __future__ import annotations

from kiln.errors import PassError
from kiln.passes.infra.contract import Pass
from kiln.passes.approximate.block_dropping import BlockBudget, DropResidualBlocks
from kiln.passes.cleanup.common_subexpression_elimination import EliminateCommonSubexpressions
from kiln.passes.cleanup.dead_node_elimination import EliminateDeadNodes
from kiln.passes.cleanup.identity_elimination import EliminateIdentityAndNoOps
from kiln.passes.folding.constant_folding import FoldConstants
from kiln.passes.layout.linear_to_gemm import FlattenLinearsToGemm
from kiln.passes.cleanup.initializer_deduplication import DeduplicateInitializers
from kiln.passes.folding.layer_folding import FoldLayers
from kiln.passes.folding.linear_chain_merging import MergeLinearMaps
from kiln.passes.folding.reciprocal_folding import FoldReciprocalIntoDivision
from kiln.passes.layout.chain_collapse import SimplifyShapeChains

MAX_LEVEL = 2


def passes_for_level(level: int, *, drop_blocks: BlockBudget | None = None) -> list[Pass]:
    """The pass list for an optimization level, with block dropping first when a budget is given."""
    passes = _exact_passes(level)
    return [DropResidualBlocks(drop_blocks), *passes] if drop_blocks is not None else passes


def _exact_passes(level: int) -> list[Pass]:
    if level == 0:
        return []
    if level == 1:
        return [
            EliminateDeadNodes(),
            EliminateIdentityAndNoOps(),
            FoldConstants(),
            EliminateCommonSubexpressions(),
            EliminateDeadNodes(),
        ]
    if level == 2:
        return [
            EliminateDeadNodes(),
            EliminateIdentityAndNoOps(),
            FoldConstants(),
            FoldLayers(),
            FoldReciprocalIntoDivision(),
            MergeLinearMaps(),
            FlattenLinearsToGemm(),
            SimplifyShapeChains(),
            EliminateIdentityAndNoOps(),
            FoldConstants(),
            DeduplicateInitializers(),
            EliminateCommonSubexpressions(),
            EliminateDeadNodes(),
        ]
    raise PassError(f"Unknown optimization level {level}; kiln supports levels 0..{MAX_LEVEL}.")
