"""Typed pass options: every knob a pass reads, with its default, in one frozen dataclass. An
unknown key is an error that names the closest known one, never silently ignored."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kiln.errors import PassError
from kiln.ir import compat


@dataclass(frozen=True)
class PassOptions:
    """Options of the built-in passes (``kiln.optimize(..., options={...})``).

    Constant folding: ``fold_input_size_limit`` / ``fold_output_size_limit`` (elements) bound
    what is folded (a Gather or Slice of a large constant folds whenever its result is within
    the output limit); ``fold_max_expansion`` (ratio) and ``fold_expansion_free_bytes`` keep
    Tile, Expand, ConstantOfShape, Range... from storing a result much larger than their
    inputs (a model-size policy: folding never inflates the model); ``fold_shape_inference``
    runs shape inference while folding. CSE: ``cse_constant_size_limit`` (elements) is the
    largest constant compared by value. Measured choices: ``measured_choice_max_ratio`` takes a
    measured candidate only when every trial ran at most this fraction of the baseline's time;
    ``measured_choice_min_ms`` leaves forms the cost model prices faster than this unmeasured.
    Cost decisions: ``cost_resolution`` is the relative difference below which a predicted
    gain does not change the graph. Reports: ``trace_near_misses`` sweeps each rule pass's rules
    once more to keep every check's "no" reason (``kiln optimize --explain`` sets it; it costs
    a second match of every rule).
    """

    fold_input_size_limit: int = compat.DEFAULT_FOLD_INPUT_SIZE_LIMIT
    fold_output_size_limit: int = compat.DEFAULT_FOLD_OUTPUT_SIZE_LIMIT
    fold_max_expansion: float = 4.0
    fold_expansion_free_bytes: int = 64 * 1024
    fold_shape_inference: bool = True
    cse_constant_size_limit: int = 10
    measured_choice_max_ratio: float = 0.95
    measured_choice_min_ms: float = 0.1
    cost_resolution: float = 0.0
    trace_near_misses: bool = False

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | PassOptions | None) -> PassOptions:
        """Options from a dict of overrides; unknown keys and values of the wrong type raise."""
        if values is None:
            return cls()
        if isinstance(values, PassOptions):
            return values
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [key for key in values if key not in fields]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, list(fields), n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise PassError(f"Unknown pass option {', '.join(hints)}; known options: {', '.join(sorted(fields))}.")
        converted: dict[str, Any] = {}
        for key, value in values.items():
            kind = type(fields[key].default)
            if kind is bool and not isinstance(value, bool):
                raise PassError(f"Pass option {key!r} takes True or False, not {value!r}.")
            try:
                converted[key] = kind(value)
            except (TypeError, ValueError) as exc:
                raise PassError(f"Pass option {key!r} takes a {kind.__name__}, not {value!r}.") from exc
            if kind is int and converted[key] != value:
                raise PassError(f"Pass option {key!r} takes a whole number, not {value!r}.")
        return cls(**converted)
