"""The two int8 forms of linears that read one activation, as small ONNX models, for measuring
which one the target runs faster (`quantize_int8`): a DynamicQuantizeMatMul per linear (each
quantizes the activation itself, inside the kernel), against one DynamicQuantizeLinear feeding a
MatMulIntegerToFloat per linear. The products are the same; the time is not predicted, because
the cost model prices the quantization inside a DynamicQuantizeMatMul as part of its GEMM and a
DynamicQuantizeLinear as a kernel of its own, and neither is how ONNX Runtime's kernels spend it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from kiln.ir.edits import constant_value, standalone_model, tensor_input

__all__ = ["SharedShape", "alternatives"]

_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class SharedShape:
    """The shared activation's shape, each linear's output width and whether it has a bias."""

    x_shape: tuple[int | str | None, ...]
    widths: tuple[int, ...]
    biased: tuple[bool, ...]

    @property
    def static(self) -> bool:
        return all(isinstance(d, int) and d > 0 for d in self.x_shape)

    @property
    def key(self) -> str:
        dims = "x".join(str(d) for d in self.x_shape)
        return (f"dynamic_int8_shared x={dims} widths={'+'.join(str(w) for w in self.widths)} "
                f"bias={''.join('b' if b else '-' for b in self.biased)}")

    def __str__(self) -> str:
        rows = math.prod(int(d) for d in self.x_shape[:-1]) if self.static else "?"
        return f"{rows}x{self.x_shape[-1]} -> {'+'.join(str(w) for w in self.widths)} int8"


def alternatives(shape: SharedShape, seed: int = 0) -> tuple[ir.Model, ir.Model]:
    """(per linear, shared): same input and outputs; random int8 weights (an integer GEMM's time
    does not depend on the values)."""
    rng = np.random.default_rng(seed)
    dims = [int(d) for d in shape.x_shape]
    inner = dims[-1]

    def build(shared: bool) -> ir.Model:
        x = tensor_input("x", dims, ir.DataType.FLOAT)
        nodes: list[ir.Node] = []
        inits: list[ir.Value] = []
        if shared:
            nodes.append(ir.Node("", "DynamicQuantizeLinear", [x], num_outputs=3))
            a, a_scale, a_zero_point = nodes[0].outputs
        outputs = []
        for i, (width, biased) in enumerate(zip(shape.widths, shape.biased)):
            weight = constant_value(f"w{i}", rng.integers(-127, 128, (inner, width), dtype=np.int8))
            scale = constant_value(f"s{i}", np.full((width,), 0.01, np.float32))
            zero_point = constant_value(f"z{i}", np.zeros((width,), np.int8))
            bias = [constant_value(f"b{i}", rng.standard_normal(width).astype(np.float32))] if biased else []
            inits += [weight, scale, zero_point, *bias]
            if shared:
                node = ir.Node(_DOMAIN, "MatMulIntegerToFloat", [a, weight, a_scale, scale, a_zero_point, zero_point,
                                                                 *bias])
            else:
                node = ir.Node(_DOMAIN, "DynamicQuantizeMatMul", [x, weight, scale, zero_point, *bias])
            node.outputs[0].name = f"y{i}"
            nodes.append(node)
            outputs.append(node.outputs[0])
        return standalone_model([x], outputs, nodes, initializers=inits, name="shared" if shared else "per_linear",
                                opset_imports={"": 17, _DOMAIN: 1})

    return build(False), build(True)
