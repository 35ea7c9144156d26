"""benchmarks/cost_model.py: profiles of interleaved passes pool into one sample per kernel."""

from __future__ import annotations

import pytest

from benchmarks.cost_model import _model_data, _Priced
from kiln.backends.timing import CpuTimes
from kiln.cost_model.measure.profiling import KernelGroup, MeasuredKernel, ModelProfile
from kiln.cost_model.roofline import Estimate


def _estimate(op: str) -> Estimate:
    return Estimate(op_class="gemm", precision="fp32", flops=10**6, activation_bytes=4096, weight_bytes=0,
                    memory_level="L2", weight_level="", compute_ms=0.01, memory_ms=0.001, launch_ms=0.0,
                    efficiency=1.0, ms=0.01, known=True, op=op)


def _profile(gemm_us: list[float], add_us: list[float], wall_ms: float) -> ModelProfile:
    kernels = [MeasuredKernel("gemm_k", "Gemm", ("gemm",), list(gemm_us)),
               MeasuredKernel("add_k", "Add", ("add",), list(add_us)),
               MeasuredKernel("inner_k", "Add", ("inner",), [1.0] * len(add_us), parent="gemm_k"),
               MeasuredKernel("ort_only", "MemcpyFromHost", (), [3.0] * len(add_us))]
    groups = [KernelGroup(("gemm_k",), ("gemm",), list(gemm_us))]
    return ModelProfile(kernels=kernels, groups=groups, model_median_ms=wall_ms, runs=len(gemm_us), unmapped={},
                        kernel_sum_ms=wall_ms * 0.9)


def test_passes_pool_runs_per_kernel_and_take_the_median_wall_time():
    priced = _Priced("m", model=None, inputs={}, estimates={"gemm_k": _estimate("Gemm"), "add_k": _estimate("Add")},
                     profiles=[_profile([100, 100, 100], [5, 5, 5], 1.0),
                               _profile([100, 300, 300], [6, 6, 6], 3.0),  # disturbed passes
                               _profile([100, 300, 300], [7, 7, 7], 2.0)],
                     cpu=CpuTimes(machine_busy_s=1.0, own_s=0.75))
    data = _model_data(priced)
    by_op = {s.op: s.measured_ms for s in data.samples}
    # medians over all nine runs (five at 100 us), not the median of the passes' medians (300 us)
    assert by_op == {"Gemm": pytest.approx(0.1), "Add": pytest.approx(0.006)}
    assert data.measured_model_ms == 2.0 and data.kernel_sum_ms == pytest.approx(1.8)
    assert data.unmatched == ["ort_only"]  # profiled, but not a kernel of the priced graph
    assert data.kernels == 2 and data.foreign_cpu_pct == pytest.approx(25.0)
