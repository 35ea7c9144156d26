"""The two forms of a group of parallel linear layers (query / key / value, gate / up) as small
ONNX models, for measuring which one the target runs faster (`parallel_matmul_joining`).

Joining saves no FLOPs or weight bytes and adds a Split's copy; whether ONNX Runtime's GEMM runs
the joined shape faster depends on the shape in ways no rows / bytes rule or roofline fits (MLAS
picks its blocking and thread partition by shape), so the choice is measured, never predicted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from kiln.ir.edits import standalone_model, tensor_input


@dataclass(frozen=True)
class GroupShape:
    """A group of parallel linear layers: the shared input's shape, each branch's output width and
    whether it adds a bias, and the dtype."""

    x_shape: tuple[int | str | None, ...]
    widths: tuple[int, ...]
    biased: tuple[bool, ...]
    dtype: ir.DataType

    @property
    def static(self) -> bool:
        return all(isinstance(d, int) and d > 0 for d in self.x_shape)

    @property
    def flops(self) -> float:
        rows = math.prod(int(d) for d in self.x_shape[:-1]) if self.static else 0
        return 2.0 * rows * int(self.x_shape[-1] or 0) * sum(self.widths)

    @property
    def key(self) -> str:
        dims = "x".join(str(d) for d in self.x_shape)
        widths = "+".join(str(w) for w in self.widths)
        bias = "".join("b" if b else "-" for b in self.biased)
        return f"parallel_matmul x={dims} widths={widths} bias={bias} {self.dtype.name}"

    def __str__(self) -> str:
        rows = math.prod(int(d) for d in self.x_shape[:-1]) if self.static else "?"
        return f"{rows}x{self.x_shape[-1]} -> {'+'.join(str(w) for w in self.widths)}"


def alternatives(shape: GroupShape, seed: int = 0) -> tuple[ir.Model, ir.Model]:
    """(separate, joined): each branch's MatMul (+ Add), against one MatMul (+ Add of the biases,
    zero for a branch without) and a Split; same input and outputs. The weights are random: the
    time of a GEMM does not depend on the values."""
    rng = np.random.default_rng(seed)
    dims = [int(d) for d in shape.x_shape]
    inner, np_dtype = dims[-1], shape.dtype.numpy()

    def constant(name: str, *size: int) -> ir.Value:
        return ir.Value(name=name, const_value=ir.tensor(rng.standard_normal(size).astype(np.float32).astype(np_dtype),
                                                         name=name))

    def build(joined: bool) -> ir.Model:
        x = tensor_input("x", dims, shape.dtype)
        nodes: list[ir.Node] = []
        inits: list[ir.Value] = []
        if joined:
            weight = constant("w", inner, sum(shape.widths))
            inits.append(weight)
            nodes.append(ir.Node("", "MatMul", [x, weight]))
            if any(shape.biased):
                bias = constant("b", sum(shape.widths))
                inits.append(bias)
                nodes.append(ir.Node("", "Add", [nodes[-1].outputs[0], bias]))
            sizes = ir.Value(name="sizes", const_value=ir.tensor(np.asarray(shape.widths, np.int64), name="sizes"))
            inits.append(sizes)
            nodes.append(ir.Node("", "Split", [nodes[-1].outputs[0], sizes], attributes=[ir.AttrInt64("axis", -1)],
                                 num_outputs=len(shape.widths)))
            outputs = list(nodes[-1].outputs)
        else:
            outputs = []
            for i, (width, biased) in enumerate(zip(shape.widths, shape.biased)):
                weight = constant(f"w{i}", inner, width)
                inits.append(weight)
                nodes.append(ir.Node("", "MatMul", [x, weight]))
                if biased:
                    bias = constant(f"b{i}", width)
                    inits.append(bias)
                    nodes.append(ir.Node("", "Add", [nodes[-1].outputs[0], bias]))
                outputs.append(nodes[-1].outputs[0])
        for i, (value, width) in enumerate(zip(outputs, shape.widths)):
            value.name, value.type, value.shape = f"y{i}", ir.TensorType(shape.dtype), ir.Shape([*dims[:-1], width])
        return standalone_model([x], outputs, nodes, initializers=inits, name="joined" if joined else "separate")

    return build(False), build(True)
