"""Machine facts and measured peaks for roofline bounds.

    python -m benchmarks.roofline                      # machine facts + cached (or fresh) peaks
    python -m benchmarks.roofline --recalibrate        # measure again (under a minute)
    python -m benchmarks.roofline --quick              # smaller micro-benchmarks (a few seconds)
    python -m benchmarks.roofline --model out/bert-base.onnx   # + FLOPs, bytes and roofline bound

Peaks (all with `threads` threads; each the best of several interleaved rounds, medians kept in
``MachinePeaks.details``; see `calibrate`):

- ``fp32_gflops_fma``: the instruction peak. Measured by register-resident loops of independent
  AVX-512 and AVX2 FMAs compiled with the system C compiler (the faster one counts: a CPU with
  256-bit FMA units, such as Zen 4, runs both at the same FLOP rate; Zen 5 runs AVX-512 twice as
  fast); when no compiler is available it is *derived* as FMA units x fp32 lanes x 2 FLOPs x
  ``cpu MHz`` x threads, and ``fp32_fma_method`` says which. ONNX Runtime cannot measure it.
- ``fp32_gflops_gemm``: the attainable GEMM peak: the best of several fp32 MatMul shapes run
  through ONNX Runtime (MLAS), weights as initializers (prepacked, as in a real model).
- ``int8_gops``: the attainable integer GEMM peak through ONNX Runtime ``MatMulInteger``
  (uint8 x int8 -> int32, the kernel `quantize_dynamic` models use). ``int8_gops_vnni`` is the
  instruction peak of a VNNI ``vpdpbusd`` loop (64 multiply-adds = 128 ops per instruction).
- ``dram_gbps``: a large numpy copy split over `threads` threads (the copy releases the GIL),
  counted as bytes read + bytes written per second (the STREAM "copy" convention).

Nothing here asserts a speed: these numbers feed `roofline_ms` and reports.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from benchmarks.base import CACHE_DIR, THREADS
from kiln.backends.timing import proc_stat
from kiln.cost_model.machine import cpu_facts
from kiln.cost_model.measure import microbench as mb

logger = logging.getLogger(__name__)

#: Distributions whose versions `machine_info` reports ("not installed" when missing).
PACKAGES = (
    "torch",
    "onnx",
    "onnx-ir",
    "onnxscript",
    "onnxruntime",
    "openvino",
    "numpy",
    "transformers",
    "onnxsim",
    "onnxslim",
    "onnxoptimizer",
    "tvm",
    "kiln",
)
#: The physical limits BENCHMARKS.md lists for 2 threads (for comparison in reports).
BENCHMARKS_MD_PEAKS = {"fp32_gflops_fma": 524.0, "fp32_gflops_gemm": 406.0, "int8_gops": 2101.0, "dram_gbps": 38.0}
#: Precisions `roofline_ms` understands, and the MachinePeaks field each one reads.
PRECISIONS = {
    "fp32": "fp32_gflops_fma",
    "fp32_gemm": "fp32_gflops_gemm",
    "int8": "int8_gops_vnni",
    "int8_gemm": "int8_gops",
}
PEAKS_FILE = "peaks.json"


# ---------------------------------------------------------------------------------------------
# Machine facts
# ---------------------------------------------------------------------------------------------


def _version(distribution: str) -> str:
    names = {"tvm": ("apache-tvm", "tvm", "tlcpack", "mlc-ai")}.get(distribution, (distribution,))
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def machine_info() -> dict[str, Any]:
    """CPU model, cores, flags of interest, caches, Python and package versions."""
    return {
        **cpu_facts(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in PACKAGES},
        "kiln_commit": _kiln_commit(),
    }


def _kiln_commit() -> str:
    """The git commit (and whether the tree had changes) of the kiln checkout being measured."""

    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}{' (with uncommitted changes)' if dirty else ''}" if sha else "unknown"


# ---------------------------------------------------------------------------------------------
# Peaks
# ---------------------------------------------------------------------------------------------


@dataclass
class MachinePeaks:
    """Measured (or, where labelled, derived) peaks for `threads` threads. Units: GFLOP/s, GOP/s,
    GB/s (10^9). `seconds` is how long the calibration took."""

    fp32_gflops_fma: float
    fp32_gflops_gemm: float
    int8_gops: float
    dram_gbps: float
    threads: int
    seconds: float
    int8_gops_vnni: float = 0.0
    fp32_fma_method: str = ""  # "measured: avx512 fma loop" | "derived: ..." (see module doc)
    int8_vnni_method: str = ""
    cpu_model: str = ""
    quick: bool = False
    details: dict[str, float] = field(default_factory=dict)  # every measurement, by name

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MachinePeaks:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def roofline_ms(flops: int, bytes_: int, peaks: MachinePeaks, precision: str = "fp32") -> float:
    """The roofline lower bound in milliseconds: max(flops / compute peak, bytes / DRAM bandwidth).

    ``precision`` picks the compute ceiling: "fp32" the FMA instruction peak (the classic
    roofline, as BENCHMARKS.md's bounds use), "fp32_gemm" the attainable GEMM peak, "int8" the
    VNNI instruction peak (falls back to the integer GEMM peak when it is unknown), "int8_gemm"
    the attainable integer GEMM peak.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {sorted(PRECISIONS)}")
    peak = getattr(peaks, PRECISIONS[precision])
    if precision == "int8" and not peak:
        peak = peaks.int8_gops
    if not peak or peak <= 0 or peaks.dram_gbps <= 0:
        raise ValueError(f"MachinePeaks has no positive {PRECISIONS[precision]} / dram_gbps: {peaks}")
    compute_s = flops / (peak * 1e9)
    memory_s = bytes_ / (peaks.dram_gbps * 1e9)
    return max(compute_s, memory_s) * 1e3


# The micro-benchmarks (instruction loops, ORT GEMMs, copies, machine load) live in kiln's cost
# model, which calibrates hardware profiles with them; these peaks are the benchmark's view.


def calibrate(threads: int = THREADS, quick: bool = False) -> MachinePeaks:
    """Measure the peaks with `threads` threads (`quick`: fewer rounds of shorter loops).

    Every micro-benchmark runs once per round, in turn, for several rounds, so a burst of another
    tenant's work spreads over all of them. A peak is the *best* round (interference only slows
    a run down, so the fastest run is the closest to what the machine can do); the median of the
    rounds is kept in ``details`` beside it (``<name>_median``).
    """
    started = time.perf_counter()
    # how busy the machine is before we start: other tenants' work depresses every peak
    idle_before = proc_stat()
    time.sleep(0.2 if quick else 1.0)
    cpu_before = proc_stat()
    background_busy, _ = mb.busy_and_steal(idle_before, cpu_before)
    info = machine_info()
    flags = info["flags"]
    details: dict[str, float] = {"load_average_1min": os.getloadavg()[0], "background_busy_pct": background_busy}
    rounds, loop_seconds, gemm_seconds = (3, 0.05, 0.05) if quick else (7, 0.2, 0.3)

    benches: list[mb.Bench] = []
    loops = [name for name in ("fma512", "fma256", "vnni512") if flags.get(mb.LOOPS[name][1])]
    for name in loops:
        bench = mb.loop_bench(name, threads, loop_seconds)
        if bench is None:  # no C compiler: the instruction peaks are derived below
            break
        benches.append(bench)
    fp32_shapes = [(1024, 1024, 1024)] if quick else [(2048, 2048, 2048), (1024, 1024, 1024), (128, 768, 3072)]
    int8_shapes = [(1024, 1024, 1024)] if quick else [(2048, 2048, 2048), (128, 768, 3072)]
    benches += [mb.gemm_bench(m, k, n, threads, False, gemm_seconds) for m, k, n in fp32_shapes]
    benches += [mb.gemm_bench(m, k, n, threads, True, gemm_seconds) for m, k, n in int8_shapes]
    benches.append(mb.copy_bench(128 if quick else 512, threads))

    for _ in range(rounds):
        for bench in benches:
            bench.seconds.append(bench.once())
    best: dict[str, float] = {}
    for bench in benches:
        best[bench.name], details[f"{bench.name}_median"] = bench.rates()
        details[bench.name] = best[bench.name]

    fma, fma_method = 0.0, ""
    for name in ("fma512", "fma256"):
        if best.get(name, 0.0) > fma:
            fma, fma_method = best[name], f"measured: {mb.LOOPS[name][2]}"
    derived, derivation = mb.derived_fp32_fma_gflops(info, threads)
    details["derived_fp32_fma_gflops"] = derived
    if not fma:
        fma, fma_method = derived, derivation
    vnni = best.get("vnni512", 0.0)
    details["cpu_busy_pct"], details["cpu_steal_pct"] = mb.busy_and_steal(cpu_before, proc_stat())
    return MachinePeaks(
        fp32_gflops_fma=fma,
        fp32_gflops_gemm=max(v for k, v in best.items() if k.startswith("ort_matmul_fp32")),
        int8_gops=max(v for k, v in best.items() if k.startswith("ort_matmulinteger")),
        dram_gbps=next(v for k, v in best.items() if k.startswith("numpy_copy")),
        threads=threads,
        seconds=time.perf_counter() - started,
        int8_gops_vnni=vnni,
        fp32_fma_method=fma_method,
        int8_vnni_method=f"measured: {mb.LOOPS['vnni512'][2]}"
        if vnni
        else "not measured (no avx512_vnni or no C compiler)",
        cpu_model=info["cpu_model"],
        quick=quick,
        details=details,
    )


def _cache_key(threads: int) -> str:
    info = machine_info()
    return f"{info['cpu_model']} (family {info['cpu_family']} model {info['cpu_model_number']}) x{threads} threads"


def load_or_calibrate(
    threads: int = THREADS, quick: bool = False, cache_dir: str | os.PathLike = CACHE_DIR
) -> MachinePeaks:
    """Peaks cached in ``cache_dir/peaks.json`` under the CPU model and thread count, else a fresh
    calibration (written back). A cached quick calibration does not satisfy a full request."""
    path = Path(cache_dir) / PEAKS_FILE
    key = _cache_key(threads)
    cache: dict[str, Any] = {}
    if path.exists():
        try:
            cache = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning("ignoring unreadable peaks cache %s (%s)", path, exc)
    entry = cache.get(key)
    if entry is not None and (quick or not entry.get("quick", False)):
        return MachinePeaks.from_dict(entry)
    peaks = calibrate(threads, quick)
    _store(peaks, cache_dir, cache)
    return peaks


def _store(peaks: MachinePeaks, cache_dir: str | os.PathLike, cache: dict[str, Any] | None = None) -> None:
    """Write `peaks` into ``cache_dir/peaks.json`` under this machine's key."""
    path = Path(cache_dir) / PEAKS_FILE
    if cache is None:
        try:
            cache = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, json.JSONDecodeError):
            cache = {}
    cache[_cache_key(peaks.threads)] = {**asdict(peaks), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cache, indent=2, sort_keys=True))


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _report_model(path: Path, peaks: MachinePeaks) -> dict[str, Any]:
    import onnx_ir as ir

    from kiln.cost_model.analytical import model_cost

    started = time.perf_counter()
    model = ir.load(path)
    cost = model_cost(model)
    weights = sum(int(v.const_value.nbytes) for v in model.graph.initializers.values() if v.const_value is not None)
    return {
        "model": str(path),
        "gflops": cost.flops / 1e9,
        "gflops_by_precision": {k: v / 1e9 for k, v in cost.flops_by_precision.items()},
        "bytes_moved_mb": cost.bytes / 1e6,
        "weight_mb": weights / 1e6,
        "unknown_ops": cost.unknown_ops,
        "missing_shapes": cost.missing_shapes,
        "top_ops_gflops": {k: v / 1e9 for k, v in list(cost.flops_by_op().items())[:6]},
        "roofline_ms": {
            "fp32 (FMA peak, per-node bytes)": roofline_ms(cost.flops, cost.bytes, peaks, "fp32"),
            "fp32 (FMA peak, weights once)": roofline_ms(cost.flops, weights, peaks, "fp32"),
            "fp32_gemm (attainable GEMM)": roofline_ms(cost.flops, cost.bytes, peaks, "fp32_gemm"),
            "int8 (VNNI peak, all weights as int8, read once)": roofline_ms(cost.flops, weights // 4, peaks, "int8"),
        },
        "cost_seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--quick", action="store_true", help="smaller micro-benchmarks")
    parser.add_argument("--recalibrate", action="store_true", help="ignore the cache and measure again")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument("--model", type=Path, action="append", default=[], help="ONNX model to price")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    info = machine_info()
    if args.recalibrate:
        peaks = calibrate(args.threads, args.quick)
        _store(peaks, args.cache_dir)  # later runs reuse it
    else:
        peaks = load_or_calibrate(args.threads, args.quick, args.cache_dir)
    comparison = {
        name: {"measured": getattr(peaks, name), "BENCHMARKS.md": ref, "ratio": getattr(peaks, name) / ref}
        for name, ref in BENCHMARKS_MD_PEAKS.items()
    }
    if peaks.int8_gops_vnni:
        comparison["int8_gops_vnni"] = {
            "measured": peaks.int8_gops_vnni,
            "BENCHMARKS.md": BENCHMARKS_MD_PEAKS["int8_gops"],
            "ratio": peaks.int8_gops_vnni / BENCHMARKS_MD_PEAKS["int8_gops"],
        }
    out: dict[str, Any] = {"machine": info, "peaks": asdict(peaks), "vs_benchmarks_md": comparison}
    out["models"] = [_report_model(path, peaks) for path in args.model]
    json.dump(out, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
