"""Range observers: streaming MinMax / Percentile / MSE / Entropy clips of an activation's uint8
grid, which never let a mask's float-min stretch the range."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.errors import InputError
from kiln.passes.quantization import QuantConfig
from kiln.passes.quantization.observers import RANGE_METHODS, make_observer
from kiln.passes.quantization.static_activations import ActivationRange

RNG = np.random.default_rng(7)


def _clip(method: str, batches: list[np.ndarray], **kwargs: float) -> tuple[float, float]:
    observer = make_observer(method, **kwargs)  # type: ignore[arg-type]
    for second_pass in (False, True) if observer.needs_second_pass else (False,):
        for batch in batches:
            observer.observe(batch, second_pass=second_pass)
    return observer.clip()


def _uint8_error(x: np.ndarray, clip: tuple[float, float]) -> float:
    """The mean squared error of `x` on the uint8 grid of `clip`, as the backend computes it."""
    grid = ActivationRange(*clip)
    scale, zero = float(grid.scale), float(grid.zero_point)
    q = np.clip(np.rint(x / scale) + zero, 0, 255)
    return float(np.mean((x - (q - zero) * scale) ** 2))


def test_float_min_masks_inf_and_nan_are_left_out_of_every_range():
    data = RNG.standard_normal(4000).astype(np.float32)
    masked = np.concatenate([data, np.full(4000, np.finfo(np.float32).min, np.float32),
                             np.array([-np.inf, np.inf, np.nan], np.float32)])
    for method in RANGE_METHODS:
        low, high = _clip(method, [masked[:5000], masked[5000:]])
        assert data.min() <= low <= 0.0 <= high <= data.max(), method
    observer = make_observer("minmax")
    observer.observe(masked)
    assert observer.excluded == 4003


def test_percentile_keeps_the_central_share_of_the_values():
    x = RNG.uniform(0.0, 1.0, 200_000).astype(np.float32)
    low, high = _clip("percentile", [x], percentile=99.0)
    assert low == 0.0  # widened to hold zero
    assert high == pytest.approx(0.995, abs=2e-3)
    _, high = _clip("percentile", [x - 0.5], percentile=99.0)
    assert high == pytest.approx(0.495, abs=2e-3)


@pytest.mark.parametrize("name", ["laplace", "normal with outliers", "one-sided gelu"])
def test_mse_clip_has_the_least_quantization_error(name):
    x = {"laplace": RNG.laplace(size=100_000),
         "normal with outliers": np.concatenate([RNG.standard_normal(100_000), RNG.uniform(20, 40, 3)]),
         "one-sided gelu": (lambda v: v / (1 + np.exp(-1.702 * v)))(3 * RNG.standard_normal(100_000))}[name]
    x = x.astype(np.float32)
    errors = {method: _uint8_error(x, _clip(method, np.array_split(x, 3))) for method in RANGE_METHODS}
    assert errors["mse"] <= 1.02 * min(errors.values()), errors
    assert errors["mse"] < errors["minmax"], errors


def test_entropy_clips_the_tails_of_a_peaked_distribution():
    x = RNG.laplace(size=200_000).astype(np.float32)
    low, high = _clip("entropy", [x])
    assert -x.min() > -low > 0.2 * -x.min() and x.max() > high > 0.2 * x.max()
    # data narrower than the 255 levels of the grid keeps its whole range
    steps = np.repeat(np.arange(10, dtype=np.float32), 100)
    assert _clip("entropy", [steps]) == (0.0, 9.0)


def test_a_histogram_over_several_feeds_is_the_histogram_of_their_concatenation():
    x = RNG.standard_normal(30_000).astype(np.float32) * np.linspace(0.1, 3, 30_000, dtype=np.float32)
    for method in ("percentile", "mse", "entropy"):
        assert _clip(method, np.array_split(x, 5)) == pytest.approx(_clip(method, [x])), method


def test_unknown_methods_and_percentiles_are_refused_with_the_choices():
    with pytest.raises(InputError, match="'minmax', 'percentile', 'mse', 'entropy'"):
        QuantConfig(scheme="static-int8", activation_range="kl")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"percentile=40.0 must be in \(50, 100\]"):
        QuantConfig(scheme="static-int8", activation_range="percentile", percentile=40.0)
