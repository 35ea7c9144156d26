"""Weight-only block-wise quantization of a linear, as ``com.microsoft.MatMulNBits``.

Each column n of a K x N weight is cut into blocks of `block_size` rows along K, and each block
gets its own scale (symmetric: zero point 2^(bits-1), the kernel's default):

    W[k, n] ~ scale[n, k // B] * (q[n, k] - 2^(bits-1)),  q in [0, 2^bits)

so an outlier widens the grid of one block only, not of a whole column. The activation stays
float; `compute` is MatMulNBits' accuracy level: "fp32" unpacks the weights to float for the
product, "int8" also quantizes A per block to int8 for an integer GEMM, None leaves the choice to
the backend (OpenVINO, which reads MatMulNBits into its compressed-weight FullyConnected and ignores the level).
ONNX Runtime and OpenVINO both run this one op, so the graph is the same for either backend.

The packing (B as [N, k_blocks, blob] bytes, two 4-bit values per byte, low nibble first) follows
ONNX Runtime's own packer (MLAS' symmetric block quantizer: the block's largest-magnitude value
maps to -2^(bits-1), rounding half away from zero). It is written here in numpy because passes do
not import a runtime (DESIGN's layering); the tests check it against ORT's packer: the scales
agree exactly, the values too except one step apart where w / scale lies within a float32
rounding of a half step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from kiln.ir.edits import constant_value, new_initializer, standalone_model, tensor_input
from kiln.passes.quantization.compressed_weights import LinearShape, fp32_linear
from kiln.passes.quantization.linears import Linear

__all__ = ["BlockFormat", "BlockwiseWeight", "NBitsShape", "alternatives", "block_formats", "matmul_nbits",
           "quantize_blockwise"]

_DOMAIN = "com.microsoft"
_OP = "MatMulNBits"
#: MatMulNBits' accuracy_level for each compute type
_ACCURACY_LEVEL = {"fp32": 1, "int8": 4}
_COMPUTE_RANK = {"fp32": 0, None: 1, "int8": 2}  # least to most approximate arithmetic


@dataclass(frozen=True)
class BlockFormat:
    """One weight-only format: `bits` (4 or 8) per weight, `block_size` rows of K per scale,
    and the `compute` type of the product ("fp32", "int8", or None: the backend's own)."""

    bits: int
    block_size: int
    compute: str | None = None

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"MatMulNBits weights are 4 or 8 bits, not {self.bits}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two >= 16 (MatMulNBits), not {self.block_size}")
        if self.compute not in (None, *_ACCURACY_LEVEL):
            raise ValueError(f"compute must be 'fp32', 'int8' or None, not {self.compute!r}")

    @property
    def name(self) -> str:
        return f"int{self.bits} b{self.block_size}" + (f" {self.compute} compute" if self.compute else "")

    def at_least_as_accurate_as(self, other: BlockFormat) -> bool:
        """Whether every part of this format is as fine as `other`'s: as many bits or more, blocks
        as small or smaller, arithmetic as exact or more (the order the budget search falls back
        along; formats that trade one for another are not comparable)."""
        return (self.bits >= other.bits and self.block_size <= other.block_size
                and _COMPUTE_RANK[self.compute] <= _COMPUTE_RANK[other.compute])

    def __str__(self) -> str:
        return self.name


def block_formats(bits: tuple[int, ...], block_sizes: tuple[int, ...], computes: tuple[str | None, ...]
                  ) -> list[BlockFormat]:
    """Every combination, in that order."""
    return [BlockFormat(b, s, c) for b in bits for s in block_sizes for c in computes]


@dataclass(frozen=True)
class BlockwiseWeight:
    """A K x N weight in MatMulNBits' layout: `packed` [N, k_blocks, blob] uint8 and `scales`
    [N, k_blocks] float32 (alpha folded in), in `fmt`."""

    packed: np.ndarray
    scales: np.ndarray
    fmt: BlockFormat
    k: int

    def dequantized(self) -> np.ndarray:
        """The K x N float weight the kernel computes with."""
        n, k_blocks, _ = self.packed.shape
        if self.fmt.bits == 8:
            q = self.packed.reshape(n, -1).astype(np.float32)
        else:  # two values per byte, low nibble first
            q = np.stack([self.packed & 0x0F, self.packed >> 4], axis=-1).reshape(n, -1).astype(np.float32)
        q = q[:, :k_blocks * self.fmt.block_size].reshape(n, k_blocks, self.fmt.block_size)
        w = (q - 2 ** (self.fmt.bits - 1)) * self.scales[:, :, None]
        return np.ascontiguousarray(w.reshape(n, -1)[:, :self.k].T)


def quantize_blockwise(weight: np.ndarray, fmt: BlockFormat, alpha: float = 1.0) -> BlockwiseWeight:
    """Quantize a K x N float weight (times `alpha`) block-wise along K, symmetric: per block,
    scale = v / -2^(bits-1) for v its largest-magnitude value, q = round(w / scale) + 2^(bits-1)
    clipped to [0, 2^bits) (a block of zeros gets scale 0 and q at the zero point)."""
    if weight.ndim != 2:
        raise ValueError(f"expected a K x N weight, got shape {weight.shape}")
    k, n = weight.shape
    k_blocks = math.ceil(k / fmt.block_size)
    w = (weight * np.float32(alpha)).astype(np.float32)
    w = np.pad(w, ((0, k_blocks * fmt.block_size - k), (0, 0)))  # the last block padded with zeros
    blocks = np.ascontiguousarray(w.T).reshape(n, k_blocks, fmt.block_size)
    peak = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=-1)[..., None], axis=-1)[..., 0]
    zero_point = 2 ** (fmt.bits - 1)
    scales = (peak / np.float32(-zero_point)).astype(np.float32)
    with np.errstate(divide="ignore"):
        reciprocal = np.where(peak != 0, np.float32(-zero_point) / peak, np.float32(0.0)).astype(np.float32)
    scaled = blocks * reciprocal[..., None]
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5))  # half away from zero, as roundf
    q = np.clip(rounded + zero_point, 0, 2 ** fmt.bits - 1).astype(np.uint8)
    if fmt.bits == 4:  # two per byte, low nibble first
        q = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    return BlockwiseWeight(np.ascontiguousarray(q), scales, fmt, k)


def _node(x: ir.Value, packed: ir.Value, scales: ir.Value, bias: ir.Value | None, k: int, n: int, fmt: BlockFormat,
          name: str) -> ir.Node:
    attributes = [ir.AttrInt64("K", k), ir.AttrInt64("N", n), ir.AttrInt64("bits", fmt.bits),
                  ir.AttrInt64("block_size", fmt.block_size)]
    if fmt.compute is not None:
        attributes.append(ir.AttrInt64("accuracy_level", _ACCURACY_LEVEL[fmt.compute]))
    # inputs: A, B, scales, zero_points, g_idx, bias (the two absent ones empty)
    inputs = [x, packed, scales] + ([None, None, bias] if bias is not None else [])
    return ir.Node(_DOMAIN, _OP, inputs, attributes=attributes, name=name, num_outputs=1)


def matmul_nbits(graph: ir.Graph, linear: Linear, q: BlockwiseWeight) -> ir.Node:
    """The MatMulNBits `linear` becomes (not yet inserted; its weights added to `graph`): alpha is
    in the scales, a Gemm's C is the op's bias, a MatMul's bias Add stays where it is."""
    prefix = linear.name
    k, n = linear.weight.shape
    packed = new_initializer(graph, f"{prefix}.weight_int{q.fmt.bits}_blocks", q.packed)
    scales = new_initializer(graph, f"{prefix}.weight_block_scales", q.scales)
    bias = new_initializer(graph, f"{prefix}.bias", linear.bias) if linear.bias is not None else None
    return _node(linear.activation, packed, scales, bias, k, n, q.fmt, linear.node.name or prefix)


class NBitsShape(LinearShape):
    """A linear's activation shape, weight size (K x N) and whether it adds a bias in the op,
    keyed per block-wise format."""

    def key_for(self, fmt: BlockFormat) -> str:
        return (f"matmul_nbits x={'x'.join(str(d) for d in self.x_shape)} w={self.k}x{self.n} "
                f"bias={'b' if self.biased else '-'} {fmt.name}")

    def __str__(self) -> str:
        rows = math.prod(int(d) for d in self.x_shape[:-1]) if self.static else "?"
        return f"{rows}x{self.k} -> {self.n}"


def _timed_form(shape: NBitsShape, fmt: BlockFormat, seed: int) -> ir.Model:
    """The linear at `shape` as a MatMulNBits model of its own, with the random weights of
    `fp32_linear` at `seed` (a GEMM's time does not depend on their values)."""
    rng = np.random.default_rng(seed)
    dims = [int(d) for d in shape.x_shape]
    x = tensor_input("x", dims, ir.DataType.FLOAT)
    bias = constant_value("b", rng.standard_normal(shape.n).astype(np.float32)) if shape.biased else None
    q = quantize_blockwise((rng.standard_normal((shape.k, shape.n)) * 0.05).astype(np.float32), fmt)
    packed, scales = constant_value("w_blocks", q.packed), constant_value("w_scales", q.scales)
    node = _node(x, packed, scales, bias, shape.k, shape.n, fmt, "linear")
    y = node.outputs[0]
    y.name, y.dtype, y.shape = "y", ir.DataType.FLOAT, ir.Shape([*dims[:-1], shape.n])
    inits = [packed, scales] + ([bias] if bias is not None else [])
    return standalone_model([x], [y], [node], initializers=inits, name=fmt.name.replace(" ", "_"))


def alternatives(shape: NBitsShape, fmt: BlockFormat, seed: int = 0) -> tuple[ir.Model, ir.Model]:
    """(fp32, `fmt`): the linear with a float weight (`fp32_linear`), against its MatMulNBits in `fmt`."""
    return fp32_linear(shape, seed), _timed_form(shape, fmt, seed)
