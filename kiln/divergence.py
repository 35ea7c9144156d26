"""Where two runtimes part ways on a model: every node's outputs are compared between a reference
run and a candidate run (both with every intermediate exposed as a graph output), the first node
in graph order whose outputs differ beyond the tolerance is named, and that node alone is rerun
on the reference's own input values, which tells a kernel computing differently from a node
that only amplifies differences its inputs already carry (a quantizer at a rounding boundary)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from kiln.errors import KilnError
from kiln.ir.edits import standalone_model, tensor_input
from kiln.ir.inputs import Feeds
from kiln.passes.infra.contract import Tolerance
from kiln.passes.infra.validation import compare_outputs

logger = logging.getLogger(__name__)

#: runs a model on feeds and returns its outputs in graph-output order
Runner = Callable[[ir.Model, Feeds], Sequence[Any]]


@dataclass(frozen=True)
class Divergence:
    """The first node whose outputs differ between the two runs, in graph order."""

    node: str
    op_type: str
    output: str
    max_abs: float  # of that output, in the whole-graph runs
    input_max_abs: float  # the largest difference of any of its inputs in the same runs
    alone_max_abs: float | None  # the node alone on the reference's inputs; None when it could not be run alone
    alone_differs: bool  # run alone, it is still outside the tolerance

    def describe(self, candidate: str, reference: str = "ONNX Runtime") -> str:
        """One sentence for an error message: which node, by how much, and whose doing."""
        where = f"{self.op_type} {self.node!r} (output {self.output!r} differs by up to {self.max_abs:.3g}"
        if self.alone_differs:
            return (f"{candidate} computes {where}): run alone on the same input values as {reference}, it "
                    f"still differs by up to {self.alone_max_abs:.3g}.")
        alone = ("it matches when run alone on the reference's input values" if self.alone_max_abs is not None
                 else "it could not be run alone")
        return (f"The first node whose output differs is {where}, while its inputs differ by at most "
                f"{self.input_max_abs:.3g}); {alone}: it amplifies differences within the tolerance that "
                f"{candidate} computes upstream (a rounding or comparison step does).")


def _exposable(value: ir.Value) -> bool:
    """A named value that can be a graph output: a tensor (or of a type nobody inferred)."""
    return bool(value.name) and (value.type is None or isinstance(value.type, ir.TensorType))


@contextlib.contextmanager
def _all_values_exposed(model: ir.Model) -> Iterator[list[ir.Value]]:
    """`model` with every top-level node output also a graph output, for the duration; yields
    the graph outputs in order. The model is restored afterwards, whatever happens."""
    outputs = model.graph.outputs
    already = set(outputs)
    added = [v for node in model.graph for v in node.outputs if v not in already and _exposable(v)]
    outputs.extend(added)
    try:
        yield list(outputs)
    finally:
        for _ in added:
            outputs.pop()


def _max_abs(reference: Any, candidate: Any) -> float:
    try:
        a, b = np.asarray(reference), np.asarray(candidate)
        if a.shape != b.shape or a.dtype.kind not in "fiub" or a.size == 0:
            return 0.0 if a.shape == b.shape else float("inf")
        return float(np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    except (TypeError, ValueError):
        return float("inf")


def _node_alone(node: ir.Node, arrays: dict[str, np.ndarray]) -> ir.Model | None:
    """`node` as a model of its own, its non-constant inputs graph inputs of the shapes the
    reference ran them at (not `kiln.ir.edits.region_model`, which needs static shapes on the
    values, and intermediates often carry none); None when it has subgraphs or an input the
    reference did not give."""
    if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
        return None
    inputs: list[ir.Value] = []
    initializers: list[ir.Value] = []
    wired: list[ir.Value | None] = []
    seen: dict[ir.Value, ir.Value] = {}
    for value in node.inputs:
        if value is None:
            wired.append(None)
            continue
        if value not in seen:
            if value.const_value is not None:
                seen[value] = ir.Value(name=value.name, type=value.type, shape=value.shape,
                                       const_value=value.const_value)
                initializers.append(seen[value])
            elif value.name in arrays and isinstance(arrays[value.name], np.ndarray):
                array = arrays[value.name]
                seen[value] = tensor_input(value.name, array.shape, ir.DataType.from_numpy(array.dtype))
                inputs.append(seen[value])
            else:
                return None
        wired.append(seen[value])
    copy = ir.Node(node.domain, node.op_type, wired,
                   attributes=[ir.Attr(a.name, a.type, a.value) for a in node.attributes.values()],
                   num_outputs=len(node.outputs), name=node.name)
    for old, new in zip(node.outputs, copy.outputs):
        new.name, new.type = old.name, old.type
    graph = node.graph
    opsets = dict(graph.opset_imports) if graph is not None and graph.opset_imports else None
    return standalone_model(inputs, [v for v in copy.outputs if v.name], [copy], initializers=initializers,
                            name=f"alone_{node.name or node.op_type}", opset_imports=opsets)


def find_divergence(model: ir.Model, feeds: Feeds, *, reference: Runner, candidate: Runner,
                    tolerance: Tolerance) -> Divergence | None:
    """The first node of `model` (top-level graph, in order) whose outputs differ between
    `reference` and `candidate` beyond `tolerance`, rerun alone on the reference's inputs. None
    when every exposed value agrees (exposing them changed what the candidate fuses) or a run
    with every value exposed fails; the model is left as it was."""
    try:
        with _all_values_exposed(model) as outputs:
            names = [v.name for v in outputs]
            expected = dict(zip(names, reference(model, feeds)))
            actual = dict(zip(names, candidate(model, feeds)))
    except (KilnError, MemoryError) as exc:
        logger.info("cannot localise the divergence: a run with every value exposed failed: %s", exc)
        return None
    for node in model.graph:
        for value in node.outputs:
            if value.name not in expected or value.name not in actual:
                continue
            stats, violation = compare_outputs([value.name], [expected[value.name]], [actual[value.name]],
                                               tolerance)
            if violation is None:
                continue
            input_max = max((_max_abs(expected[v.name], actual[v.name]) for v in node.inputs
                             if v is not None and v.name in expected and v.name in actual), default=0.0)
            arrays = dict(feeds) | expected
            alone_max, alone_differs = _rerun_alone(node, value, arrays, expected, candidate, tolerance)
            return Divergence(node=node.name or "", op_type=node.op_type, output=value.name,
                              max_abs=stats.max_abs, input_max_abs=input_max, alone_max_abs=alone_max,
                              alone_differs=alone_differs)
    return None


def _rerun_alone(node: ir.Node, value: ir.Value, arrays: dict[str, Any], expected: dict[str, Any],
                 candidate: Runner, tolerance: Tolerance) -> tuple[float | None, bool]:
    """The candidate's error on `value` with `node` run alone on the reference's input values."""
    alone = _node_alone(node, arrays)
    if alone is None:
        return None, False
    alone_inputs = {v.name: arrays[v.name] for v in alone.graph.inputs}
    try:
        outputs = dict(zip([v.name for v in alone.graph.outputs], candidate(alone, alone_inputs)))
    except KilnError as exc:
        logger.info("cannot run %s %r alone: %s", node.op_type, node.name, exc)
        return None, False
    stats, violation = compare_outputs([value.name], [expected[value.name]], [outputs[value.name]], tolerance)
    return stats.max_abs, violation is not None
