"""How the backward pass starts: the gradient fed into the explained output.

- "argmax": one-hot of each sample's top class, computed inside the graph;
- "target": one-hot of class indices fed at run time (an int64 [N] input named `target`);
- "tensor": a seed of the output's shape fed at run time (regression, masks, several classes);
- "value": a seed value already in the graph (a second backward pass from the same seed).
Classes lie on axis 1; for outputs with more axes (segmentation) the class's whole map is seeded.

The inputs a seed adds declare only what the graph itself guarantees: their rank, and dims left
free. Files declare output shapes that the model does not return (onnxruntime warns and runs
them); a seed of the real output's shape must still be fed, so the Explainer checks seeds and
targets against a forward run, not against these declarations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..errors import UnsupportedModelError
from .emitter import Emitter
from .graph import GraphView

SEED_KINDS = ("argmax", "target", "tensor", "value")


@dataclass(frozen=True)
class SeedSpec:
    """How to seed; kind "value" reuses a seed already in the graph (`value` names it), so that a
    second backward pass (guided Grad-CAM) starts from the very same one-hot."""

    kind: str = "argmax"
    value: str | None = None

    def __post_init__(self):
        if self.kind not in SEED_KINDS:
            raise ValueError(f"seed kind must be one of {SEED_KINDS}, not {self.kind!r}")


def emit_seed(e: Emitter, view: GraphView, y: str, spec: SeedSpec) -> tuple[str, list[onnx.ValueInfoProto]]:
    """Emit the seed of `y`; returns its name and the graph inputs it adds."""
    et = view.elem_type(y)
    shape = view.shape(y)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(et))
    if spec.kind == "value":
        return spec.value, []
    if spec.kind == "tensor":
        name = e.fresh(f"{y}_seed")
        return name, [helper.make_tensor_value_info(name, et, None if shape is None else _free_dims(shape))]
    if shape is None:
        raise UnsupportedModelError(f"the rank of output {y!r} is unknown; feed a seed tensor instead of a target.")
    rank = len(shape)
    if rank < 2:
        raise UnsupportedModelError(
            f"output {y!r} has rank {rank}, so it has no class axis; feed a seed tensor instead of a target."
        )
    new_inputs: list[onnx.ValueInfoProto] = []
    if spec.kind == "target":
        index = e.fresh("target")
        batch = shape[0] if isinstance(shape[0], str) else "N"
        new_inputs.append(helper.make_tensor_value_info(index, onnx.TensorProto.INT64, [batch]))
    else:
        scores = e.reduce("ReduceSum", y, list(range(2, rank)), keepdims=0) if rank > 2 else y
        index = e.op("ArgMax", [scores], axis=1, keepdims=0)
    depth = e.op("Gather", [e.op("Shape", [y]), e.ints([1], name="class_axis")], axis=0)
    on_off = e.const(np.array([0, 1], dtype=dtype), name="off_on")
    seed = e.op("OneHot", [index, depth, on_off], axis=-1)
    if rank > 2:
        seed = e.op("Expand", [e.unsqueeze(seed, list(range(2, rank))), e.op("Shape", [y])])
    return seed, new_inputs


def _free_dims(shape) -> list:
    """The dims of a seed input: the output's named dims kept (they tie the seed to the inputs), the
    others free, since the file's declared sizes may not be what the model returns."""
    return [d if isinstance(d, str) else None for d in shape]
