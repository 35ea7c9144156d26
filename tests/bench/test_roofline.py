"""benchmarks/roofline.py: machine facts, the roofline arithmetic, and a quick calibration.

No speed is asserted: the calibration numbers must only be positive and finite."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import roofline
from benchmarks.roofline import MachinePeaks, calibrate, load_or_calibrate, machine_info, roofline_ms

PEAKS = MachinePeaks(
    fp32_gflops_fma=500.0,
    fp32_gflops_gemm=400.0,
    int8_gops=1000.0,
    dram_gbps=40.0,
    threads=2,
    seconds=0.0,
    int8_gops_vnni=2000.0,
)


def test_machine_info_has_the_keys():
    info = machine_info()
    for key in ("cpu_model", "logical_cores", "usable_cores", "cpu_mhz", "flags", "python", "versions"):
        assert key in info
    assert set(info["flags"]) >= {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx"}
    assert all(isinstance(v, bool) for v in info["flags"].values())
    assert set(info["versions"]) >= set(roofline.PACKAGES) >= {"torch", "onnxruntime", "tvm", "kiln"}
    assert info["versions"]["onnx"].startswith("1.")
    assert info["logical_cores"] >= 1 and 1 <= info["usable_cores"] <= info["logical_cores"]
    json.dumps(info)  # serialisable as it is


def test_missing_package_reports_not_installed():
    assert roofline._version("surely-not-a-real-distribution-kiln") == "not installed"


def test_roofline_compute_bound():
    # 1 TFLOP at 500 GFLOP/s = 2 s; 4 GB at 40 GB/s = 0.1 s
    assert roofline_ms(10**12, 4 * 10**9, PEAKS) == pytest.approx(2000.0)
    assert roofline_ms(10**12, 4 * 10**9, PEAKS, "fp32_gemm") == pytest.approx(2500.0)
    assert roofline_ms(10**12, 4 * 10**9, PEAKS, "int8") == pytest.approx(500.0)
    assert roofline_ms(10**12, 4 * 10**9, PEAKS, "int8_gemm") == pytest.approx(1000.0)


def test_roofline_memory_bound():
    # 1 GFLOP at 500 GFLOP/s = 2 ms; 400 MB at 40 GB/s = 10 ms
    assert roofline_ms(10**9, 4 * 10**8, PEAKS) == pytest.approx(10.0)
    assert roofline_ms(10**9, 4 * 10**8, PEAKS, "int8") == pytest.approx(10.0)


def test_roofline_int8_falls_back_to_the_gemm_peak_and_rejects_unknown_precisions():
    peaks = MachinePeaks(500.0, 400.0, 1000.0, 40.0, 2, 0.0)  # no VNNI loop measured
    assert roofline_ms(10**12, 0, peaks, "int8") == pytest.approx(1000.0)
    with pytest.raises(ValueError, match="precision"):
        roofline_ms(1, 1, peaks, "fp8")


def test_calibrate_quick_returns_positive_finite_numbers():
    peaks = calibrate(threads=2, quick=True)
    for value in (peaks.fp32_gflops_fma, peaks.fp32_gflops_gemm, peaks.int8_gops, peaks.dram_gbps, peaks.seconds):
        assert math.isfinite(value) and value > 0
    assert peaks.threads == 2 and peaks.quick
    assert peaks.fp32_fma_method.startswith(("measured", "derived"))


def test_load_or_calibrate_uses_the_cache(tmp_path, monkeypatch):
    calls = []

    def fake_calibrate(threads, quick):
        calls.append((threads, quick))
        return MachinePeaks(1.0, 1.0, 1.0, 1.0, threads, 0.0, quick=quick)

    monkeypatch.setattr(roofline, "calibrate", fake_calibrate)
    first = load_or_calibrate(2, quick=True, cache_dir=tmp_path)
    again = load_or_calibrate(2, quick=True, cache_dir=tmp_path)
    assert first == again and calls == [(2, True)]
    # a cached quick calibration does not satisfy a full request; the full one then serves both
    load_or_calibrate(2, quick=False, cache_dir=tmp_path)
    load_or_calibrate(2, quick=True, cache_dir=tmp_path)
    assert calls == [(2, True), (2, False)]
    cache = json.loads((tmp_path / roofline.PEAKS_FILE).read_text())
    assert len(cache) == 1 and "x2 threads" in next(iter(cache))
    load_or_calibrate(1, quick=True, cache_dir=tmp_path)
    assert calls[-1] == (1, True)
