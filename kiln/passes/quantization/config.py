"""What the user asks quantization for: `QuantConfig`, and the shorthands ``quantize="int8"``.

Only the schemes kiln can lower today are accepted; any other raises at once with the list, so a
request is never silently run as something else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kiln.errors import InputError
from kiln.passes.infra.contract import CosineBudget
from kiln.passes.quantization.observers import RangeMethod, check_method, check_percentile

__all__ = ["SCHEMES", "QuantConfig", "resolve_quantize"]

Scheme = Literal["dynamic-int8", "static-int8", "int4-weights"]
#: scheme -> what it is, for messages and the CLI's help
SCHEMES: dict[str, str] = {
    "dynamic-int8": ("int8 weights (symmetric, per output channel by default) and activations quantized on the fly "
                     "to uint8 at every linear; no calibration data needed"),
    "static-int8": ("dynamic-int8, then, where the budget still holds, activation scales fixed from their range on "
                    "the calibration inputs, convolutions and attention's two products in int8 (OpenVINO only so far; needs "
                    "calibration data)"),
    "int4-weights": ("weight-only: each linear's weights in 4-bit blocks along K, one scale per block "
                     "(com.microsoft.MatMulNBits on ONNX Runtime and OpenVINO), the block size and compute type "
                     "measured fastest per shape; a linear whose 4-bit form breaks the budget takes 8-bit blocks, "
                     "else stays fp32; no calibration data needed"),
}
#: shorthand -> scheme
SHORTHANDS = {"int8": "dynamic-int8", "dynamic-int8": "dynamic-int8", "static-int8": "static-int8",
              "int4-weights": "int4-weights"}
#: MatMulNBits' compute types on ONNX Runtime: float products, or A quantized per block to int8
BLOCK_COMPUTE = ("fp32", "int8")


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize.

    - `scheme`: "dynamic-int8", or "static-int8" (OpenVINO): each linear the dynamic search kept
      is tried with static activation scales, each convolution with static int8 input and
      filters, and each attention core with its Q K^T and P V in int8; each keeps them where the budget still holds and they measured faster;
      or "int4-weights": weight-only block-wise 4-bit (8-bit) weights (see `SCHEMES`).
    - `per_channel`: one weight scale per output channel (else one per tensor).
    - `reduce_range`: 7-bit weights, for CPUs without VNNI whose u8 x s8 products can saturate in
      16 bits; None: 8-bit on a CPU with VNNI, and without it whichever measures more accurate on
      the calibration inputs (ONNX Runtime).
    - `budget`: how far the outputs may move from the fp32 model's on the calibration inputs; the
      layers whose quantization costs the most accuracy stay fp32 until the joint error fits. By
      default every sample of a batch keeps cosine 0.99 (its worst sentence, not its average).
    - `exclude`: names of nodes to keep in fp32 whatever they would gain.
    - `activation_range`: how static-int8 sets each activation's fixed range from the
      calibration inputs: "minmax", "percentile" (the central `percentile` % of the values),
      "mse" (the clip with the least expected quantization error) or "entropy" (TensorRT's KL
      rule); see `observers.RANGE_METHODS`.
    - `migrate_outliers`: before quantizing, move the per-channel outliers of the activations
      linears read into their weights (SmoothQuant scales, OS+ shifts), in the form measured to
      quantize best on the calibration inputs; exact before quantization (`outlier_migration`).
      `migration_sites` says where: "norms" (LayerNorm outputs, which absorb the division; the
      default) or "all" (also every other activation, behind a Mul, plus an Add with a shift).
    - `bias_correction`: static int8 linears, and ONNX Runtime's dynamic ones, may take the mean
      error their quantization adds on the calibration inputs out of their bias
      (`bias_correction`); it is applied when it measures better on calibration feeds it was not
      fitted on, and reported either way.
    - `block_sizes`, `block_bits`, `block_compute` (int4-weights): the block-wise formats tried
      for each linear, every combination of weight bits (4, then 8 where 4 breaks the budget),
      rows of K per scale, and ONNX Runtime's compute type ("fp32", or "int8": A quantized per
      block); each is measured against fp32 at the linear's shape and the fastest that keeps the
      budget is kept (`blockwise_weights`).
    - `rotation_blocks` (dynamic int8 on ONNX Runtime): the block sizes of Hadamard rotation a
      linear whose int8 form breaks the budget may take before it falls back to fp32: its
      activation rotated in blocks of that many channels at every call, the rotation undone in its
      weight, exactly (`hadamard_rotation`); each form is priced by the cost model and taken, the
      cheapest first, only where it measures more accurate. Powers of two; () never rotates.
    """

    scheme: Scheme = "dynamic-int8"
    per_channel: bool = True
    reduce_range: bool | None = None
    budget: CosineBudget = field(default_factory=lambda: CosineBudget(min_cosine=0.99, per_sample=True))
    exclude: tuple[str, ...] = ()
    activation_range: RangeMethod = "minmax"
    percentile: float = 99.99
    migrate_outliers: bool = False
    migration_sites: Literal["norms", "all"] = "norms"
    bias_correction: bool = True
    block_sizes: tuple[int, ...] = (32, 128)
    block_bits: tuple[int, ...] = (4, 8)
    block_compute: tuple[str, ...] = BLOCK_COMPUTE
    rotation_blocks: tuple[int, ...] = (16, 32, 64)

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise InputError(_unknown(self.scheme))
        bad_sizes = [s for s in self.block_sizes if not isinstance(s, int) or s < 16 or s & (s - 1)]
        if not self.block_sizes or bad_sizes:
            raise InputError(f"block_sizes={self.block_sizes!r}: give one or more powers of two >= 16 (MatMulNBits' "
                             "block sizes), e.g. (32, 128).")
        if not self.block_bits or set(self.block_bits) - {4, 8}:
            raise InputError(f"block_bits={self.block_bits!r}: MatMulNBits weights are 4 or 8 bits; give (4,), (8,) "
                             "or (4, 8).")
        if self.scheme == "int4-weights" and self.migrate_outliers:
            raise InputError("migrate_outliers moves activation outliers into the weights for int8 activations; "
                             "int4-weights keeps the activations float and would only get harder weights: drop "
                             "migrate_outliers (--migrate-outliers), or use quantize='int8'.")
        if not self.block_compute or set(self.block_compute) - set(BLOCK_COMPUTE):
            raise InputError(f"block_compute={self.block_compute!r}: give one or both of {BLOCK_COMPUTE}.")
        bad_blocks = [b for b in self.rotation_blocks if not isinstance(b, int) or b < 2 or b & (b - 1)]
        if bad_blocks:
            raise InputError(f"rotation_blocks={self.rotation_blocks!r}: give powers of two >= 2 (the orders a "
                             "Sylvester-Hadamard matrix has), e.g. (16, 32, 64), or () to never rotate.")
        check_method(self.activation_range)
        if self.migration_sites not in ("norms", "all"):
            raise InputError(f"migration_sites={self.migration_sites!r}: use 'norms' (LayerNorm outputs) or 'all'.")
        check_percentile(self.percentile)
        if not isinstance(self.budget, CosineBudget):
            raise InputError(f"budget={self.budget!r} is not a CosineBudget; give e.g. CosineBudget(min_cosine=0.99) "
                             "(from kiln.passes.infra import CosineBudget).")


def resolve_quantize(value: str | QuantConfig | None) -> QuantConfig | None:
    """`kiln.optimize(quantize=...)`: None (no quantization), a `QuantConfig`, or a shorthand
    ("int8", "static-int8", "int4-weights")."""
    if value is None or isinstance(value, QuantConfig):
        return value
    if isinstance(value, str) and value in SHORTHANDS:
        return QuantConfig(scheme=SHORTHANDS[value])  # type: ignore[arg-type]
    raise InputError(_unknown(value))


def _unknown(value: object) -> str:
    known = ", ".join(repr(name) for name in SHORTHANDS)
    return f"quantize={value!r} is not a quantization scheme kiln knows; use one of {known} or a QuantConfig."
