"""Provenance: which original nodes (and nn.Module paths) each IR node came from.

Stored as JSON in the node's ``metadata_props`` under ``kiln.provenance`` so it survives
save/load. A rewrite that replaces nodes merges the provenance of everything it replaced into
the nodes it creates, so a fused node lists every node it came from.
"""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import onnx_ir as ir

logger = logging.getLogger(__name__)

PROVENANCE_KEY = "kiln.provenance"
_TORCH_NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"


@dataclass(frozen=True, order=True)
class Origin:
    """One original node: its module path ("" for the top level or ONNX input) and its name."""

    module: str
    node: str

    def __str__(self) -> str:
        return f"{self.module}:{self.node}" if self.module else self.node

    def to_json(self) -> dict[str, str]:
        return {"module": self.module, "node": self.node}


def get_provenance(node: ir.Node) -> list[Origin]:
    """The origins recorded on `node` (empty when none were recorded)."""
    raw = node.metadata_props.get(PROVENANCE_KEY)
    if not raw:
        return []
    try:
        return [Origin(o["module"], o["node"]) for o in json.loads(raw)]
    except (ValueError, KeyError, TypeError):
        logger.warning("Ignoring malformed provenance on node %r: %r", node.name, raw)
        return []


def set_provenance(node: ir.Node, origins: Iterable[Origin]) -> None:
    """Record `origins` (deduplicated, sorted) on `node`."""
    unique = sorted(set(origins))
    node.metadata_props[PROVENANCE_KEY] = json.dumps([o.to_json() for o in unique], separators=(",", ":"))


def merge_provenance(target: ir.Node, sources: Iterable[ir.Node | Origin]) -> None:
    """Add the origins of `sources` to `target`'s provenance."""
    origins = list(get_provenance(target))
    for source in sources:
        if isinstance(source, Origin):
            origins.append(source)
        else:
            origins.extend(get_provenance(source))
    set_provenance(target, origins)


def _module_path_from_torch(node: ir.Node) -> tuple[str, str] | None:
    """(module path, fx node name) from the torch exporter's name-scope metadata, if present."""
    raw = node.metadata_props.get(_TORCH_NAME_SCOPES_KEY)
    if not raw:
        return None
    try:
        scopes = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(scopes, list) or not scopes:
        return None
    # Scopes are cumulative module paths ending with the fx node: ['', 'encoder',
    # 'encoder.layer.0', ..., 'linear']; the module is the innermost path.
    scopes = [str(s) for s in scopes]
    module = scopes[-2] if len(scopes) >= 2 else ""
    return module, scopes[-1]


def stamp_provenance(model: ir.Model) -> int:
    """Give every node without provenance one origin: itself, with its nn.Module path when the
    torch exporter recorded one. Returns how many nodes were stamped."""
    stamped = 0
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if PROVENANCE_KEY in node.metadata_props:
            continue
        from_torch = _module_path_from_torch(node)
        if from_torch is not None:
            module, fx_name = from_torch
            set_provenance(node, [Origin(module, fx_name)])
        else:
            set_provenance(node, [Origin("", node.name or node.op_type)])
        stamped += 1
    return stamped


def _merge_json_lists(first: str, second: str) -> str:
    try:
        merged = {json.dumps(o, sort_keys=True) for o in json.loads(first) + json.loads(second)}
    except ValueError:
        return first
    return json.dumps([json.loads(o) for o in sorted(merged)], separators=(",", ":"))


def register_with_onnxscript_rewriter() -> None:
    """Make onnxscript's rewriter merge kiln provenance when a rule replaces nodes.

    onnxscript merges node metadata through one module-level MetadataMerger and offers no
    public hook for new keys, so we add ours to its table (idempotent). Without this its
    default keeps only the first matched node's provenance.
    """
    from kiln.ir.compat import add_rewriter_metadata_merger

    add_rewriter_metadata_merger(PROVENANCE_KEY, _merge_json_lists)
