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
import ctypes
import importlib.metadata
import itertools
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.base import CACHE_DIR, THREADS

logger = logging.getLogger(__name__)

#: Distributions whose versions `machine_info` reports ("not installed" when missing).
PACKAGES = (
    "torch",
    "onnx",
    "onnx-ir",
    "onnxscript",
    "onnxruntime",
    "numpy",
    "transformers",
    "onnxsim",
    "onnxslim",
    "onnxoptimizer",
    "tvm",
    "kiln",
)
#: CPU flags that matter for kernels (amx: any amx_* flag).
FLAGS_OF_INTEREST = ("fma", "avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx")
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


def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo (empty off Linux)."""
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if not line.strip():
            if info:
                break
            continue
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def _version(distribution: str) -> str:
    names = {"tvm": ("apache-tvm", "tvm", "tlcpack", "mlc-ai")}.get(distribution, (distribution,))
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def machine_info() -> dict[str, Any]:
    """CPU model, cores, flags of interest, Python and package versions."""
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    mhz = cpu.get("cpu MHz")
    return {
        "cpu_model": cpu.get("model name", platform.processor() or "unknown"),
        "cpu_vendor": cpu.get("vendor_id", ""),
        "cpu_family": int(cpu["cpu family"]) if cpu.get("cpu family", "").isdigit() else None,
        "cpu_model_number": int(cpu["model"]) if cpu.get("model", "").isdigit() else None,
        "cpu_mhz": float(mhz) if mhz else None,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "hypervisor": "hypervisor" in flags,
        "flags": {
            name: (any(f.startswith("amx") for f in flags) if name == "amx" else name in flags)
            for name in FLAGS_OF_INTEREST
        },
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in PACKAGES},
        "kiln_commit": _kiln_commit(),
    }


def _kiln_commit() -> str:
    """The git commit (and whether the tree had changes) of the kiln checkout being measured."""
    import subprocess

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


# --- raw instruction loops (C, compiled on the fly) -------------------------------------------

_LOOPS_C = r"""
#include <immintrin.h>
#define CHAINS 16

__attribute__((target("avx512f")))
double fma512(long iters, float seed) {
    __m512 a = _mm512_set1_ps(seed), b = _mm512_set1_ps(0.999999f);
    __m512 c[CHAINS];
    for (int j = 0; j < CHAINS; j++) c[j] = _mm512_set1_ps((float)j);
    for (long i = 0; i < iters; i++) {
        #pragma GCC unroll 16
        for (int j = 0; j < CHAINS; j++) c[j] = _mm512_fmadd_ps(a, b, c[j]);
    }
    __m512 s = c[0];
    for (int j = 1; j < CHAINS; j++) s = _mm512_add_ps(s, c[j]);
    return (double)_mm512_reduce_add_ps(s);
}

/* AVX2 has 16 ymm registers: 12 accumulators + 2 operands stay in registers. */
#define CHAINS256 12
__attribute__((target("avx2,fma")))
double fma256(long iters, float seed) {
    __m256 a = _mm256_set1_ps(seed), b = _mm256_set1_ps(0.999999f);
    __m256 c[CHAINS256];
    for (int j = 0; j < CHAINS256; j++) c[j] = _mm256_set1_ps((float)j);
    for (long i = 0; i < iters; i++) {
        #pragma GCC unroll 12
        for (int j = 0; j < CHAINS256; j++) c[j] = _mm256_fmadd_ps(a, b, c[j]);
    }
    float out[8];
    __m256 s = c[0];
    for (int j = 1; j < CHAINS256; j++) s = _mm256_add_ps(s, c[j]);
    _mm256_storeu_ps(out, s);
    return (double)(out[0] + out[1] + out[2] + out[3] + out[4] + out[5] + out[6] + out[7]);
}

__attribute__((target("avx512f,avx512vnni")))
double vnni512(long iters, int seed) {
    __m512i a = _mm512_set1_epi8((char)(seed & 0x7f)), b = _mm512_set1_epi8(1);
    __m512i c[CHAINS];
    for (int j = 0; j < CHAINS; j++) c[j] = _mm512_set1_epi32(j);
    for (long i = 0; i < iters; i++) {
        #pragma GCC unroll 16
        for (int j = 0; j < CHAINS; j++) c[j] = _mm512_dpbusd_epi32(c[j], a, b);
    }
    __m512i s = c[0];
    for (int j = 1; j < CHAINS; j++) s = _mm512_add_epi32(s, c[j]);
    return (double)_mm512_reduce_add_epi32(s);
}
"""
# (FLOPs or ops per iteration = chains x lanes x 2, flag it needs, label)
_LOOPS = {
    "fma512": (16 * 16 * 2, "avx512f", "avx512 fma loop"),
    "fma256": (12 * 8 * 2, "avx2", "avx2 fma loop"),
    "vnni512": (16 * 64 * 2, "avx512_vnni", "avx512 vnni vpdpbusd loop"),
}
_compiled: ctypes.CDLL | None = None
_compile_failed = False


def _compile_loops() -> ctypes.CDLL | None:
    """Compile the instruction loops once per process; None when no C compiler works."""
    global _compiled, _compile_failed
    if _compiled is not None or _compile_failed:
        return _compiled
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        _compile_failed = True
        return None
    with tempfile.TemporaryDirectory() as tmp:
        source, library = Path(tmp, "loops.c"), Path(tmp, "loops.so")
        source.write_text(_LOOPS_C)
        try:
            subprocess.run(
                [compiler, "-O2", "-shared", "-fPIC", "-o", str(library), str(source)],
                check=True,
                capture_output=True,
                timeout=60,
            )
            lib = ctypes.CDLL(str(library))
        except (OSError, subprocess.SubprocessError) as exc:
            logger.warning("could not compile the FMA/VNNI loops (%s); peaks will be derived", exc)
            _compile_failed = True
            return None
    lib.fma512.argtypes = lib.fma256.argtypes = [ctypes.c_long, ctypes.c_float]
    lib.vnni512.argtypes = [ctypes.c_long, ctypes.c_int]
    for name in _LOOPS:
        getattr(lib, name).restype = ctypes.c_double
    _compiled = lib
    return lib


def _in_threads(fn: Callable[[], Any], threads: int) -> float:
    """Run `fn` in `threads` threads started together; wall seconds until the last finishes."""
    barrier = threading.Barrier(threads + 1)
    done: list[float] = []

    def work() -> None:
        barrier.wait()
        fn()
        done.append(time.perf_counter())

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    return max(done) - start


class _Bench:
    """One micro-benchmark: `once()` runs it and returns wall seconds; `ops` is the work per run
    (FLOPs, integer ops or bytes). Rates are giga-units per second."""

    def __init__(self, name: str, ops: float, once: Callable[[], float]) -> None:
        self.name, self.ops, self.once = name, ops, once
        self.seconds: list[float] = []

    def rates(self) -> tuple[float, float]:
        """(best, median) rate over the runs."""
        return self.ops / min(self.seconds) / 1e9, self.ops / statistics.median(self.seconds) / 1e9


def _loop_bench(name: str, threads: int, seconds: float) -> _Bench | None:
    """An instruction loop in `threads` threads, sized so one run takes about `seconds`."""
    lib = _compile_loops()
    if lib is None:
        return None
    per_iteration, _, _ = _LOOPS[name]
    fn = getattr(lib, name)
    probe_iters = 200_000
    probe = _in_threads(lambda: fn(probe_iters, 1), 1)
    iters = max(probe_iters, int(probe_iters * seconds / max(probe, 1e-6)))
    _in_threads(lambda: fn(iters // 4, 1), threads)  # warm up (clocks, thread start)
    return _Bench(name, threads * iters * per_iteration, lambda: _in_threads(lambda: fn(iters, 1), threads))


def derived_fp32_fma_gflops(info: dict[str, Any], threads: int) -> tuple[float, str]:
    """Theoretical fp32 FMA peak from the CPU flags and the clock /proc/cpuinfo reports:
    2 FMA units x lanes (16 with AVX-512, 8 with AVX2, 4 otherwise) x 2 FLOPs x GHz x threads.
    AMD family 25 (Zen 3/4) executes 512-bit FMAs on 256-bit units: 8 lanes. The reported clock
    is often the nominal one (turbo runs faster), so this is a rough figure."""
    flags = info.get("flags", {})
    lanes = 16 if flags.get("avx512f") else 8 if flags.get("avx2") else 4
    if info.get("cpu_vendor") == "AuthenticAMD" and info.get("cpu_family") == 25:
        lanes = min(lanes, 8)
    ghz = (info.get("cpu_mhz") or 2000.0) / 1000.0
    peak = 2 * lanes * 2 * ghz * threads
    return peak, f"derived: 2 FMA units x {lanes} fp32 lanes x 2 x {ghz:.2f} GHz x {threads} threads"


# --- ONNX Runtime GEMMs -----------------------------------------------------------------------


def _session(proto: Any, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _matmul_proto(m: int, k: int, n: int, integer: bool) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if integer:
        weight = rng.integers(-128, 128, size=(k, n), dtype=np.int8)
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        weight = rng.standard_normal((k, n), dtype=np.float32)
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        a_type = y_type = TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        "gemm",
        [helper.make_tensor_value_info("a", a_type, [m, k])],
        [helper.make_tensor_value_info("y", y_type, [m, n])],
        initializer=[numpy_helper.from_array(weight, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # ORT accepts at most 13; onnx 1.23 stamps 14 (BENCHMARKS.md pitfall)
    return model


def _gemm_bench(m: int, k: int, n: int, threads: int, integer: bool, seconds: float) -> _Bench:
    """An (m x k) @ (k x n) product through ORT; one run is as many calls as fill `seconds`
    (at least one) and its time is the per-call time."""
    session = _session(_matmul_proto(m, k, n, integer), threads)
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, size=(m, k), dtype=np.uint8) if integer else rng.standard_normal((m, k), np.float32)
    feeds = {"a": a}
    start = time.perf_counter()
    warmups = 0
    while warmups < 2 or (warmups < 10 and time.perf_counter() - start < 0.1):
        session.run(None, feeds)
        warmups += 1
    calls = max(1, int(seconds / ((time.perf_counter() - start) / warmups)))

    def once() -> float:
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - t0)
        return min(times)

    kind = "matmulinteger_u8s8" if integer else "matmul_fp32"
    return _Bench(f"ort_{kind}_{m}x{k}x{n}", 2 * m * k * n, once)


# --- DRAM ------------------------------------------------------------------------------------


def _copy_bench(megabytes: int, threads: int) -> _Bench:
    """A numpy copy of `megabytes` MB split over `threads` threads; bytes = read + written."""
    n = megabytes * (1 << 20) // 4
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    dst.fill(0.0)  # fault the pages in before timing
    bounds = np.linspace(0, n, threads + 1).astype(int)
    chunks = [(src[lo:hi], dst[lo:hi]) for lo, hi in itertools.pairwise(bounds)]

    def once() -> float:
        barrier = threading.Barrier(threads + 1)

        def work(s: np.ndarray, d: np.ndarray) -> None:
            barrier.wait()
            np.copyto(d, s)

        workers = [threading.Thread(target=work, args=chunk) for chunk in chunks]
        for worker in workers:
            worker.start()
        barrier.wait()
        t0 = time.perf_counter()
        for worker in workers:
            worker.join()
        return time.perf_counter() - t0

    once()  # warm up
    return _Bench(f"numpy_copy_{megabytes}MB", 2 * src.nbytes, once)


# --- calibration -----------------------------------------------------------------------------


def _cpu_times() -> list[int] | None:
    """The aggregate line of /proc/stat: user nice system idle iowait irq softirq steal ..."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def _busy_and_steal(before: list[int] | None, after: list[int] | None) -> tuple[float, float]:
    """Percent of CPU time that was busy and that the hypervisor stole between two readings:
    a noisy neighbour or an oversubscribed host shows here, and explains low peaks."""
    if not before or not after or len(before) < 8:
        return math.nan, math.nan
    delta = [a - b for a, b in zip(after, before)]
    total = sum(delta[:8]) or 1
    idle = delta[3] + delta[4]
    return 100.0 * (total - idle) / total, 100.0 * delta[7] / total


def calibrate(threads: int = THREADS, quick: bool = False) -> MachinePeaks:
    """Measure the peaks with `threads` threads: about 20 s in full, 3-4 s quick.

    Every micro-benchmark runs once per round, in turn, for several rounds, so a burst of another
    tenant's work spreads over all of them. A peak is the *best* round (interference only slows
    a run down, so the fastest run is the closest to what the machine can do); the median of the
    rounds is kept in ``details`` beside it (``<name>_median``).
    """
    started = time.perf_counter()
    # how busy the machine is before we start: other tenants' work depresses every peak
    idle_before = _cpu_times()
    time.sleep(0.2 if quick else 1.0)
    cpu_before = _cpu_times()
    background_busy, _ = _busy_and_steal(idle_before, cpu_before)
    info = machine_info()
    flags = info["flags"]
    details: dict[str, float] = {"load_average_1min": os.getloadavg()[0], "background_busy_pct": background_busy}
    rounds, loop_seconds, gemm_seconds = (3, 0.05, 0.05) if quick else (7, 0.2, 0.3)

    benches: list[_Bench] = []
    loops = [name for name in ("fma512", "fma256", "vnni512") if flags.get(_LOOPS[name][1])]
    for name in loops:
        bench = _loop_bench(name, threads, loop_seconds)
        if bench is None:  # no C compiler: the instruction peaks are derived below
            break
        benches.append(bench)
    fp32_shapes = [(1024, 1024, 1024)] if quick else [(2048, 2048, 2048), (1024, 1024, 1024), (128, 768, 3072)]
    int8_shapes = [(1024, 1024, 1024)] if quick else [(2048, 2048, 2048), (128, 768, 3072)]
    benches += [_gemm_bench(m, k, n, threads, False, gemm_seconds) for m, k, n in fp32_shapes]
    benches += [_gemm_bench(m, k, n, threads, True, gemm_seconds) for m, k, n in int8_shapes]
    benches.append(_copy_bench(128 if quick else 512, threads))

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
            fma, fma_method = best[name], f"measured: {_LOOPS[name][2]}"
    derived, derivation = derived_fp32_fma_gflops(info, threads)
    details["derived_fp32_fma_gflops"] = derived
    if not fma:
        fma, fma_method = derived, derivation
    vnni = best.get("vnni512", 0.0)
    details["cpu_busy_pct"], details["cpu_steal_pct"] = _busy_and_steal(cpu_before, _cpu_times())
    return MachinePeaks(
        fp32_gflops_fma=fma,
        fp32_gflops_gemm=max(v for k, v in best.items() if k.startswith("ort_matmul_fp32")),
        int8_gops=max(v for k, v in best.items() if k.startswith("ort_matmulinteger")),
        dram_gbps=next(v for k, v in best.items() if k.startswith("numpy_copy")),
        threads=threads,
        seconds=time.perf_counter() - started,
        int8_gops_vnni=vnni,
        fp32_fma_method=fma_method,
        int8_vnni_method=f"measured: {_LOOPS['vnni512'][2]}"
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
