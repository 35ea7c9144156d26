"""Static int8 convolutions as OpenVINO runs them: the input through a fixed-scale QuantizeLinear /
DequantizeLinear pair and int8 filters behind a DequantizeLinear, read by the same Conv.

    Conv(X, W, B)  ->  Conv(DequantizeLinear(QuantizeLinear(X, s_x, z_x)), DequantizeLinear(q, s_w, axis=0), B)

with s_x, z_x from X's range on the calibration inputs (`static_activations`) and one symmetric
scale per filter (`weights`). OpenVINO's low-precision transformations fuse the pattern into an
int8 convolution with a float output. No kiln model prices those kernels, so whether int8 is faster
at a convolution's shape is measured on the target (`alternatives`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from kiln.ir.edits import constant_value, new_initializer, standalone_model, tensor_input
from kiln.passes.quantization.convs import Convolution
from kiln.passes.quantization.static_activations import ActivationRange, fixed_scale_pair
from kiln.passes.quantization.weights import QuantizedWeight

__all__ = ["ConvShape", "alternatives", "static_conv"]

_ATTRIBUTES = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def _attribute_text(attr: ir.Attr) -> str:
    value = attr.value
    return f"{attr.name}={'x'.join(str(v) for v in value) if isinstance(value, (list, tuple)) else value}"


@dataclass(frozen=True)
class ConvShape:
    """A convolution's input shape, filter shape, attributes and whether it adds a bias: what
    its time depends on."""

    x_shape: tuple[int | str | None, ...]
    w_shape: tuple[int, ...]
    biased: bool
    attributes: tuple[ir.Attr, ...] = field(default=(), compare=False)

    @classmethod
    def of(cls, conv: Convolution) -> ConvShape:
        shape = conv.activation.shape
        dims = tuple(shape) if shape is not None else (None,) * conv.weight.ndim
        attrs = tuple(conv.node.attributes[name] for name in _ATTRIBUTES if name in conv.node.attributes)
        return cls(dims, tuple(int(d) for d in conv.weight.shape), conv.biased, attrs)

    @property
    def static(self) -> bool:
        return all(isinstance(d, int) and d > 0 for d in self.x_shape)

    @property
    def key(self) -> str:
        attrs = " ".join(_attribute_text(attr) for attr in self.attributes)
        return (f"static_int8_conv x={'x'.join(str(d) for d in self.x_shape)} "
                f"w={'x'.join(str(d) for d in self.w_shape)} bias={'b' if self.biased else '-'} {attrs}").rstrip()

    def __str__(self) -> str:
        dims = "x".join(str(d) for d in self.x_shape)
        return f"{dims} conv {'x'.join(str(d) for d in self.w_shape)} int8"


def _copied(attrs: tuple[ir.Attr, ...]) -> list[ir.Attr]:
    return [ir.Attr(attr.name, attr.type, attr.value) for attr in attrs]


def static_conv(graph: ir.Graph, conv: Convolution, q: QuantizedWeight, activation: ActivationRange) -> list[ir.Node]:
    """Rewire `conv` to read its input through the fixed-scale pair and its filters through the
    int8 weight's DequantizeLinear; returns the new nodes (not yet inserted: they go before the
    Conv, which stays)."""
    if q.axis != 0:
        raise ValueError(f"a convolution's filters are quantized per output channel on axis 0, not {q.axis}")
    prefix = conv.name
    scale = new_initializer(graph, f"{prefix}.activation_scale", np.asarray(activation.scale, np.float32))
    zero_point = new_initializer(graph, f"{prefix}.activation_zero_point", np.asarray(activation.zero_point, np.uint8))
    pair = fixed_scale_pair(conv.activation, scale, zero_point, prefix)
    values = new_initializer(graph, f"{prefix}.weight_int8", q.values)
    w_scale = new_initializer(graph, f"{prefix}.weight_scale", np.asarray(q.scale, np.float32))
    dequantize = ir.Node("", "DequantizeLinear", [values, w_scale], attributes=[ir.AttrInt64("axis", 0)],
                         name=f"{prefix}.dequantize_weight")
    dequantize.outputs[0].name = f"{prefix}.weight_dequantized"
    dequantize.outputs[0].dtype = ir.DataType.FLOAT
    dequantize.outputs[0].shape = ir.Shape(list(q.values.shape))
    conv.node.replace_input_with(0, pair[-1].outputs[0])
    conv.node.replace_input_with(1, dequantize.outputs[0])
    return [*pair, dequantize]


def _timed_form(shape: ConvShape, int8: bool, seed: int) -> ir.Model:
    """The convolution at `shape` as a model of its own, in fp32 or in the static int8 form;
    random filters (a convolution's time does not depend on the values)."""
    rng = np.random.default_rng(seed)
    dims = [int(d) for d in shape.x_shape]

    x = tensor_input("x", dims, ir.DataType.FLOAT)
    inits: list[ir.Value] = []
    nodes: list[ir.Node] = []
    activation = x
    if int8:
        scale, zero_point = constant_value("x_scale", np.asarray(0.02, np.float32)), constant_value("x_zero_point", np.asarray(128, np.uint8))
        values = constant_value("w_int8", rng.integers(-127, 128, shape.w_shape, dtype=np.int8))
        w_scale = constant_value("w_scale", np.full((shape.w_shape[0],), 0.01, np.float32))
        inits += [scale, zero_point, values, w_scale]
        nodes += fixed_scale_pair(x, scale, zero_point)
        activation = nodes[-1].outputs[0]
        nodes.append(ir.Node("", "DequantizeLinear", [values, w_scale], attributes=[ir.AttrInt64("axis", 0)]))
        weight = nodes[-1].outputs[0]
    else:
        weight = constant_value("w", (rng.standard_normal(shape.w_shape) * 0.05).astype(np.float32))
        inits.append(weight)
    bias = [constant_value("b", rng.standard_normal(shape.w_shape[0]).astype(np.float32))] if shape.biased else []
    inits += bias
    nodes.append(ir.Node("", "Conv", [activation, weight, *bias], attributes=_copied(shape.attributes), name="conv"))
    y = nodes[-1].outputs[0]
    y.name, y.dtype = "y", ir.DataType.FLOAT
    return standalone_model([x], [y], nodes, initializers=inits, name="int8_static" if int8 else "fp32")


def alternatives(shape: ConvShape, seed: int = 0) -> tuple[ir.Model, ir.Model]:
    """(fp32, int8 static): the convolution with float filters, against the same reading its
    input through a fixed-scale QuantizeLinear / DequantizeLinear and int8 filters."""
    return _timed_form(shape, False, seed), _timed_form(shape, True, seed)
