"""Where an activation's per-channel scale can move into weights exactly: the activation a group
of linears read.

At a LayerNormalization whose output the linears read (directly or through Reshapes that keep
the last axis), the norm absorbs it:

    Y = LayerNorm(x; gamma, beta)        Y' = LayerNorm(x; gamma / s, (beta - z) / s) = (Y - z) / s
    y_i = Y @ W_i + b_i                  y_i = Y' @ (s * W_i) + (b_i + z @ W_i)

and any other reader of Y (the residual sum of a post-norm transformer) reads it back as
``Y' * s + z``. Any other activation (a GELU's output, attention's context) gets the division as
an explicit ``Y' = (Y - z) / s`` (a Mul, plus an Add with a shift) in front of its linears; its
other readers keep Y. Gamma, beta and each linear's weight and bias must be constants.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from kiln.ir.queries import constant_array, is_onnx
from kiln.passes.quantization.linears import Linear, linear_of

__all__ = ["MigrationSite", "find_migration_sites"]


@dataclass(frozen=True)
class MigrationSite:
    """The activation `value` the `linears` read, its `channels` (their weight rows), and either
    the LayerNormalization `norm` that makes it (its `gamma` and `beta`; the `others`: (node,
    input index) of every reader that is not one of the linears) or None: an explicit division in
    front of the linears."""

    value: ir.Value
    linears: tuple[Linear, ...]
    channels: int
    norm: ir.Node | None = None
    gamma: np.ndarray | None = None
    beta: np.ndarray | None = None
    others: tuple[tuple[ir.Node, int], ...] = ()

    @property
    def name(self) -> str:
        if self.norm is not None:
            return self.norm.name or f"LayerNormalization({self.value.name})"
        return self.value.name or self.linears[0].name

    @property
    def shiftable(self) -> bool:
        """Whether every linear has a bias to absorb a shift: ``z @ W`` goes into it."""
        return all(linear.bias is not None and _bias_writable(linear) for linear in self.linears)


def _bias_writable(linear: Linear) -> bool:
    """A Gemm's bias is C scaled by beta: a zero beta cannot carry a shift."""
    beta = linear.node.attributes.get("beta")
    return is_onnx(linear.node, "Gemm") and (beta is None or beta.as_float() != 0.0)


def _keeps_last_axis(node: ir.Node) -> bool:
    """A Reshape whose input and output have the same known last dimension: every row of the
    output is a row of the input, so a per-channel scale passes through it."""
    if not is_onnx(node, "Reshape"):
        return False
    x, y = node.inputs[0], node.outputs[0]
    if x is None or x.shape is None or y.shape is None or len(x.shape) == 0 or len(y.shape) == 0:
        return False
    last_in, last_out = x.shape[-1], y.shape[-1]
    return isinstance(last_in, int) and last_in == last_out


def _linear_reading(node: ir.Node, index: int, value: ir.Value) -> Linear | None:
    linear = linear_of(node)
    return linear if isinstance(linear, Linear) and index == 0 and linear.activation is value else None


def _site_of(norm: ir.Node, graph_outputs: set[int]) -> MigrationSite | str:
    """`norm` as a `MigrationSite`, or why it is not one."""
    axis = norm.attributes.get("axis")
    output = norm.outputs[0]
    if output.shape is None or len(output.shape) == 0:
        return "the norm's output has no known rank"
    if axis is not None and axis.as_int() not in (-1, len(output.shape) - 1):
        return "the norm does not normalize the last axis"
    if any(out.uses() for out in norm.outputs[1:]):
        return "the norm's mean or inverse deviation is read"
    if id(output) in graph_outputs:
        return "the norm's output is a graph output"
    gamma = constant_array(norm.inputs[1]) if len(norm.inputs) > 1 else None
    beta = constant_array(norm.inputs[2]) if len(norm.inputs) > 2 and norm.inputs[2] is not None else None
    if gamma is None or gamma.dtype != np.float32 or (beta is not None and beta.dtype != np.float32):
        return "the norm's scale or bias is not a float32 constant"
    channels = output.shape[-1]
    if not isinstance(channels, int) or gamma.size != channels or (beta is not None and beta.size != channels):
        return "the norm's scale does not hold one value per channel"
    linears: list[Linear] = []
    others: list[tuple[ir.Node, int]] = []
    for reader, index in output.uses():
        linear = _linear_reading(reader, index, output)
        if linear is not None:
            linears.append(linear)
            continue
        if _keeps_last_axis(reader) and index == 0 and id(reader.outputs[0]) not in graph_outputs:
            through = [_linear_reading(n, i, reader.outputs[0]) for n, i in reader.outputs[0].uses()]
            if through and all(linear is not None for linear in through):
                linears.extend(linear for linear in through if linear is not None)
                continue
        others.append((reader, index))
    if not linears:
        return "no linear reads the norm's output"
    if any(linear.weight.shape[0] != channels for linear in linears):
        return "a linear's weight rows do not match the norm's channels"
    return MigrationSite(output, tuple(linears), channels, norm, gamma.reshape(-1),
                         beta.reshape(-1) if beta is not None else None, tuple(others))


def _explicit_sites(graph: ir.Graph, taken: set[ir.Node]) -> list[MigrationSite]:
    """One explicit site per activation the linears outside `taken` read, in graph order."""
    readers: dict[int, list[Linear]] = {}
    for node in graph:
        linear = linear_of(node) if node not in taken else None
        if isinstance(linear, Linear) and linear.activation.name:
            readers.setdefault(id(linear.activation), []).append(linear)
    return [MigrationSite(group[0].activation, tuple(group), int(group[0].weight.shape[0]))
            for group in readers.values() if all(lin.weight.shape[0] == group[0].weight.shape[0] for lin in group)]


def find_migration_sites(graph: ir.Graph, *, explicit: bool = True) -> tuple[list[MigrationSite], dict[str, int]]:
    """The migration sites of `graph` (top level): the LayerNormalizations the linears read, then
    (with `explicit`) every other activation linears read; and, for the LayerNormalizations left,
    how many were left for each reason (their linears may still be an explicit site)."""
    graph_outputs = {id(v) for v in graph.outputs}
    sites: list[MigrationSite] = []
    left: dict[str, int] = {}
    for node in graph:
        if not is_onnx(node, "LayerNormalization"):
            continue
        site = _site_of(node, graph_outputs)
        if isinstance(site, str):
            left[site] = left.get(site, 0) + 1
        else:
            sites.append(site)
    if explicit:
        sites += _explicit_sites(graph, {linear.node for site in sites for linear in site.linears})
    return sites, left
