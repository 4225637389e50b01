"""Random inputs for a stranger's ONNX file, from its declared dims and a few rules of thumb."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
SAMPLE_RATE_NAMES = ("sr", "sample_rate", "sampling_rate")
IMAGE_SIZES = ((128, 128), (48, 320), (32, 128), (64, 256), (224, 224))  # free (height, width), tried in
# turn until onnxruntime runs the file: 128 suits detectors (divisible by 32), 48 x 320 text-line recognisers
SEQUENCE = 16  # free length of a token sequence or a feature sequence
AUDIO = 576  # free length of a rank-2 float input: silero's 512-sample window plus its 64-sample context


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs a caller feeds (initializers listed as inputs are weights, not inputs)."""
    weights = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in weights]


def elem_type(value: onnx.ValueInfoProto) -> int:
    return value.type.tensor_type.elem_type


def float_inputs(model: onnx.ModelProto) -> list[str]:
    return [v.name for v in graph_inputs(model) if elem_type(v) in FLOAT_TYPES]


def declared_dims(value: onnx.ValueInfoProto) -> list[int | None] | None:
    """The declared dims, None for a free one (named, unknown, or a paddle2onnx -1); None if the rank is unknown."""
    t = value.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]


def concrete_shape(dims: list[int | None], is_float: bool, batch: int, image=IMAGE_SIZES[0]) -> list[int]:
    """Fill the free dims: the batch on axis 0, image sizes for rank 4 (NCHW or NHWC), sequences else."""
    rank = len(dims)
    shape = list(dims)
    channels_last = rank == 4 and dims[3] in (1, 3, 4) and dims[1] not in (1, 3, 4)
    for axis, d in enumerate(dims):
        if d is not None:
            continue
        if axis == 0 and rank > 1:
            shape[axis] = batch
        elif rank == 4:
            spatial = (1, 2) if channels_last else (2, 3)
            shape[axis] = image[spatial.index(axis)] if axis in spatial else 3
        elif rank == 2 and is_float:
            shape[axis] = AUDIO
        else:
            shape[axis] = batch if rank == 3 and axis == 1 and dims[0] is not None else SEQUENCE
    return shape


def integer_value(name: str, shape: list[int], dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    """Integer inputs by what their name says: a sample rate, a mask, token ids, byte values."""
    lname = name.lower()
    if any(lname == n or lname.endswith("/" + n) for n in SAMPLE_RATE_NAMES):
        return np.full(shape, 16000, dtype=dtype)
    if "mask" in lname:
        return np.ones(shape, dtype=dtype)
    if "type" in lname or "position" in lname:
        return np.zeros(shape, dtype=dtype)
    if "byte" in lname:
        return distinct_pairs(int(np.prod(shape)), rng).reshape(shape).astype(dtype)
    return rng.integers(1, 100, size=shape).astype(dtype)


def distinct_pairs(n: int, rng: np.random.Generator, k: int = 256) -> np.ndarray:
    """n random byte values in which no consecutive pair repeats: random bytes repeat windows, and a
    max over the sequence then ties, a kink exactly at the point the gradient is checked."""
    out, seen = [int(rng.integers(k))], set()
    while len(out) < n:
        b = int(rng.integers(k))
        if (out[-1], b) not in seen:
            seen.add((out[-1], b))
            out.append(b)
    return np.array(out)


def build_feeds(model: onnx.ModelProto, batch: int = 1, seed: int = 0, image=IMAGE_SIZES[0]) -> dict[str, np.ndarray]:
    """One random array per graph input: floats uniform in [-1, 1), integers by name, booleans true."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for v in graph_inputs(model):
        et = elem_type(v)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(et))
        dims = declared_dims(v)
        is_float = et in FLOAT_TYPES
        if dims is None:
            dims = [None, None] if is_float else []
        shape = concrete_shape(dims, is_float, batch, image)
        if is_float:
            feeds[v.name] = rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[v.name] = np.ones(shape, dtype=np.bool_)
        else:
            feeds[v.name] = integer_value(v.name, shape, dtype, rng)
    return feeds


def explained_output(model: onnx.ModelProto) -> str:
    """The output a user explains: the first one, or the first float one when the first is not float."""
    outputs = list(model.graph.output)
    for o in outputs:
        if elem_type(o) in FLOAT_TYPES:
            return o.name
    return outputs[0].name


def embedding_lookup(model: onnx.ModelProto) -> str | None:
    """Where a model without float inputs turns into floats: the first Gather that reads rows of a
    float table with indices from the inputs (an embedding), else the first Cast of such a value to
    a float type (a one-hot)."""
    tables = {t.name for t in model.graph.initializer if t.data_type in FLOAT_TYPES}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].t.data_type in FLOAT_TYPES:
            tables.add(n.output[0])
    derived = {v.name for v in graph_inputs(model)}
    one_hot = None  # jax2tf writes a one-hot as Equal -> Cast(float): the next best place to explain from
    for n in model.graph.node:
        if any(i in derived for i in n.input):
            if n.op_type == "Gather" and n.input[0] in tables:
                return n.output[0]
            to = next((a.i for a in n.attribute if a.name == "to"), None)
            if one_hot is None and n.op_type == "Cast" and to in FLOAT_TYPES:
                one_hot = n.output[0]
            derived.update(n.output)
    return one_hot
