"""What every converter shares: input shapes, the seeded self-check, and the metadata stamped on the result.

Only numpy, onnx and onnxruntime here: the framework-specific halves (torch_convert, keras_convert)
import torch or TensorFlow themselves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxsal.errors import ConversionError

SEED = 0
CHECK_BATCH = 2  # a free batch axis is checked at another size than the one exported with
RTOL = 1e-4  # self-check: |onnx - framework| <= RTOL * (|framework| + max |framework output|)
PRESETS = ("imagenet", "keras", "caffe", "unit", "raw")

Shape = tuple  # of int, or None for a free axis


def parse_input_shape(value) -> list[Shape] | None:
    """'1,3,224,224' (or '1x3x224x224'; several inputs separated by ';'), a tuple of ints or a list of tuples."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace(" ", "").split(";") if p.strip()]
        try:
            shapes = [tuple(int(d) for d in re.split(r"[,x]", p)) for p in parts]
        except ValueError:
            raise ConversionError(f"input shape {value!r} is not a list of integers such as 1,3,224,224.") from None
    elif isinstance(value, Sequence) and value and all(isinstance(d, (int, np.integer)) for d in value):
        shapes = [tuple(int(d) for d in value)]
    elif isinstance(value, Sequence) and value and all(isinstance(s, Sequence) for s in value):
        shapes = [tuple(int(d) for d in s) for s in value]
    else:
        raise ConversionError(f"input shape {value!r} is not a tuple of integers such as (1, 3, 224, 224).")
    if not shapes or any(not s or min(s) <= 0 for s in shapes):
        raise ConversionError(f"input shape {value!r} needs positive sizes on every axis, such as 1,3,224,224.")
    return shapes


def merge_shape(declared: Shape, given: Shape | None, what: str) -> Shape:
    """The framework's declared shape (None = free) with the free axes filled from `given`; both must agree."""
    declared = tuple(declared)
    if given is None:
        free = [i for i, d in enumerate(declared) if d is None and i > 0]
        if free:
            raise ConversionError(
                f"{what} has free axes {_fmt(declared)}; pass the input shape (input_shape= or --input-shape), "
                f"such as {_example(declared)}."
            )
        return declared
    if len(given) != len(declared):
        raise ConversionError(f"the input shape {_fmt(given)} has {len(given)} axes but {what} takes {len(declared)}: {_fmt(declared)}.")
    for i, (d, g) in enumerate(zip(declared, given)):
        if d is not None and i > 0 and d != g:
            raise ConversionError(f"the input shape {_fmt(given)} does not match {what}, which is fixed at {_fmt(declared)}.")
    return tuple(g if d is None or i == 0 else d for i, (d, g) in enumerate(zip(declared, given)))


def _fmt(shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _example(shape) -> str:
    guess = {4: [1, 3, 224, 224] if shape[1] in (1, 3) else [1, 224, 224, 3]}.get(len(shape))
    dims = [d if d is not None else (guess[i] if guess else 1) for i, d in enumerate(shape)]
    dims[0] = 1
    return ",".join(map(str, dims))


def guess_layout(shape, default: str) -> str:
    """NCHW or NHWC for a rank-4 image input: channels are the small axis (1, 3, 4); ties go to `default`."""
    first, last = shape[1], shape[-1]
    small = (1, 3, 4)
    if last in small and first not in small:
        return "NHWC"
    if first in small and last not in small:
        return "NCHW"
    return default


@dataclass
class Converted:
    """A conversion before the self-check: the ONNX model and a way to run the framework model beside it."""

    proto: onnx.ModelProto
    run: Callable[[list[np.ndarray]], list[np.ndarray]]  # the framework model on numpy inputs, outputs flattened
    input_shapes: list[Shape]  # concrete shapes, the batch axis as exported
    input_dtypes: list[np.dtype]
    framework: str  # "PyTorch", "Keras", "TensorFlow": as the check's messages name it
    source: str  # "TorchScript m.pt": what was converted
    layout_default: str = "NCHW"
    preprocess: str | None = None  # inferred from the model when known
    converted_by: str = ""
    dynamic_batch: bool = True


@dataclass(frozen=True)
class CheckResult:
    max_abs_diff: float
    scale: float  # max |framework output|
    rtol: float
    batch: int
    seed: int

    @property
    def relative(self) -> float:
        return self.max_abs_diff / self.scale if self.scale > 0 else self.max_abs_diff

    def to_json(self) -> str:
        return json.dumps({"max_abs_diff": float(f"{self.max_abs_diff:.3g}"), "scale": float(f"{self.scale:.4g}"),
                           "rtol": self.rtol, "batch": self.batch, "seed": self.seed})


def sample_inputs(shapes: list[Shape], dtypes: list[np.dtype], batch: int | None, seed: int = SEED) -> list[np.ndarray]:
    """Seeded inputs: standard normal floats, small non-negative integers; `batch` replaces axis 0 if given."""
    rng = np.random.default_rng(seed)
    out = []
    for shape, dtype in zip(shapes, dtypes):
        shape = ((batch,) + tuple(shape[1:])) if batch is not None and len(shape) else tuple(shape)
        dtype = np.dtype(dtype)
        if dtype.kind == "f":
            out.append(rng.standard_normal(shape).astype(dtype))
        elif dtype.kind == "b":
            out.append(rng.random(shape) > 0.5)
        else:
            out.append(rng.integers(0, 10, size=shape).astype(dtype))
    return out


def _session(proto: onnx.ModelProto):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ConversionError(f"onnxruntime cannot load the converted model: {_first_line(exc)}") from exc


def self_check(conv: Converted, rtol: float = RTOL) -> CheckResult:
    """Run the framework model and the ONNX model on the same seeded input; raise if they disagree."""
    exported = conv.input_shapes[0][0] if conv.input_shapes and conv.input_shapes[0] else None
    batch = (CHECK_BATCH if exported != CHECK_BATCH else CHECK_BATCH + 1) if conv.dynamic_batch else None
    xs = sample_inputs(conv.input_shapes, conv.input_dtypes, batch)
    sess = _session(conv.proto)
    names = [i.name for i in sess.get_inputs()]
    if len(names) != len(xs):
        raise ConversionError(f"the converted model takes {len(names)} inputs but the {conv.framework} model takes {len(xs)}.")
    try:
        got = sess.run(None, dict(zip(names, xs)))
    except Exception as exc:
        raise ConversionError(f"onnxruntime cannot run the converted model on a sample input: {_first_line(exc)}") from exc
    try:
        want = [np.asarray(w) for w in conv.run(xs)]
    except Exception as exc:
        raise ConversionError(f"the {conv.framework} model fails on a seeded sample input of shape "
                              f"{[x.shape for x in xs]}: {_first_line(exc)}") from exc
    outs = [o.name for o in sess.get_outputs()]
    if len(want) != len(got):
        raise ConversionError(f"the converted model has {len(got)} outputs but the {conv.framework} model returns {len(want)}; "
                              "nothing was written.")
    worst, scale_all = 0.0, 0.0
    for name, g, w in zip(outs, got, want):
        if g.shape != w.shape:
            raise ConversionError(f"the converted model's output {name!r} has shape {g.shape} where the {conv.framework} "
                                  f"model's has {w.shape}; nothing was written.")
        g64, w64 = g.astype(np.float64), w.astype(np.float64)
        finite = np.isfinite(w64)
        scale = float(np.abs(w64[finite]).max()) if finite.any() else 0.0
        diff = np.abs(g64 - w64)
        diff[np.isnan(g64) & np.isnan(w64)] = 0.0
        diff[np.isinf(w64) & (g64 == w64)] = 0.0
        bad = ~(diff <= rtol * (np.abs(w64) + scale))
        md = float(np.nanmax(np.where(np.isnan(diff), np.inf, diff))) if diff.size else 0.0
        worst, scale_all = max(worst, md), max(scale_all, scale)
        if bad.any():
            raise ConversionError(
                f"the converted model's output {name!r} differs from the {conv.framework} model's by up to {md:.3g} "
                f"({md / scale if scale else md:.2g} of the output's scale {scale:.3g}, tolerance {rtol:g}) on a seeded "
                f"sample input; nothing was written."
            )
    return CheckResult(worst, scale_all, rtol, xs[0].shape[0] if xs and xs[0].ndim else 0, SEED)


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines and lines[0].startswith("The following operation failed in the TorchScript interpreter"):
        lines = [next((ln for ln in reversed(lines) if re.match(r"\w+(Error|Exception): ", ln)), lines[0])]
    if lines and lines[0] == "in user code:":  # TensorFlow's traced-call errors: the error is further down
        found = next((i for i, ln in enumerate(lines) if re.match(r"\w+(Error|Exception)\b", ln)), None)
        if found is not None:
            lines = [" ".join(lines[found:found + 2])]
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def fix_input_dims(proto: onnx.ModelProto, shapes: list[Shape], dynamic_batch: bool) -> None:
    """Write the concrete non-batch sizes into the graph inputs; name the batch axis when it is free."""
    inits = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    for vi, shape in zip(inputs, shapes):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != len(shape):
            continue
        for i, (dim, size) in enumerate(zip(dims, shape)):
            if i == 0 and dynamic_batch:
                if not dim.HasField("dim_value"):
                    dim.dim_param = "batch"
                continue
            if not dim.HasField("dim_value") and size is not None:
                dim.dim_value = int(size)
    if dynamic_batch:  # tf2onnx names free axes unk__N: call the outputs' leading one "batch" as well
        for vi in proto.graph.output:
            dims = vi.type.tensor_type.shape.dim
            if len(dims) and not dims[0].HasField("dim_value") and (not dims[0].dim_param or dims[0].dim_param.startswith("unk__")):
                dims[0].dim_param = "batch"


def stamp(proto: onnx.ModelProto, values: dict[str, str | None]) -> None:
    """Set metadata_props (replacing earlier values of the same keys; None removes a key)."""
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    for k, v in keep + [(k, v) for k, v in values.items() if v is not None]:
        proto.metadata_props.add(key=k, value=str(v))


def metadata(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def finish(conv: Converted, *, check: bool, preprocess: str | None, rtol: float = RTOL) -> tuple[onnx.ModelProto, CheckResult | None]:
    """Validate, self-check and stamp a conversion; the proto is ready to be written."""
    from onnxsal.model_io import check_model

    if preprocess is not None and preprocess not in PRESETS:
        raise ConversionError(f"unknown preprocessing {preprocess!r}; choose one of {', '.join(PRESETS)}.")
    proto = conv.proto
    fix_input_dims(proto, conv.input_shapes, conv.dynamic_batch)
    try:
        check_model(proto, "the converted model")
    except Exception as exc:
        raise ConversionError(str(exc)) from exc
    result = self_check(conv, rtol) if check else None
    first = conv.input_shapes[0] if conv.input_shapes else ()
    layout = size = None
    if len(first) == 4 and np.dtype(conv.input_dtypes[0]).kind == "f":
        layout = guess_layout(first, conv.layout_default)
        h, w = (first[2], first[3]) if layout == "NCHW" else (first[1], first[2])
        size = f"{h}x{w}"
    stamp(proto, {
        "onnxsal.layout": layout,
        "onnxsal.input_size": size,
        "onnxsal.preprocess": preprocess or conv.preprocess,
        "onnxsal.source": conv.source,
        "onnxsal.converted_by": conv.converted_by,
        "onnxsal.self_check": result.to_json() if result else "skipped",
    })
    return proto, result


def versions(*modules: str) -> str:
    """'onnxsal 0.1.0 converters (torch 2.14.1)': the converting software, for the record."""
    import sys

    from onnxsal import __version__

    def v(name):
        mod = sys.modules.get(name)
        return getattr(mod, "__version__", "?") if mod is not None else "?"

    libs = ", ".join(f"{m} {v(m)}" for m in modules)
    return f"onnxsal {__version__} converters ({libs})" if libs else f"onnxsal {__version__} converters"
