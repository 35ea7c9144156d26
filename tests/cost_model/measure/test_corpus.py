"""The kernel corpus: one-operator models at sampled shapes that ONNX Runtime runs and kiln prices."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from kiln.cost_model.analytical import model_cost
from kiln.cost_model.measure.corpus import OPS, kernel_corpus


def test_every_operator_builds_a_valid_model_that_runs_and_is_priced():
    cases = list(kernel_corpus(2))
    assert len(cases) == 2 * len(OPS) and len({c.name for c in cases}) == len(cases)
    for case in cases:
        onnx.checker.check_model(case.model, full_check=True)
        assert [n.name for n in case.model.graph.node] and all(n.name for n in case.model.graph.node)
        session = ort.InferenceSession(case.model.SerializeToString(), providers=["CPUExecutionProvider"])
        assert {i.name for i in session.get_inputs()} == set(case.inputs)
        outputs = session.run(None, case.inputs)
        assert all(np.all(np.isfinite(o)) for o in outputs if o.dtype.kind == "f"), case.name
        cost = model_cost(ir.from_proto(case.model))
        assert not cost.unknown_ops and not cost.missing_shapes, case.name


def test_the_corpus_is_the_same_for_a_seed_and_per_operator():
    first = {c.name: c.model.SerializeToString() for c in kernel_corpus(3, seed=1)}
    assert first == {c.name: c.model.SerializeToString() for c in kernel_corpus(3, seed=1)}
    assert first != {c.name: c.model.SerializeToString() for c in kernel_corpus(3, seed=2)}
    # an operator's cases do not depend on which other operators are drawn
    only_conv = {c.name: c.model.SerializeToString() for c in kernel_corpus(3, seed=1, ops=["Conv"])}
    assert only_conv == {k: v for k, v in first.items() if k.startswith("conv-")}


def test_sizes_span_launch_bound_to_bandwidth_bound():
    sizes = [int(np.prod(a.shape)) for c in kernel_corpus(24, ops=["Relu", "Add", "Clip"]) for a in c.inputs.values()]
    assert min(sizes) < 10_000 and max(sizes) > 500_000


def test_unknown_operators_are_refused():
    with pytest.raises(ValueError, match="no corpus builder"):
        list(kernel_corpus(1, ops=["NotAnOp"]))
