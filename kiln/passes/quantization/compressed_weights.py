"""Dynamic int8 linears as OpenVINO runs them: int8 weights behind a DequantizeLinear, read by
the same MatMul (plus the bias Add).

    y = alpha * A @ W + b  ->  MatMul(A, DequantizeLinear(q, scale * alpha, axis=1)) + b

OpenVINO's CPU plugin turns a constant int8 weight with its per-channel scale into a
FullyConnected with compressed weights, and quantizes the activation per call, per group of
``DYNAMIC_QUANTIZATION_GROUP_SIZE`` values of a row (its default), for an int8 GEMM: the scheme
of ONNX Runtime's DynamicQuantizeMatMul at a finer activation granularity, so fewer outliers
share a scale. Whether that is faster than the fp32 linear at a given shape is measured on the
target (`alternatives`): no kiln model prices OpenVINO's compressed kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from kiln.ir.edits import constant_value, new_initializer, standalone_model, tensor_input
from kiln.passes.quantization.linears import Linear
from kiln.passes.quantization.static_activations import ActivationRange, fixed_scale_pair
from kiln.passes.quantization.weights import QuantizedWeight

__all__ = ["LinearShape", "alternatives", "compressed_linear", "fp32_linear", "static_alternatives",
           "static_linear"]


@dataclass(frozen=True)
class LinearShape:
    """A linear's activation shape, weight size (K x N) and whether it adds a bias."""

    x_shape: tuple[int | str | None, ...]
    k: int
    n: int
    biased: bool

    @classmethod
    def of(cls, linear: Linear) -> LinearShape:
        shape = linear.activation.shape
        dims = tuple(shape) if shape is not None else (None, linear.weight.shape[0])
        return cls(dims, int(linear.weight.shape[0]), int(linear.weight.shape[1]), linear.bias is not None)

    @property
    def static(self) -> bool:
        return all(isinstance(d, int) and d > 0 for d in self.x_shape)

    @property
    def key(self) -> str:
        return (f"compressed_int8_linear x={'x'.join(str(d) for d in self.x_shape)} w={self.k}x{self.n} "
                f"bias={'b' if self.biased else '-'}")

    def __str__(self) -> str:
        rows = math.prod(int(d) for d in self.x_shape[:-1]) if self.static else "?"
        return f"{rows}x{self.k} -> {self.n} int8 weights"


def _linear_nodes(x: ir.Value, weight: ir.Value, bias: ir.Value | None, name: str) -> list[ir.Node]:
    nodes = [ir.Node("", "MatMul", [x, weight], name=name)]
    if bias is not None:
        nodes.append(ir.Node("", "Add", [nodes[0].outputs[0], bias], name=f"{name}.bias"))
    return nodes


def compressed_linear(graph: ir.Graph, linear: Linear, q: QuantizedWeight, x: ir.Value | None = None) -> list[ir.Node]:
    """The nodes `linear` becomes (not yet inserted): DequantizeLinear of its int8 weight (alpha
    folded into the per-channel scale), MatMul of `x` (default: the linear's activation), and
    the bias Add when it has a bias; the last node's output replaces the linear's."""
    prefix = linear.name
    values = new_initializer(graph, f"{prefix}.weight_int8", q.values)
    scale = new_initializer(graph, f"{prefix}.weight_scale",
                            np.asarray(q.scale * np.float32(linear.alpha), np.float32))
    dequantize = ir.Node("", "DequantizeLinear", [values, scale], attributes=[ir.AttrInt64("axis", 1)],
                         name=f"{prefix}.dequantize_weight")
    dequantize.outputs[0].name = f"{prefix}.weight_dequantized"
    dequantize.outputs[0].dtype = ir.DataType.FLOAT
    dequantize.outputs[0].shape = ir.Shape(list(q.values.shape))
    bias = new_initializer(graph, f"{prefix}.bias", linear.bias) if linear.bias is not None else None
    activation = x if x is not None else linear.activation
    return [dequantize, *_linear_nodes(activation, dequantize.outputs[0], bias, linear.node.name or prefix)]


def static_linear(graph: ir.Graph, linear: Linear, q: QuantizedWeight, activation: ActivationRange) -> list[ir.Node]:
    """`compressed_linear` reading its activation through QuantizeLinear / DequantizeLinear with
    the calibrated scale: OpenVINO runs the pair and the int8 weight as one int8 GEMM whose
    activation scale is fixed, not computed per call."""
    prefix = linear.name
    scale = new_initializer(graph, f"{prefix}.activation_scale", np.asarray(activation.scale, np.float32))
    zero_point = new_initializer(graph, f"{prefix}.activation_zero_point", np.asarray(activation.zero_point, np.uint8))
    pair = fixed_scale_pair(linear.activation, scale, zero_point, prefix)
    return [*pair, *compressed_linear(graph, linear, q, x=pair[-1].outputs[0])]


def _timed_form(shape: LinearShape, form: str, seed: int) -> ir.Model:
    """The linear at `shape` as a model of its own: "fp32" (a float weight), "int8" (an int8
    weight behind a DequantizeLinear) or "int8 static" (that, reading its activation through a
    fixed-scale QuantizeLinear / DequantizeLinear); random weights (a GEMM's time does not
    depend on the values)."""
    rng = np.random.default_rng(seed)
    dims = [int(d) for d in shape.x_shape]

    x = tensor_input("x", dims, ir.DataType.FLOAT)
    bias = constant_value("b", rng.standard_normal(shape.n).astype(np.float32)) if shape.biased else None
    inits = [bias] if bias is not None else []
    nodes: list[ir.Node] = []
    activation = x
    if form == "int8 static":
        scale, zero_point = constant_value("x_scale", np.asarray(0.02, np.float32)), constant_value("x_zero_point", np.asarray(128, np.uint8))
        inits += [scale, zero_point]
        nodes += fixed_scale_pair(x, scale, zero_point)
        activation = nodes[-1].outputs[0]
    if form == "fp32":
        weight = constant_value("w", (rng.standard_normal((shape.k, shape.n)) * 0.05).astype(np.float32))
        inits.append(weight)
    else:
        values = constant_value("w_int8", rng.integers(-127, 128, (shape.k, shape.n), dtype=np.int8))
        w_scale = constant_value("w_scale", np.full((shape.n,), 0.01, np.float32))
        inits += [values, w_scale]
        nodes.append(ir.Node("", "DequantizeLinear", [values, w_scale], attributes=[ir.AttrInt64("axis", 1)]))
        weight = nodes[-1].outputs[0]
    nodes += _linear_nodes(activation, weight, bias, "linear")
    y = nodes[-1].outputs[0]
    y.name, y.dtype, y.shape = "y", ir.DataType.FLOAT, ir.Shape([*dims[:-1], shape.n])
    return standalone_model([x], [y], nodes, initializers=inits, name=form.replace(" ", "_"))


def fp32_linear(shape: LinearShape, seed: int = 0) -> ir.Model:
    """The linear at `shape` with a float weight, as a model of its own (input "x", output "y";
    the bias drawn first from `seed`, then the K x N weight, times 0.05): the baseline other
    weight formats are timed against."""
    return _timed_form(shape, "fp32", seed)


def alternatives(shape: LinearShape, seed: int = 0) -> tuple[ir.Model, ir.Model]:
    """(fp32, int8): the linear with a float weight, against the same with an int8 weight behind
    a DequantizeLinear."""
    return fp32_linear(shape, seed), _timed_form(shape, "int8", seed)


def static_alternatives(shape: LinearShape, seed: int = 0) -> tuple[ir.Model, ir.Model]:
    """(dynamic, static): the int8 form, against the same with the activation through
    QuantizeLinear / DequantizeLinear at a fixed scale."""
    return _timed_form(shape, "int8", seed), _timed_form(shape, "int8 static", seed)
