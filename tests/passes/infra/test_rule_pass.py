"""RulePass (kiln.passes.infra.rule_pass): rules report under snake_case names, and a rule set that
silently drops dead initializers (onnxscript's remove_unused_nodes after a remove_nodes=False rule)
still counts as a change, so the per-pass figures agree with the run's."""

from __future__ import annotations

import numpy as np
from conftest import make_model, tensor_info
from onnx import helper, numpy_helper

import kiln
from kiln.passes.folding.linear_chain_merging import MergeLinearChains
from kiln.passes.infra.recording import snake_case
from kiln.passes.layout.chain_collapse import CollapseLayoutChains


def test_rule_names_are_snake_case():
    assert [snake_case(n) for n in ("FuseBatchNormIntoConv", "SqueezeReshape1d", "TransposeTranspose")] == [
        "fuse_batch_norm_into_conv", "squeeze_reshape1d", "transpose_transpose"]


def test_dropping_dead_initializers_is_a_change():
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 64)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.standard_normal((64, 8)).astype(np.float32), "W2")]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("MatMul", ["h", "W2"], ["y"])]
    model = make_model(nodes, [tensor_info("x", [3, 16])], [tensor_info("y", [3, 8])], inits)
    # the merge leaves W1 and W2 unread; the chain rules' clean-up drops them while no rule applies
    optimized = kiln.optimize(model, passes=[MergeLinearChains(), CollapseLayoutChains()], measured_choices=None)
    merge, collapse = optimized.report.passes
    assert merge.status == "applied" and merge.parameter_bytes_after > merge.parameter_bytes_before
    assert collapse.status == "applied"
    assert collapse.parameter_bytes_after == optimized.report.parameter_bytes_after == 16 * 8 * 4
    assert list(optimized.model.graph.initializers) == ["W1_x_W2"]
