"""A model that does not run on the sample inputs stops with an InputError that names the shapes
used, what was guessed and the flags that fix it, instead of optimizing without validation."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import make_model, tensor_info
from onnx import helper, numpy_helper

import kiln
from kiln.errors import InputError


def _fixed_reshape_model(path):
    """Accepts only 48 x 320 images: the Reshape target is a constant."""
    proto = make_model(
        [helper.make_node("Reshape", ["x", "target"], ["y"])],
        [tensor_info("x", [1, 3, "?", "width"])], [tensor_info("y", [1, 46080])],
        [numpy_helper.from_array(np.array([1, 46080], np.int64), "target")],
    )
    onnx.save(proto, path)
    return path


def test_original_that_does_not_run_on_guessed_shapes_names_them_and_the_fix(tmp_path):
    path = _fixed_reshape_model(tmp_path / "m.onnx")
    with pytest.raises(InputError) as info:
        kiln.optimize(path)
    message = str(info.value)
    assert "x [1, 3, 224, 224]" in message and "guessed" in message
    assert "--input-shape" in message and "--sample-inputs" in message and "--no-validate" in message


def test_binding_the_shapes_the_model_expects_lets_it_optimize(tmp_path):
    path = _fixed_reshape_model(tmp_path / "m.onnx")
    optimized = kiln.optimize(path, input_shapes={"x": (1, 3, 48, 320)})
    assert optimized.report.validated
    assert optimized.report.input_shapes.startswith("x [1, 3, 48, 320]")


def test_placeholder_dim_names_are_unknown_dims_of_their_own(tmp_path):
    path = _fixed_reshape_model(tmp_path / "m.onnx")
    model = kiln.load(path)
    dims = [d if isinstance(d, int) else d.value for d in model.graph.inputs[0].shape]
    assert dims == [1, 3, "x_dim2", "width"]  # "?" is not a name two inputs could share
