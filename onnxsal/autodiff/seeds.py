"""How the backward pass starts: the gradient fed into the explained output.

- "argmax": one-hot of each sample's top class, computed inside the graph;
- "target": one-hot of class indices fed at run time (an int64 [N] input named `target`);
- "tensor": a seed of the output's shape fed at run time (regression, masks, several classes);
- "value": a seed value already in the graph (a second backward pass from the same seed).
Classes lie on axis 1; for outputs with more axes (segmentation) the class's whole map is seeded.

The one-hot is written in the model's own opset, down to 7 (`class_one_hot`): OneHot from opset 9
(its depth read from the output at run time), before it an Equal of the class index against a
constant [0, k) of the static class count k, whose Equal and Cast exist at every opset from 7.
Below opset 9 a class count the file leaves dynamic is a `NeedsShapesError`: the Explainer then
specialises the model on the call's shapes, which fixes the count when it follows from the input.

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

from ..errors import NeedsShapesError, UnsupportedModelError
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
    axis = softmax_axis(view, y)
    if axis is not None and axis != 1:
        raise UnsupportedModelError(
            f"the classes of output {y!r} lie on axis {axis} (the axis its {view.producer[y].op_type} normalises), "
            f"not on axis 1, so a class index or the top class does not say which positions to explain; "
            f"feed a seed tensor of the output's shape instead.")
    new_inputs: list[onnx.ValueInfoProto] = []
    if spec.kind == "target":
        index = e.fresh("target")
        batch = shape[0] if isinstance(shape[0], str) else "N"
        new_inputs.append(helper.make_tensor_value_info(index, onnx.TensorProto.INT64, [batch]))
    else:
        scores = e.reduce("ReduceSum", y, list(range(2, rank)), keepdims=0) if rank > 2 else y
        index = e.op("ArgMax", [scores], axis=1, keepdims=0)
    seed = class_one_hot(e, index, y, shape[1] if isinstance(shape[1], int) and shape[1] > 0 else None, dtype)
    return spread_over_map(e, seed, y, rank), new_inputs


def class_one_hot(e: Emitter, index: str, y: str, n_classes: int | None, dtype) -> str:
    """One-hot rows [N, k] of the int64 class indices `index` [N] over the k classes on axis 1 of `y`.

    From opset 9 a OneHot node whose depth is read from y at run time (so a file that declares a
    wrong class count still gets the seed of the output the model returns); before it, where
    neither OneHot (9) nor Range (11) exists, Equal of the indices against a constant [0, k) of the
    static class count `n_classes` (O(k) constants, not a k×k identity: recognisers have ~10⁴
    classes). A count that is only known at run time below opset 9 needs the input shapes fixed."""
    if e.opset >= 9:
        depth = e.op("Gather", [e.op("Shape", [y]), e.ints([1], name="class_axis")], axis=0)
        on_off = e.const(np.array([0, 1], dtype=dtype), name="off_on")
        return e.op("OneHot", [index, depth, on_off], axis=-1)
    if n_classes is None:
        raise NeedsShapesError(
            f"the seed of output {y!r} needs its class count (axis 1), which the file leaves dynamic, because "
            f"opset {e.opset} has no OneHot (opset 9) or Range (opset 11) to count the classes at run time; "
            f"fix the input shape (input_shapes= / --input-shape).")
    classes = e.const(np.arange(n_classes, dtype=np.int64)[None, :], name="classes")
    return e.cast(e.op("Equal", [e.unsqueeze(index, [1]), classes]), dtype)


def spread_over_map(e: Emitter, seed: str, y: str, rank: int) -> str:
    """A per-class seed [N, k] repeated over the other axes of a rank-`rank` output `y` (a
    segmentation map): Expand from opset 8, Tile by y's trailing dims at opset 7."""
    if rank <= 2:
        return seed
    seed = e.unsqueeze(seed, list(range(2, rank)))
    if e.opset >= 8:
        return e.op("Expand", [seed, e.op("Shape", [y])])
    trailing = e.slice(e.op("Shape", [y]), [2], [rank], [0])
    return e.op("Tile", [seed, e.op("Concat", [e.ints([1, 1], name="class_repeats"), trailing], axis=0)])


def softmax_axis(view: GraphView, y: str) -> int | None:
    """The axis a (Log)Softmax that produces `y` (through Identity, Cast or Dropout) normalises, else None:
    a sequence recogniser's [N, T, C] holds its classes on axis 2, where "top class" means nothing on axis 1."""
    node = view.producer.get(y)
    while node is not None and node.op_type in ("Identity", "Cast", "Dropout"):
        node = view.producer.get(node.input[0])
    rank = view.rank(y)
    if node is None or node.op_type not in ("Softmax", "LogSoftmax") or rank is None or rank <= 2:
        return None
    default = -1 if view.opset >= 13 else 1
    axis = next((a.i for a in node.attribute if a.name == "axis"), default)
    return axis % rank


def _free_dims(shape) -> list:
    """The dims of a seed input: the output's named dims kept (they tie the seed to the inputs), the
    others free, since the file's declared sizes may not be what the model returns."""
    return [d if isinstance(d, str) else None for d in shape]
