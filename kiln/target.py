"""The execution target: which backend runs the model and how (threads, level, providers).

A leaf module so passes (which must not import backends) and backends can both use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

BackendName = Literal["onnxruntime", "tvm"]


@dataclass(frozen=True)
class Target:
    """Where and how an optimized model runs.

    Attributes:
        backend: "onnxruntime" (default, embedded) or "tvm" (optional extra).
        intra_op_threads: threads inside one op; 0 lets the runtime decide.
        inter_op_threads: threads across independent ops (sequential execution when 1).
        graph_optimization_level: the runtime's own optimizer level: "disable", "basic",
            "extended", "layout" or "all". kiln's passes are independent of it.
        providers: ONNX Runtime execution providers, in priority order.
        allow_spinning: let idle intra-op threads spin for work (ORT's default; lowest latency
            for one session). Turn it off when two sessions alternate in one process: the idle
            session's spinning threads take the cores from the running one, which then runs
            much slower than alone on a machine with few cores.
    """

    backend: BackendName = "onnxruntime"
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    graph_optimization_level: Literal["disable", "basic", "extended", "layout", "all"] = "all"
    providers: tuple[str, ...] = field(default=("CPUExecutionProvider",))
    allow_spinning: bool = True
