"""Optimization levels: which passes run, in the DESIGN order
(folding -> cache insertion -> quantization -> fusion -> memory mapping).

Level 0 runs nothing (capture and validation only). Level 1 runs the exact clean-ups and
constant folding to their fixed point. Level 2 adds exact layer folding (BatchNorm / affine into
Conv and Gemm, scales into weights), Reciprocal into Div, merging of linear chains, joining of
parallel MatMuls, linears on rows as Gemm, layout-chain collapse, Reshape sinking and
batch-transpose layouts, then the clean-ups again to their fixed point, and last the residual
Adds before a LayerNormalization written as Sum where the backend runs that form faster.

Block dropping (`kiln.passes.approximate.block_dropping`) is approximate and opt-in: given a
`BlockBudget`, it runs first, on the graph as captured (its names and module paths are intact),
and the exact passes then clean up after it.
"""

from __future__ import annotations

from kiln.errors import PassError
from kiln.passes.approximate.block_dropping import BlockBudget, DropResidualBlocks
from kiln.passes.cleanup.common_subexpression_elimination import EliminateCommonSubexpressions
from kiln.passes.cleanup.dead_node_elimination import EliminateDeadNodes
from kiln.passes.cleanup.identity_elimination import EliminateIdentityAndNoOps
from kiln.passes.cleanup.initializer_deduplication import DeduplicateInitializers
from kiln.passes.folding.constant_folding import FoldConstants
from kiln.passes.folding.layer_folding import FoldLayers
from kiln.passes.folding.linear_chain_merging import MergeLinearChains
from kiln.passes.folding.reciprocal_folding import FoldReciprocal
from kiln.passes.folding.scale_folding import FoldScalesIntoWeights
from kiln.passes.fusion.parallel_matmul_joining import JoinParallelMatMuls
from kiln.passes.fusion.residual_add_as_sum import WriteResidualAddsAsSum
from kiln.passes.infra.manager import FixedPointGroup, PipelineStep
from kiln.passes.layout.batch_transpose import ExposeBatchTransposes
from kiln.passes.layout.chain_collapse import CollapseLayoutChains
from kiln.passes.layout.linear_to_gemm import LinearToGemm
from kiln.passes.layout.reshape_sinking import SinkReshapes

MAX_LEVEL = 2


def cleanup_group(name: str, *, deduplicate_initializers: bool) -> FixedPointGroup:
    """The exact clean-ups, repeated until none changes the model."""
    dedupe = (DeduplicateInitializers(),) if deduplicate_initializers else ()
    return FixedPointGroup(name, (EliminateIdentityAndNoOps(), FoldConstants(), *dedupe,
                                  EliminateCommonSubexpressions(), EliminateDeadNodes()))


def passes_for_level(level: int, *, drop_blocks: BlockBudget | None = None) -> list[PipelineStep]:
    """The pipeline for an optimization level, with block dropping first when a budget is given."""
    steps = _exact_steps(level)
    return [DropResidualBlocks(drop_blocks), *steps] if drop_blocks is not None else steps


def _exact_steps(level: int) -> list[PipelineStep]:
    if level == 0:
        return []
    if level == 1:
        return [EliminateDeadNodes(), cleanup_group("level1_cleanup", deduplicate_initializers=False)]
    if level == 2:
        return [
            EliminateDeadNodes(),
            EliminateIdentityAndNoOps(),
            FoldConstants(),
            FoldLayers(),
            FoldScalesIntoWeights(),
            FoldReciprocal(),
            MergeLinearChains(),
            JoinParallelMatMuls(),
            LinearToGemm(),
            CollapseLayoutChains(),
            SinkReshapes(),
            ExposeBatchTransposes(),
            cleanup_group("level2_cleanup", deduplicate_initializers=True),
            WriteResidualAddsAsSum(),
        ]
    raise PassError(f"Unknown optimization level {level}; kiln supports levels 0..{MAX_LEVEL}.")
