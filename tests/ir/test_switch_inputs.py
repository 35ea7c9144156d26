"""An integer input that switches a model's mode (`If(Equal(sr, 16000))`) is sampled as one of the
constants it is compared with, so the sample runs a branch the model really has."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from conftest import make_model, tensor_info
from onnx import TensorProto, helper

from kiln.ir.inputs import random_inputs
from kiln.ir.value_ranges import integer_range


def test_an_input_compared_with_constants_takes_one_of_them():
    proto = make_model(
        [helper.make_node("Constant", [], ["rate"], value=helper.make_tensor("r", TensorProto.INT64, [], [16000])),
         helper.make_node("Equal", ["sr", "rate"], ["is_16k"]),
         helper.make_node("Cast", ["is_16k"], ["y"], to=TensorProto.FLOAT)],
        [tensor_info("sr", [], TensorProto.INT64)], [tensor_info("y", [])],
    )
    model = ir.serde.deserialize_model(proto)
    sr = model.graph.inputs[0]
    assert integer_range(sr).choices == (16000,)
    assert random_inputs([sr])["sr"] == np.int64(16000)
