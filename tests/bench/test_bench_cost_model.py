"""benchmarks/cost_model.py: profiles of interleaved passes pool into one sample per kernel."""

from __future__ import annotations

import pytest

from benchmarks.cost_model import ModelData, _model_data, _Priced, fit_executor, typical_us
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
    # over all nine runs (five at 100 us), not the median of the passes' medians (300 us)
    assert by_op == {"Gemm": pytest.approx(0.1004), "Add": pytest.approx(0.006)}
    assert data.measured_model_ms == 2.0 and data.kernel_sum_ms == pytest.approx(1.8)
    assert data.unmatched == ["ort_only"]  # profiled, but not a kernel of the priced graph
    assert data.kernels == 2 and data.foreign_cpu_pct == pytest.approx(25.0)


def _whole(name: str, kernel_ms: list[float], wall_ms: float) -> ModelData:
    from kiln.cost_model.learned import Sample

    samples = [Sample(op="Add", op_class="elementwise", precision="fp32", group_size=1, flops=0, activation_bytes=0,
                      weight_bytes=0, compute_ms=0.0, memory_ms=0.0, measured_ms=ms, model=name) for ms in kernel_ms]
    return ModelData(name, samples, wall_ms, sum(kernel_ms), len(samples))


def test_the_executor_learns_the_per_run_cost_from_the_kernel_corpus():
    # wall = kernels - 4 us per kernel + 50 us per run, on big models and one-kernel models alike
    truth = lambda ks: sum(ks) - 0.004 * len(ks) + 0.05  # noqa: E731
    # models of big and of tiny kernels: only a per-kernel term explains both
    models = [_whole(f"m{i}", [ms] * count, 0.0) for i, (ms, count) in enumerate([(0.5, 60), (0.2, 100), (0.02, 200),
                                                                                 (0.01, 150)])]
    corpus = [_whole(f"c{i}", [0.01 * (i + 1)], 0.0) for i in range(30)]
    for d in (*models, *corpus):
        d.measured_model_ms = truth([s.measured_ms for s in d.samples])
    executor = fit_executor(models, corpus)
    assert executor.scale == pytest.approx(1.0, rel=0.02)
    assert executor.per_kernel_ms * 1e3 == pytest.approx(-4.0, abs=1.0)
    assert executor.per_run_ms * 1e3 == pytest.approx(50.0, abs=4.0)
    # without the corpus there is nothing to tell a per-run cost by: it stays 0
    assert fit_executor(models).per_run_ms == 0.0


def test_kernels_the_profiler_rounds_to_the_same_microsecond_are_told_apart():
    """ORT's profiler reports whole microseconds: a kernel at 3 us in most runs and one at 4 us in
    most runs have the same plain median when the counts are close; the interpolated median
    ranks them, stays inside their bins, and ignores a slow outlier as the median does."""
    mostly_three, mostly_four = [3, 3, 3, 4, 4, 500], [3, 3, 4, 4, 4, 500]
    assert typical_us(mostly_three) < typical_us(mostly_four)
    assert 2.5 <= typical_us(mostly_three) <= 4.5 and 3.5 <= typical_us(mostly_four) <= 4.5


def test_a_control_flow_kernel_is_priced_as_its_parts_and_left_out_of_fits():
    """An If's measured time holds its branch's kernels: predicted as the sum of its own node and
    its branch's nodes (each a one-run sample times its runs), never fitted on as one kernel."""
    def estimate(op: str, op_class: str, runs: int = 1) -> Estimate:
        return Estimate(op_class=op_class, precision="fp32", flops=10**6 * runs, activation_bytes=4096 * runs,
                        weight_bytes=0, memory_level="L2", weight_level="", compute_ms=0.01 * runs,
                        memory_ms=0.001 * runs, launch_ms=0.0, efficiency=1.0, ms=0.01 * runs, known=True, op=op,
                        runs=runs)

    parts = [estimate("If", "data_movement"), estimate("Conv", "conv"), estimate("MatMul", "gemm", runs=3)]
    priced = _Priced("m", model=None, inputs={}, estimates={"gemm_k": _estimate("Gemm"), "add_k": _estimate("If")},
                     parts={"add_k": parts}, profiles=[_profile([100, 100, 100], [50, 50, 50], 1.0)])
    data = _model_data(priced)
    assert [s.op for s in data.samples] == ["Gemm", "If"]
    assert [s.op for s in data.training_samples()] == ["Gemm"]
    assert [(s.op, s.op_class, runs) for s, runs in data.parts["1"]] == [
        ("If", "data_movement", 1), ("Conv", "conv", 1), ("MatMul", "gemm", 3)]
    assert data.parts["1"][2][0].flops == 10**6  # one run of the loop body's node

    by_class = {"data_movement": 0.001, "conv": 0.02, "gemm": 0.1}
    predicted = data.predicted(lambda samples: [by_class.get(s.op_class, 0.5) for s in samples])
    assert predicted[0] == pytest.approx(0.1)  # the Gemm kernel, by its own class
    assert predicted[1] == pytest.approx(0.001 + 0.02 + 3 * 0.1)
