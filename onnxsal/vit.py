"""Vision transformers in an ONNX graph: attention blocks, token maps and the patch grid.

A ViT-style model cuts the image into patches with a strided Conv (the patch embedding), flattens
its [N, D, h, w] output to h·w tokens, puts a class token (and maybe distillation or register
tokens) in front, and runs blocks of self-attention over the [N, T, D] sequence. Methods that
explain such a model in image space need three things from the graph, which this module finds:

- the attention blocks: each Softmax over keys whose input comes from a MatMul of two activations
  (queries × keys, maybe scaled or masked) and whose output multiplies the values in a second
  MatMul; its output is the attention-probability tensor [N, heads, T, T];
- the token maps: float values of rank 3 [N, T, D] (D the width of the residual stream), and the
  default layer for Grad-CAM, the input of the last attention block (the value its queries and keys
  are both computed from: the last block's first LayerNorm, `blocks[-1].norm1` in timm, which is
  pytorch-grad-cam's choice for ViTs). Later token maps do not work: a classifier reads only the
  class token after the last attention, so the patch tokens there get no gradient;
- the patch grid (h, w) from the patch embedding Conv's output shape, which shape inference gives
  once the input's spatial size is known, and the number of prefix tokens T − h·w, taken from the
  front of the sequence (timm and transformers put class, distillation and register tokens there).

Everything is read from the graph's structure and shapes, never from node names, so exports of
timm, transformers or a hand-written model are found the same way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .autodiff.graph import GraphView, node_inputs
from .errors import InvalidInputError, NeedsShapesError

# Ops between the queries·keys MatMul and the Softmax (scaling, masking, dtype changes).
_SCORE_OPS = {"Mul", "Div", "Add", "Sub", "Where", "Cast", "Identity"}
# Ops between the Softmax and the MatMul with the values (dropout, dtype changes).
_PROB_OPS = {"Cast", "Dropout", "Identity"}


@dataclass(frozen=True)
class Attention:
    softmax: str  # the Softmax node
    probs: str  # its output: the attention probabilities [N, heads, T, T]
    query: str  # the two inputs of the queries·keys MatMul
    key: str


@dataclass(frozen=True)
class TokenMap:
    """A [N, T, D] layer read as T − h·w prefix tokens followed by h·w patch tokens in row-major order."""

    value: str
    node: str
    op_type: str
    shape: tuple | None
    grid: tuple[int, int]
    prefix: int


def _order(view: GraphView) -> dict[str, int]:
    """Topological position of each value's producer (graph inputs and constants come first)."""
    return {o: i for i, n in enumerate(view.nodes) for o in n.output if o}


def _activation(view: GraphView, name: str) -> bool:
    return bool(name) and view.const(name) is None and name not in view.initializers


def _scores_matmul(view: GraphView, value: str, depth: int = 0):
    """The MatMul of two activations that `value` comes from through scaling/masking ops, else None."""
    node = view.producer.get(value)
    if node is None or depth > 6:
        return None
    if node.op_type == "MatMul":
        return node if all(_activation(view, i) for i in node.input[:2]) else None
    if node.op_type not in _SCORE_OPS:
        return None
    for i in node.input:
        if _activation(view, i) and view.rank(i) == view.rank(value):
            found = _scores_matmul(view, i, depth + 1)
            if found is not None:
                return found
    return None


def _feeds_values_matmul(view: GraphView, value: str, depth: int = 0) -> bool:
    """Whether `value` (through dropout/cast) is the left operand of a MatMul with an activation."""
    if depth > 4:
        return False
    for c in view.consumers.get(value, []):
        if c.op_type == "MatMul" and c.input[0] == value and _activation(view, c.input[1]):
            return True
        if c.op_type in _PROB_OPS and _feeds_values_matmul(view, c.output[0], depth + 1):
            return True
    return False


def _attention_softmaxes(view: GraphView, nodes=None):
    """(Softmax node, queries·keys MatMul) of each Softmax between a MatMul of two activations and
    a MatMul with the values, whatever its shape."""
    for n in view.nodes:
        if n.op_type != "Softmax" or (nodes is not None and n.name not in nodes):
            continue
        mm = _scores_matmul(view, n.input[0])
        if mm is not None and _feeds_values_matmul(view, n.output[0]):
            yield n, mm


def attention_blocks(view: GraphView, nodes=None) -> list[Attention]:
    """The self-attention blocks of the graph (among `nodes`, node names, when given), in order.

    Raises NeedsShapesError when an attention's rank is unknown (old-opset exports with a dynamic
    batch), so that the caller's Explainer specialises the model on the call's input shapes."""
    found = []
    for n, mm in _attention_softmaxes(view, nodes):
        probs = n.output[0]
        shape = view.shape(probs)
        if shape is None:
            raise NeedsShapesError(f"the shape of the attention map {probs!r} is unknown to shape inference; "
                                   f"fix the input shape (input_shapes= / --input-shape).")
        if len(shape) != 4:
            continue
        axis = next((a.i for a in n.attribute if a.name == "axis"), -1 if view.opset >= 13 else 1)
        if axis not in (-1, 3):
            continue
        q_len, k_len = shape[2], shape[3]
        if isinstance(q_len, int) and isinstance(k_len, int) and q_len != k_len:
            continue  # cross-attention: not a token-to-token map
        found.append(Attention(n.name, probs, mm.input[0], mm.input[1]))
    return found


def _ancestors(view: GraphView, value: str) -> set[str]:
    seen, stack = set(), [value]
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        node = view.producer.get(v)
        if node is not None:
            stack.extend(i for i in node_inputs(node) if i)
    return seen


def _token_count(view: GraphView, attn: Attention) -> int | None:
    shape = view.shape(attn.probs)
    t = shape[-1] if shape else None
    return t if isinstance(t, int) else None


def _width(view: GraphView, values, tokens: int) -> int | None:
    """The residual stream's width D: the most common last dim of the [N, T, *] values."""
    dims = Counter()
    for v in values:
        s = view.shape(v)
        if s is not None and len(s) == 3 and s[1] == tokens and isinstance(s[2], int):
            dims[s[2]] += 1
    return dims.most_common(1)[0][0] if dims else None


def block_input(view: GraphView, attn: Attention, path_values: set[str]) -> str | None:
    """The token map [N, T, D] that an attention block's queries and keys are both computed from
    (its first LayerNorm's output in a pre-norm transformer), the latest such in the graph."""
    tokens = _token_count(view, attn)
    if tokens is None:
        return None
    common = (_ancestors(view, attn.query) & _ancestors(view, attn.key)) & path_values
    width = _width(view, path_values, tokens)
    order = _order(view)
    candidates = [v for v in common if view.is_float(v) and view.shape(v) is not None and len(view.shape(v)) == 3
                  and view.shape(v)[1] == tokens and view.shape(v)[2] == width and v in order]
    return max(candidates, key=order.__getitem__) if candidates else None


def patch_grid(view: GraphView, value: str, tokens: int, grid=None, what: str = "layer") -> tuple[tuple[int, int], int]:
    """((h, w), prefix tokens) of a token sequence of length `tokens` that `value` holds or comes
    after: `grid` when given, else the output size of the last Conv upstream of `value` (the patch
    embedding)."""
    if grid is not None:
        try:
            h, w = (int(g) for g in grid)
        except (TypeError, ValueError):
            raise InvalidInputError(f"grid must be two positive ints (h, w), not {grid!r}.") from None
        if h <= 0 or w <= 0 or h * w > tokens:
            raise InvalidInputError(f"grid {grid!r} gives {h * w} patch tokens but {what} {value!r} holds {tokens} tokens; "
                                    f"pass a grid of at most {tokens} patches.")
        return (h, w), tokens - h * w
    order = _order(view)
    upstream = _ancestors(view, value)
    convs = [n for n in view.nodes if n.op_type == "Conv" and n.output[0] in upstream and view.rank(n.output[0]) == 4]
    if not convs:
        raise InvalidInputError(f"{what} {value!r} holds {tokens} tokens but no patch-embedding Conv comes before it to tell "
                                f"the patch grid from; pass grid=(h, w).")
    conv = max(convs, key=lambda n: order[n.output[0]])
    shape = view.shape(conv.output[0])
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]):
        raise NeedsShapesError(f"the patch grid of {what} {value!r} is the output size of the patch embedding "
                               f"{conv.name!r}, which the file leaves dynamic; fix the input shape (input_shapes= / --input-shape).")
    h, w = shape[2], shape[3]
    if h * w > tokens:
        raise InvalidInputError(f"{what} {value!r} holds {tokens} tokens, fewer than the {h}x{w} patches of {conv.name!r}; "
                                f"pass grid=(h, w).")
    return (h, w), tokens - h * w


def _token_maps(view: GraphView, path_nodes: list[str]) -> list[str]:
    """Float values of rank 3 produced on the path, in order."""
    on_path = set(path_nodes)
    return [o for n in view.nodes if n.name in on_path for o in n.output
            if o and view.is_float(o) and view.rank(o) == 3]


def _resolve(view: GraphView, maps: list[str], layer: str, fuzzy: bool) -> str | None:
    if layer in maps:
        return layer
    by_node = {view.producer[v].name: v for v in maps}
    if layer in by_node:
        return by_node[layer]
    if not fuzzy:
        return None
    matches = [v for v in maps if layer in view.producer[v].name.split("/") or layer in v.split("/")]
    matches = matches or [v for v in maps if layer in view.producer[v].name or layer in v]
    return matches[-1] if matches else None


def token_layer(view: GraphView, path_nodes: list[str], layer: str | None, grid=None) -> TokenMap | None:
    """The Grad-CAM layer of a token model, or None when the layer is a feature map for the
    classic path: with `layer` None, the input of the last attention block on the path (None when
    the path has no attention); else `layer` when it names a rank-3 value on the path (by value or
    node name; on a transformer also by a path component or substring, as `resolve_layer` does),
    on a model without attention only when `grid` says how to read it."""
    attns = attention_blocks(view, set(path_nodes))
    maps = _token_maps(view, path_nodes)
    if layer is None:
        if not attns:
            return None
        value = block_input(view, attns[-1], set(maps))
        if value is None:
            shape = view.shape(attns[-1].probs)
            if shape is None or not isinstance(shape[-1], int):
                raise NeedsShapesError("Grad-CAM on a transformer needs the token count of its attention maps, which the "
                                       "file leaves dynamic; fix the input shape (input_shapes= / --input-shape).")
            raise InvalidInputError(f"found no [N, T, D] token map feeding the queries and keys of the last attention block "
                                    f"{attns[-1].softmax!r}; name the layer with layer=.")
    else:
        if not attns and grid is None:  # a rank-3 value of a model without attention is no token map unless told so
            return None
        value = _resolve(view, maps, layer, fuzzy=bool(attns))
        if value is None:
            return None
    shape = view.shape(value)
    tokens = shape[1]
    if not isinstance(tokens, int):
        raise NeedsShapesError(f"Grad-CAM on token map {value!r} needs its token count, which the file leaves dynamic; "
                               f"fix the input shape (input_shapes= / --input-shape).")
    (h, w), prefix = patch_grid(view, value, tokens, grid)
    node = view.producer[value]
    return TokenMap(value, node.name, node.op_type, shape, (h, w), prefix)
