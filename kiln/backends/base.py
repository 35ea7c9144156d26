"""What every backend returns: an Executable (callable, runnable on feeds, benchmarkable)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from kiln.backends.timing import BenchmarkResult
from kiln.ir.inputs import Feeds


class Executable(Protocol):
    """A compiled model: call it like the original, run it on feeds, benchmark it."""

    input_names: list[str]
    output_names: list[str]

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def run(self, feeds: Feeds) -> list[np.ndarray]: ...

    def benchmark(self, *args: Any, warmup: int = 5, repeats: int = 30, min_seconds: float = 0.0,
                  **kwargs: Any) -> BenchmarkResult: ...
