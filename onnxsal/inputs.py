"""Checking what users feed: arrays against the model's inputs, and targets against its output."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from .errors import InvalidInputError


@dataclass(frozen=True)
class TensorSpec:
    name: str
    elem_type: int
    shape: tuple | None  # ints for fixed dims, str/None for free ones

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))

    def describe(self) -> str:
        if self.shape is None:
            return "any shape"
        return "[" + ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in self.shape) + "]"


def specs(values, skip=()) -> list[TensorSpec]:
    out = []
    for v in values:
        if v.name in skip or not v.type.HasField("tensor_type"):
            continue
        t = v.type.tensor_type
        shape = None
        if t.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
        out.append(TensorSpec(v.name, t.elem_type, shape))
    return out


def model_inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    return specs(model.graph.input, skip={t.name for t in model.graph.initializer})


def check_array(spec: TensorSpec, value) -> np.ndarray:
    """`value` as an array of the input's dtype, or one clear error about what was expected."""
    try:
        arr = np.asarray(value)
    except Exception as exc:
        raise InvalidInputError(f"input {spec.name!r} could not be read as an array: {exc}") from exc
    want = spec.dtype
    if want.kind == "f":
        if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
            raise InvalidInputError(f"input {spec.name!r} expects {want.name} values, got an array of {arr.dtype}.")
        if arr.dtype.kind in "iu":
            raise InvalidInputError(
                f"input {spec.name!r} expects {want.name} values, got integers ({arr.dtype}); "
                f"convert and scale them first (for images, usually to [0, 1] floats)."
            )
        arr = arr.astype(want, copy=False)
        if not np.all(np.isfinite(arr)):
            raise InvalidInputError(f"input {spec.name!r} holds NaN or infinite values.")
    elif want.kind in "iu":
        if arr.dtype.kind not in "iu":
            raise InvalidInputError(f"input {spec.name!r} expects {want.name} values, got an array of {arr.dtype}.")
        arr = arr.astype(want, copy=False)
    elif want == np.bool_ and arr.dtype != np.bool_:
        raise InvalidInputError(f"input {spec.name!r} expects booleans, got an array of {arr.dtype}.")
    if spec.shape is not None:
        if arr.ndim != len(spec.shape):
            raise InvalidInputError(
                f"input {spec.name!r} expects shape {spec.describe()} (rank {len(spec.shape)}), got shape {arr.shape}."
            )
        for got, dim in zip(arr.shape, spec.shape):
            if isinstance(dim, int) and dim > 0 and got != dim:
                raise InvalidInputError(f"input {spec.name!r} expects shape {spec.describe()}, got shape {arr.shape}.")
    return arr


def check_feeds(inputs, input_specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """A feed dict from one array (single-input models) or a mapping of names to arrays.

    Only names, dtypes and declared dims are checked here; which inputs carry the batch is the
    explained input's business (`batch_axes`): a state or a scalar input has no batch axis."""
    if isinstance(inputs, Mapping):
        known = {s.name: s for s in input_specs}
        unknown = [k for k in inputs if k not in known]
        if unknown:
            raise InvalidInputError(f"the model has no input named {unknown[0]!r}; its inputs are {list(known)}.")
        missing = [k for k in known if k not in inputs]
        if missing:
            raise InvalidInputError(f"input {missing[0]!r} is missing; the model needs {list(known)}.")
        return {name: check_array(known[name], inputs[name]) for name in known}
    if len(input_specs) != 1:
        raise InvalidInputError(
            f"the model has {len(input_specs)} inputs {[s.name for s in input_specs]}: pass a dict of named arrays."
        )
    return {input_specs[0].name: check_array(input_specs[0], inputs)}


def batch_axes(feeds: dict[str, np.ndarray], input_specs: list[TensorSpec], explained: str) -> dict[str, int | None]:
    """Where each input holds the explained input's batch (axis 0 of `explained`), None where it has none.

    Another input shares the batch on the axis that the file names like the explained input's batch
    dim (a state [layers, N, hidden] declared with the same 'N' on axis 1), else on axis 0 when its
    leading dim has the batch's size and the file does not name it otherwise, nor fix it while leaving the
    batch free (a mask declared [1, F] runs with every batch size, as the file says). Inputs without the batch
    (a scalar sample rate, a mask shared by all samples, a state whose dims the file leaves unnamed)
    are fed whole to every chunk.
    """
    x = feeds[explained]
    if x.ndim == 0 or x.shape[0] == 0:
        raise InvalidInputError(f"input {explained!r} needs a leading batch axis with at least one sample.")
    n = x.shape[0]
    declared = {s.name: s.shape for s in input_specs}
    lead = (declared.get(explained) or (None,))[0]
    symbol = lead if isinstance(lead, str) else None
    axes: dict[str, int | None] = {}
    for name, a in feeds.items():
        dims = declared.get(name)
        named = [i for i, d in enumerate(dims or ()) if symbol is not None and d == symbol]
        if name == explained:
            axes[name] = 0
        elif len(named) == 1:
            axis = named[0]
            if a.shape[axis] != n:
                raise InvalidInputError(
                    f"input {name!r} holds the batch {symbol!r} of {explained!r} on axis {axis}, so it needs "
                    f"{n} samples there, not {a.shape[axis]} (shape {a.shape})."
                )
            axes[name] = axis
        elif a.ndim > 0 and a.shape[0] == n and not (dims and isinstance(dims[0], str) and symbol and dims[0] != symbol) \
                and not (dims and isinstance(dims[0], int) and dims[0] > 0 and not isinstance(lead, int)):
            axes[name] = 0
        else:
            axes[name] = None
    return axes


def take(value: np.ndarray, axis: int | None, index) -> np.ndarray:
    """The samples `index` (a slice or an index array) of `value` along its batch axis; all of it
    when it has none."""
    if axis is None:
        return value
    if isinstance(index, slice):
        return value[(slice(None),) * axis + (index,)]
    return np.take(value, index, axis=axis)


def normalise_input_shapes(input_shapes, input_specs: list[TensorSpec]) -> dict[str, list[int | None]]:
    """`input_shapes` (a dict of name -> dims, or one sequence of dims for a single-input model) as a
    dict of dim lists, checked against the inputs: an int >= 1 fixes a dim, None leaves it dynamic."""
    known = {s.name: s for s in input_specs}
    if not isinstance(input_shapes, Mapping):
        if len(input_specs) != 1:
            raise InvalidInputError(
                f"the model has {len(input_specs)} inputs {list(known)}: give input_shapes as a dict of name -> dims."
            )
        input_shapes = {input_specs[0].name: input_shapes}
    out: dict[str, list[int | None]] = {}
    for name, dims in input_shapes.items():
        if name not in known:
            raise InvalidInputError(f"input_shapes names {name!r}, which is not an input; the inputs are {list(known)}.")
        spec = known[name]
        try:
            given = [None if d is None else int(d) for d in dims]
        except (TypeError, ValueError):
            raise InvalidInputError(f"input_shapes[{name!r}] must be a sequence of ints (or None for a free dim), not {dims!r}.") from None
        if any(d is not None and d < 1 for d in given):
            raise InvalidInputError(f"input_shapes[{name!r}] = {tuple(given)} has a dim below 1.")
        if spec.shape is not None and len(given) != len(spec.shape):
            raise InvalidInputError(f"input {name!r} has rank {len(spec.shape)} ({spec.describe()}); input_shapes gives {tuple(given)}.")
        for got, dim in zip(given, spec.shape or ()):
            if got is not None and isinstance(dim, int) and dim > 0 and got != dim:
                raise InvalidInputError(f"input {name!r} is fixed to {spec.describe()} by the file; input_shapes gives {tuple(given)}.")
        out[name] = given
    return out


@dataclass(frozen=True)
class Target:
    """A checked target: kind "argmax", "target" (int64 indices [N]) or "tensor" (a seed, whose batch
    lies on `axis`: 0 unless the output holds its batch elsewhere, as a CTC output [T, N, C] does)."""

    kind: str
    value: np.ndarray | None = None
    axis: int = 0

    def take(self, index) -> np.ndarray:
        """The target of samples `index` (a slice or index array)."""
        return take(self.value, self.axis if self.kind == "tensor" else 0, index)


def check_target(target, n: int, n_classes: int | None, output_shape: tuple | None, dtype: np.dtype,
                 batch_axis: int = 0) -> Target:
    """Turn None, an int, N ints, or a seed array of the output's shape into a `Target`.

    `output_shape` is the output's shape as the model returns it (free dims, str or None, take any
    size); a float array of that shape is a seed, whose batch lies on `batch_axis`."""
    if target is None:
        return Target("argmax")
    arr = np.asarray(target)
    if arr.dtype.kind == "f" and output_shape is not None and _fits(arr.shape, output_shape, n, batch_axis):
        if not np.all(np.isfinite(arr)):
            raise InvalidInputError("the seed tensor holds NaN or infinite values.")
        return Target("tensor", arr.astype(dtype), batch_axis)
    if arr.dtype.kind not in "iu":
        shape = "" if output_shape is None else " " + _describe(output_shape, n, batch_axis)
        raise InvalidInputError(
            "target must be None (top class), a class index, one index per sample, or a float seed "
            f"array of the output's shape{shape}; got {arr.dtype} values of shape {arr.shape}."
        )
    if arr.ndim == 0:
        arr = np.full(n, int(arr), dtype=np.int64)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InvalidInputError(f"target needs one class index per sample ({n}), got shape {arr.shape}.")
    if n_classes is not None and (arr.min() < 0 or arr.max() >= n_classes):
        bad = int(arr[(arr < 0) | (arr >= n_classes)][0])
        raise InvalidInputError(f"target class {bad} is out of range: the output has {n_classes} classes (0..{n_classes - 1}).")
    return Target("target", arr.astype(np.int64))


def _fits(shape: tuple, output_shape: tuple, n: int, batch_axis: int) -> bool:
    """Whether an array of `shape` fits an output of `output_shape` holding n samples on `batch_axis`."""
    if len(shape) != len(output_shape) or len(shape) == 0 or shape[batch_axis] != n:
        return False
    return all(not isinstance(d, int) or i == batch_axis or got == d for i, (got, d) in enumerate(zip(shape, output_shape)))


def _describe(output_shape: tuple, n: int, batch_axis: int) -> str:
    dims = [str(n) if i == batch_axis else (str(d) if isinstance(d, int) else "?") for i, d in enumerate(output_shape)]
    return "(" + ", ".join(dims) + ")"
