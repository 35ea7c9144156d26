"""Measured per-kernel latencies from ONNX Runtime's profiler, mapped back to the model's nodes.

This is the measured side of kiln's cost model: `profile_model` runs a model in ONNX Runtime with
``enable_profiling`` on, takes every kernel's time in every run, and says which nodes of the model
the user handed in each kernel computes, so a prediction for a set of nodes can be checked against
what ORT really spent on them.

How it works:

1. One session runs with the profiler on and ``optimized_model_filepath`` set, so the graph ORT
   executed (after its own fusions, constant folding and layout changes) is saved by the very
   session that is profiled. ``warmup`` runs, then ``repeats`` runs, then one profile file.
2. The profile is split into runs by its ``model_run`` events; ``<node>_kernel_time`` events
   (category "Node") are matched to nodes of the optimized graph by name. Events that lie inside
   the event of an If / Loop / Scan kernel belong to that kernel's subgraphs; a Loop body kernel's
   time in one run is the sum over iterations (``calls_per_run`` says how many).
3. Kernels are mapped to original nodes by tensor names, which ORT keeps on the boundaries of what
   it rewrites (`_map_kernels`): the nodes of both graphs are joined through every tensor name that
   only one graph has; a tensor name both graphs have joins its two producers. Each connected
   piece is a `KernelGroup`: some optimized kernels and the original nodes they compute together.
   Usually that is one kernel (MatMul + Add -> FusedMatMul/Gemm, Conv + Relu -> FusedConv). When
   ORT inserts glue (Reshapes around a Gemm, NCHWc reorders) a group has several kernels; inside
   it, original nodes are attributed to kernels by the names ORT gives fused nodes
   (``<first node>/<Fusion>``, ``<output tensor>_nchwc``) and then along producer chains, so each
   original node is attributed to exactly one kernel. Group times are exact; kernel attribution
   inside a multi-kernel group is a best effort: when ORT splits one node into several kernels
   (an fp16 Softmax on CPU becomes ReduceMax, Sub, Exp, ReduceSum, Div between Casts) the node
   lands on one kernel of its group, so compare such nodes with `ModelProfile.group_of`.
4. Original nodes in a group with no kernel were folded into initializers or removed by ORT: they
   are listed in `ModelProfile.unmapped` with the reason.
5. The whole-model time (`ModelProfile.model_median_ms`) comes from a second session with the
   profiler off, because profiling adds work to every kernel call; its runs alternate with the
   profiled session's, so a change in machine load affects both alike. `kernel_sum_ms` and
   `profiled_run_ms` give the profiled session's view for comparison.

Names: nodes of the main graph keep their names; a node in a subgraph is named
``<parent node>/<attribute>/<node>`` (e.g. ``loop/body/add``), for original and ORT nodes alike.
Unnamed nodes of the model get names from onnx-ir's `NameFixPass` on a clone (logged).
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from networkx.utils import UnionFind
from onnx_ir.passes.common import NameFixPass

from kiln.backends.onnxruntime import create_session, loadable, save_optimized_graph, session_options, to_ort_value
from kiln.errors import BackendError, InputError
from kiln.ir.capture import capture
from kiln.ir.inputs import Feeds, make_feeds, random_inputs
from kiln.target import Target

logger = logging.getLogger(__name__)

__all__ = ["KernelGroup", "MeasuredKernel", "ModelProfile", "profile_model"]

#: Suffix of ORT's per-kernel profile events (category "Node").
KERNEL_EVENT_SUFFIX = "_kernel_time"
#: ORT's profiler records no more events than this per process (``Profiler::global_max_num_events_``).
PROFILER_MAX_EVENTS = 1_000_000
#: Name ORT gives a node its NCHWc layout transformer rewrote: the original output tensor + this.
NCHWC_SUFFIX = "_nchwc"
_UNCOMPARED_ATTRS = frozenset({ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS, ir.AttributeType.TENSOR,
                               ir.AttributeType.TENSORS, ir.AttributeType.SPARSE_TENSOR,
                               ir.AttributeType.SPARSE_TENSORS, ir.AttributeType.TYPE_PROTO,
                               ir.AttributeType.TYPE_PROTOS})
#: Ops ORT removes by making their consumers read their input.
NO_OP_TYPES = frozenset({"Identity", "Dropout"})


# ---------------------------------------------------------------------------------------------
# Public types
# ---------------------------------------------------------------------------------------------


@dataclass
class MeasuredKernel:
    """One node of ORT's optimized graph, timed over the measured runs.

    ``samples_us`` has one entry per run: the kernel's total time in that run (summed over calls,
    so a Loop body kernel counts every iteration; 0 when it did not run, e.g. an untaken If
    branch). It is inclusive: an If / Loop / Scan kernel's time contains its subgraph kernels,
    whose per-run total is ``nested_us``; `self_median_us` excludes them. ``node_names`` are the
    original nodes attributed to this kernel (empty for glue ORT inserted, e.g. a Reshape around a
    Gemm); ``group`` indexes `ModelProfile.groups`. Shapes are ``(dtype, shape)`` pairs from the
    profiler, as seen in the first measured run.
    """

    ort_name: str
    ort_op_type: str
    node_names: tuple[str, ...]
    samples_us: list[float]
    provider: str = ""
    input_shapes: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    output_shapes: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    calls_per_run: float = 0.0
    parent: str | None = None
    nested_us: list[float] = field(default_factory=list)
    group: int = -1

    @property
    def median_us(self) -> float:
        """Median over runs of the kernel's (inclusive) time per run."""
        return _median(self.samples_us)

    @property
    def self_samples_us(self) -> list[float]:
        """Per-run time excluding kernels that ran inside this kernel's subgraphs."""
        if not self.nested_us:
            return list(self.samples_us)
        return [max(0.0, total - nested) for total, nested in zip(self.samples_us, self.nested_us)]

    @property
    def self_median_us(self) -> float:
        """Median of `self_samples_us` (equal to `median_us` for kernels without subgraphs)."""
        return _median(self.self_samples_us)


@dataclass
class KernelGroup:
    """A unit of the mapping: ORT kernels and the original nodes they compute together.

    ``samples_us`` is, per run, the sum of the kernels' self times (subgraph kernels are their own
    groups), so groups never count a microsecond twice and their medians compare directly with a
    prediction for ``node_names`` as a whole.
    """

    kernels: tuple[str, ...]
    node_names: tuple[str, ...]
    samples_us: list[float]

    @property
    def median_us(self) -> float:
        """Median over runs of the group's time per run."""
        return _median(self.samples_us)


@dataclass
class ModelProfile:
    """Per-kernel and per-group latencies of one model in ONNX Runtime.

    Attributes:
        kernels: every node of ORT's optimized graph (subgraphs included), in execution order of
            the first measured run; kernels that never ran come last.
        groups: the mapping units (see `KernelGroup`); ``kernels[i].group`` indexes this list.
        model_median_ms: median wall time of one run in a session with the profiler off.
        runs: measured runs (warm-up runs excluded).
        unmapped: original nodes no kernel computes, with the reason (folded into an
            initializer by ORT, or removed).
        kernel_sum_ms: median over runs of the summed top-level kernel times.
        profiled_run_ms: median of ORT's own ``model_run`` time in the profiled session.
        unmatched_events: profiler event names that matched no node of the optimized graph.
        threads, graph_optimization_level: the ORT settings measured with.
    """

    kernels: list[MeasuredKernel]
    groups: list[KernelGroup]
    model_median_ms: float
    runs: int
    unmapped: dict[str, str]
    kernel_sum_ms: float = 0.0
    profiled_run_ms: float = 0.0
    threads: int = 0
    graph_optimization_level: str = "all"
    unmatched_events: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_kernel = {k.ort_name: k for k in self.kernels}
        self._kernel_of_node = {name: k for k in self.kernels for name in k.node_names}
        self._group_of_node = {name: g for g in self.groups for name in g.node_names}

    def kernel(self, ort_name: str) -> MeasuredKernel:
        """The kernel ORT calls `ort_name`."""
        return self._by_kernel[ort_name]

    def kernel_of(self, node_name: str) -> MeasuredKernel | None:
        """The kernel an original node is attributed to (None when unmapped)."""
        return self._kernel_of_node.get(node_name)

    def group_of(self, node_name: str) -> KernelGroup | None:
        """The group that computes an original node (None when unmapped)."""
        return self._group_of_node.get(node_name)

    def groups_for(self, node_names: Iterable[str]) -> list[KernelGroup]:
        """The distinct groups computing any of `node_names` (a prediction for a set of nodes
        compares with the sum of these groups' medians when the set covers them exactly)."""
        seen: dict[int, KernelGroup] = {}
        for name in node_names:
            group = self._group_of_node.get(name)
            if group is not None:
                seen.setdefault(id(group), group)
        return list(seen.values())

    @property
    def mapped_nodes(self) -> int:
        """Original nodes computed by some kernel."""
        return len(self._group_of_node)

    def summary(self, top: int = 10) -> str:
        """A few lines: totals and the slowest groups."""
        lines = [
            f"{len(self.kernels)} kernels in {len(self.groups)} groups, {self.mapped_nodes} nodes mapped, "
            f"{len(self.unmapped)} unmapped; {self.runs} runs, {self.threads} threads",
            f"wall {self.model_median_ms:.3f} ms (profiler off); profiled run {self.profiled_run_ms:.3f} ms, "
            f"kernel sum {self.kernel_sum_ms:.3f} ms",
        ]
        for group in sorted(self.groups, key=lambda g: -g.median_us)[:top]:
            ops = Counter(self.kernel(k).ort_op_type for k in group.kernels)
            kinds = " ".join(op if n == 1 else f"{op}x{n}" for op, n in ops.items())
            nodes = ", ".join(group.node_names)
            lines.append(f"  {group.median_us:10.1f} us  {kinds[:40]:<40} <- {nodes[:70]}")
        return "\n".join(lines)


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


# ---------------------------------------------------------------------------------------------
# Graph views: nodes of a model (subgraphs included) keyed by path names
# ---------------------------------------------------------------------------------------------


@dataclass
class _NodeView:
    """What the mapping needs of one node: its key, op, tensor names and subgraphs' keys."""

    key: str
    name: str
    op_type: str
    inputs: list[str]  # "" for an absent optional input
    outputs: list[str]
    has_subgraphs: bool
    parent: str | None
    named: bool
    node: ir.Node


@dataclass
class _GraphView:
    """All nodes of a model in topological order per graph, with tensor producers."""

    nodes: dict[str, _NodeView]
    producer: dict[str, str]  # tensor name -> node key
    consumers: dict[str, list[str]]  # tensor name -> node keys
    tensors: set[str]  # every tensor name: inputs, initializers, node outputs (all graphs)
    initializers: set[str]
    # subgraph outputs -> the node owning the subgraph (the output flows into it)
    subgraph_outputs: dict[str, str]


def _subgraphs(node: ir.Node) -> Iterator[tuple[str, ir.Graph]]:
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            yield attr.name, attr.as_graph()
        elif attr.type == ir.AttributeType.GRAPHS:
            for i, graph in enumerate(attr.as_graphs()):
                yield f"{attr.name}[{i}]", graph


def _view(model: ir.Model) -> _GraphView:
    view = _GraphView({}, {}, defaultdict(list), set(), set(), {})

    def visit(graph: ir.Graph, prefix: str, parent: str | None) -> None:
        view.tensors.update(v.name for v in graph.inputs if v.name)
        view.tensors.update(graph.initializers)
        view.initializers.update(graph.initializers)
        for index, node in enumerate(graph):
            name = node.name or f"{node.op_type}_{index}"
            key = prefix + name
            subgraphs = list(_subgraphs(node))
            node_view = _NodeView(
                key=key, name=name, op_type=node.op_type,
                inputs=[v.name if v is not None else "" for v in node.inputs],
                outputs=[v.name for v in node.outputs if v.name],
                has_subgraphs=bool(subgraphs), parent=parent, named=bool(node.name),
                node=node,
            )
            view.nodes[key] = node_view
            for tensor in node_view.outputs:
                view.producer[tensor] = key
                view.tensors.add(tensor)
            for tensor in node_view.inputs:
                if tensor:
                    view.consumers[tensor].append(key)
            for attr_name, subgraph in subgraphs:
                visit(subgraph, f"{key}/{attr_name}/", key)
                for out in subgraph.outputs:
                    view.subgraph_outputs.setdefault(out.name, key)

    visit(model.graph, "", None)
    return view


# ---------------------------------------------------------------------------------------------
# Mapping optimized kernels to original nodes
# ---------------------------------------------------------------------------------------------


@dataclass
class _Mapping:
    groups: list[tuple[list[str], list[str]]]  # (kernel keys, original keys)
    unmapped: dict[str, str]


def _map_kernels(orig: _GraphView, opt: _GraphView) -> _Mapping:
    """Group the nodes of ORT's optimized graph with the original nodes they compute.

    Nodes of both graphs are joined through tensor names only one graph has (internal to a fusion
    or created by ORT), and through a tensor name both graphs have to that tensor, so its
    original and optimized producers meet. Connected pieces are the groups; pieces with no
    optimized node are unmapped (folded into initializers or removed). A tensor ORT replaced by
    another one (`_replaced_uses`) joins nothing, or one removed Identity would merge every
    group that read its output.
    """
    anchors = orig.tensors & opt.tensors
    replaced = _replaced_uses(orig, opt, anchors)
    uf = UnionFind()
    for side, view in (("o", orig), ("k", opt)):
        for node in view.nodes.values():
            me = (side, node.key)
            uf[me]  # every node is a piece of its own until joined
            for tensor in node.outputs:
                if tensor in anchors:
                    uf.union(me, ("t", tensor))
                elif tensor in view.subgraph_outputs:  # e.g. an If branch ORT inlined
                    uf.union(me, (side, view.subgraph_outputs[tensor]))
            for tensor in node.inputs:
                if tensor not in anchors and tensor in view.producer and (side, node.key, tensor) not in replaced:
                    uf.union(me, (side, view.producer[tensor]))
    pieces: dict[Any, tuple[list[str], list[str]]] = {}
    for side, view in (("k", opt), ("o", orig)):
        for key in view.nodes:
            kernels, originals = pieces.setdefault(uf[(side, key)], ([], []))
            (kernels if side == "k" else originals).append(key)
    groups, unmapped = [], {}
    for kernels, originals in pieces.values():
        if kernels:
            groups.append((kernels, originals))
            continue
        outputs = {t for key in originals for t in orig.nodes[key].outputs}
        folded = any(t in opt.initializers for t in outputs) or any(
            old in outputs and new in opt.initializers for (_, _, old), new in replaced.items())
        reason = "folded into an initializer by ONNX Runtime" if folded else (
            "eliminated by ONNX Runtime (consumers read its input)"
            if all(orig.nodes[key].op_type in NO_OP_TYPES for key in originals)
            else "removed by ONNX Runtime (its consumers read another tensor, or it was unused)")
        unmapped.update(dict.fromkeys(originals, reason))
    return _Mapping(groups, unmapped)


def _replaced_uses(orig: _GraphView, opt: _GraphView, anchors: set[str]) -> dict[tuple[str, str, str], str]:
    """Original (side, consumer, tensor) uses of a tensor ORT replaced, with the replacement.

    Two signs: the producer is an Identity or Dropout whose input survives but whose output does
    not (ORT's Identity / Dropout elimination); or the consumer survives under its own name and
    op, and now reads a surviving tensor where it read one that vanished (Identity elimination,
    common subexpression elimination, constants folded to a duplicate of another, ...).
    """
    replaced: dict[tuple[str, str, str], str] = {}
    for key, node in orig.nodes.items():
        if (node.op_type in NO_OP_TYPES and node.inputs and node.inputs[0] in anchors
                and not any(t in anchors for t in node.outputs)):
            for tensor in node.outputs:
                replaced.update({("o", user, tensor): node.inputs[0] for user in orig.consumers.get(tensor, [])})
        twin = opt.nodes.get(key)
        if twin is None or twin.op_type != node.op_type or len(twin.inputs) != len(node.inputs):
            continue
        swaps = {old: new for old, new in zip(node.inputs, twin.inputs)
                 if old and old not in anchors and new in anchors}
        if swaps and _same_attributes(node.node, twin.node):  # else a merge, e.g. Transpose pairs
            replaced.update({("o", key, old): new for old, new in swaps.items()})
    return replaced


def _same_attributes(a: ir.Node, b: ir.Node) -> bool:
    """Equal non-graph attributes (tensor-valued ones compare by type only)."""
    if a.attributes.keys() != b.attributes.keys():
        return False
    for name, attr in a.attributes.items():
        other = b.attributes[name]
        if attr.type != other.type:
            return False
        if attr.type not in _UNCOMPARED_ATTRS and attr.value != other.value:
            return False
    return True


def _attribute(kernels: list[str], originals: list[str], orig: _GraphView, slowest: str) -> dict[str, list[str]]:
    """Attribute each original node of a group to one of its kernels (see the module docstring):
    seeds by name, then producers only a seed consumes, then leftovers follow a producer (ORT
    fuses activations and adds into the node before them) or a consumer, else the slowest kernel.
    """
    if len(kernels) == 1:
        return {kernels[0]: list(originals)}
    members = set(originals)
    owner: dict[str, str] = {}
    for kernel in kernels:
        seed = _seed(kernel, members, orig)
        if seed is not None and seed not in owner:
            owner[seed] = kernel
    changed = True
    while changed:
        changed = False
        for key in originals:
            users = _users(key, orig)
            owners = {owner.get(u) for u in users}
            if key not in owner and users and users <= members and len(owners) == 1 and None not in owners:
                owner[key] = owners.pop()
                changed = True
    for key in originals:
        if key not in owner:
            producers = [orig.producer[t] for t in orig.nodes[key].inputs if orig.producer.get(t) in owner]
            sole = [p for p in producers if _users(p, orig) == {key}]
            if producers:
                owner[key] = owner[(sole or producers)[0]]
    for key in reversed(originals):
        if key not in owner:
            users = [u for u in _users(key, orig) if u in owner]
            owner[key] = owner[users[0]] if users else slowest
    result: dict[str, list[str]] = {k: [] for k in kernels}
    for key in originals:
        result[owner[key]].append(key)
    return result


def _users(key: str, view: _GraphView) -> set[str]:
    return {c for t in view.nodes[key].outputs for c in view.consumers.get(t, [])}


def _seed(kernel: str, members: set[str], orig: _GraphView) -> str | None:
    """The original node an ORT node is named after: the same name, ``<name>/<Fusion>...``, or
    ``<output tensor>_nchwc`` (node keys of both graphs use the same path scheme)."""
    prefix = kernel
    while True:
        if prefix in members:
            return prefix
        if "/" not in prefix:
            break
        prefix = prefix.rsplit("/", 1)[0]
    if kernel.endswith(NCHWC_SUFFIX):
        stem = kernel[: -len(NCHWC_SUFFIX)].rpartition("/")[2]
        producer = orig.producer.get(stem)
        if producer in members:
            return producer
    return None


# ---------------------------------------------------------------------------------------------
# Profile parsing
# ---------------------------------------------------------------------------------------------


@dataclass
class _Event:
    name: str
    start: int
    dur: int
    args: dict[str, Any]

    @property
    def end(self) -> int:
        return self.start + self.dur


def _split_runs(events: list[dict[str, Any]]) -> list[tuple[_Event, list[_Event]]]:
    """(model_run event, kernel events inside it) per run, in time order."""
    runs = sorted((_Event(e["name"], int(e["ts"]), int(e["dur"]), {}) for e in events
                   if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e.start)
    kernels = sorted((_Event(e["name"][: -len(KERNEL_EVENT_SUFFIX)], int(e["ts"]), int(e["dur"]), e.get("args", {}))
                      for e in events if e.get("cat") == "Node" and e.get("name", "").endswith(KERNEL_EVENT_SUFFIX)),
                     key=lambda e: (e.start, -e.dur))
    out: list[tuple[_Event, list[_Event]]] = [(run, []) for run in runs]
    i = 0
    for event in kernels:
        while i < len(runs) and event.start > runs[i].end:
            i += 1
        if i < len(runs) and event.start >= runs[i].start:
            out[i][1].append(event)
    return out


def _shapes(entries: Any) -> list[tuple[str, tuple[int, ...]]]:
    shapes = []
    for entry in entries or []:
        for dtype, dims in dict(entry).items():
            shapes.append((str(dtype), tuple(int(d) for d in dims)))
    return shapes


class _EventResolver:
    """Matches profiler event names to optimized-graph node keys, using the nesting of events
    for subgraph kernels. ORT names an unnamed node ``<OpType>_<index>`` in its events; those are
    matched to unnamed nodes of the saved graph by op type, in order."""

    def __init__(self, opt: _GraphView):
        # Scope: None for the main graph, else the key of the node owning the subgraph.
        self.by_scope: dict[str | None, dict[str, str]] = defaultdict(dict)
        self.unnamed_queue: dict[tuple[str | None, str], list[str]] = defaultdict(list)
        for key, node in opt.nodes.items():
            if node.named:
                self.by_scope[node.parent].setdefault(node.name, key)
            else:
                self.unnamed_queue[(node.parent, node.op_type)].append(key)

    def resolve(self, event: _Event, parent_key: str | None) -> str | None:
        table = self.by_scope.get(parent_key, {})
        if event.name in table:
            return table[event.name]
        op = event.args.get("op_name", "")
        queue = self.unnamed_queue.get((parent_key, op))
        if queue:
            key = queue.pop(0)
            self.by_scope[parent_key][event.name] = key
            return key
        return None


def _collect(runs: list[tuple[_Event, list[_Event]]],
             opt: _GraphView) -> tuple[dict[str, MeasuredKernel], list[str], list[float]]:
    """Per-kernel samples over `runs` (kernels in order of first run, then those that never ran);
    also unmatched event names and per-run sums of top-level kernel times."""
    resolver = _EventResolver(opt)
    n = len(runs)
    kernels: dict[str, MeasuredKernel] = {}
    calls: dict[str, int] = defaultdict(int)
    unmatched: dict[str, None] = {}
    top_sums: list[float] = []
    for r, (_, events) in enumerate(runs):
        stack: list[tuple[_Event, str]] = []
        top = 0.0
        for event in events:
            while stack and not (stack[-1][0].start <= event.start and event.end <= stack[-1][0].end):
                stack.pop()
            key = resolver.resolve(event, stack[-1][1] if stack else None)
            while key is None and stack:  # touching, not nested (equal microsecond timestamps)
                stack.pop()
                key = resolver.resolve(event, stack[-1][1] if stack else None)
            if key is None:
                unmatched[event.name] = None
                continue
            parent = stack[-1][1] if stack else None
            kernel = kernels.get(key)
            if kernel is None:
                node = opt.nodes[key]
                kernel = kernels[key] = MeasuredKernel(
                    ort_name=key, ort_op_type=node.op_type, node_names=(), samples_us=[0.0] * n,
                    provider=str(event.args.get("provider", "")),
                    input_shapes=_shapes(event.args.get("input_type_shape")),
                    output_shapes=_shapes(event.args.get("output_type_shape")), parent=node.parent,
                    nested_us=[0.0] * n if node.has_subgraphs else [],
                )
            kernel.samples_us[r] += event.dur
            calls[key] += 1
            if parent is None:
                top += event.dur
            else:
                kernels[parent].nested_us[r] += event.dur
            if opt.nodes[key].has_subgraphs:
                stack.append((event, key))
        top_sums.append(top)
    for key, kernel in kernels.items():
        kernel.calls_per_run = calls[key] / n if n else 0.0
    for key, node in opt.nodes.items():  # kernels that never ran (untaken branches, ...)
        if key not in kernels:
            kernels[key] = MeasuredKernel(ort_name=key, ort_op_type=node.op_type, node_names=(),
                                          samples_us=[0.0] * n, parent=node.parent,
                                          nested_us=[0.0] * n if node.has_subgraphs else [])
    return kernels, list(unmatched), top_sums


# ---------------------------------------------------------------------------------------------
# Sessions and the entry point
# ---------------------------------------------------------------------------------------------


def _as_model(model: ir.Model | onnx.ModelProto | str | os.PathLike) -> ir.Model:
    """An onnx-ir model whose every node has a name (a named clone when some have none)."""
    if not isinstance(model, (ir.Model, onnx.ModelProto, str, os.PathLike)):
        raise InputError(
            f"profile_model takes an onnx_ir.Model, an onnx.ModelProto or a path to an ONNX file, "
            f"not {type(model).__name__}; capture PyTorch models first with kiln.capture."
        )
    if not isinstance(model, ir.Model):
        return capture(model)  # checked as untrusted input; names every node
    if all(node.name for node in ir.traversal.RecursiveGraphIterator(model.graph)):
        return model
    logger.info("profile_model: naming unnamed nodes on a clone of the model (onnx-ir NameFixPass)")
    clone = model.clone()
    NameFixPass()(clone)
    return clone


def _feeds(model: ir.Model, feeds: Mapping[str, Any] | None) -> Feeds:
    required = [v for v in model.graph.inputs if not v.is_initializer()]
    if feeds is None:
        return random_inputs(required)
    if not isinstance(feeds, Mapping):
        raise InputError(f"feeds must be a dict of input name -> array, not {type(feeds).__name__}.")
    return make_feeds(required, (), feeds)


def _runner(session: ort.InferenceSession, feeds: Feeds) -> Callable[[], Any]:
    """A no-argument callable running `session` once; tensors are OrtValues made once, so runs
    time the model and not the copy of numpy inputs (ml_dtypes arrays need OrtValues anyway)."""
    names = [o.name for o in session.get_outputs()]
    if all(isinstance(v, np.ndarray) for v in feeds.values()):
        values = {k: to_ort_value(v) for k, v in feeds.items()}
        return lambda: session.run_with_ort_values(names, values)
    return lambda: session.run(names, dict(feeds))


def _run(fn: Callable[[], Any], what: str) -> Any:
    try:
        return fn()
    except Exception as exc:
        raise BackendError(f"ONNX Runtime failed to run the model {what}: {str(exc).strip()[:500]}") from exc


def profile_model(
    model: ir.Model | onnx.ModelProto | str | os.PathLike,
    feeds: Mapping[str, Any] | None = None,
    *,
    repeats: int = 20,
    warmup: int = 5,
    threads: int = 2,
    graph_optimization_level: str = "all",
    providers: tuple[str, ...] = ("CPUExecutionProvider",),
    min_seconds: float = 0.0,
) -> ModelProfile:
    """Measure every ORT kernel of `model` over `repeats` runs and map kernels to the model's nodes.

    Args:
        model: an onnx-ir model, a ModelProto or a path (files are checked as untrusted input).
        feeds: input name -> array (numpy or torch); random inputs of the declared shapes if None.
        repeats: measured runs; every kernel has one sample per run and medians are over them.
        warmup: runs before measuring (profiled too, then discarded).
        min_seconds: measure more runs than `repeats` until the unprofiled runs add up to about
            this long (their count set from the warm-up runs' median): a model of a millisecond
            gets as many samples of its kernels as the machine's jitter needs, a slow one keeps
            `repeats`. ORT's profiler stops recording at `PROFILER_MAX_EVENTS` events; medians
            then use the runs it recorded.
        threads: ORT intra-op threads (execution is sequential, one inter-op thread).
        graph_optimization_level: ORT's optimizer level ("disable", "basic", "extended",
            "layout", "all"); the mapping follows whatever it rewrites.
        providers: ORT execution providers.

    Raises:
        InputError: bad arguments or feeds.
        InvalidModelError: the model is malformed or unsafe.
        BackendError: ORT could not load or run the model.
    """
    if repeats < 1 or warmup < 0 or threads < 0 or min_seconds < 0:
        raise InputError(f"profile_model needs repeats >= 1, warmup >= 0, threads >= 0 and min_seconds >= 0 "
                         f"(got repeats={repeats}, warmup={warmup}, threads={threads}, min_seconds={min_seconds}).")
    original = _as_model(model)
    inputs = _feeds(original, feeds)
    # The profiled and the timed session alternate; with spinning on, the idle one's threads
    # would take the cores from the running one (Target.allow_spinning).
    target = Target(intra_op_threads=threads, providers=tuple(providers), allow_spinning=False,
                    graph_optimization_level=graph_optimization_level)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory(prefix="kiln-measure-") as tmp:
        workdir = Path(tmp)
        source = loadable(original, workdir)  # both sessions load the same bytes or file
        options = session_options(target)
        options.enable_profiling = True
        options.profile_file_prefix = str(workdir / "profile")
        save_optimized_graph(options, workdir / "optimized.onnx")
        profiled = create_session(source, target, options=options, purpose="to profile it")
        plain = create_session(source, target, purpose="to profile it")
        run_profiled, run_plain = _runner(profiled, inputs), _runner(plain, inputs)
        times_ms: list[float] = []  # unprofiled runs, warm-up included
        runs = warmup + repeats
        while len(times_ms) < runs:  # interleaved, so drifting machine load hits both alike
            _run(run_profiled, "while profiling")
            started = time.perf_counter()
            _run(run_plain, "while timing")
            times_ms.append((time.perf_counter() - started) * 1e3)
            if min_seconds > 0 and len(times_ms) == max(warmup, 1):
                runs = warmup + max(repeats, math.ceil(min_seconds * 1e3 / max(_median(times_ms), 1e-3)))
        wall_ms = times_ms[warmup:]
        events = json.loads(Path(profiled.end_profiling()).read_text())
        del profiled, plain, run_profiled, run_plain
        optimized = ir.load(workdir / "optimized.onnx")  # weights stay on disk, unread
    return _build_profile(original, optimized, events, warmup=warmup, repeats=len(wall_ms),
                          model_median_ms=_median(wall_ms), threads=threads, level=graph_optimization_level)


def _build_profile(original: ir.Model, optimized: ir.Model, events: list[dict[str, Any]], *, warmup: int,
                   repeats: int, model_median_ms: float, threads: int, level: str) -> ModelProfile:
    runs = _split_runs(events)
    measured = runs[warmup: warmup + repeats]
    if len(measured) < repeats:  # ORT stops recording at PROFILER_MAX_EVENTS
        if not measured:
            raise BackendError(
                f"ONNX Runtime's profiler recorded {len(runs)} of {warmup + repeats} runs (it stops at "
                f"{PROFILER_MAX_EVENTS:,} events); profile with fewer warm-up runs or repeats.")
        logger.warning("profile_model: ORT's profiler recorded %d of %d measured runs (event cap); "
                       "medians use those", len(measured), repeats)
    orig, opt = _view(original), _view(optimized)
    kernels, unmatched, top_sums = _collect(measured, opt)
    if unmatched:
        logger.warning("profile_model: %d profiler events match no node of ORT's optimized graph: %s",
                       len(unmatched), unmatched[:5])
    mapping = _map_kernels(orig, opt)
    groups: list[KernelGroup] = []
    for index, (kernel_keys, original_keys) in enumerate(mapping.groups):
        slowest = max(kernel_keys, key=lambda k: kernels[k].median_us)
        for kernel_key, names in _attribute(kernel_keys, original_keys, orig, slowest).items():
            kernels[kernel_key].node_names = tuple(names)
            kernels[kernel_key].group = index
        samples = [sum(vals) for vals in zip(*(kernels[k].self_samples_us for k in kernel_keys))]
        groups.append(KernelGroup(tuple(kernel_keys), tuple(original_keys), samples))
    return ModelProfile(
        kernels=list(kernels.values()), groups=groups, model_median_ms=model_median_ms, runs=len(measured),
        unmapped=mapping.unmapped, kernel_sum_ms=_median(top_sums) / 1e3,
        profiled_run_ms=_median([float(run.dur) for run, _ in measured]) / 1e3,
        threads=threads, graph_optimization_level=level, unmatched_events=unmatched,
    )
