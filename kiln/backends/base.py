"""What every backend returns: an Executable (callable, runnable on feeds, benchmarkable)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import onnx_ir as ir

from kiln.backends.timing import BenchmarkResult, time_calls
from kiln.ir.inputs import Feeds, is_torch_tensor, make_feeds, random_inputs


class Executable(Protocol):
    """A compiled model: call it like the original, run it on feeds, benchmark it."""

    input_names: list[str]
    output_names: list[str]

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def run(self, feeds: Feeds) -> list[np.ndarray]: ...

    def benchmark(self, *args: Any, warmup: int = 5, repeats: int = 30, min_seconds: float = 0.0,
                  **kwargs: Any) -> BenchmarkResult: ...


class CallableExecutable:
    """What every backend's executable does the same way on top of its ``run``: match call
    arguments to the model's inputs, return torch tensors for torch inputs, benchmark."""

    _required_inputs: list[ir.Value]  # graph inputs a caller must feed (not initializers)

    def run(self, feeds: Feeds) -> list[np.ndarray]:
        raise NotImplementedError

    def _timed_run(self, feeds: Feeds) -> Any:
        """The call `benchmark` times (a backend may skip its error translation here)."""
        return self.run(feeds)

    def feeds(self, *args: Any, **kwargs: Any) -> Feeds:
        """Match call arguments to model inputs (numpy or torch, positional or by name)."""
        return make_feeds(self._required_inputs, args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run like the original model: one output is returned as is, several as a tuple; torch
        tensors in give torch tensors out."""
        as_torch = any(is_torch_tensor(a) for a in list(args) + list(kwargs.values()))
        outputs = self.run(self.feeds(*args, **kwargs))
        if as_torch:
            import torch

            outputs = [torch.from_numpy(np.ascontiguousarray(o)) if isinstance(o, np.ndarray) else o for o in outputs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def benchmark(self, *args: Any, warmup: int = 5, repeats: int = 30, min_seconds: float = 0.0,
                  **kwargs: Any) -> BenchmarkResult:
        """Latency on the given inputs (random inputs of the declared shapes when none given)."""
        feeds = self.feeds(*args, **kwargs) if (args or kwargs) else random_inputs(self._required_inputs)
        return time_calls(lambda: self._timed_run(feeds), warmup=warmup, repeats=repeats, min_seconds=min_seconds)
