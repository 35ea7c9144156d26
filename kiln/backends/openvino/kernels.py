"""The kernels OpenVINO really runs for a model, read off its compiled model: each executed node
of the runtime graph (`CompiledModel.get_runtime_model()`) with its layer type, the primitive
that implements it, the ONNX nodes fused into it (the ``originalLayersNames`` OpenVINO keeps),
its tensors, and the time its performance counter measured on each run.

Only what a run says is executed counts: OpenVINO folds constant subgraphs (weight transposes,
shape arithmetic) and fuses post-ops into their producer at compile time, and those nodes report
NOT_RUN. Shapes are fixed to the feeds' before compiling, so every tensor has a static shape.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from kiln.backends.openvino.executable import OpenVINOExecutable
from kiln.ir.inputs import Feeds
from kiln.target import Target

__all__ = ["RuntimeKernel", "TensorFacts", "runtime_kernels"]

#: runtime-graph nodes that are not kernels (graph inputs, outputs, constants)
_NOT_KERNELS = frozenset({"Input", "Output", "Const"})


@dataclass(frozen=True)
class TensorFacts:
    """One input or output of a runtime kernel."""

    shape: tuple[int, ...] | None  # None when OpenVINO left it dynamic
    element_type: str  # OpenVINO's name: "f32", "i64", "u8", ...
    bits: int  # bits per element (OpenVINO's bitwidth of the type)
    constant: bool = False  # an input read from a constant (a weight)

    @property
    def nbytes(self) -> int:
        if self.shape is None:
            return 0
        return (int(np.prod(self.shape, dtype=np.int64)) * self.bits + 7) // 8


@dataclass
class RuntimeKernel:
    """One executed node of OpenVINO's runtime graph."""

    name: str
    layer_type: str  # "FullyConnected", "Subgraph" (fused snippet), "MVN", "Transpose", ...
    primitive: str  # the implementation, e.g. "brgconv_avx512_1x1_f32", "jit_avx512_f32"
    original_names: tuple[str, ...]  # the ONNX nodes (and OpenVINO's own decompositions) it runs
    inputs: tuple[TensorFacts, ...]
    outputs: tuple[TensorFacts, ...]
    order: int  # execution order
    measured_us: list[float] = field(default_factory=list)  # one per profiled run

    @property
    def median_us(self) -> float:
        return statistics.median(self.measured_us) if self.measured_us else 0.0


def _shape(partial: Any) -> tuple[int, ...] | None:
    if not partial.is_static:
        return None
    return tuple(int(d) for d in partial.to_shape())


def _info(op: Any, key: str) -> str:
    info = op.get_rt_info()
    return str(info[key].astype(str)) if key in info else ""


def _facts(port: Any, constant: bool = False) -> TensorFacts:
    element = port.get_element_type()
    return TensorFacts(_shape(port.get_partial_shape()), element.get_type_name(), element.bitwidth, constant)


def _kernel(op: Any) -> RuntimeKernel:
    inputs = tuple(_facts(port, _info(port.get_source_output().get_node(), "layerType") == "Const")
                   for port in op.inputs())
    outputs = tuple(_facts(port) for port in op.outputs())
    originals = tuple(name for name in _info(op, "originalLayersNames").split(",") if name)
    order = _info(op, "execOrder")
    return RuntimeKernel(name=op.get_friendly_name(), layer_type=_info(op, "layerType"),
                         primitive=_info(op, "primitiveType"), original_names=originals, inputs=inputs,
                         outputs=outputs, order=int(order) if order.lstrip("-").isdigit() else -1)


def runtime_kernels(model: ir.Model, feeds: Feeds, target: Target | None = None, *,
                    repeats: int = 1, warmup: int = 1) -> list[RuntimeKernel]:
    """Compile `model` with OpenVINO for `target` at the feeds' shapes with performance counters
    on, run it `warmup` + `repeats` times on `feeds`, and return the kernels the last run
    executed, in execution order, each with its time in every profiled run that executed it (at
    least one run is made)."""
    target = target or Target(backend="openvino")
    shapes = {name: np.shape(value) for name, value in feeds.items()}
    executable = OpenVINOExecutable(model, target, input_shapes=shapes, profiling=True)
    by_name = {op.get_friendly_name(): op for op in executable.compiled.get_runtime_model().get_ordered_ops()
               if _info(op, "layerType") not in _NOT_KERNELS}
    kernels: dict[str, RuntimeKernel] = {}
    for _ in range(warmup):
        executable.run(feeds)
    last: set[str] = set()
    for _ in range(max(1, repeats)):
        executable.run(feeds)
        this_run: dict[str, float] = {}  # a node listed twice in one run is one kernel: its times add up
        for counter in executable.request.profiling_info:
            if counter.status.name != "EXECUTED" or counter.node_name not in by_name:
                continue  # fused into another kernel, folded at compile time, or not a kernel
            this_run[counter.node_name] = this_run.get(counter.node_name, 0.0) + counter.real_time.total_seconds() * 1e6
        for name, us in this_run.items():
            if name not in kernels:
                kernels[name] = _kernel(by_name[name])
            kernels[name].measured_us.append(us)
        last = set(this_run)
    # what the last run executed is the steady state (some nodes run only on the first calls)
    kernels = {name: kernel for name, kernel in kernels.items() if name in last}
    return sorted(kernels.values(), key=lambda k: k.order)
