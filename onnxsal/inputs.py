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
    """A feed dict from one array (single-input models) or a mapping of names to arrays."""
    if isinstance(inputs, Mapping):
        known = {s.name: s for s in input_specs}
        unknown = [k for k in inputs if k not in known]
        if unknown:
            raise InvalidInputError(f"the model has no input named {unknown[0]!r}; its inputs are {list(known)}.")
        missing = [k for k in known if k not in inputs]
        if missing:
            raise InvalidInputError(f"input {missing[0]!r} is missing; the model needs {list(known)}.")
        feeds = {name: check_array(known[name], inputs[name]) for name in known}
    else:
        if len(input_specs) != 1:
            raise InvalidInputError(
                f"the model has {len(input_specs)} inputs {[s.name for s in input_specs]}: pass a dict of named arrays."
            )
        feeds = {input_specs[0].name: check_array(input_specs[0], inputs)}
    batches = {a.shape[0] for a in feeds.values() if a.ndim > 0}
    if len(batches) > 1:
        raise InvalidInputError(f"the inputs disagree on the batch size: {sorted(batches)}.")
    if any(a.ndim == 0 for a in feeds.values()) or 0 in batches:
        raise InvalidInputError("inputs need a leading batch axis with at least one sample.")
    return feeds


@dataclass(frozen=True)
class Target:
    """A checked target: kind "argmax", "target" (int64 indices [N]) or "tensor" (a seed)."""

    kind: str
    value: np.ndarray | None = None


def check_target(target, n: int, n_classes: int | None, output_shape: tuple | None, dtype: np.dtype) -> Target:
    """Turn None, an int, N ints, or a seed array of the output's shape into a `Target`."""
    if target is None:
        return Target("argmax")
    arr = np.asarray(target)
    if arr.dtype.kind == "f" and output_shape is not None and arr.ndim == len(output_shape) and arr.ndim >= 1 and arr.shape[0] == n and arr.ndim > 1:
        if not np.all(np.isfinite(arr)):
            raise InvalidInputError("the seed tensor holds NaN or infinite values.")
        return Target("tensor", arr.astype(dtype))
    if arr.dtype.kind not in "iu":
        raise InvalidInputError(
            "target must be None (top class), a class index, one index per sample, or a float seed "
            f"array of the output's shape; got {arr.dtype} values of shape {arr.shape}."
        )
    if arr.ndim == 0:
        arr = np.full(n, int(arr), dtype=np.int64)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InvalidInputError(f"target needs one class index per sample ({n}), got shape {arr.shape}.")
    if n_classes is not None and (arr.min() < 0 or arr.max() >= n_classes):
        bad = int(arr[(arr < 0) | (arr >= n_classes)][0])
        raise InvalidInputError(f"target class {bad} is out of range: the output has {n_classes} classes (0..{n_classes - 1}).")
    return Target("target", arr.astype(np.int64))
