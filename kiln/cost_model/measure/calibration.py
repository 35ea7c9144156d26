"""Measure this machine into a `HardwareProfile` (`kiln calibrate`), in well under a minute.

What is measured (all with `threads` threads, see `kiln.cost_model.measure.microbench`):

- fp32 peak: register-resident AVX-512 / AVX2 FMA loops (the faster counts; derived from the
  clock and flags when no C compiler is available); int8 peak: an AVX-512 VNNI loop where the
  CPU has it, else ONNX Runtime's integer GEMM rate.
- attainable GEMM rates through the backend (ONNX Runtime, or OpenVINO with ``backend=
  "openvino"``): fp32 MatMul, uint8 x int8 MatMulInteger and QLinearMatMul (ONNX Runtime only:
  OpenVINO runs int8 from NNCF's quantized form, not these ops), at a few transformer-sized
  shapes (best shape counts);
- a 3x3 Conv (ResNet stage shape) -> the "conv" efficiency; an element-wise Add the size of the
  L2 cache -> the "elementwise" efficiency; the GEMM rate over the FMA peak -> the "gemm" one;
- copy bandwidth at working sets that land in each cache level the OS reports, and in DRAM;
- per-kernel launch overhead: a chain of 64 one-element kernels against one.

The instruction peaks and the copy bandwidths are the machine's; the GEMM rates, efficiencies and
launch overhead are the backend's, and the profile records which backend (`HardwareProfile.backend`).

Every benchmark runs once per round, in turn, for several rounds, so a burst of other work on
a shared machine spreads over all of them; a figure is the best round (interference only slows
a run down) and the median is kept in ``details`` as ``<name>_median``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from kiln.backends.timing import proc_stat
from kiln.cost_model.hardware import DEFAULT_EFFICIENCY, HardwareProfile, MemoryLevel, ProfileError, preset_for_this_cpu
from kiln.cost_model.machine import caches, cpu_facts
from kiln.cost_model.measure import microbench as mb

logger = logging.getLogger(__name__)

__all__ = ["calibrate"]

#: Called as ``progress(step, done, total)`` while calibrating (the CLI draws a progress bar).
Progress = Callable[[str, int, int], None]

_DRAM_WORKING_SET = 256 << 20


def _memory_sizes(threads: int) -> list[tuple[str, int, int]]:
    """(level name, capacity for `threads` threads, working set to measure it with)."""
    levels: list[tuple[str, int, int]] = []
    for cache in caches():
        # a private cache (shared_by 1) serves each thread; a shared one is split among them
        capacity = cache.size_bytes * (threads if cache.shared_by <= 1 else 1)
        levels.append((f"L{cache.level}", capacity, capacity // 2))
    if not levels:  # no sysfs: take the preset's hierarchy
        levels = [(m.name, m.capacity_bytes, m.capacity_bytes // 2) for m in preset_for_this_cpu(threads).memory[:-1]]
    return levels


def calibrate(threads: int = 2, quick: bool = False, progress: Progress | None = None,
              backend: str = "onnxruntime") -> HardwareProfile:
    """Measure a `HardwareProfile` for `threads` threads on `backend` ("onnxruntime" or
    "openvino"; `quick`: shorter micro-benchmarks)."""
    if backend not in ("onnxruntime", "openvino"):
        raise ProfileError(f"kiln calibrate measures backend 'onnxruntime' or 'openvino', not {backend!r}.")
    started = time.perf_counter()
    facts = cpu_facts()
    flags = facts["flags"]
    idle_before = proc_stat()
    time.sleep(0.2 if quick else 0.5)
    cpu_before = proc_stat()
    background_busy, _ = mb.busy_and_steal(idle_before, cpu_before)
    details: dict[str, float] = {"load_average_1min": os.getloadavg()[0], "background_busy_pct": background_busy}
    rounds, loop_s, gemm_s = (2, 0.03, 0.03) if quick else (5, 0.15, 0.2)

    steps: list[tuple[str, Callable[[], mb.Bench | None]]] = []
    for name in ("fma512", "fma256", "vnni512"):
        if flags.get(mb.LOOPS[name][1]):
            steps.append((name, lambda name=name: mb.loop_bench(name, threads, loop_s)))
    fp32_shapes = [(512, 768, 768)] if quick else [(1024, 1024, 1024), (128, 768, 3072), (512, 768, 768)]
    int8_shapes = [(512, 768, 768)] if quick else [(1024, 1024, 1024), (128, 768, 3072)]
    for m, k, n in fp32_shapes:
        steps.append((f"fp32 GEMM {m}x{k}x{n}",
                      lambda m=m, k=k, n=n: mb.gemm_bench(m, k, n, threads, False, gemm_s, backend)))
    if backend == "onnxruntime":
        for m, k, n in int8_shapes:
            steps.append((f"int8 GEMM {m}x{k}x{n}",
                          lambda m=m, k=k, n=n: mb.gemm_bench(m, k, n, threads, True, gemm_s)))
        steps.append(("QLinearMatMul", lambda: mb.gemm_bench(512, 768, 768, threads, "qlinear", gemm_s)))
    steps.append(("conv 3x3", lambda: mb.conv_bench(1, 64, 56, 64, 3, threads, gemm_s, backend)))
    levels = _memory_sizes(threads)
    for name, _, working_set in levels:
        steps.append((f"copy {name}", lambda ws=working_set: mb.cache_copy_bench(ws, threads, loop_s)))
    steps.append(("copy DRAM", lambda: mb.cache_copy_bench(_DRAM_WORKING_SET, threads, loop_s)
                  or mb.copy_bench(_DRAM_WORKING_SET >> 20, threads)))
    l2_bytes = next((cap for name, cap, _ in levels if name == "L2"), 1 << 20)
    steps.append(("element-wise Add",
                  lambda: mb.elementwise_bench(max(1024, l2_bytes // 3 // 4), threads, gemm_s, backend)))
    total = len(steps) + rounds + 1

    benches: dict[str, mb.Bench] = {}
    for done, (label, build) in enumerate(steps):
        if progress:
            progress(f"setting up {label}", done, total)
        bench = build()
        if bench is not None:
            benches[label] = bench
    for r in range(rounds):
        if progress:
            progress(f"round {r + 1} of {rounds}", len(steps) + r, total)
        for bench in benches.values():
            bench.seconds.append(bench.once())
    best: dict[str, float] = {}
    for label, bench in benches.items():
        best[label], details[f"{bench.name}_median"] = bench.rates()
        details[bench.name] = best[label]
    if progress:
        progress("launch overhead", len(steps) + rounds, total)
    launch_us = mb.launch_overhead_us(threads, rounds=3 if quick else 7, backend=backend)
    details["launch_overhead_us"] = launch_us

    fallback = preset_for_this_cpu(threads)
    fma = max(best.get("fma512", 0.0), best.get("fma256", 0.0))
    if not fma:
        fma, derivation = mb.derived_fp32_fma_gflops(facts, threads)
        details["fp32_fma_derived"] = fma
        logger.info("fp32 peak derived, not measured: %s", derivation)
    gemm_fp32 = max(v for k, v in best.items() if k.startswith("fp32 GEMM"))
    # the instruction loops can lose a round to a noisy neighbour; a GEMM cannot beat the peak
    fma = max(fma, gemm_fp32)
    int8_gemms = [v for k, v in best.items() if k.startswith("int8 GEMM") or k == "QLinearMatMul"]
    if int8_gemms:
        gemm_int8 = max(int8_gemms)
    else:  # no integer GEMM through this backend: the int8 peak (the VNNI loop, else the preset's
        # int8 : fp32 ratio of the FMA peak) at the share of its peak the fp32 GEMM attains
        int8_peak = best.get("vnni512") or fma * fallback.peak("int8") / fallback.peak("fp32")
        gemm_int8 = int8_peak * min(1.0, gemm_fp32 / fma)
    int8 = max(best.get("vnni512", 0.0), gemm_int8)
    fp16 = fma * (2.0 if flags.get("avx512_fp16") else 1.0)
    bf16 = fma * (2.0 if flags.get("avx512_bf16") or flags.get("amx") else 1.0)

    memory = [MemoryLevel(name, capacity, best[f"copy {name}"]) for name, capacity, _ in levels
              if f"copy {name}" in best]
    dram_capacity = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 1 << 36
    memory.append(MemoryLevel("DRAM", int(dram_capacity), best["copy DRAM"]))
    # a smaller working set must not look slower than a larger one (noise): make bandwidth monotone
    for i in range(len(memory) - 2, -1, -1):
        if memory[i].bandwidth_gbps < memory[i + 1].bandwidth_gbps:
            memory[i] = MemoryLevel(memory[i].name, memory[i].capacity_bytes, memory[i + 1].bandwidth_gbps)

    efficiency = dict(DEFAULT_EFFICIENCY)
    efficiency["gemm"] = min(1.0, gemm_fp32 / fma)
    efficiency["conv"] = min(1.0, best["conv 3x3"] / fma)
    l2_bandwidth = next((m.bandwidth_gbps for m in memory if m.name == "L2"), memory[0].bandwidth_gbps)
    efficiency["elementwise"] = min(1.0, best["element-wise Add"] / l2_bandwidth)
    details["background_busy_pct_during"], details["cpu_steal_pct"] = mb.busy_and_steal(cpu_before, proc_stat())
    profile = HardwareProfile(
        name=f"calibrated {facts['cpu_model']} x{threads}" + ("" if backend == "onnxruntime" else f" ({backend})"),
        threads=threads,
        peak_gflops={"fp32": fma, "fp16": fp16, "bf16": bf16, "int8": int8, "int4": int8},
        gemm_gflops={"fp32": gemm_fp32, "int8": gemm_int8},
        memory=memory,
        launch_overhead_us=launch_us or fallback.launch_overhead_us,
        efficiency=efficiency,
        source=f"calibrated on {facts['cpu_model']} at {time.strftime('%Y-%m-%dT%H:%M:%S')}"
        f"{' (quick)' if quick else ''} in {time.perf_counter() - started:.1f} s",
        cpu_model=facts["cpu_model"],
        flags=sorted(name for name, present in flags.items() if present),
        details=details,
        backend=backend,
    )
    if progress:
        progress("done", total, total)
    return profile
