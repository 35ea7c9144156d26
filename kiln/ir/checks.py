"""Checks on untrusted ONNX input: parseable, acyclic, known ops, safe external-data paths.

Models are untrusted input (DESIGN decision 10): we run ``onnx.checker`` and refuse anything
that would make kiln read outside the model's folder, before onnx-ir touches the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import networkx as nx
import onnx
import onnx.defs
from google.protobuf.message import DecodeError

from kiln.errors import InvalidModelError, UnsafeModelError, UnsupportedOperatorError

logger = logging.getLogger(__name__)

# Domains whose op schemas the onnx package knows; ops in other domains are checked by the
# backend that runs them (e.g. com.microsoft contrib ops by ONNX Runtime).
_STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")


def read_model_proto(path: str | os.PathLike) -> onnx.ModelProto:
    """Parse an ONNX file without loading its external data, with clear errors."""
    path = Path(path)
    if not path.exists():
        raise InvalidModelError(f"Model file {str(path)!r} does not exist. Check the path.")
    if not path.is_file():
        raise InvalidModelError(f"{str(path)!r} is not a file. Pass the path of a .onnx file.")
    if path.stat().st_size == 0:
        raise InvalidModelError(f"Model file {str(path)!r} is empty. Re-export or re-download it.")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InvalidModelError(
            f"Model file {str(path)!r} is not a readable ONNX protobuf ({exc}). It may be truncated "
            "or not an ONNX file: re-export or re-download it."
        ) from exc
    if not proto.HasField("graph") or (len(proto.graph.node) == 0 and len(proto.graph.output) == 0):
        raise InvalidModelError(
            f"Model file {str(path)!r} holds no graph. It may be truncated or not an ONNX model: "
            "re-export or re-download it."
        )
    return proto


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto in a graph and its subgraphs (initializers and tensor attributes)."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def check_external_data_paths(proto: onnx.ModelProto, base_dir: str | os.PathLike | None) -> None:
    """Refuse external-data locations that are absolute, climb out with '..', or resolve
    (through symlinks) outside `base_dir`; refuse references to missing or too-short files."""
    external = [t for t in _all_tensors(proto.graph) if t.data_location == onnx.TensorProto.EXTERNAL]
    if not external:
        return
    if base_dir is None:
        raise InvalidModelError(
            "The model refers to external data but was given without its folder. Pass the path "
            "of the .onnx file instead of an in-memory proto, or load it with "
            "onnx.load(path, load_external_data=True) first."
        )
    root = Path(base_dir).resolve()
    for tensor in external:
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        if not location:
            raise InvalidModelError(f"Tensor {tensor.name!r} is marked external but has no location.")
        if os.path.isabs(location) or Path(location).is_absolute() or location.startswith(("/", "\\")):
            raise UnsafeModelError(
                f"Tensor {tensor.name!r} points at the absolute external-data path {location!r}. "
                "kiln only reads external data inside the model's folder: move the data file next "
                "to the model and set its location to a relative file name."
            )
        if ".." in Path(location.replace("\\", "/")).parts:
            raise UnsafeModelError(
                f"Tensor {tensor.name!r} points at {location!r}, which climbs out of the model's "
                "folder with '..'. kiln refuses such paths: move the data file next to the model."
            )
        resolved = (root / location).resolve()
        if root != resolved and root not in resolved.parents:
            raise UnsafeModelError(
                f"Tensor {tensor.name!r}: external-data file {location!r} resolves (through a "
                f"symlink) to {str(resolved)!r}, outside the model's folder {str(root)!r}. "
                "Copy the data file into the model's folder instead of linking it."
            )
        if not resolved.is_file():
            raise InvalidModelError(
                f"Tensor {tensor.name!r}: external-data file {location!r} is missing from "
                f"{str(root)!r}. Copy it next to the model."
            )
        offset = int(info.get("offset", "0") or 0)
        length = info.get("length")
        size = resolved.stat().st_size
        if length is not None and offset + int(length) > size:
            raise InvalidModelError(
                f"Tensor {tensor.name!r}: external-data file {location!r} is {size} bytes but the "
                f"tensor needs bytes {offset}..{offset + int(length)}. The data file is truncated: "
                "re-export or re-download it."
            )


def _subgraph_free_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from its enclosing scopes."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {s.values.name for s in graph.sparse_initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(n for n in node.input if n)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                used |= _subgraph_free_names(sub)
        defined.update(n for n in node.output if n)
    used.update(o.name for o in graph.output)
    return used - defined


def _node_reads(node: onnx.NodeProto) -> set[str]:
    reads = {n for n in node.input if n}
    for attr in node.attribute:
        for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            reads |= _subgraph_free_names(sub)
    return reads


def ensure_acyclic_and_sorted(graph: onnx.GraphProto, *, where: str = "main graph") -> None:
    """Raise InvalidModelError on a cycle; reorder nodes topologically if they are merely
    out of order (the ONNX spec requires order; some producers do not respect it)."""
    producer: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for out in node.output:
            if out:
                if out in producer:
                    raise InvalidModelError(
                        f"Value {out!r} is produced by two nodes in the {where} "
                        f"({graph.node[producer[out]].name!r} and {node.name!r}); ONNX requires "
                        "each value to have one producer. Re-export the model."
                    )
                producer[out] = index
    dag = nx.DiGraph()
    dag.add_nodes_from(range(len(graph.node)))
    in_order = True
    for index, node in enumerate(graph.node):
        for name in _node_reads(node):
            src = producer.get(name)
            if src is not None:
                dag.add_edge(src, index)
                in_order = in_order and src < index
    if in_order:
        return
    try:
        cycle = nx.find_cycle(dag)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        names = [graph.node[a].name or graph.node[a].op_type for a, _ in cycle]
        raise InvalidModelError(
            f"The {where} contains a cycle: {' -> '.join(names + names[:1])}. ONNX graphs must be "
            "acyclic (use Loop or Scan for iteration). Re-export the model."
        )
    order = list(nx.lexicographical_topological_sort(dag))
    nodes = [graph.node[i] for i in order]
    logger.info("Nodes of the %s were out of topological order; reordered them.", where)
    del graph.node[:]
    graph.node.extend(nodes)


def check_known_ops(proto: onnx.ModelProto) -> None:
    """Raise UnsupportedOperatorError for ops in standard domains that ONNX does not define
    at the model's opset (the checker reports only the first, with a terser message)."""
    opsets = {o.domain or "": o.version for o in proto.opset_import}
    local_functions = {(f.domain, f.name) for f in proto.functions}
    unknown: set[str] = set()

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            domain = node.domain or ""
            if domain in _STANDARD_DOMAINS and (domain, node.op_type) not in local_functions:
                version = opsets.get(domain, opsets.get("ai.onnx", onnx.defs.onnx_opset_version()))
                try:
                    onnx.defs.get_schema(node.op_type, version, domain)
                except onnx.defs.SchemaError:
                    unknown.add(f"{domain + '::' if domain else ''}{node.op_type}")
            for attr in node.attribute:
                if attr.HasField("g"):
                    visit(attr.g)
                for sub in attr.graphs:
                    visit(sub)

    visit(proto.graph)
    if unknown:
        raise UnsupportedOperatorError(
            f"The model uses operator(s) that ONNX does not define at its opset: {sorted(unknown)}. "
            "Check the op names and the model's opset_import, or put custom ops in their own "
            "domain with a runtime that implements them.",
            op_types=sorted(unknown),
        )


def _checker_view(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The proto the onnx checker should see. For an in-memory proto the checker resolves
    external-data files against the working directory; kiln has already checked those paths
    against the model's folder, so external initializers are handed to it as typed inputs."""
    external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if not external:
        return proto
    view = onnx.ModelProto()
    view.CopyFrom(proto)
    names = {t.name for t in external}
    kept = [t for t in view.graph.initializer if t.name not in names]
    del view.graph.initializer[:]
    view.graph.initializer.extend(kept)
    declared = {i.name for i in view.graph.input}
    for tensor in external:
        if tensor.name not in declared:
            view.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    return view


def check_model_proto(proto: onnx.ModelProto, base_dir: str | os.PathLike | None = None) -> None:
    """All checks on an in-memory proto (whose external data, if any, lives in `base_dir`).
    May reorder out-of-order nodes in place."""
    check_external_data_paths(proto, base_dir)
    ensure_acyclic_and_sorted(proto.graph)
    check_known_ops(proto)
    try:
        if proto.ByteSize() < onnx.checker.MAXIMUM_PROTOBUF:
            onnx.checker.check_model(_checker_view(proto))
    except onnx.checker.ValidationError as exc:
        raise InvalidModelError(
            f"The model is not valid ONNX: {str(exc).strip().splitlines()[0]} Fix the model or "
            "re-export it with a current exporter."
        ) from exc
