"""The execution target: which backend runs the model and how (threads, level, providers).

A leaf module so passes (which must not import backends) and backends can both use it; the
backend name is checked against `kiln.backends.registry`, which imports no runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: the backends kiln ships (`kiln.backends.registry` may know more)
BackendName = Literal["onnxruntime", "openvino"]


@dataclass(frozen=True)
class OpenVINOOptions:
    """How the OpenVINO backend compiles (`openvino.Core().compile_model` properties).

    Attributes:
        device: OpenVINO device ("CPU").
        performance_hint: "LATENCY" (one request at a time, kiln's default) or "THROUGHPUT".
        inference_precision: "f32" (default: the numerics of the ONNX model), "bf16" or "f16"
            (faster where the CPU has them, and a different numeric result), or "default" to
            leave OpenVINO's own choice for the device, which is bf16 on CPUs with AMX or
            AVX-512 BF16.
        streams: parallel inference streams (1: all threads work on one request).
        dynamic_quantization_group_size: how many values of a row share one scale when OpenVINO
            quantizes the activation of a linear with int8 weights (kiln's ``quantize="int8"``):
            None leaves OpenVINO's default for the device, 0 turns the quantization off (fp32
            activations); larger groups run faster and round coarser.
    """

    device: str = "CPU"
    performance_hint: Literal["LATENCY", "THROUGHPUT"] = "LATENCY"
    inference_precision: Literal["f32", "bf16", "f16", "default"] = "f32"
    streams: int = 1
    dynamic_quantization_group_size: int | None = None

    def __post_init__(self) -> None:
        from kiln.errors import InputError

        if self.performance_hint not in ("LATENCY", "THROUGHPUT"):
            raise InputError(f"OpenVINOOptions.performance_hint must be 'LATENCY' or 'THROUGHPUT', "
                             f"got {self.performance_hint!r}.")
        if self.inference_precision not in ("f32", "bf16", "f16", "default"):
            raise InputError(f"OpenVINOOptions.inference_precision must be 'f32', 'bf16', 'f16' or 'default', "
                             f"got {self.inference_precision!r}.")
        if self.streams < 1:
            raise InputError(f"OpenVINOOptions.streams must be at least 1, got {self.streams}.")
        group = self.dynamic_quantization_group_size
        if group is not None and (isinstance(group, bool) or not isinstance(group, int) or group < 0):
            raise InputError("OpenVINOOptions.dynamic_quantization_group_size must be None (OpenVINO's default), "
                             f"0 (off) or a positive number of values per scale, got {group!r}.")


@dataclass(frozen=True)
class Target:
    """Where and how an optimized model runs.

    Attributes:
        backend: "onnxruntime" (default, embedded) or "openvino" (the ``openvino`` extra); an
            unknown or uninstalled backend raises `BackendError` naming the installed ones.
        intra_op_threads: threads inside one op; 0 lets the runtime decide.
        inter_op_threads: threads across independent ops (sequential execution when 1).
        graph_optimization_level: the runtime's own optimizer level: "disable", "basic",
            "extended", "layout" or "all". kiln's passes are independent of it.
        providers: ONNX Runtime execution providers, in priority order.
        allow_spinning: let idle intra-op threads spin for work (ORT's default; lowest latency
            for one session). Turn it off when two sessions alternate in one process: the idle
            session's spinning threads take the cores from the running one, which then runs
            much slower than alone on a machine with few cores. (ONNX Runtime only.)
        openvino: how the OpenVINO backend compiles (device, hint, precision, streams).
    """

    backend: BackendName = "onnxruntime"
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    graph_optimization_level: Literal["disable", "basic", "extended", "layout", "all"] = "all"
    providers: tuple[str, ...] = field(default=("CPUExecutionProvider",))
    allow_spinning: bool = True
    openvino: OpenVINOOptions = field(default_factory=OpenVINOOptions)

    def __post_init__(self) -> None:
        from kiln.backends.registry import check_backend  # a leaf module: no runtime is imported

        check_backend(self.backend)
