"""Hardware profiles: what the machine can do, as numbers the roofline reads.

A `HardwareProfile` holds, for the number of threads kiln runs with, the arithmetic peak per
precision, the attainable GEMM rate through the backend, bandwidth and capacity per memory level,
the fixed cost of launching one kernel, and the fraction of the roofline each op class attains.
It comes from a preset (`preset`, `preset_for_this_cpu`) or from measuring this machine
(`kiln.cost_model.measure.calibration`), and round-trips through JSON (`save` / `load`).

Units: GFLOP/s and GOP/s (10^9), GB/s (10^9 bytes), bytes, microseconds.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from kiln.errors import KilnError

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_EFFICIENCY",
    "OP_CLASSES",
    "PRECISIONS",
    "PRESETS",
    "HardwareProfile",
    "MemoryLevel",
    "ProfileError",
    "default_profile_path",
    "load",
    "preset",
    "preset_for_this_cpu",
]

#: Precisions a profile has a peak for. int4 weights are unpacked to int8 or fp32 by every CPU
#: kernel (MLAS MatMulNBits), so its peak is the one of the arithmetic that runs.
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")

#: Op classes the roofline distinguishes (see `kiln.cost_model.roofline.op_class`).
OP_CLASSES = (
    "gemm",  # MatMul, Gemm, Einsum, fused matmuls, attention
    "conv",  # Conv, ConvTranspose and quantized / fused convs
    "elementwise",  # unary and binary arithmetic, activations, casts
    "reduction",  # Reduce*, pooling, ArgMax
    "normalization",  # LayerNorm, BatchNorm, RMSNorm, Softmax
    "data_movement",  # Transpose, Concat, Split, Slice, Gather, Expand, Pad, Resize
    "view",  # Reshape, Squeeze, Unsqueeze, Flatten, Identity: no data moves in ORT
    "shape",  # Shape, Size, Constant, ConstantOfShape, Range: metadata work
    "quantize",  # QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear
    "other",
)

#: Fraction of the roofline each op class attains before any calibration: a matrix product
#: through MLAS reaches most of the FMA peak, element-wise and data movement reach a part of
#: the bandwidth (their operands are small and the per-kernel work is short). These are
#: starting points; `kiln.cost_model.learned` fits them to measured profiles.
DEFAULT_EFFICIENCY: dict[str, float] = {
    "gemm": 0.75,
    "conv": 0.6,
    "elementwise": 0.5,
    "reduction": 0.4,
    "normalization": 0.4,
    "data_movement": 0.3,
    "view": 1.0,
    "shape": 1.0,
    "quantize": 0.4,
    "other": 0.3,
}


class ProfileError(KilnError):
    """A hardware profile file is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class MemoryLevel:
    """One level of the memory hierarchy as seen by `threads` threads together: capacity is the
    total the threads can use (private caches times threads, shared caches once) and bandwidth
    the aggregate read + write rate."""

    name: str
    capacity_bytes: int
    bandwidth_gbps: float


@dataclass
class HardwareProfile:
    """Peaks, memory levels, launch overhead and per-op-class efficiencies for `threads` threads."""

    name: str
    threads: int
    peak_gflops: dict[str, float]  # arithmetic peak per precision (FMA = 2 FLOPs)
    gemm_gflops: dict[str, float]  # attainable matrix-product rate through the backend
    memory: list[MemoryLevel]  # fastest first; the last is DRAM
    launch_overhead_us: float  # fixed cost of one kernel (dispatch, thread-pool wake-up)
    efficiency: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_EFFICIENCY))
    source: str = ""  # "preset ..." or "calibrated on <cpu> at <time>"
    cpu_model: str = ""
    flags: list[str] = field(default_factory=list)
    details: dict[str, float] = field(default_factory=dict)  # raw calibration measurements
    # the runtime the GEMM rates, efficiencies and launch overhead were measured through
    backend: str = "onnxruntime"

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ProfileError(f"HardwareProfile {self.name!r}: threads must be >= 1, got {self.threads}")
        if not self.memory:
            raise ProfileError(f"HardwareProfile {self.name!r} has no memory levels; it needs at least DRAM.")
        for table in (self.peak_gflops, self.gemm_gflops):
            for precision, value in table.items():
                if not value or value <= 0:
                    raise ProfileError(f"HardwareProfile {self.name!r}: peak for {precision!r} must be > 0, "
                                       f"got {value}")
        for level in self.memory:
            if level.bandwidth_gbps <= 0 or level.capacity_bytes <= 0:
                raise ProfileError(f"HardwareProfile {self.name!r}: memory level {level} needs positive figures")
        if "fp32" not in self.peak_gflops:
            raise ProfileError(f"HardwareProfile {self.name!r} has no fp32 peak")

    # --- lookups ---------------------------------------------------------------------------

    @property
    def dram(self) -> MemoryLevel:
        """The last (largest, slowest) memory level."""
        return self.memory[-1]

    def peak(self, precision: str, gemm: bool = False) -> float:
        """GFLOP/s for `precision` ("fp32", "int8", ...); unknown precisions fall back to fp32.
        With ``gemm=True`` the attainable GEMM rate, where one was measured."""
        table = self.gemm_gflops if gemm and self.gemm_gflops else self.peak_gflops
        if precision in table:
            return table[precision]
        if precision == "int4" and "int8" in table:
            return table["int8"]
        return table.get("fp32", self.peak_gflops["fp32"])

    def level_for(self, working_set_bytes: int) -> MemoryLevel:
        """The fastest level whose capacity holds `working_set_bytes` (DRAM when none does)."""
        for level in self.memory:
            if working_set_bytes <= level.capacity_bytes:
                return level
        return self.dram

    def holds_weights(self, weight_bytes: int) -> bool:
        """Weights of `weight_bytes` stay resident in the last cache level (DRAM alone holds none)."""
        return len(self.memory) > 1 and weight_bytes <= self.memory[-2].capacity_bytes

    def efficiency_of(self, op_class: str) -> float:
        return self.efficiency.get(op_class, DEFAULT_EFFICIENCY.get(op_class, DEFAULT_EFFICIENCY["other"]))

    # --- serialization ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"format": "kiln.hardware_profile/1", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HardwareProfile:
        fmt = data.get("format", "kiln.hardware_profile/1")
        if fmt != "kiln.hardware_profile/1":
            raise ProfileError(f"Unknown hardware profile format {fmt!r}; expected 'kiln.hardware_profile/1'.")
        known = {f.name for f in fields(cls)}
        try:
            values = {k: v for k, v in data.items() if k in known}
            values["memory"] = [MemoryLevel(**level) for level in values.get("memory", [])]
            return cls(**values)
        except TypeError as exc:
            raise ProfileError(f"Hardware profile is missing fields or has wrong ones: {exc}") from exc

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        return path


def load(path: str | os.PathLike) -> HardwareProfile:
    """Read a profile written by `HardwareProfile.save` or `kiln calibrate -o`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ProfileError(f"No hardware profile at {path}; run `kiln calibrate -o {path}` to make one.") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ProfileError(f"Cannot read hardware profile {path}: {exc}. Re-run `kiln calibrate -o {path}`.") from exc
    if not isinstance(data, dict):
        raise ProfileError(f"Hardware profile {path} is not a JSON object.")
    return HardwareProfile.from_dict(data)


def default_profile_path(backend: str = "onnxruntime") -> Path:
    """Where `kiln calibrate` writes and `CostModel.default()` reads: ``$KILN_HARDWARE_PROFILE``
    or ``~/.cache/kiln/hardware_profile.json`` for ONNX Runtime; another backend's profile sits
    beside it as ``hardware_profile.<backend>.json``."""
    env = os.environ.get("KILN_HARDWARE_PROFILE")
    path = Path(env) if env else (Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kiln"
                                  / "hardware_profile.json")
    if backend == "onnxruntime":
        return path
    return path.with_name(f"{path.stem}.{backend}{path.suffix or '.json'}")


# ---------------------------------------------------------------------------------------------
# Presets: per-core figures of typical parts, scaled to the thread count asked for
# ---------------------------------------------------------------------------------------------

_KIB, _MIB = 1 << 10, 1 << 20


def _generic(name: str, threads: int, fp32_per_core: float, int8_per_core: float, bf16_factor: float,
             l2_bytes: int, description: str, flags: list[str]) -> HardwareProfile:
    """A preset at 3 GHz: per core, 2 FMA ports x lanes x 2 FLOPs; GEMM attains ~80 % of it;
    L1 32 KiB at ~150 GB/s, L2 at ~80 GB/s per core; a 32 MiB L3 at ~150 GB/s shared;
    DRAM ~20 GB/s per core up to ~80 GB/s; 2 us per kernel launch."""
    return HardwareProfile(
        name=name,
        threads=threads,
        peak_gflops={
            "fp32": fp32_per_core * threads,
            "fp16": fp32_per_core * threads,  # converted to fp32 without AVX512-FP16
            "bf16": fp32_per_core * bf16_factor * threads,
            "int8": int8_per_core * threads,
            "int4": int8_per_core * threads,
        },
        gemm_gflops={"fp32": 0.8 * fp32_per_core * threads, "int8": 0.8 * int8_per_core * threads},
        memory=[
            MemoryLevel("L1", 32 * _KIB * threads, 150.0 * threads),
            MemoryLevel("L2", l2_bytes * threads, 80.0 * threads),
            MemoryLevel("L3", 32 * _MIB, min(150.0, 60.0 * threads)),
            MemoryLevel("DRAM", 64 * (1 << 30), min(80.0, 20.0 * threads)),
        ],
        launch_overhead_us=2.0,
        source=f"preset {name}: {description}; not measured - run `kiln calibrate` for this machine",
        flags=flags,
    )


def _avx2(threads: int) -> HardwareProfile:
    # 2 x 8 lanes x 2 x 3 GHz = 96 GFLOP/s per core; int8 via vpmaddubsw: 2 x 32 x 2 x 3 / 2
    return _generic("generic-avx2", threads, 96.0, 192.0, 1.0, 512 * _KIB, "AVX2 + FMA (Haswell .. Zen 3)",
                    ["avx2", "fma"])


def _avx512(threads: int) -> HardwareProfile:
    # 2 x 16 lanes x 2 x 3 GHz = 192 GFLOP/s per core; int8 without VNNI: 3 instructions per 4-way dot
    return _generic("generic-avx512", threads, 192.0, 384.0, 1.0, 1 * _MIB, "AVX-512 (Skylake-SP class)",
                    ["avx2", "fma", "avx512f"])


def _avx512_vnni(threads: int) -> HardwareProfile:
    # vpdpbusd: 64 multiply-adds per instruction, 2 ports: 2 x 64 x 2 x 3 GHz = 768 GOP/s per core
    return _generic("generic-avx512-vnni", threads, 192.0, 768.0, 2.0, 1 * _MIB,
                    "AVX-512 + VNNI (Cascade Lake, Ice Lake, Sapphire Rapids, Zen 4)",
                    ["avx2", "fma", "avx512f", "avx512_vnni"])


#: Preset name -> factory taking the thread count.
PRESETS = {"generic-avx2": _avx2, "generic-avx512": _avx512, "generic-avx512-vnni": _avx512_vnni}


def preset(name: str, threads: int = 1) -> HardwareProfile:
    """A preset profile (`PRESETS`) for `threads` threads."""
    if name not in PRESETS:
        raise ProfileError(f"Unknown hardware preset {name!r}; choose one of {sorted(PRESETS)}.")
    return PRESETS[name](threads)


def preset_for_this_cpu(threads: int) -> HardwareProfile:
    """The preset matching this CPU's flags (AVX-512 + VNNI, AVX-512, else AVX2)."""
    from kiln.cost_model.machine import cpu_flags

    flags = cpu_flags()
    if "avx512f" in flags and "avx512_vnni" in flags:
        return preset("generic-avx512-vnni", threads)
    if "avx512f" in flags:
        return preset("generic-avx512", threads)
    return preset("generic-avx2", threads)
