"""Shared types of the benchmark harness: zoo entries, peer configurations, prepared runners.

The harness (`benchmarks/harness.py`) runs every (model, batch, configuration) cell in a fresh
process: it prepares the configuration, then alternates it with ORT ENABLE_ALL on the same
inputs, as BENCHMARKS.md prescribes.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Threads for every runtime, per BENCHMARKS.md.
THREADS = 2
# Where exports and calibration data are cached (git-ignored).
CACHE_DIR = Path(".cache/benchmarks")
# The benchmarks' budget for kiln's timing protocol (kiln.backends.timing): at least MIN_SECONDS
# of timed calls per runner, no new round after MAX_SECONDS but at least MIN_ROUNDS, and a runner
# slower than SLOW_CALL_MS on its first call is warmed up once.
MIN_SECONDS = 3.0
MAX_SECONDS = 120.0
MIN_ROUNDS = 3
SLOW_CALL_MS = 1000.0


@dataclass
class ModelCase:
    """One model at one batch size, ready to run: what every configuration receives."""

    name: str
    batch: int
    module: Any  # torch.nn.Module in eval mode returning one tensor; None until get_module() builds it
    torch_inputs: dict[str, Any]  # keyword tensors for module(**torch_inputs)
    inputs: dict[str, np.ndarray]  # the same inputs as numpy, keyed by ONNX input name
    onnx_path: Path  # the dynamo=True export (as users make it), cached
    reference: np.ndarray  # fp32 PyTorch output on `inputs`
    calibration: list[dict[str, np.ndarray]] = field(default_factory=list)  # 16 extra input sets
    kind: str = ""  # "text-encoder" | "decoder" | "vision" | "audio" | "sentence-embedding"
    attention_mask_input: str | None = None  # name of the mask input, for pooling MiniLM embeddings
    module_factory: Callable[[], Any] | None = None  # builds `module` on first use (ONNX-only cells skip it)

    def get_module(self) -> Any:
        """The PyTorch module, built on first use (importing transformers costs seconds)."""
        if self.module is None and self.module_factory is not None:
            self.module = self.module_factory()
        return self.module


@dataclass
class Prepared:
    """A configuration made ready for one ModelCase."""

    run: Callable[[], Any]  # one inference on the case's inputs (timed)
    outputs: Callable[[], np.ndarray]  # the first output as a float32 numpy array (accuracy)
    optimize_seconds: float = 0.0  # the tool's own optimization wall time (0 when none)
    node_count: int | None = None  # nodes of the model the configuration runs, when it is a graph
    model_bytes: int | None = None  # bytes of that model on disk, when written
    note: str = ""  # e.g. "untuned"
    model_path: Path | None = None  # the ONNX file the runner's ORT session loaded, when it is one


class NotApplicable(Exception):
    """The configuration does not apply to this model (e.g. a transformers optimizer on a CNN)."""


class Config(abc.ABC):
    """A peer (or kiln) configuration: how to turn a ModelCase into a timed runner."""

    name: str = ""
    precision: str = "fp32"  # "fp32" | "fp16" | "bf16" | "int8" | "int4"
    description: str = ""

    @abc.abstractmethod
    def prepare(self, case: ModelCase, workdir: Path) -> Prepared:
        """Build the runner; raise NotApplicable, or any exception (recorded as the cell's error)."""


def outcome(measure: Callable[[], str], limit: int) -> tuple[str, str]:
    """(text, status) of one model's step: `measure()`'s text and "ok"; the `kiln.errors`
    exception it raised as "<Type>: <message>" (one line, cut at `limit` characters) and "error";
    or any other exception as "RAW ..." with its traceback and "raw" (a bug, and the finding)."""
    import traceback

    from kiln.errors import KilnError

    try:
        return measure(), "ok"
    except KilnError as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:limit]}", "error"
    except Exception as exc:  # noqa: BLE001 - a raw exception is the finding
        return f"RAW {type(exc).__name__}: {exc}\n{traceback.format_exc()}", "raw"
