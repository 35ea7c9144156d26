"""Input shapes: which concrete shape every graph input has when kiln validates, samples and prices
a model whose inputs declare symbolic or unknown dims.

A dim is bound, in order, by the model itself (a static size), by the user (`input_shapes`, whole
shapes per input; `dim_values`, sizes per symbol name), else by a documented default: by the
symbol's name (`DIM_DEFAULTS`: batch 1, sequence 128, image sides 224, audio samples 16000, ...),
else by its place (axis 0 of anything is a batch; the last two axes of a 4-D float input are image
sides; other axes are sequence-like). Every default is reported as guessed, so the user knows which
shapes the figures are for and which flag changes them.

Unknown dims written as `-1` (Paddle, old converters) or `0` on a graph input are read as symbolic
(`normalize_unknown_dims`), never as sizes: ONNX Runtime would refuse every non-empty input for a
declared 0, and numpy every array for a -1.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import onnx_ir as ir

from kiln.errors import InputError
from kiln.ir.queries import FLOAT_TYPES

logger = logging.getLogger(__name__)

__all__ = [
    "DIM_DEFAULTS",
    "BoundInput",
    "BoundShapes",
    "ShapeBinding",
    "bind_shapes",
    "fix_input_shapes",
    "normalize_unknown_dims",
]

#: Default sizes of unbound symbolic dims, by the words their names are made of (lower-cased,
#: split at non-letters and camelCase). The first rule with a word in the name wins.
DIM_DEFAULTS: tuple[tuple[str, frozenset[str], int], ...] = (
    ("batch", frozenset({"batch", "bs", "n", "b", "batchsize"}), 1),
    ("audio samples", frozenset({"samples", "audio", "wav", "waveform"}), 16000),
    ("image side", frozenset({"height", "width", "h", "w", "img", "image", "rows", "cols", "side", "size"}), 224),
    ("sequence", frozenset({"sequence", "seq", "seqlen", "length", "len", "tokens", "token", "time", "t",
                            "frames", "frame", "steps", "step", "timesteps", "words", "chars"}), 128),
    ("past sequence", frozenset({"past", "cache"}), 0),
)
#: When a name says nothing: axis 0 is a batch, the last two axes of a 4-D floating-point input are
#: image sides (NCHW), and any other axis is sequence-like.
BATCH_DEFAULT = 1
IMAGE_SIDE_DEFAULT = 224
SEQUENCE_DEFAULT = 128

def _words(name: str) -> set[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    words = {w for w in re.split(r"[^a-zA-Z]+", spaced.lower()) if w}
    return words | {re.sub(r"[^a-z]", "", name.lower())}


def default_for_name(name: str) -> tuple[int, str] | None:
    """(size, rule) for a symbol name `DIM_DEFAULTS` recognises, else None."""
    words = _words(name)
    # "past_sequence_length" is a past length, not a sequence: the more specific rule first
    if words & {"past", "cache"} and words & {"sequence", "seq", "length", "len", "key", "value"}:
        return 0, "past sequence"
    for rule, vocabulary, size in DIM_DEFAULTS:
        if words & vocabulary:
            return size, rule
    return None


def default_for_axis(axis: int, rank: int, dtype: ir.DataType | None) -> tuple[int, str]:
    """(size, rule) for an unnamed dim from its place in the input."""
    if axis == 0:
        return BATCH_DEFAULT, "axis 0 (batch)"
    if rank == 4 and dtype in FLOAT_TYPES and axis >= 2:
        return IMAGE_SIDE_DEFAULT, "axis of a 4-D image (side)"
    return SEQUENCE_DEFAULT, "sequence-like axis"


@dataclass(frozen=True)
class ShapeBinding:
    """What the user bound: whole shapes per input name and sizes per symbol name, and whether the
    bound dims are written into the model (`fix`: folding may then use them, and the saved model
    has static inputs) or stay symbolic (the default)."""

    input_shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)
    dim_values: Mapping[str, int] = field(default_factory=dict)
    fix: bool = False

    def __post_init__(self) -> None:
        for name, shape in self.input_shapes.items():
            if isinstance(shape, (str, bytes)) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise InputError(f"input_shapes[{name!r}] = {shape!r}: give a shape as a tuple of sizes >= 0, "
                                 f"e.g. input_shapes={{{name!r}: (1, 3, 224, 224)}}.")
        for name, size in self.dim_values.items():
            if not isinstance(size, int) or size < 0:
                raise InputError(f"dim_values[{name!r}] = {size!r}: a dim size is an integer >= 0.")


@dataclass(frozen=True)
class BoundInput:
    """One graph input: its declared dims (int, symbol name, or None when unnamed), the concrete
    shape used, and where each size came from ("model", "input_shapes", "dim_values", or
    "default: <rule>")."""

    name: str
    declared: tuple[int | str | None, ...]
    shape: tuple[int, ...]
    sources: tuple[str, ...]

    @property
    def guessed(self) -> bool:
        return any(s.startswith("default") for s in self.sources)

    def text(self) -> str:
        return f"{self.name} [{', '.join(map(str, self.shape))}]"


@dataclass
class BoundShapes:
    """The concrete shape of every tensor input and the size of every symbol they declare (what the
    cost model binds symbolic dims with); `warnings` says which sizes were guessed."""

    inputs: dict[str, BoundInput]
    dims: dict[str, int]
    warnings: list[str]
    fixed: bool = False

    def shape(self, name: str) -> tuple[int, ...]:
        return self.inputs[name].shape

    def summary(self) -> str:
        """'x [1, 3, 224, 224], ids [1, 128]' for the report."""
        return ", ".join(b.text() for b in self.inputs.values())


def _declared(value: ir.Value) -> tuple[int | str | None, ...]:
    assert value.shape is not None
    out: list[int | str | None] = []
    for dim in value.shape:
        if isinstance(dim, int):
            out.append(dim if dim >= 0 else None)  # -1: unknown
        else:
            out.append(str(dim.value) if dim.value else None)
    return tuple(out)


def bind_shapes(model_inputs: Sequence[ir.Value], binding: ShapeBinding | None = None) -> BoundShapes:
    """Bind every dim of the tensor inputs in `model_inputs` (see the module doc). Raises InputError
    for a binding that names no input or symbol, has the wrong rank, or contradicts a static size."""
    binding = binding or ShapeBinding()
    tensors = [v for v in model_inputs if v.shape is not None and not isinstance(v.type, (ir.SequenceType,
                                                                                            ir.OptionalType))]
    names = [v.name for v in model_inputs]
    unknown = sorted(set(binding.input_shapes) - set(names))
    if unknown:
        raise InputError(f"input_shapes names {unknown}, which the model does not have; its inputs are {names}.")
    declared = {v.name: _declared(v) for v in tensors}
    symbols = {d for dims in declared.values() for d in dims if isinstance(d, str)}
    unknown = sorted(set(binding.dim_values) - symbols)
    if unknown:
        raise InputError(f"dim_values names {unknown}, which no input declares; the inputs' symbolic dims are "
                         f"{sorted(symbols) or 'none'} (bind an unnamed dim with input_shapes / --input-shape).")
    dims: dict[str, int] = dict(binding.dim_values)
    dim_source: dict[str, str] = dict.fromkeys(binding.dim_values, "dim_values")
    # whole shapes first: they bind the symbols they cover, for every input that shares them
    for value in tensors:
        given = binding.input_shapes.get(value.name)
        if given is None:
            continue
        spec = declared[value.name]
        if len(given) != len(spec):
            raise InputError(f"input_shapes[{value.name!r}] has rank {len(given)}, but the input is declared "
                             f"{_spec_text(spec)} (rank {len(spec)}).")
        for axis, (want, have) in enumerate(zip(given, spec)):
            if isinstance(have, int) and have != want:
                raise InputError(f"input_shapes[{value.name!r}] sets axis {axis} to {want}, but the model declares "
                                 f"it static {have}: {_spec_text(spec)}.")
            if isinstance(have, str):
                if have in dims and dims[have] != want:
                    raise InputError(f"{have!r} is bound to both {dims[have]} ({dim_source[have]}) and {want} "
                                     f"(input_shapes[{value.name!r}]); bind it once.")
                dims.setdefault(have, want)
                dim_source.setdefault(have, "input_shapes")
    bound: dict[str, BoundInput] = {}
    warnings: list[str] = []
    guessed: dict[str, tuple[int, str]] = {}
    for value in tensors:
        spec = declared[value.name]
        given = binding.input_shapes.get(value.name)
        shape: list[int] = []
        sources: list[str] = []
        for axis, dim in enumerate(spec):
            if isinstance(dim, int):
                shape.append(dim)
                sources.append("model")
            elif given is not None:
                shape.append(given[axis])
                sources.append("input_shapes")
            elif dim is not None and dim in dims:
                shape.append(dims[dim])
                sources.append(dim_source[dim])
            else:
                size, rule = (default_for_name(dim) if dim is not None else None) or \
                    default_for_axis(axis, len(spec), value.dtype)
                if dim is not None:
                    dims[dim] = size
                    dim_source[dim] = f"default: {rule}"
                    guessed.setdefault(dim, (size, rule))
                else:
                    warnings.append(f"{value.name} axis {axis} (unnamed) guessed {size} ({rule})")
                shape.append(size)
                sources.append(f"default: {rule}")
        bound[value.name] = BoundInput(value.name, spec, tuple(shape), tuple(sources))
    warnings[:0] = [f"{symbol} guessed {size} ({rule})" for symbol, (size, rule) in guessed.items()]
    return BoundShapes(bound, dims, warnings, fixed=binding.fix)


def _spec_text(spec: Sequence[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in spec) + "]"


#: Symbol names converters write for "unknown" (Paddle writes "?"): not names a user can bind, and
#: never the same dim twice.
_PLACEHOLDER_NAMES = frozenset({"?", "-1", "None", "none", "unk", "unknown", "dynamic"})


def _unknown(dim: int | ir.SymbolicDim) -> bool:
    if isinstance(dim, int):
        return dim <= 0
    return dim.value is not None and str(dim.value).strip() in _PLACEHOLDER_NAMES


def normalize_unknown_dims(model: ir.Model) -> list[str]:
    """Read `-1` dims (anywhere on the main graph's inputs, outputs and value infos), and `0` dims
    and placeholder names such as "?" on graph inputs, as unknown: on inputs they become symbolic
    dims named `<input>_dim<axis>`, elsewhere unnamed ones. Returns one line per input changed."""
    notes: list[str] = []
    for value in model.graph.inputs:
        if value.shape is None or value.is_initializer():
            continue
        dims = list(value.shape)
        changed = [axis for axis, d in enumerate(dims) if _unknown(d)]
        if not changed:
            continue
        for axis in changed:
            dims[axis] = ir.SymbolicDim(f"{value.name}_dim{axis}")
        before = _spec_text([d if isinstance(d, int) else (str(d.value) if d.value else None) for d in value.shape])
        value.shape = ir.Shape(dims)
        notes.append(f"{value.name} declared {before}: dim(s) {changed} read as unknown")
    for value in _annotated_values(model.graph):
        if value.shape is None or value in model.graph.inputs:
            continue
        if any(isinstance(d, int) and d < 0 for d in value.shape):
            value.shape = ir.Shape([ir.SymbolicDim(None) if isinstance(d, int) and d < 0 else d for d in value.shape])
    for note in notes:
        logger.info("%s", note)
    return notes


def _annotated_values(graph: ir.Graph) -> list[ir.Value]:
    values = list(graph.outputs)
    for node in graph:
        values.extend(node.outputs)
    return values


def fix_input_shapes(model: ir.Model, shapes: BoundShapes) -> None:
    """Write the bound shapes into the model's graph inputs (the shapes of other values are left to
    shape inference, which constant folding runs)."""
    for value in model.graph.inputs:
        bound = shapes.inputs.get(value.name)
        if bound is not None:
            value.shape = ir.Shape(list(bound.shape))
