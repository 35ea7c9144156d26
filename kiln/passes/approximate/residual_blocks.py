"""Residual blocks of an ONNX graph: the subgraphs a block-dropping pass may skip.

There is no nn.Module at hand, so blocks are found in the graph itself. A residual block is the
subgraph `f` of an ``Add(x, f(x))`` (either input order) such that

- `f(x)` depends on `x` (its nodes are those on a path from `x` to the Add);
- `f` reads nothing but `x`, constants and values that do not depend on the residual stream
  (graph inputs and what is computed from them alone, e.g. an attention mask or rotary
  tables; reading only the *shape* of a stream value is allowed) — a branch that also reads an
  earlier hidden state is a cross connection, not a block;
- nothing outside the block reads a value computed inside it (its internals do not escape);
- `f` holds a layer with weights (MatMul, Gemm, Conv ... with a constant operand): an Add like
  ``x + 0.044715 * x**3`` inside a tanh-GELU is arithmetic, not a block;
- `x` is not a constant and, where shapes are known, the Add does not broadcast `x`.

Transformer exports have two blocks per layer (attention, MLP); a ResNet bottleneck with an
identity shortcut has one (its Add is followed by Relu, which stays); a projection shortcut
``Add(conv(x), f(x))`` is not a block, since neither input is the other's `x`.

Dropping a block rewires the Add's consumers to `x` and removes the block's nodes and the Add.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import onnx_ir as ir

from kiln.ir.provenance import get_provenance
from kiln.ir.queries import is_onnx

logger = logging.getLogger(__name__)

__all__ = ["ResidualBlock", "analyze_add", "drop_block", "find_residual_blocks"]

# Ops that hold a layer's weights when one operand is a constant.
WEIGHTED_OPS = frozenset({
    "MatMul", "Gemm", "Conv", "ConvTranspose", "ConvInteger", "MatMulInteger", "QLinearConv",
    "QLinearMatMul", "FusedMatMul", "FusedConv", "FusedGemm", "MatMulNBits", "Attention",
})
# Ops that read only the shape of their input, not its values.
SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})


@dataclass
class ResidualBlock:
    """``add = Add(skip, branch)`` where `branch` is computed by `nodes` from `skip`."""

    add: ir.Node
    skip: ir.Value
    branch: ir.Value
    nodes: list[ir.Node]  # the branch's nodes in graph order, without the Add
    name: str = ""

    @property
    def removed_nodes(self) -> list[ir.Node]:
        """What dropping the block removes: the branch and the Add."""
        return [*self.nodes, self.add]


def _is_constant(value: ir.Value) -> bool:
    if value.const_value is not None or value.is_initializer():
        return True
    producer = value.producer()
    return producer is not None and is_onnx(producer, "Constant")


def constant_values(graph: ir.Graph) -> set[ir.Value]:
    """Values computed from constants alone (a weight read through Transpose or Cast counts)."""
    constants = {v for v in graph.initializers.values()}
    for node in graph:
        if node.op_type == "Constant" or (node.inputs and all(v is None or v in constants or _is_constant(v)
                                                              for v in node.inputs)):
            constants.update(node.outputs)
    return constants


def _is_weighted(node: ir.Node, constants: set[ir.Value]) -> bool:
    return node.op_type in WEIGHTED_OPS and any(v is not None and (v in constants or _is_constant(v))
                                                 for v in node.inputs)


def _descendants(graph: ir.Graph, start: ir.Value) -> set[ir.Node]:
    """Nodes of `graph` that read `start`, directly or through other nodes of `graph`."""
    seen: set[ir.Node] = set()
    queue = deque(user for user, _ in start.uses() if user.graph is graph)
    while queue:
        node = queue.popleft()
        if node in seen:
            continue
        seen.add(node)
        for output in node.outputs:
            queue.extend(user for user, _ in output.uses() if user.graph is graph and user not in seen)
    return seen


def _branch_nodes(graph: ir.Graph, skip: ir.Value, branch: ir.Value) -> set[ir.Node] | None:
    """The nodes on a path from `skip` to `branch` (None when `branch` does not depend on `skip`)."""
    producer = branch.producer()
    if producer is None or producer.graph is not graph:
        return None
    downstream = _descendants(graph, skip)
    if producer not in downstream:
        return None
    block: set[ir.Node] = set()
    queue = deque([producer])
    while queue:
        node = queue.popleft()
        if node in block:
            continue
        block.add(node)
        for value in node.inputs:
            if value is None or value is skip:
                continue
            parent = value.producer()
            if parent is not None and parent in downstream and parent not in block:
                queue.append(parent)
    return block


def stream_tainted_values(graph: ir.Graph, stream: Iterable[ir.Value]) -> set[ir.Value]:
    """Values whose contents depend on a value of `stream` (reading only a shape does not count)."""
    tainted = set(stream)
    for node in graph:  # graphs are kept in topological order
        if node.op_type in SHAPE_ONLY_OPS:
            continue
        if any(v is not None and v in tainted for v in node.inputs):
            tainted.update(node.outputs)
    return tainted


def _escapes(block: set[ir.Node], add: ir.Node) -> str | None:
    """Why a value computed inside `block` is read outside it (None when none is)."""
    for node in block:
        for output in node.outputs:
            if output.is_graph_output():
                return f"{output.name!r}, computed inside, is a graph output"
            for user, _ in output.uses():
                if user is not add and user not in block:
                    return f"{output.name!r}, computed inside, is read by {user.name or user.op_type!r} outside it"
    return None


@dataclass
class GraphFacts:
    """Whole-graph facts the block rules need, computed once per graph: the values computed from
    constants alone and the values that depend on the residual stream."""

    constants: set[ir.Value]
    tainted: set[ir.Value]

    @classmethod
    def of(cls, graph: ir.Graph) -> GraphFacts:
        facts = cls(constant_values(graph), set())
        # The stream: both ends of every Add that passes all rules but the side-input one.
        stream: list[ir.Value] = []
        for node in graph:
            found = _join(graph, node, facts)
            if not isinstance(found, str):
                stream.extend((found[0], node.outputs[0]))
        facts.tainted = stream_tainted_values(graph, stream)
        return facts


def _structural_candidate(graph: ir.Graph, add: ir.Node,
                          facts: GraphFacts) -> tuple[ir.Value, ir.Value, set[ir.Node]] | str:
    """(skip, branch, branch nodes) of an Add whose one input depends on the other, or why not."""
    if not is_onnx(add, "Add") or len(add.inputs) != 2:
        return "not a standard two-input Add"
    first, second = add.inputs
    if first is None or second is None:
        return "an input is missing"
    for skip, branch in ((first, second), (second, first)):
        if skip in facts.constants or _is_constant(skip):
            continue
        nodes = _branch_nodes(graph, skip, branch)
        if nodes is not None:
            if not any(_is_weighted(n, facts.constants) for n in nodes):
                return f"the branch from {skip.name!r} holds no layer with weights"
            return skip, branch, nodes
    return "neither input depends on the other"


def _join(graph: ir.Graph, add: ir.Node, facts: GraphFacts) -> tuple[ir.Value, ir.Value, set[ir.Node]] | str:
    """Every rule but the side-input one: (skip, branch, branch nodes) or why not."""
    found = _structural_candidate(graph, add, facts)
    if isinstance(found, str):
        return found
    skip, _, nodes = found
    out = add.outputs[0]
    if skip.shape is not None and out.shape is not None and skip.shape != out.shape:
        return f"the Add broadcasts {skip.name!r} from {skip.shape} to {out.shape}"
    if skip.dtype is not None and out.dtype is not None and skip.dtype != out.dtype:
        return f"the Add changes the dtype of {skip.name!r}"
    escape = _escapes(nodes, add)
    if escape:
        return f"internals escape: {escape}"
    return found


def analyze_add(graph: ir.Graph, add: ir.Node, facts: GraphFacts | None = None) -> ResidualBlock | str:
    """The residual block joined by `add`, or the reason it is not one (`facts` are computed
    when not given; pass them when analysing many Adds of one graph)."""
    facts = facts if facts is not None else GraphFacts.of(graph)
    found = _join(graph, add, facts)
    if isinstance(found, str):
        return found
    skip, branch, nodes = found
    produced = {id(v) for n in nodes for v in n.outputs}
    for node in nodes:
        if node.op_type in SHAPE_ONLY_OPS:
            continue
        for value in node.inputs:
            if value is None or value is skip or id(value) in produced:
                continue
            if value in facts.tainted:
                return f"the branch also reads {value.name!r}, which depends on the residual stream"
    order = {node: index for index, node in enumerate(graph)}
    return ResidualBlock(add, skip, branch, sorted(nodes, key=order.__getitem__))


def find_residual_blocks(model: ir.Model) -> list[ResidualBlock]:
    """Every droppable residual block of the main graph, in graph order, named after the modules
    its weights come from (see `block_name`). Nested blocks are all listed."""
    graph = model.graph
    facts = GraphFacts.of(graph)
    blocks: list[ResidualBlock] = []
    for node in graph:
        if node.op_type != "Add":
            continue
        result = analyze_add(graph, node, facts)
        if isinstance(result, str):
            if "depend" not in result or "residual stream" in result:
                logger.debug("Add %r is not a droppable block: %s", node.name, result)
            continue
        blocks.append(result)
    _name_blocks(model, blocks, facts)
    return blocks


def drop_block(graph: ir.Graph, block: ResidualBlock) -> None:
    """Skip `block`: the Add's consumers read `skip`; the Add and the branch are removed.

    When the Add's output is a graph output, an Identity of `skip` keeps the output's name.
    """
    out = block.add.outputs[0]
    if out.is_graph_output():
        identity = ir.Node("", "Identity", [block.skip], name=f"{block.add.name or 'add'}_skipped")
        graph.insert_after(block.add, identity)
        identity.outputs[0].name = out.name
        identity.outputs[0].shape, identity.outputs[0].type = out.shape, out.type
        for index, value in enumerate(graph.outputs):
            if value is out:
                graph.outputs[index] = identity.outputs[0]
        out.name = None
        replacement = identity.outputs[0]
    else:
        replacement = block.skip
    ir.convenience.replace_all_uses_with(out, replacement)
    graph.remove(block.removed_nodes, safe=True)


# ---------------------------------------------------------------------------------------------
# Names


def _modules(node: ir.Node) -> set[str]:
    return {origin.module for origin in get_provenance(node) if origin.module}


def _common_prefix(paths: Iterable[str]) -> list[str]:
    split = [p.split(".") for p in paths]
    if not split:
        return []
    prefix = split[0]
    for parts in split[1:]:
        length = 0
        while length < min(len(prefix), len(parts)) and prefix[length] == parts[length]:
            length += 1
        prefix = prefix[:length]
    return prefix


def _under(module: str, prefix: str) -> bool:
    return not prefix or module == prefix or module.startswith(prefix + ".")


def _shorten(parts: list[str]) -> str:
    """From the component before the first index on: model.encoder.layer.3.attention -> layer.3.attention."""
    for index, part in enumerate(parts):
        if part.isdigit() and index > 0:
            return ".".join(parts[index - 1:])
    return ".".join(parts)


def block_name(block: ResidualBlock, weighted_modules: list[set[str]], constants: set[ir.Value]) -> str:
    """The smallest module owning the block's weights (e.g. ``layer.3.attention``); when that
    module also owns weights outside the block (BERT's MLP is `intermediate` and `output` of the
    layer that also holds `attention`), the block is named by its child modules:
    ``layer.3.intermediate+output``. Falls back to the Add's node name without provenance."""
    weighted = [node for node in block.nodes if _is_weighted(node, constants)]
    modules = sorted({m for node in weighted for m in _modules(node)})
    if not modules:
        return block.add.name or "add"
    parts = _common_prefix(modules)
    prefix = ".".join(parts)
    inside = sum(1 for node in weighted if any(_under(m, prefix) for m in _modules(node)))
    owned = sum(1 for node_modules in weighted_modules if any(_under(m, prefix) for m in node_modules))
    name = _shorten(parts) if parts else ""
    if owned > inside:
        children = sorted({m[len(prefix):].lstrip(".").split(".")[0] for m in modules if m != prefix})
        if children:
            name = f"{name}.{'+'.join(children)}" if name else "+".join(children)
    return name or block.add.name or "add"


def _name_blocks(model: ir.Model, blocks: list[ResidualBlock], facts: GraphFacts) -> None:
    weighted = [_modules(node) for node in model.graph if _is_weighted(node, facts.constants)]
    for block in blocks:
        block.name = block_name(block, weighted, facts.constants)
    seen: dict[str, int] = {}
    for block in blocks:
        seen[block.name] = seen.get(block.name, 0) + 1
    for block in blocks:
        if seen[block.name] > 1:
            block.name = f"{block.name} ({block.add.name or 'add'})"
