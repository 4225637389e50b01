"""Feature maps of a graph: their layout (NCHW or NHWC) and the Grad-CAM layer candidates."""

from __future__ import annotations

from dataclasses import dataclass

from .autodiff.graph import GraphView
from .errors import InvalidInputError, NeedsShapesError

# Ops whose output keeps the layout of their (first non-constant) input.
LAYOUT_KEEPING = {
    "Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu",
    "Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Identity", "Dropout", "Cast", "Erf", "Neg", "Abs",
    "Pad", "Where", "Softplus", "Mish", "Gelu", "Exp", "Sqrt", "Pow",
}
# Ops that always produce channels-first tensors in ONNX.
CHANNELS_FIRST = {
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "BatchNormalization", "InstanceNormalization",
    "LpPool", "LRN", "GlobalAveragePool", "GlobalMaxPool", "DepthToSpace", "SpaceToDepth",
}

# Ops that only copy or re-lay out a feature map: Grad-CAM on them equals Grad-CAM on their input.
RELAYOUT = {"Transpose", "Identity", "Dropout", "Cast"}


@dataclass(frozen=True)
class FeatureMap:
    value: str  # the ONNX value name
    node: str  # the node producing it
    op_type: str
    shape: tuple | None
    layout: str  # "NCHW" or "NHWC" (for rank 4; the same idea for rank 3 and 5)

    @property
    def channel_axis(self) -> int:
        return 1 if self.layout == "NCHW" else len(self.shape or (0, 0, 0, 0)) - 1

    @property
    def spatial_axes(self) -> list[int]:
        rank = len(self.shape or (0, 0, 0, 0))
        return list(range(2, rank)) if self.layout == "NCHW" else list(range(1, rank - 1))


def guess_layout(shape) -> str:
    """Layout of an input image tensor from its shape: channels are the small axis (1, 3 or 4)."""
    if shape is None or len(shape) < 3:
        return "NCHW"
    first, last = shape[1], shape[-1]
    if isinstance(last, int) and last in (1, 3, 4) and not (isinstance(first, int) and first in (1, 3, 4)):
        return "NHWC"
    return "NCHW"


def layout_of(view: GraphView, value: str, _depth: int = 0) -> str:
    """Trace a value back to a channels-first op, a Transpose or an input to tell its layout."""
    node = view.producer.get(value)
    if node is None or _depth > 200:
        return guess_layout(view.shape(value))
    if node.op_type in CHANNELS_FIRST:
        return "NCHW"
    if node.op_type == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        source = layout_of(view, node.input[0], _depth + 1)
        rank = len(perm or [])
        if rank >= 3:
            to_last = [0] + list(range(2, rank)) + [1]
            to_first = [0, rank - 1] + list(range(1, rank - 1))
            if perm == to_last:
                return "NHWC" if source == "NCHW" else "NCHW"
            if perm == to_first:
                return "NCHW" if source == "NHWC" else "NHWC"
        return guess_layout(view.shape(value))
    if node.op_type in LAYOUT_KEEPING or node.op_type == "Concat":
        for x in node.input:
            if x and view.const(x) is None and view.rank(x) == view.rank(value):
                return layout_of(view, x, _depth + 1)
    return guess_layout(view.shape(value))


def _spatial_extent(fm: FeatureMap) -> bool:
    if fm.shape is None:
        return False
    dims = [fm.shape[a] for a in fm.spatial_axes]
    return all((not isinstance(d, int)) or d > 1 for d in dims) and any(isinstance(d, int) and d > 1 for d in dims)


def feature_maps(view: GraphView, path_nodes: list[str]) -> list[FeatureMap]:
    """Values of rank 4 with spatial extent produced on the path, in topological order."""
    on_path = set(path_nodes)
    out = []
    for n in view.nodes:
        if n.name not in on_path:
            continue
        for o in n.output:
            if not o or not view.is_float(o) or view.rank(o) != 4:
                continue
            fm = FeatureMap(o, n.name, n.op_type, view.shape(o), layout_of(view, o))
            if _spatial_extent(fm):
                out.append(fm)
    return out


def _unsized_maps(view: GraphView) -> bool:
    """Whether some float value of rank 4 has spatial sizes that shape inference leaves unknown."""
    return any(shape is not None and len(shape) == 4 and view.is_float(name) and not all(isinstance(d, int) for d in shape[1:])
               for name, shape in view.shapes.items())


def resolve_layer(view: GraphView, maps: list[FeatureMap], layer: str | None) -> FeatureMap:
    """The Grad-CAM layer: the last feature map by default, else a value name, a node name, or a
    unique-suffix/substring match of node names (Keras layer names survive in tf2onnx node names)."""
    if not maps:
        if _unsized_maps(view):  # specialised on the input's size, they may turn out to have extent
            raise NeedsShapesError("Grad-CAM needs the spatial sizes of the feature maps, which the file leaves dynamic; "
                                   "fix the input shape (input_shapes= / --input-shape).")
        raise InvalidInputError("the model has no feature map with spatial extent on the path to the output, so Grad-CAM has no layer.")
    if layer is None:  # a pure re-layout (tf2onnx's Transpose back to NHWC) names the map it copies
        named = [m for m in maps if m.op_type not in RELAYOUT]
        return (named or maps)[-1]
    by_value = {m.value: m for m in maps}
    by_node = {m.node: m for m in maps}
    if layer in by_value:
        return by_value[layer]
    if layer in by_node:
        return by_node[layer]
    if layer in view.producer or layer in {n.name for n in view.nodes}:
        raise InvalidInputError(f"layer {layer!r} has no spatial extent on the path to the output; Grad-CAM needs a feature map (rank 4, height and width > 1).")
    matches = [m for m in maps if layer in m.node.split("/") or layer in m.value.split("/")]
    if not matches:
        matches = [m for m in maps if layer in m.node or layer in m.value]
    if not matches:
        raise InvalidInputError(f"the model has no layer named {layer!r}; candidates are {[m.value for m in maps[-5:]]} (see `onnxsal inspect`).")
    return matches[-1]
