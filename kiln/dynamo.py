"""`torch.compile(model, backend="kiln")`: run Dynamo-captured graphs through kiln and ONNX
Runtime (or OpenVINO: ``options={"backend": "openvino"}``). Registered through the
``torch_dynamo_backends`` entry point."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from kiln.errors import KilnError

logger = logging.getLogger(__name__)


def kiln_backend(gm: Any, example_inputs: Sequence[Any], **options: Any) -> Callable[..., Any]:
    """A Dynamo backend: export the FX graph, optimize it, return a callable on the chosen runtime
    (``options={"backend": "openvino"}``; ONNX Runtime by default; "auto" times both).

    Graphs kiln cannot take (symbolic shapes, non-tensor inputs or outputs, export failures)
    run eagerly, with a warning that says why. An unknown or uninstalled backend raises.
    """
    import torch

    from kiln.api import optimize
    from kiln.backends.registry import check_backend

    backend = str(options.get("backend", "onnxruntime"))
    if backend != "auto":
        check_backend(backend)  # a typo must not quietly run every graph eagerly

    if not all(isinstance(x, torch.Tensor) for x in example_inputs):
        logger.warning("kiln backend: graph has non-tensor inputs (symbolic shapes?); running it eagerly.")
        return gm.forward
    with torch.no_grad():
        expected = gm(*example_inputs)
    as_sequence = isinstance(expected, (tuple, list))
    outputs = list(expected) if as_sequence else [expected]
    if not all(isinstance(o, torch.Tensor) for o in outputs):
        logger.warning("kiln backend: graph returns non-tensor values; running it eagerly.")
        return gm.forward
    try:
        optimized = optimize(gm, tuple(example_inputs), level=int(options.get("level", 1)),
                             validate=bool(options.get("validate", True)), backend=backend)
    except KilnError as exc:
        logger.warning("kiln backend: could not optimize this graph (%s); running it eagerly.", exc)
        return gm.forward
    executable = optimized.executable

    def run(*args: Any) -> Any:
        result = executable(*args)
        result_list = list(result) if isinstance(result, tuple) else [result]
        return type(expected)(result_list) if as_sequence else result_list[0]

    run.kiln_model = optimized  # type: ignore[attr-defined]
    return run
