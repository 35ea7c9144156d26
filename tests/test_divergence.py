"""kiln.divergence: the first node whose outputs differ between two runs, and whether it differs
alone on the reference's inputs (its kernel) or only amplifies what its inputs carry."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import helper

from kiln.backends import onnxruntime as ort_backend
from kiln.divergence import find_divergence
from kiln.errors import BackendError
from kiln.ir.capture import from_proto
from kiln.passes.infra.contract import Tolerance
from tests.conftest import make_model, tensor_info

FEEDS = {"x": np.array([[1.0, -2.0, 2.5, 0.5]], np.float32)}  # two ties of Round


def _model() -> ir.Model:
    """y = Neg(Round(Relu(x))): at a tie, Round turns a difference of 1e-5 in `r` into 1 in `rounded`."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Round", ["r"], ["rounded"], name="round"),
             helper.make_node("Neg", ["rounded"], ["y"], name="negate")]
    return from_proto(make_model(nodes, [tensor_info("x", [1, 4])], [tensor_info("y", [1, 4])]))


def _reference(model, feeds):
    return ort_backend.run_model(model, feeds)


def _outputs_named(model) -> list[str]:
    return [v.name for v in model.graph.outputs]


def test_a_kernel_that_computes_differently_is_named_and_still_differs_alone():
    def candidate(model, feeds):  # computes Relu's output one too high, wherever it is an output
        return [o + 1 if name == "r" else o for name, o in zip(_outputs_named(model), _reference(model, feeds))]

    model = _model()
    found = find_divergence(model, FEEDS, reference=_reference, candidate=candidate, tolerance=Tolerance())
    assert (found.op_type, found.node, found.output) == ("Relu", "relu", "r")
    assert found.max_abs == 1.0 and found.input_max_abs == 0.0
    assert found.alone_differs and found.alone_max_abs == 1.0
    assert "openvino computes Relu 'relu'" in found.describe("openvino")
    assert _outputs_named(model) == ["y"], "the graph outputs are restored"


def test_a_node_that_amplifies_its_inputs_differences_is_named_as_such():
    def candidate(model, feeds):  # a backend whose input handling is off by 1e-5: within the tolerance
        return _reference(model, {k: v + 1e-5 if k == "x" else v for k, v in feeds.items()})

    found = find_divergence(_model(), FEEDS, reference=_reference, candidate=candidate, tolerance=Tolerance())
    assert (found.op_type, found.output) == ("Round", "rounded")
    assert 0 < found.input_max_abs < 1e-4 and found.max_abs == 1.0
    assert not found.alone_differs and found.alone_max_abs == 0.0
    assert "amplifies differences within the tolerance" in found.describe("openvino")


def test_runs_that_agree_or_fail_name_nothing_and_leave_the_model_as_it_was():
    model = _model()
    assert find_divergence(model, FEEDS, reference=_reference, candidate=_reference, tolerance=Tolerance()) is None

    def failing(model, feeds):
        raise BackendError("cannot compile")

    assert find_divergence(model, FEEDS, reference=_reference, candidate=failing, tolerance=Tolerance()) is None
    assert _outputs_named(model) == ["y"] and not model.graph.node(0).outputs[0].is_graph_output()
