"""The shapes a model's tensors really take on given inputs, read off one ONNX Runtime run.

ONNX shape inference, even with bound inputs and data propagation, leaves data-dependent sizes
unknown (NonZero, NonMaxSuppression, TopK with a computed k, a Reshape whose target is computed
in an unusual way, Loop outputs). The cost model must not price such nodes at zero, so this runs
the model once with every main-graph tensor as an output (ORT's optimizer off, so every value
exists) and records each one's shape, plus the values that steer control flow: the condition of
every If and the trip count and condition of every Loop. Subgraph tensors are not observable this
way; their shapes come from shape inference given the observed outer shapes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir

from kiln.backends.onnxruntime import create_session
from kiln.cost_model.analytical import RunFacts, constant_int, loop_trip_count, scan_trip_count
from kiln.cost_model.model import CostModel, ModelEstimate
from kiln.errors import KilnError
from kiln.ir.inputs import Feeds, is_tensor_input
from kiln.ir.serialization import save_model
from kiln.target import Target

logger = logging.getLogger(__name__)

__all__ = ["observe", "price_at_inputs"]

# a control value has one element (If conditions, Loop trip counts and conditions are scalars)
_CONTROL_MAX_ELEMENTS = 1
# how many levels of nested If branches are inlined to observe the tensors inside them
_INLINE_ROUNDS = 3


def _observable(model: ir.Model) -> list[ir.Value]:
    outputs = {v.name for v in model.graph.outputs}
    out: list[ir.Value] = []
    for node in model.graph:
        for value in node.outputs:
            if not value.name or value.name in outputs or value.is_initializer():
                continue
            if value.type is not None and not isinstance(value.type, ir.TensorType):
                continue  # sequences and optionals have no one shape
            out.append(value)
    return out


def observe(model: ir.Model, feeds: Feeds, *, threads: int = 2, workdir: Path | None = None) -> RunFacts:
    """Run `model` on `feeds` with every main-graph tensor exposed and return what it showed.

    ORT exposes main-graph tensors only, so the branch each If took is then inlined into the main
    graph of a copy and the copy run again (up to `_INLINE_ROUNDS` times, for nested Ifs): the
    tensors inside taken branches get their shapes too, and the Ifs and Loops inside them their
    branches and trip counts. The caller's model is not modified. With `workdir`, copies are saved
    there with their weights as external data and loaded from the file. Raises the KilnError of the
    session factory when ORT cannot load or run the model.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, ir.DataType] = {}
    taken: dict[str, str] = {}
    trips: dict[str, int] = {}
    current = model
    for round_ in range(_INLINE_ROUNDS + 1):
        seen_shapes, seen_dtypes, controls = _observe_once(current, feeds, threads, workdir)
        shapes.update(seen_shapes)
        dtypes.update(seen_dtypes)
        facts = _with_control_flow(current, seen_shapes, seen_dtypes, controls)
        taken.update(facts.taken_branches)
        trips.update(facts.trip_counts)
        if round_ == _INLINE_ROUNDS or not facts.taken_branches:
            break
        current = current.clone()
        if not _inline_taken_branches(current, facts.taken_branches):
            break
    return RunFacts(shapes=shapes, dtypes=dtypes, taken_branches=taken, trip_counts=trips)


def _inline_taken_branches(model: ir.Model, taken: Mapping[str, str]) -> int:
    """Replace every main-graph If whose branch is known by that branch's nodes (its outputs take
    the If's uses); returns how many were inlined. ONNX forbids a subgraph to shadow an outer name,
    so the inlined values keep names unique in the main graph."""
    inlined = 0
    for node in list(model.graph):
        branch_name = taken.get(node.name or "") if node.op_type == "If" else None
        if branch_name is None or branch_name not in node.attributes:
            continue
        branch = node.attributes[branch_name].as_graph()
        if len(branch.outputs) != len(node.outputs):
            continue
        for name, value in list(branch.initializers.items()):
            branch.initializers.pop(name)
            model.graph.register_initializer(value)
        nodes = list(branch)
        branch.remove(nodes, safe=False)
        model.graph.insert_before(node, nodes)
        replacements = list(branch.outputs)
        branch.outputs.clear()  # a value is the output of one graph at a time
        for index, output in enumerate(model.graph.outputs):
            if output in node.outputs:
                model.graph.outputs[index] = replacements[list(node.outputs).index(output)]
        ir.convenience.replace_all_uses_with(list(node.outputs), replacements)
        model.graph.remove(node, safe=True)
        inlined += 1
    return inlined


def _observe_once(model: ir.Model, feeds: Feeds, threads: int,
                  workdir: Path | None) -> tuple[dict[str, tuple[int, ...]], dict[str, ir.DataType], dict[str, int]]:
    """One run of `model` on `feeds` with every main-graph tensor exposed: shapes and dtypes by value
    name, and the value of every one-element integer or boolean tensor (conditions, trip counts)."""
    exposed = model.clone()  # shares the weight tensors; only the output list changes
    extra = _observable(exposed)
    for value in extra:
        exposed.graph.outputs.append(value)
    target = Target(intra_op_threads=threads, graph_optimization_level="disable")  # type: ignore[arg-type]
    # a model read from a file with external data (a lowered graph) is saved again beside it: ORT
    # resolves external data relative to a file, never relative to serialized bytes
    source = save_model(exposed, workdir / "observed.onnx", external_data=True) if workdir is not None else exposed
    session = create_session(source, target, purpose="to observe its shapes")
    names = [o.name for o in session.get_outputs()]
    required = {i.name for i in session.get_inputs()}
    try:
        results = session.run(names, {k: v for k, v in feeds.items() if k in required})
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise KilnError(f"ONNX Runtime could not run the model to observe its shapes: {str(exc).strip()[:300]}. "
                        "Check the sample inputs (--sample-inputs / --input-shape).") from exc
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, ir.DataType] = {}
    controls: dict[str, int] = {}
    for name, array in zip(names, results):
        if not isinstance(array, np.ndarray):
            continue
        shapes[name] = tuple(int(d) for d in array.shape)
        try:
            dtypes[name] = ir.DataType.from_numpy(array.dtype)
        except TypeError:
            pass
        if _is_control(array):
            controls[name] = int(array.reshape(-1)[0])
    for value in model.graph.inputs:
        array = feeds.get(value.name)
        if is_tensor_input(value) and isinstance(array, np.ndarray):
            shapes[value.name] = tuple(int(d) for d in array.shape)
            if _is_control(array):
                controls[value.name] = int(array.reshape(-1)[0])
    return shapes, dtypes, controls


def _is_control(array: np.ndarray) -> bool:
    """A one-element integer or boolean tensor: what an If condition or a Loop trip count is."""
    return array.size == _CONTROL_MAX_ELEMENTS and (array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer))


def _with_control_flow(model: ir.Model, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, ir.DataType],
                       controls: dict[str, int]) -> RunFacts:
    """Which branch each If took and how many times each Loop / Scan ran, from the observed values:
    a Loop's scan outputs are as long as it ran (exact); otherwise its trip count and condition."""

    def known(value: ir.Value) -> int | None:
        return constant_int(value) if value.const_value is not None else controls.get(value.name or "")

    taken: dict[str, str] = {}
    trips: dict[str, int] = {}
    for node in model.graph:
        if node.op_type == "If" and node.inputs and node.inputs[0] is not None:
            cond = known(node.inputs[0])
            if cond is not None:
                taken[node.name] = "then_branch" if cond else "else_branch"
        elif node.op_type == "Loop":
            carried = max(len(node.inputs) - 2, 0)
            lengths = [shapes[v.name][0] for v in node.outputs[carried:] if shapes.get(v.name or "")]
            count = lengths[0] if lengths else loop_trip_count(node, known)
            if count is not None:
                trips[node.name] = count
        elif node.op_type == "Scan":
            count = scan_trip_count(node, lambda v: shapes.get(v.name or ""))
            if count is not None:
                trips[node.name] = count
    return RunFacts(shapes=shapes, dtypes=dtypes, taken_branches=taken, trip_counts=trips)


def price_at_inputs(cost_model: CostModel, model: ir.Model, feeds: Feeds, *, dims: Mapping[str, int] | None = None,
                    compiled: bool = False) -> tuple[ModelEstimate, RunFacts | None]:
    """`cost_model`'s estimate of `model` at the shapes of `feeds`: from shape inference with the
    inputs at the feeds' shapes (and `dims` bound), and, when that leaves shapes, branches or trip
    counts unknown, from one observed run on `feeds` - of the graph ORT runs, when `compiled`.
    Returns the estimate and the facts of that run (None when no run was needed)."""
    inputs = RunFacts(shapes={name: tuple(int(d) for d in array.shape) for name, array in feeds.items()
                              if isinstance(array, np.ndarray)})
    estimate = cost_model.model_cost(model, dims=dims, compiled=compiled, facts=inputs)
    if not estimate.needs_observation:
        return estimate, None
    if compiled:
        estimate = cost_model.model_cost(model, dims=dims, compiled=True, facts=inputs, feeds=feeds)
        return estimate, estimate.facts
    facts = observe(model, feeds, threads=cost_model.profile.threads)
    logger.info("cost model: priced at the shapes of one observed run (%d tensors)", len(facts.shapes))
    return cost_model.model_cost(model, dims=dims, facts=facts), facts
