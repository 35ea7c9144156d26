"""Capture: turn a PyTorch model or an ONNX model into an onnx-ir Model with provenance.

PyTorch goes through the maintained exporter (``torch.export.export`` then
``torch.onnx.export(..., dynamo=True)``); kiln keeps no aten-to-ONNX table of its own.
The exporter is asked not to optimize, so every rewrite is made (and reported) by kiln.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from kiln.errors import CaptureError, InvalidModelError
from kiln.ir.checks import check_model_proto, read_model_proto
from kiln.ir.provenance import stamp_provenance
from kiln.ir.queries import is_onnx
from kiln.ir.shapes import normalize_unknown_dims
from kiln.ir.serialization import needs_external_data, to_proto

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

ModelLike = Any  # nn.Module | fx.GraphModule | ExportedProgram | str | PathLike | ModelProto | ir.Model


def load(path: str | os.PathLike) -> ir.Model:
    """Load an ONNX file as untrusted input: checked, external data memory-mapped lazily."""
    path = Path(path)
    proto = read_model_proto(path)
    check_model_proto(proto, base_dir=path.parent)
    model = ir.serde.deserialize_model(proto)
    # Relative external-data locations resolve against the model's folder (already checked).
    ir.external_data.set_base_dir(model.graph, str(path.parent.resolve()))
    return _finish(model)


def from_proto(proto: onnx.ModelProto, base_dir: str | os.PathLike | None = None) -> ir.Model:
    """Capture an in-memory ModelProto (checked; the caller's proto is not modified)."""
    proto_copy = onnx.ModelProto()
    proto_copy.CopyFrom(proto)
    check_model_proto(proto_copy, base_dir=base_dir)
    model = ir.serde.deserialize_model(proto_copy)
    if base_dir is not None:
        ir.external_data.set_base_dir(model.graph, str(Path(base_dir).resolve()))
    return _finish(model)


def from_ir_model(model: ir.Model) -> ir.Model:
    """Capture an onnx-ir Model: a copy (tensors shared, never written: rewrites set new ones),
    checked like a file when it fits in a protobuf, so the caller's model is not modified and
    every input kind passes the same checks."""
    copy = model.clone()
    if not needs_external_data(copy):
        check_model_proto(to_proto(copy))
    return _finish(copy)


def _finish(model: ir.Model) -> ir.Model:
    """Name unnamed nodes and values, read -1 / 0 input dims as unknown, keep only the dims of a
    loop's state that every iteration keeps, then stamp provenance."""
    common_passes.NameFixPass()(model)
    normalize_unknown_dims(model)
    loosen_loop_state_shapes(model)
    stamp_provenance(model)
    return model


def _state_pairs(node: ir.Node) -> list[tuple[ir.Value, ir.Value]]:
    """(body input, body output) of each state a Loop or Scan carries from one iteration to the next."""
    attribute = node.attributes.get("body")
    if attribute is None or attribute.type != ir.AttributeType.GRAPH:
        return []
    body = attribute.as_graph()
    if node.op_type == "Loop":
        carried = len(node.inputs) - 2
        return list(zip(body.inputs[2:2 + carried], body.outputs[1:1 + carried]))
    states = len(node.inputs) - node.attributes.get_int("num_scan_inputs", 0)
    return list(zip(body.inputs[:states], body.outputs[:states]))


def loosen_loop_state_shapes(model: ir.Model) -> list[str]:
    """A Loop / Scan body's state input holds the previous iteration's output, so it has only the
    dims that output keeps; the rest become unknown. The legacy exporter declares the initial value's
    shape (e.g. [0, 3] for a list of detections that grows), which folding would take as fact and drop
    the empty-looking input of a Concat. Returns one line per input loosened."""
    notes: list[str] = []
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if not (is_onnx(node, "Loop") or is_onnx(node, "Scan")):
            continue
        for state, update in _state_pairs(node):
            if state.shape is None:
                continue
            kept = update.shape if update.shape is not None and len(update.shape) == len(state.shape) else None
            dims = [d if kept is not None and d == kept[axis] else ir.SymbolicDim(None)
                    for axis, d in enumerate(state.shape)]
            if dims != list(state.shape):
                notes.append(f"{node.name} state {state.name} declared {list(state.shape)}: read as {dims}")
                state.shape = ir.Shape(dims)
    for note in notes:
        logger.info("%s", note)
    return notes


def capture(
    obj: ModelLike,
    example_inputs: Any = None,
    dynamic_shapes: Any = None,
) -> ir.Model:
    """Capture `obj` into an onnx-ir Model whose every node carries provenance.

    Args:
        obj: a ``torch.nn.Module``, ``torch.fx.GraphModule``, ``torch.export.ExportedProgram``,
            a path to an ONNX file, an ``onnx.ModelProto`` or an ``onnx_ir.Model``.
        example_inputs: for PyTorch models: a tensor, a tuple of positional arguments, or a
            dict of keyword arguments. Optional for an ExportedProgram.
        dynamic_shapes: passed to ``torch.export.export`` (PyTorch models only).

    Raises:
        CaptureError: the PyTorch model could not be exported; the message names the construct.
        InvalidModelError: the ONNX model is malformed or unsafe.
    """
    if isinstance(obj, ir.Model):
        return from_ir_model(obj)
    if isinstance(obj, onnx.ModelProto):
        return from_proto(obj)
    if isinstance(obj, (str, os.PathLike)):
        return load(obj)
    if isinstance(obj, (bytes, bytearray)):
        try:
            proto = onnx.load_from_string(bytes(obj))
        except Exception as exc:  # protobuf raises DecodeError or RuntimeError
            raise InvalidModelError(f"The bytes given are not an ONNX protobuf ({exc}).") from exc
        return from_proto(proto)
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a pinned dependency
        raise CaptureError(f"Cannot capture a {type(obj).__name__}: PyTorch is not installed.") from exc
    if isinstance(obj, torch.export.ExportedProgram):
        return _capture_exported_program(obj, example_inputs)
    if isinstance(obj, torch.nn.Module):
        return _capture_module(obj, example_inputs, dynamic_shapes)
    raise CaptureError(
        f"kiln cannot capture an object of type {type(obj).__module__}.{type(obj).__qualname__}.",
        suggestion="pass a torch.nn.Module, torch.fx.GraphModule, torch.export.ExportedProgram, "
        "an ONNX file path, an onnx.ModelProto or an onnx_ir.Model.",
    )


def split_example_inputs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Normalize example inputs into (args, kwargs) for torch.export."""
    if example_inputs is None:
        return (), {}
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, tuple):
        return example_inputs, {}
    if isinstance(example_inputs, list):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def _capture_module(module: torch.nn.Module, example_inputs: Any, dynamic_shapes: Any) -> ir.Model:
    import torch

    if example_inputs is None:
        raise CaptureError(
            f"Capturing {type(module).__name__} needs example inputs to trace it.",
            suggestion="call kiln.optimize(model, example_inputs=(tensor, ...)) or pass a dict of "
            "keyword arguments.",
        )
    args, kwargs = split_example_inputs(example_inputs)
    was_training = module.training
    if was_training:
        logger.warning(
            "%s is in training mode; kiln captures it in eval mode (dropout off, batch-norm "
            "running statistics) and restores the mode afterwards.", type(module).__name__
        )
        module.eval()
    try:
        with torch.no_grad():
            try:
                exported = torch.export.export(
                    module, args, kwargs=kwargs, dynamic_shapes=dynamic_shapes, strict=False
                )
            except Exception as exc:
                raise explain_export_failure(exc, stage="torch.export.export") from exc
        return _capture_exported_program(exported, None)
    finally:
        if was_training:
            module.train()


def _capture_exported_program(exported: Any, example_inputs: Any) -> ir.Model:
    import torch

    args, kwargs = split_example_inputs(example_inputs)
    # The exporter prints progress through print() and warnings; route them to logging.
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink):
            program = torch.onnx.export(
                exported, args, kwargs=kwargs or None, dynamo=True, optimize=False,
                verbose=False, report=False,
            )
    except Exception as exc:
        raise explain_export_failure(exc, stage="torch.onnx.export") from exc
    finally:
        if sink.getvalue():
            logger.debug("torch.onnx.export said:\n%s", sink.getvalue())
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise CaptureError("torch.onnx.export returned no program.")
    model = program.model
    # torch.onnx stamps the IR version of its onnx dependency; keep what ORT can read.
    return _finish(model)


_ATEN_OP = re.compile(r"(aten\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?|torch\.ops\.[A-Za-z0-9_.]+)")

_KNOWN_FAILURES: Sequence[tuple[re.Pattern[str], str, str]] = (
    (
        re.compile(r"scaled_dot_product|sdpa|_flash_attention|efficient_attention", re.I),
        "scaled_dot_product_attention",
        'load transformers models with attn_implementation="eager" (and use_cache=False), or '
        "replace F.scaled_dot_product_attention by an explicit softmax(QK^T)V.",
    ),
    (
        re.compile(r"data.dependent|GuardOnDataDependentSymNode|Could not guard on data-dependent", re.I),
        "data-dependent control flow or shape",
        "avoid Python branches and shapes that depend on tensor values (use torch.where / "
        "torch.cond, or torch._check to state the assumption).",
    ),
    (
        re.compile(r"DynamicCache|past_key_values|Cache\b", re.I),
        "a key/value cache object",
        "export with use_cache=False (and return plain tensors, not cache objects, from forward).",
    ),
    (
        re.compile(r"Constraints violated|dynamic_shapes|specialized", re.I),
        "dynamic shape specification",
        "check dynamic_shapes: a dimension marked dynamic was specialized to a constant by the "
        "model code; mark it static or use torch.export.Dim.AUTO.",
    ),
    (
        re.compile(r"Unsupported FX nodes|No decomposition|not supported|Unsupported", re.I),
        "an operator without an ONNX translation",
        "rewrite that part of the model with supported ops, or register a translation with "
        "torch.onnx.export(custom_translation_table=...).",
    ),
)


def explain_export_failure(exc: BaseException, *, stage: str) -> CaptureError:
    """Turn an exporter exception into a CaptureError naming the construct and a fix."""
    text = f"{type(exc).__name__}: {exc}"
    # The exporter chains the real cause; read the whole chain.
    cause = exc.__cause__ or exc.__context__
    depth = 0
    while cause is not None and depth < 5:
        text += f"\n{type(cause).__name__}: {cause}"
        cause = cause.__cause__ or cause.__context__
        depth += 1
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    construct: str | None = None
    suggestion: str | None = None
    for pattern, what, fix in _KNOWN_FAILURES:
        if pattern.search(text):
            construct, suggestion = what, fix
            break
    op = _ATEN_OP.search(text)
    if op:
        construct = f"{op.group(1)} ({construct})" if construct else op.group(1)
    if suggestion is None:
        suggestion = (
            "simplify the failing construct, or export the model to ONNX yourself and pass the "
            "file to kiln."
        )
    return CaptureError(f"{stage} failed: {first_line[:500]}", construct=construct, suggestion=suggestion)
