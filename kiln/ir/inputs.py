"""Model inputs: normalize user inputs (numpy or torch, positional or by name) into feeds,
and make sample inputs of the bound shapes (`kiln.ir.shapes`) when the user gave none."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from kiln.errors import InputError
from kiln.ir.shapes import BoundShapes, ShapeBinding, bind_shapes
from kiln.ir.value_ranges import integer_range

# Sequence inputs take lists of arrays and optional inputs may be None.
Feeds = dict[str, Any]


def is_torch_tensor(obj: Any) -> bool:
    """True for a torch.Tensor, without importing torch when it is not loaded."""
    return type(obj).__module__.startswith("torch") and hasattr(obj, "detach") and hasattr(obj, "numpy")


def to_numpy(obj: Any) -> np.ndarray:
    """A numpy array from a numpy array, torch tensor, or Python scalar/list."""
    if isinstance(obj, np.ndarray):
        return obj
    if is_torch_tensor(obj):
        tensor = obj.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":
            import ml_dtypes

            return tensor.view(dtype=__import__("torch").int16).numpy().view(ml_dtypes.bfloat16)
        return tensor.contiguous().numpy()
    return np.asarray(obj)


def _flatten(obj: Any) -> list[Any]:
    """Flatten nested tuples/lists of tensors the way torch.onnx flattens forward arguments."""
    if isinstance(obj, (tuple, list)):
        out: list[Any] = []
        for item in obj:
            out.extend(_flatten(item))
        return out
    if obj is None:
        return []
    return [obj]


def is_tensor_input(value: ir.Value) -> bool:
    """False for sequence and optional inputs, which take lists and None rather than arrays."""
    return not isinstance(value.type, (ir.SequenceType, ir.OptionalType))


def _convert(value: ir.Value, given: Any) -> Any:
    """Tensor inputs become numpy arrays; sequences stay lists (of arrays); None stays None."""
    if is_tensor_input(value):
        return to_numpy(given)
    if given is None:
        return None
    if isinstance(given, (list, tuple)):
        return [None if item is None else to_numpy(item) for item in given]
    return to_numpy(given)  # an optional holding a tensor


def make_feeds(model_inputs: list[ir.Value], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Feeds:
    """Match positional and keyword inputs to the model's graph inputs by position and name.

    Positional tensors are matched after flattening nested tuples, as torch.onnx flattens
    forward arguments; sequence and optional inputs take a list or None as one argument.
    """
    names = [v.name for v in model_inputs]
    by_name = {v.name: v for v in model_inputs}
    feeds: Feeds = {}
    positional = list(args) if not all(is_tensor_input(v) for v in model_inputs) else _flatten(list(args))
    if len(positional) > len(names):
        raise InputError(f"The model takes {len(names)} input(s) {names}, but {len(positional)} were given.")
    for name, given in zip(names, positional):
        feeds[name] = _convert(by_name[name], given)
    for key, given in kwargs.items():
        if key not in names:
            if given is None:
                continue
            raise InputError(f"The model has no input named {key!r}; its inputs are {names}.")
        if given is None and is_tensor_input(by_name[key]):
            continue
        if key in feeds:
            raise InputError(f"Input {key!r} was given both by position and by name.")
        feeds[key] = _convert(by_name[key], given)
    missing = [n for n in names if n not in feeds]
    if missing:
        raise InputError(f"Missing model input(s) {missing}; the model takes {names}.")
    for value in model_inputs:
        if is_tensor_input(value):
            check_feed(value, feeds[value.name])
    return feeds


def check_feed(value: ir.Value, array: np.ndarray) -> None:
    """Raise InputError when `array` cannot be fed to `value` (dtype or rank mismatch)."""
    if value.dtype is not None and value.dtype != ir.DataType.UNDEFINED:
        try:
            expected = value.dtype.numpy()
        except TypeError:
            expected = None
        if expected is not None and array.dtype != expected:
            raise InputError(
                f"Input {value.name!r} expects dtype {np.dtype(expected).name} but got {array.dtype.name}; "
                f"convert it with .astype(np.{np.dtype(expected).name})."
            )
    if value.shape is not None and len(value.shape) != array.ndim:
        raise InputError(
            f"Input {value.name!r} expects rank {len(value.shape)} (shape {list(value.shape)}) "
            f"but got shape {list(array.shape)}."
        )


def random_inputs(model_inputs: Sequence[ir.Value], seed: int = 0, shapes: BoundShapes | None = None) -> Feeds:
    """Sample inputs for `model_inputs` at `shapes` (default: `bind_shapes` with nothing bound, so
    symbolic dims get their documented defaults).

    Floats are standard normal; integers and booleans take the values their readers accept
    (`kiln.ir.value_ranges`: Gather indices within the table, OneHot classes within the depth, masks
    of ones, segment ids of zeros, positions counting up), else integers [0, 2) and random
    booleans. An input that sets a shape, a size or a trip count raises InputError: only real data
    can say what it holds.
    """
    rng = np.random.default_rng(seed)
    shapes = shapes if shapes is not None else bind_shapes(list(model_inputs))
    for value in model_inputs:
        if not is_tensor_input(value):
            raise InputError(
                f"Input {value.name!r} is a {type(value.type).__name__}; kiln makes random inputs for "
                "tensors only: pass sample inputs (sample_inputs= / --sample-inputs inputs.npz; a list for a "
                "sequence, None for an empty optional)."
            )
        if value.dtype is None or value.name not in shapes.inputs:
            raise InputError(
                f"Input {value.name!r} has no declared {'dtype' if value.dtype is None else 'shape'}, so kiln "
                "cannot make sample inputs for it: pass them (sample_inputs= / --sample-inputs inputs.npz)"
                + ("." if value.dtype is None else f", or bind its shape (input_shapes={{{value.name!r}: (...)}} / "
                   f"--input-shape {value.name}:D0,D1,...).")
            )
    feeds: Feeds = {}
    for value in model_inputs:
        shape = shapes.shape(value.name)
        try:
            dtype = np.dtype(value.dtype.numpy())
        except TypeError as exc:
            raise InputError(f"Input {value.name!r} has dtype {value.dtype.name}, which kiln cannot sample.") from exc
        if dtype == np.bool_ or np.issubdtype(dtype, np.integer):
            array = _integers(value, shape, dtype, rng, shapes.dims)
        elif dtype.kind == "f" or dtype.kind == "V":
            array = rng.standard_normal(size=shape).astype(dtype)
        elif dtype.kind == "c":
            array = (rng.standard_normal(size=shape) + 1j * rng.standard_normal(size=shape)).astype(dtype)
        elif dtype.kind in ("U", "O", "S"):
            array = np.array(rng.choice(["a", "b"], size=shape), dtype=object)
        else:
            raise InputError(f"Input {value.name!r} has dtype {dtype}, which kiln cannot sample.")
        feeds[value.name] = array
    return feeds


def _integers(value: ir.Value, shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator,
              dims: Mapping[str, int]) -> np.ndarray:
    """Integer (or boolean) values `kiln.ir.value_ranges` allows for `value`, at `shape`."""
    allowed = integer_range(value, dims)
    if allowed.unsampleable is not None:
        raise InputError(
            f"Input {value.name!r} sets {allowed.unsampleable}, so kiln cannot make up a value for it: give "
            f"real inputs with sample_inputs={{{value.name!r}: array, ...}} (kiln optimize --sample-inputs inputs.npz)."
        )
    if allowed.fill is not None:
        return np.full(shape, allowed.fill).astype(dtype)
    if allowed.choices:
        return np.full(shape, allowed.choices[0]).astype(dtype)  # one consistent mode for every element
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if allowed.positions:
        count = shape[-1] if shape else 1
        positions = np.arange(count) % (allowed.high or max(count, 1))
        return np.broadcast_to(positions if shape else positions[0], shape).astype(dtype, order="C")
    high = min(allowed.high if allowed.high is not None else 2, int(np.iinfo(dtype).max))
    return rng.integers(allowed.low, max(high, allowed.low + 1), size=shape).astype(dtype)


def shapes_of_feeds(inputs: Sequence[ir.Value], feeds: Feeds, binding: ShapeBinding, bound: BoundShapes,
                     given_as: str) -> BoundShapes:
    """The shapes of the given inputs (`given_as`: "sample_inputs" or "example_inputs"), checked
    against the model and against what the user bound (`bound`, from `binding`): two different
    shapes for one input are a mistake to report."""
    given = {v.name: tuple(feeds[v.name].shape) for v in inputs
             if is_tensor_input(v) and hasattr(feeds.get(v.name), "shape")}
    fed = bind_shapes(inputs, ShapeBinding(input_shapes=given, fix=binding.fix), given_as=given_as)
    for name in binding.input_shapes:
        if name in fed.inputs and fed.shape(name) != bound.shape(name):
            raise InputError(f"{given_as}[{name!r}] has shape {list(fed.shape(name))}, but input_shapes binds it "
                             f"to {list(bound.shape(name))}: give one of them (the given inputs' shapes are what "
                             "validation runs).")
    for symbol, size in binding.dim_values.items():
        if fed.dims.get(symbol, size) != size:
            raise InputError(f"dim_values[{symbol!r}] = {size}, but {given_as} give it {fed.dims[symbol]}: give one "
                             "of them (the given inputs' shapes are what validation runs).")
    return fed
