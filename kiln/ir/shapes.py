"""Input shapes: which concrete shape every graph input has when kiln validates, samples and prices
a model whose inputs declare symbolic or unknown dims.

A dim is bound, in order, by the model itself (a static size), by the user (`input_shapes`, whole
shapes per input; `dim_values`, sizes per symbol name; the shapes of given sample inputs), else by
a documented default: by the symbol's name (`DIM_DEFAULTS`: batch 1, sequence 128, image sides 224,
audio samples 16000, past sequence 0), else by its place (axis 0 of anything is a batch; axes 2 and
3 of a 4-D float input are image sides; other axes are sequence-like). Every default is reported as
guessed, so the user knows which shapes the figures are for and which flag changes them.

Unknown dims written as `-1` (Paddle, old converters), `0` or left unnamed on a graph input are read
as symbols named `<input>_dim<axis>` at capture (`normalize_unknown_dims`), never as sizes: ONNX
Runtime would refuse every non-empty input for a declared 0, and numpy every array for a -1.

Only `fix_input_shapes` writes sizes into a model, and only those the user (or given data) chose.
"""

from __future__ import annotations

import logging
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import onnx_ir as ir

from kiln.errors import InputError
from kiln.ir.queries import FLOAT_TYPES

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

__all__ = [
    "DIM_DEFAULTS",
    "BoundInput",
    "BoundShapes",
    "ShapeBinding",
    "bind_shapes",
    "fix_input_shapes",
    "normalize_unknown_dims",
    "unknown_dim_name",
]

#: Default sizes of unbound symbolic dims, by the words their names are made of (lower-cased,
#: split at non-letters and camelCase, plus the whole name with non-letters dropped). The first rule
#: with a word of three or more letters in the name wins, else the first with a shorter one.
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
    """(size, rule) for a symbol name `DIM_DEFAULTS` recognises, else None. Whole words decide
    before one- and two-letter ones: "n_tokens" is a sequence, "N" alone a batch."""
    words = _words(name)
    # "past_sequence_length" is a past length, not a sequence: the more specific rule first
    if words & {"past", "cache"} and words & {"sequence", "seq", "length", "len", "key", "value"}:
        return 0, "past sequence"
    for strong in (True, False):
        for rule, vocabulary, size in DIM_DEFAULTS:
            if any((len(w) > 2) == strong for w in words & vocabulary):
                return size, rule
    return None


def unknown_dim_name(input_name: str, axis: int) -> str:
    """The symbol an unknown (`-1`, `0` or unnamed) dim of a graph input is given at capture, so
    that `dim_values` / `--dim` can bind it; its default comes from its place, not its name."""
    return f"{input_name}_dim{axis}"


def default_for_axis(axis: int, rank: int, dtype: ir.DataType | None) -> tuple[int, str]:
    """(size, rule) for an unnamed dim from its place in the input."""
    if axis == 0:
        return BATCH_DEFAULT, "batch: axis 0"
    if rank == 4 and dtype in FLOAT_TYPES and axis >= 2:
        return IMAGE_SIDE_DEFAULT, "image side: axis 2 or 3 of a 4-D float input"
    return SEQUENCE_DEFAULT, "sequence: any other axis"


@dataclass(frozen=True)
class ShapeBinding:
    """What the user bound: whole shapes per input name and sizes per symbol name (checked and made
    plain ints here: a bad value is an InputError, not a TypeError later), and whether the bound
    sizes are written into the model (`fix`: folding may then use them; guessed sizes never are)
    or stay symbolic (the default)."""

    input_shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)
    dim_values: Mapping[str, int] = field(default_factory=dict)
    fix: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shapes", _checked(self.input_shapes, "input_shapes", _sizes,
                                                          "input name to a tuple of sizes >= 0",
                                                          "{'x': (1, 3, 224, 224)}"))
        object.__setattr__(self, "dim_values", _checked(self.dim_values, "dim_values", _size,
                                                        "symbol name to an integer >= 0", "{'batch': 1}"))


def _size(value: object) -> int | None:
    """`value` as a dim size (an int >= 0, numpy ints too; not a bool), else None."""
    if isinstance(value, bool):
        return None
    try:
        size = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None
    return size if size >= 0 else None


def _sizes(shape: object) -> tuple[int, ...] | None:
    """`shape` as a tuple of dim sizes (any iterable of ints >= 0), else None."""
    if isinstance(shape, (str, bytes)):
        return None
    try:
        sizes = [_size(d) for d in shape]  # type: ignore[attr-defined]
    except TypeError:  # not iterable (an int, a 0-d array)
        return None
    return None if any(d is None for d in sizes) else tuple(d for d in sizes if d is not None)


def _checked(mapping: object, what: str, convert: Callable[[object], _T | None], item: str,
             example: str) -> dict[str, _T]:
    """`mapping` ({name: value}) with every value converted, else an InputError naming the bad one."""
    if not isinstance(mapping, Mapping):
        raise InputError(f"{what} = {mapping!r}: give a mapping from {item}, e.g. {what}={example}.")
    out: dict[str, _T] = {}
    for name, value in mapping.items():
        converted = convert(value)
        if converted is None:
            raise InputError(f"{what}[{name!r}] = {value!r}: give {item.split(' to ')[1]}, e.g. {what}={example}.")
        out[str(name)] = converted
    return out


@dataclass(frozen=True)
class BoundInput:
    """One graph input: its declared dims (int, symbol name, or None when unnamed), the concrete
    shape used, and where each size came from ("model", "input_shapes", "sample_inputs",
    "example_inputs", "dim_values", or "default: <rule>")."""

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


def _declared(value: ir.Value, rank: int | None = None) -> tuple[int | str | None, ...]:
    """The declared dims of `value` (int, symbol name, None when unknown); an input with no declared
    shape counts as `rank` unknown dims."""
    if value.shape is None:
        return (None,) * (rank or 0)
    out: list[int | str | None] = []
    for dim in value.shape:
        if isinstance(dim, int):
            out.append(dim if dim >= 0 else None)  # -1: unknown
        else:
            out.append(str(dim.value) if dim.value else None)
    return tuple(out)


def _is_tensor(value: ir.Value) -> bool:
    return not isinstance(value.type, (ir.SequenceType, ir.OptionalType))


def _check_names(model_inputs: Sequence[ir.Value], binding: ShapeBinding, given_as: str) -> None:
    names = [v.name for v in model_inputs]
    unknown = sorted(set(binding.input_shapes) - set(names))
    if unknown:
        raise InputError(f"{given_as} names {unknown}, which the model does not have; its inputs are {names}.")
    for value in model_inputs:
        if value.name in binding.input_shapes and not _is_tensor(value):
            raise InputError(f"{given_as}[{value.name!r}]: the input is a {type(value.type).__name__}, which has no "
                             "one shape; give it as sample inputs (sample_inputs= / --sample-inputs inputs.npz).")


def bind_shapes(model_inputs: Sequence[ir.Value], binding: ShapeBinding | None = None, *,
                given_as: str = "input_shapes") -> BoundShapes:
    """Bind every dim of the tensor inputs in `model_inputs` (see the module doc); `given_as` names
    where the whole shapes came from in messages and sources ("sample_inputs" when they are the
    shapes of given data). Raises InputError for a binding that names no input or symbol, has the
    wrong rank, or contradicts a static size or itself. An input with no declared shape is bound
    only by a whole shape."""
    binding = binding or ShapeBinding()
    _check_names(model_inputs, binding, given_as)
    tensors = [v for v in model_inputs if _is_tensor(v) and (v.shape is not None or v.name in binding.input_shapes)]
    declared = {v.name: _declared(v, len(binding.input_shapes.get(v.name, ()))) for v in tensors}
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
        if given is not None:
            _bind_whole_shape(f"{given_as}[{value.name!r}]", given, declared[value.name], dims, dim_source)
    bound: dict[str, BoundInput] = {}
    unnamed: list[str] = []
    guessed: dict[str, tuple[int, str]] = {}
    for value in tensors:
        spec = declared[value.name]
        given = binding.input_shapes.get(value.name)
        shape: list[int] = []
        sources: list[str] = []
        for axis, dim in enumerate(spec):
            if isinstance(dim, int):
                size, source = dim, "model"
            elif given is not None:
                size, source = given[axis], given_as
            elif dim is not None and dim in dims:
                size, source = dims[dim], dim_source[dim]
            else:
                by_name = dim is not None and dim != unknown_dim_name(value.name, axis)
                size, rule = (default_for_name(dim) if by_name else None) or \
                    default_for_axis(axis, len(spec), value.dtype)
                source = f"default: {rule}"
                if dim is not None:
                    dims[dim], dim_source[dim] = size, source
                    guessed.setdefault(dim, (size, rule))
                else:
                    unnamed.append(f"{value.name} axis {axis} (unnamed) guessed {size} ({rule})")
            shape.append(size)
            sources.append(source)
        bound[value.name] = BoundInput(value.name, spec, tuple(shape), tuple(sources))
    warnings = [f"{symbol} guessed {size} ({rule})" for symbol, (size, rule) in guessed.items()] + unnamed
    return BoundShapes(bound, dims, warnings, fixed=binding.fix)


def _bind_whole_shape(where: str, given: Sequence[int], spec: Sequence[int | str | None], dims: dict[str, int],
                      dim_source: dict[str, str]) -> None:
    """Check a whole shape against the declared one and bind the symbols it covers into `dims`."""
    if len(given) != len(spec):
        raise InputError(f"{where} has rank {len(given)} {list(given)}, but the input is declared "
                         f"{_spec_text(spec)} (rank {len(spec)}).")
    for axis, (want, have) in enumerate(zip(given, spec)):
        if isinstance(have, int) and have != want:
            raise InputError(f"{where} = {list(given)} sets axis {axis} to {want}, but the model declares it "
                             f"static {have}: {_spec_text(spec)}.")
        if isinstance(have, str):
            if have in dims and dims[have] != want:
                raise InputError(f"{have!r} is bound to both {dims[have]} ({dim_source[have]}) and {want} "
                                 f"({where}); bind it once.")
            dims.setdefault(have, want)
            dim_source.setdefault(have, where.split("[")[0])


def _spec_text(spec: Sequence[int | str | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in spec) + ")"


#: Symbol names converters write for "unknown" (Paddle writes "?"): not names a user could bind, and
#: never the same dim twice, so they are read like an unnamed dim.
PLACEHOLDER_DIM_NAMES = frozenset({"?", "-1", "None", "none", "unk", "unknown", "dynamic"})


def _is_unknown_dim(dim: int | ir.SymbolicDim) -> bool:
    if isinstance(dim, int):
        return dim <= 0
    return not dim.value or str(dim.value).strip() in PLACEHOLDER_DIM_NAMES


def normalize_unknown_dims(model: ir.Model) -> list[str]:
    """Read the unknown dims of graph inputs (`-1`, `0`, a dim with neither size nor name, or a
    placeholder name such as "?") as symbols named `unknown_dim_name(input, axis)`, which
    `dim_values` / `--dim` can bind, and `-1` dims anywhere else (outputs, value infos, subgraphs)
    as unnamed unknowns. Returns one line per input changed."""
    notes: list[str] = []
    for value in model.graph.inputs:
        if value.shape is None or value.is_initializer():
            continue
        dims = list(value.shape)
        changed = [axis for axis, d in enumerate(dims) if _is_unknown_dim(d)]
        if not changed:
            continue
        before = _spec_text(_declared(value))
        for axis in changed:
            dims[axis] = ir.SymbolicDim(unknown_dim_name(value.name, axis))
        value.shape = ir.Shape(dims)
        notes.append(f"{value.name} declared {before}: dim(s) {changed} read as unknown, named "
                     f"{[unknown_dim_name(value.name, a) for a in changed]}")
    for value in _annotated_values(model.graph):
        if value.shape is not None and value not in model.graph.inputs \
                and any(isinstance(d, int) and d < 0 for d in value.shape):
            value.shape = ir.Shape([ir.SymbolicDim(None) if isinstance(d, int) and d < 0 else d for d in value.shape])
    for note in notes:
        logger.info("%s", note)
    return notes


def _annotated_values(graph: ir.Graph) -> list[ir.Value]:
    """Every value of `graph` and its subgraphs that may carry a shape annotation."""
    values = list(graph.outputs)
    for node in ir.traversal.RecursiveGraphIterator(graph):
        values.extend(node.outputs)
    for subgraph in graph.subgraphs():
        values.extend(subgraph.inputs)
        values.extend(subgraph.outputs)
    return values


def fix_input_shapes(model: ir.Model, shapes: BoundShapes) -> None:
    """Write the bound sizes into the model's graph inputs, and each symbol bound by the user (or by
    given data) wherever else the model uses it (same symbol, same size). Guessed sizes stay
    symbolic: the saved model never claims a size nobody chose. Other shapes are left to shape
    inference, which constant folding runs."""
    for value in model.graph.inputs:
        bound = shapes.inputs.get(value.name)
        if bound is not None:
            value.shape = ir.Shape([size if not source.startswith("default") else _symbol(declared)
                                    for size, source, declared in zip(bound.shape, bound.sources, bound.declared)])
    fixed = {symbol: size for symbol, size in shapes.dims.items()
             if not any(source.startswith("default") for source in _sources_of(shapes, symbol))}
    if not fixed:
        return
    for value in _annotated_values(model.graph):
        if value.shape is not None and value not in model.graph.inputs:
            value.shape = ir.Shape([fixed.get(str(d.value), d) if isinstance(d, ir.SymbolicDim) and d.value else d
                                    for d in value.shape])


def _symbol(declared: int | str | None) -> ir.SymbolicDim | int:
    return declared if isinstance(declared, int) else ir.SymbolicDim(declared)


def _sources_of(shapes: BoundShapes, symbol: str) -> list[str]:
    return [source for bound in shapes.inputs.values() for source, declared in zip(bound.sources, bound.declared)
            if declared == symbol]
