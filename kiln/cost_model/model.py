"""`CostModel`: the one object passes and reports ask "how long will this take on the target?".

It prices nodes, fused groups and whole models with the roofline of a `HardwareProfile`
(`roofline.py`), then, when a learned correction fitted to measured profiles is present
(`learned.py`), replaces the per-op-class efficiencies with the fitted ones and multiplies each
kernel by the residual model's factor. `CostModel.default()` reads the calibrated profile from
`hardware.default_profile_path()` (written by `kiln calibrate`) and the correction saved beside
it, and falls back to the preset for this CPU.

Whole-model latency is the sum of kernel times (ONNX Runtime's CPU executor runs one kernel at a
time with intra-op threads). Pricing a model as written counts every node as a kernel; with
``compiled=True`` the model is first lowered through ONNX Runtime's graph optimizer and the nodes
it will really run are priced (fusions merge nodes, views stay free).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx_ir as ir

from kiln.cost_model.analytical import ModelCost, RunFacts
from kiln.cost_model.analytical import model_cost as analytical_model_cost
from kiln.cost_model.analytical import op_key, value_nbytes
from kiln.cost_model.hardware import HardwareProfile, default_profile_path, load, preset_for_this_cpu
from kiln.cost_model.roofline import Estimate, group_estimate, is_weight, node_estimate

if TYPE_CHECKING:
    from kiln.cost_model.learned import LearnedCorrection

logger = logging.getLogger(__name__)

__all__ = ["Comparison", "CostModel", "ModelEstimate", "peak_memory_bytes"]


@dataclass
class ModelEstimate:
    """Predicted latency and memory of a whole model, with the estimate of every node."""

    latency_ms: float
    peak_memory_bytes: int
    weight_bytes: int
    weights_resident: bool  # all weights fit in the last cache level
    per_node: list[tuple[ir.Node, Estimate]]
    unknown_ops: dict[str, int] = field(default_factory=dict)
    missing_shapes: dict[str, int] = field(default_factory=dict)
    corrected: bool = False  # the learned correction was applied
    compiled: bool = False  # priced after ONNX Runtime's graph optimizer
    defaulted_ops: dict[str, int] = field(default_factory=dict)  # data-dependent ops at their bound
    both_branches: list[str] = field(default_factory=list)  # If nodes whose branch was unknown
    trip_counts: dict[str, int] = field(default_factory=dict)  # Loop / Scan node -> iterations priced
    facts: RunFacts | None = None  # what a run showed, when the estimate used one

    @classmethod
    def of(cls, costs: ModelCost, per_node: list[tuple[ir.Node, Estimate]], *, latency_ms: float, peak: int,
           weights: int, resident: bool, corrected: bool, compiled: bool, facts: RunFacts | None) -> ModelEstimate:
        """The estimate of `per_node` priced from the analytical `costs` (whose notes it keeps)."""
        return cls(latency_ms=latency_ms, peak_memory_bytes=peak, weight_bytes=weights, weights_resident=resident,
                   per_node=per_node, unknown_ops=costs.unknown_ops, missing_shapes=costs.missing_shapes,
                   corrected=corrected, compiled=compiled, defaulted_ops=costs.defaulted_ops,
                   both_branches=costs.both_branches, trip_counts=costs.trip_counts, facts=facts)

    @property
    def needs_observation(self) -> bool:
        """Shape inference could not complete this estimate: a node priced without its shapes, a
        Loop or Scan of unknown trip count, or an If whose branch is unknown - what one observed run
        (`kiln.cost_model.measure.observed`) would settle."""
        return bool(self.missing_shapes) or bool({"Loop", "Scan"} & set(self.unknown_ops)) or bool(self.both_branches)

    def parts(self, node: ir.Node) -> list[Estimate]:
        """The node's own estimate, then those of every node of its subgraphs that is priced
        (each of its own class: an If's branch holds convs and GEMMs, not data movement)."""
        inner = {id(n) for n in _subgraph_nodes(node)}
        own = next(e for n, e in self.per_node if n is node)
        return [own, *(e for n, e in self.per_node if id(n) in inner)]

    def inclusive(self, node: ir.Node) -> Estimate:
        """The node's estimate with every node of its subgraphs added (what a profiler reports for
        an If, Loop or Scan kernel): work, bytes and times summed; the node's own class, op and
        written bytes."""
        parts = self.parts(node)
        own = parts[0]
        if len(parts) == 1:
            return own
        return dataclasses.replace(own, **{name: sum(getattr(e, name) for e in parts) for name in (
            "flops", "activation_bytes", "weight_bytes", "compute_ms", "memory_ms", "launch_ms", "ms")})

    def inclusive_ms(self, node: ir.Node) -> float:
        """The node's predicted time with every node of its subgraphs."""
        return self.inclusive(node).ms

    def ms_by_op(self) -> dict[str, float]:
        """Predicted milliseconds per op type, largest first."""
        totals: Counter[str] = Counter()
        for node, estimate in self.per_node:
            totals[op_key(node)] += estimate.ms
        return dict(totals.most_common())

    def ms_by_class(self) -> dict[str, float]:
        totals: Counter[str] = Counter()
        for _, estimate in self.per_node:
            totals[estimate.op_class] += estimate.ms
        return dict(totals.most_common())


@dataclass(frozen=True)
class Comparison:
    """Before/after of a rewrite: predicted latency and peak memory."""

    before_ms: float
    after_ms: float
    before_peak_bytes: int
    after_peak_bytes: int

    @property
    def ratio(self) -> float:
        """after / before (below 1: the rewrite is predicted to be faster)."""
        return self.after_ms / self.before_ms if self.before_ms else 1.0

    @property
    def saved_ms(self) -> float:
        return self.before_ms - self.after_ms


def _subgraph_nodes(node: ir.Node) -> list[ir.Node]:
    out: list[ir.Node] = []
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            out.extend(ir.traversal.RecursiveGraphIterator(attr.as_graph()))
    return out


def peak_memory_bytes(graph: ir.Graph, dims: Mapping[str, int] | None = None) -> tuple[int, int]:
    """(peak bytes, weight bytes) of running `graph` in its node order: weights stay resident; an
    activation lives from its producer (graph inputs: from the start) to its last consumer (graph
    outputs: to the end). Unknown sizes count 0. A lower bound of what an allocator holds."""
    order = {node: i for i, node in enumerate(graph)}
    end = len(order)
    weights = sum(value_nbytes(v, dims) or 0 for v in graph.initializers.values())
    events: Counter[int] = Counter()

    def live(value: ir.Value, start: int) -> None:
        size = value_nbytes(value, dims) or 0
        if not size:
            return
        last = max((order.get(use.node, start) for use in value.uses()), default=start)
        if value.is_graph_output():
            last = end
        events[start] += size
        events[last + 1] -= size

    for value in graph.inputs:
        if not is_weight(value):
            live(value, 0)
    for node, index in order.items():
        for value in node.outputs:
            if node.op_type == "Constant":
                continue
            live(value, index)
    peak = current = 0
    for step in sorted(events):
        current += events[step]
        peak = max(peak, current)
    return peak + weights, weights


class CostModel:
    """Predicts kernel, group and model latency on a hardware profile (see the module doc)."""

    def __init__(self, profile: HardwareProfile, correction: LearnedCorrection | None = None, *,
                 residual: bool = True) -> None:
        """`residual=False` uses only the correction's fitted efficiencies and overheads, not its
        boosted residual model: importing LightGBM costs ~2 s per process (it imports
        scikit-learn), which `kiln.optimize` should not pay for a report column."""
        self.correction = correction
        self.residual = residual
        self.base_profile = profile
        # the fitted efficiencies replace the profile's (its peaks and bandwidths stay measured)
        self.profile = (
            dataclasses.replace(profile, efficiency={**profile.efficiency, **correction.efficiency},
                                launch_overhead_us=correction.launch_overhead_us or profile.launch_overhead_us)
            if correction is not None
            else profile
        )

    def __repr__(self) -> str:
        learned = ""
        if self.correction is not None:
            learned = ", learned correction" if self.residual else ", fitted efficiencies"
        return f"CostModel({self.profile.name!r}, {self.profile.threads} threads{learned})"

    @classmethod
    def from_file(cls, path: str | Path, *, learned: bool = True, residual: bool = True) -> CostModel:
        """A cost model from a saved profile and, if one is saved beside it, its correction."""
        from kiln.cost_model.learned import correction_path, load_correction

        profile = load(path)
        correction = None
        if learned and correction_path(path).exists():
            correction = load_correction(correction_path(path))
        return cls(profile, correction, residual=residual)

    @classmethod
    def default(cls, threads: int = 2, *, learned: bool = True, residual: bool = True,
                backend: str = "onnxruntime") -> CostModel:
        """The calibrated profile for `backend` at `default_profile_path(backend)` (with its
        correction unless ``learned=False``) when there is one for `threads` threads, else the
        preset for this CPU (marked as that backend's)."""
        path = default_profile_path(backend)
        if path.exists():
            model = cls.from_file(path, learned=learned, residual=residual)
            if model.profile.threads == threads and model.profile.backend == backend:
                return model
            logger.info("cost model: %s is for %d threads on %s, not %d on %s; using a preset", path,
                        model.profile.threads, model.profile.backend, threads, backend)
        return cls(dataclasses.replace(preset_for_this_cpu(threads), backend=backend))

    # --- pricing ---------------------------------------------------------------------------

    def _corrected(self, estimates: list[Estimate], group_sizes: list[int]) -> list[Estimate]:
        """The estimates with the learned correction's times (one booster call for all)."""
        if self.correction is None or not estimates:
            return estimates
        one_run = [e.per_run() for e in estimates]
        corrected = self.correction.predict_many(one_run, [e.op for e in one_run], group_sizes,
                                                 residual=self.residual)
        return [dataclasses.replace(e, ms=float(ms) * e.runs) for e, ms in zip(estimates, corrected)]

    def node_cost(self, node: ir.Node, *, weights_resident: bool = True,
                  dims: Mapping[str, int] | None = None) -> Estimate:
        """Predicted time of one node run as its own kernel (shapes read off its values)."""
        return self._corrected([node_estimate(node, self.profile, weights_resident=weights_resident, dims=dims)],
                               [1])[0]

    def group_cost(self, nodes: Sequence[ir.Node], *, weights_resident: bool = True,
                   dims: Mapping[str, int] | None = None) -> Estimate:
        """Predicted time of `nodes` fused into one kernel (boundary tensors only, one launch)."""
        estimate = group_estimate(nodes, self.profile, weights_resident=weights_resident, dims=dims)
        return self._corrected([estimate], [len(nodes)])[0]

    def model_cost(self, model: ir.Model, *, dims: Mapping[str, int] | None = None,
                   compiled: bool = False, infer_shapes: bool = True, facts: RunFacts | None = None,
                   feeds: Mapping[str, Any] | None = None) -> ModelEstimate:
        """Predicted latency and peak memory of `model` (not modified). With ``compiled=True``
        the graph the profile's backend will run is priced instead of the model as written (ONNX
        Runtime's optimized graph; for an OpenVINO profile, the kernels OpenVINO runs on `feeds`,
        sampled at `dims` when not given: `kiln.cost_model.measure.openvino_lowering`). With
        ``infer_shapes=False`` the shapes already on the values are used (no shape inference; what the
        PassManager does after every pass, since rewrites keep the shapes they know). `dims` binds
        symbolic dims by name; `facts` (`kiln.cost_model.measure.observed.observe`) gives the shapes,
        branches and trip counts of a real run (matched by value and node name, so facts observed on
        the model as written also serve its compiled graph where names survive ORT's fusions). With
        ``compiled=True`` and `feeds`, the compiled graph is run once on them and priced at the shapes
        ORT used (`ModelEstimate.facts`)."""
        if compiled and self.profile.backend == "openvino":
            from kiln.cost_model.measure.openvino_lowering import openvino_model_cost
            from kiln.ir.inputs import random_inputs
            from kiln.ir.shapes import ShapeBinding, bind_shapes

            if feeds is None:
                inputs = [v for v in model.graph.inputs if not v.is_initializer()]
                feeds = random_inputs(inputs, shapes=bind_shapes(inputs, ShapeBinding(dim_values=dict(dims or {}))))
            return openvino_model_cost(self, model, dict(feeds), dims=dims)
        if compiled:
            from kiln.cost_model.measure.lowering import observed_compiled_model, ort_compiled_model

            # lowered as declared: with static inputs ORT would fold the shape arithmetic a model
            # with symbolic inputs runs, and lay out other kernels - not the graph that runs
            if feeds is not None:
                model, facts = observed_compiled_model(model, dict(feeds), threads=self.profile.threads)
            else:
                model = ort_compiled_model(model, threads=self.profile.threads)
        costs = analytical_model_cost(model, dims=dims, infer_shapes=infer_shapes or compiled, facts=facts)
        peak, weights = peak_memory_bytes(model.graph, dims)
        resident = self.profile.holds_weights(weights)
        estimates = [node_estimate(node, self.profile, cost=cost, weights_resident=resident, dims=dims)
                     for node, cost in costs.per_node]
        per_node = list(zip([node for node, _ in costs.per_node], self._corrected(estimates, [1] * len(estimates))))
        executor_ms = self.correction.executor_overhead_us / 1e3 if self.correction is not None else 0.0
        scale = self.correction.executor_scale if self.correction is not None else 1.0
        run_ms = self.correction.executor_run_us / 1e3 if self.correction is not None else 0.0
        latency = sum(e.ms for _, e in per_node) * scale + executor_ms * sum(e.runs for _, e in per_node) + run_ms
        return ModelEstimate.of(costs, per_node, latency_ms=latency, peak=peak, weights=weights, resident=resident,
                                corrected=self.correction is not None, compiled=compiled, facts=facts)

    def compare(self, before: ir.Model, after: ir.Model, *, dims: Mapping[str, int] | None = None,
                infer_shapes: bool = True) -> Comparison:
        """Predicted latency and peak memory before and after a rewrite."""
        b = self.model_cost(before, dims=dims, infer_shapes=infer_shapes)
        a = self.model_cost(after, dims=dims, infer_shapes=infer_shapes)
        return Comparison(b.latency_ms, a.latency_ms, b.peak_memory_bytes, a.peak_memory_bytes)
