"""Micro-benchmarks that measure this machine for `kiln.cost_model.measure.calibration`.

Each benchmark is a `Bench`: `once()` runs it and returns wall seconds, `ops` is the work per run
(FLOPs, integer ops or bytes), so rates are giga-units per second. The instruction-peak loops
(AVX-512 / AVX2 FMA, VNNI) and the cache-sized copy loop are C, compiled on the fly with the
system compiler (ONNX Runtime has no kernel that isolates a peak or a cache level); everything
a model really runs (GEMM, integer GEMM, conv, element-wise, launch overhead) goes through the
backend being calibrated: ONNX Runtime by default, or OpenVINO (`kiln calibrate --backend`).
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import math
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# --- raw instruction loops (C, compiled on the fly) ---------------------------------------------

LOOPS_C = r"""
#include <immintrin.h>
#include <string.h>

/* Copy n floats reps times: streams n*4 bytes in and n*4 out per repetition. */
double copy_loop(float *dst, const float *src, long n, long reps) {
    for (long r = 0; r < reps; r++) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        __asm__ volatile("" ::: "memory");
    }
    return (double)dst[n - 1];
}
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
LOOPS = {
    "fma512": (16 * 16 * 2, "avx512f", "avx512 fma loop"),
    "fma256": (12 * 8 * 2, "avx2", "avx2 fma loop"),
    "vnni512": (16 * 64 * 2, "avx512_vnni", "avx512 vnni vpdpbusd loop"),
}
_compiled: ctypes.CDLL | None = None
_compile_failed = False


def compile_loops() -> ctypes.CDLL | None:
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
        source.write_text(LOOPS_C)
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
    lib.copy_loop.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_long]
    lib.copy_loop.restype = ctypes.c_double
    for name in LOOPS:
        getattr(lib, name).restype = ctypes.c_double
    _compiled = lib
    return lib


def in_threads(fn: Callable[[], Any], threads: int) -> float:
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


class Bench:
    """One micro-benchmark: `once()` runs it and returns wall seconds; `ops` is the work per run
    (FLOPs, integer ops or bytes). Rates are giga-units per second."""

    def __init__(self, name: str, ops: float, once: Callable[[], float]) -> None:
        self.name, self.ops, self.once = name, ops, once
        self.seconds: list[float] = []

    def rates(self) -> tuple[float, float]:
        """(best, median) rate over the runs."""
        return self.ops / min(self.seconds) / 1e9, self.ops / statistics.median(self.seconds) / 1e9


def loop_bench(name: str, threads: int, seconds: float) -> Bench | None:
    """An instruction loop in `threads` threads, sized so one run takes about `seconds`."""
    lib = compile_loops()
    if lib is None:
        return None
    per_iteration, _, _ = LOOPS[name]
    fn = getattr(lib, name)
    probe_iters = 200_000
    probe = in_threads(lambda: fn(probe_iters, 1), 1)
    iters = max(probe_iters, int(probe_iters * seconds / max(probe, 1e-6)))
    in_threads(lambda: fn(iters // 4, 1), threads)  # warm up (clocks, thread start)
    return Bench(name, threads * iters * per_iteration, lambda: in_threads(lambda: fn(iters, 1), threads))


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


def ort_session(proto: Any, threads: int) -> Any:
    """A sequential CPU session with `threads` intra-op threads (ORT's default level and
    spinning), from kiln's session factory."""
    from kiln.backends.onnxruntime import create_session
    from kiln.target import Target

    return create_session(proto, Target(intra_op_threads=threads))


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any], initializers: list[Any]) -> Any:
    from onnx import helper

    graph = helper.make_graph(nodes, "microbench", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def matmul_proto(m: int, k: int, n: int, integer: bool | str) -> Any:
    """An (m x k) @ (k x n) model with the weight as an initializer. `integer`: False (fp32
    MatMul), True or "matmulinteger" (uint8 x int8 -> int32 MatMulInteger), "qlinear"
    (QLinearMatMul, uint8 x int8 -> uint8 with scales and zero points)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    kind = "matmulinteger" if integer is True else (integer or "fp32")
    inits = []
    if kind == "fp32":
        inits.append(numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "b"))
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        a_type = y_type = TensorProto.FLOAT
    elif kind == "matmulinteger":
        inits.append(numpy_helper.from_array(rng.integers(-128, 128, size=(k, n), dtype=np.int8), "b"))
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    elif kind == "qlinear":
        inits += [
            numpy_helper.from_array(rng.integers(-128, 128, size=(k, n), dtype=np.int8), "b"),
            numpy_helper.from_array(np.array(0.02, np.float32), "sa"),
            numpy_helper.from_array(np.array(128, np.uint8), "za"),
            numpy_helper.from_array(np.array(0.01, np.float32), "sb"),
            numpy_helper.from_array(np.array(0, np.int8), "zb"),
            numpy_helper.from_array(np.array(0.5, np.float32), "sy"),
            numpy_helper.from_array(np.array(128, np.uint8), "zy"),
        ]
        node = helper.make_node("QLinearMatMul", ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"], ["y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.UINT8
    else:
        raise ValueError(f"unknown matmul kind {integer!r}")
    return _model([node], [helper.make_tensor_value_info("a", a_type, [m, k])],
                  [helper.make_tensor_value_info("y", y_type, [m, n])], inits)


def conv_proto(batch: int, channels: int, size: int, out_channels: int, kernel: int) -> Any:
    """A same-padded stride-1 Conv (weights as an initializer), the shape of a ResNet stage."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((out_channels, channels, kernel, kernel), dtype=np.float32) * 0.05
    pad = kernel // 2
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[pad] * 4, kernel_shape=[kernel, kernel])
    return _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, channels, size, size])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, out_channels, size, size])],
                  [numpy_helper.from_array(weight, "w")])


def add_chain_proto(elements: int, length: int) -> Any:
    """`length` element-wise Adds in a chain over `elements` floats (y = x + c + c + ...)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Add", ["x" if i == 0 else f"t{i - 1}", "c"], [f"t{i}" if i < length - 1 else "y"])
             for i in range(length)]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [elements])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [elements])],
                  [numpy_helper.from_array(np.ones(elements, np.float32), "c")])


def _feed(proto: Any) -> dict[str, np.ndarray]:
    from onnx import TensorProto

    rng = np.random.default_rng(1)
    feeds = {}
    for value in proto.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if value.type.tensor_type.elem_type == TensorProto.UINT8:
            feeds[value.name] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        else:
            feeds[value.name] = rng.standard_normal(shape, dtype=np.float32)
    return feeds


def _runner(proto: Any, threads: int, backend: str) -> Callable[[], Any]:
    """One call of `proto` on `backend` with `threads` threads, on feeds built once."""
    feeds = _feed(proto)
    if backend == "onnxruntime":
        session = ort_session(proto, threads)
        return lambda: session.run(None, feeds)
    if backend == "openvino":
        import onnx_ir as ir

        from kiln.backends.openvino import OpenVINOExecutable
        from kiln.target import Target

        executable = OpenVINOExecutable(ir.serde.deserialize_model(proto),
                                        Target(backend="openvino", intra_op_threads=threads))
        request = executable.request
        return lambda: request.infer(feeds)
    raise ValueError(f"no micro-benchmarks for backend {backend!r}")


def model_bench(name: str, proto: Any, ops: float, threads: int, seconds: float, backend: str = "onnxruntime") -> Bench:
    """A model through `backend` (ORT by default); one run is as many calls as fill `seconds`
    (at least one) and its time is the fastest call's (interference only slows a call down)."""
    call = _runner(proto, threads, backend)
    start = time.perf_counter()
    warmups = 0
    while warmups < 2 or (warmups < 10 and time.perf_counter() - start < 0.1):
        call()
        warmups += 1
    calls = max(1, int(seconds / ((time.perf_counter() - start) / warmups)))

    def once() -> float:
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        return min(times)

    return Bench(name, ops, once)


_PREFIX = {"onnxruntime": "ort", "openvino": "ov"}


def gemm_bench(m: int, k: int, n: int, threads: int, integer: bool | str, seconds: float,
               backend: str = "onnxruntime") -> Bench:
    """An (m x k) @ (k x n) product through `backend` (see `matmul_proto` for `integer`)."""
    kind = {False: "matmul_fp32", True: "matmulinteger_u8s8", "qlinear": "qlinearmatmul_u8s8"}[integer]
    return model_bench(f"{_PREFIX[backend]}_{kind}_{m}x{k}x{n}", matmul_proto(m, k, n, integer), 2 * m * k * n, threads,
                     seconds, backend)


def conv_bench(batch: int, channels: int, size: int, out_channels: int, kernel: int, threads: int,
               seconds: float, backend: str = "onnxruntime") -> Bench:
    """A stride-1 same-padded Conv through `backend`; ops = 2 x multiply-adds."""
    flops = 2 * batch * out_channels * size * size * channels * kernel * kernel
    return model_bench(f"{_PREFIX[backend]}_conv_{channels}x{size}x{size}_k{kernel}",
                     conv_proto(batch, channels, size, out_channels, kernel), flops, threads, seconds, backend)


def elementwise_bench(elements: int, threads: int, seconds: float, backend: str = "onnxruntime") -> Bench:
    """One Add over `elements` floats through `backend`; ops = bytes moved (two reads, one write)."""
    return model_bench(f"{_PREFIX[backend]}_add_{elements * 4 // 1024}KiB", add_chain_proto(elements, 1),
                     3 * 4 * elements, threads, seconds, backend)


def softmax_chain_proto(width: int, length: int) -> Any:
    """`length` Softmax ops in a chain over a [1, width] tensor: no algebra collapses them (a
    chain of Adds or of constant MatMuls folds into fewer kernels on OpenVINO)."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Softmax", ["x" if i == 0 else f"t{i - 1}"], [f"t{i}" if i < length - 1 else "y"], axis=-1)
             for i in range(length)]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])], [])


def _executed_kernels(proto: Any, threads: int) -> int:
    """How many kernels OpenVINO runs for `proto` (it fuses and folds some of a chain)."""
    import onnx_ir as ir

    from kiln.backends.openvino.kernels import runtime_kernels
    from kiln.target import Target

    return len(runtime_kernels(ir.serde.deserialize_model(proto), _feed(proto),
                               Target(backend="openvino", intra_op_threads=threads)))


def launch_overhead_us(threads: int, length: int = 64, rounds: int = 7, backend: str = "onnxruntime") -> float:
    """Fixed cost of one kernel on `backend`: a chain of `length` tiny kernels against a single
    one, per extra kernel run, best of `rounds` (microseconds). ONNX Runtime runs a chain of
    one-element Adds (one kernel each); OpenVINO a chain of Softmax ops, divided by the kernels
    its run reports executed (it would fuse a chain of Adds into one)."""
    if backend == "onnxruntime":
        long_proto, one_proto = add_chain_proto(1, length), add_chain_proto(1, 1)
        extra = length - 1
    else:
        long_proto, one_proto = softmax_chain_proto(16, length), softmax_chain_proto(16, 1)
        extra = _executed_kernels(long_proto, threads) - _executed_kernels(one_proto, threads)
    long_chain = model_bench("chain", long_proto, 1, threads, 0.05, backend)
    one = model_bench("one", one_proto, 1, threads, 0.05, backend)
    long_s = min(long_chain.once() for _ in range(rounds))
    one_s = min(one.once() for _ in range(rounds))
    return max(0.0, (long_s - one_s) / max(extra, 1) * 1e6)


def cache_copy_bench(size_bytes: int, threads: int, seconds: float = 0.05) -> Bench | None:
    """Each of `threads` threads copies its own buffer of `size_bytes / threads` bytes (half
    source, half destination) over and over with the C copy loop, so the working set of the
    run is `size_bytes`; ops = bytes read + written. None without a C compiler."""
    lib = compile_loops()
    if lib is None:
        return None
    per_thread = max(4096, size_bytes // threads)
    n = per_thread // 8  # floats per buffer: source and destination share the working set
    buffers = [(np.ones(n, np.float32), np.zeros(n, np.float32)) for _ in range(threads)]
    probe_reps = 16
    t0 = time.perf_counter()
    lib.copy_loop(buffers[0][1].ctypes.data, buffers[0][0].ctypes.data, n, probe_reps)
    probe = time.perf_counter() - t0
    reps = max(probe_reps, int(probe_reps * seconds / max(probe, 1e-7)))

    def once() -> float:
        barrier = threading.Barrier(threads + 1)

        def work(src: np.ndarray, dst: np.ndarray) -> None:
            barrier.wait()
            lib.copy_loop(dst.ctypes.data, src.ctypes.data, n, reps)  # ctypes releases the GIL

        workers = [threading.Thread(target=work, args=pair) for pair in buffers]
        for worker in workers:
            worker.start()
        barrier.wait()
        start = time.perf_counter()
        for worker in workers:
            worker.join()
        return time.perf_counter() - start

    once()  # warm up: fault pages in, fill the cache
    label = f"{size_bytes // 1024}KiB" if size_bytes < (1 << 20) else f"{size_bytes >> 20}MiB"
    return Bench(f"copy_{label}", 2 * 4 * n * reps * threads, once)


# --- DRAM ------------------------------------------------------------------------------------


def copy_bench(megabytes: int, threads: int) -> Bench:
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
    return Bench(f"numpy_copy_{megabytes}MB", 2 * src.nbytes, once)


# --- machine load ------------------------------------------------------------------------------


def busy_and_steal(before: list[int] | None, after: list[int] | None) -> tuple[float, float]:
    """Percent of CPU time that was busy and that the hypervisor stole between two readings of
    `kiln.backends.timing.proc_stat`: a noisy neighbour or an oversubscribed host shows here,
    and explains low peaks."""
    if not before or not after or len(before) < 8:
        return math.nan, math.nan
    delta = [a - b for a, b in zip(after, before)]
    total = sum(delta[:8]) or 1
    idle = delta[3] + delta[4]
    return 100.0 * (total - idle) / total, 100.0 * delta[7] / total


