"""Finding the embeddings of a token model in its ONNX graph.

A model exported from PyTorch, TensorFlow or a hub takes integer token ids and looks them up in a
float table: a Gather whose data is a [vocab, hidden] initializer (or Constant) and whose indices
are computed from an integer graph input by shape-only ops (GPT-2 reshapes its ids first, Keras
casts them). Those Gather outputs are where attribution of a token model starts: the ids
themselves have no gradient.

A BERT holds several lookups: word, token-type (indexed by graph inputs) and position (indexed by a
range the graph computes), summed and then normalised. Three tensors of that block can be
explained, and they are what Captum users pass to LayerIntegratedGradients:

- the word embeddings (`model.bert.embeddings.word_embeddings`): the default;
- their sum with the other lookups (the input of the block's LayerNormalization);
- the block's output (`model.bert.embeddings`): the LayerNormalization after the sum (the op, or
  its elementary ops as tf2onnx writes Keras'), or the sum when none follows.

`resolve(view, "embeddings" | "embeddings:sum" | "embeddings:output")` names the tensor; anything
else is taken as the name of a tensor already.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from ..errors import UnsupportedModelError

# ops that carry token ids (or a tensor) along without changing a value: followed from a graph input
# to the Gather that uses the ids, and from the summed embeddings to their normalisation
CARRIERS = ("Reshape", "Unsqueeze", "Squeeze", "Cast", "Identity", "Flatten", "Dropout", "Expand")
# elementwise integer (and boolean) arithmetic that fixes ids up from one input and constants: Keras'
# Embedding looks its ids up through tf.where(ids < 0, ids + vocab, ids), which tf2onnx writes as
# Cast(Less(ids, 0))·(ids + vocab) + Cast(Not(Less(ids, 0)))·ids
INDEX_OPS = ("Add", "Sub", "Mul", "Mod", "Neg", "Abs", "Min", "Max", "Clip", "Where", "Less", "LessOrEqual", "Greater",
             "GreaterOrEqual", "Equal", "Not", "And", "Or")
RANDOM = ("Random", "Bernoulli", "Multinomial")  # ops whose constant inputs do not make a constant
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
INT_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
ALIASES = {"embeddings": "word", "embeddings:word": "word", "embeddings:sum": "sum", "embeddings:output": "output"}


@dataclass(frozen=True)
class Embedding:
    """One lookup: `output` = Gather(`table`, ids), ids read from graph input `ids` (None when the
    graph computes them, as it does position ids)."""

    output: str
    table: str
    ids: str | None
    vocab: int
    hidden: int


def _view(model):
    from ..autodiff.graph import GraphView

    return model if isinstance(model, GraphView) else GraphView(model)


def _table(view, name: str) -> tuple[int, int] | None:
    """(rows, columns) of a 2-D float constant (initializer or Constant node), else None."""
    shape = view.shape(name)
    if name in view.initializers or view.producer.get(name) is not None and view.producer[name].op_type == "Constant":
        if view.elem_type(name) in FLOAT_TYPES and shape is not None and len(shape) == 2 and all(isinstance(d, int) for d in shape):
            return int(shape[0]), int(shape[1])
    return None


def _id_sources(view) -> dict[str, str]:
    """Values that are an integer graph input carried through shape-only ops, or fixed up by
    elementwise index arithmetic with constants (INDEX_OPS) -> that input."""
    source = {name: name for name in view.input_names if view.elem_type(name) in INT_TYPES}
    constant = set(view.initializers) | {n.output[0] for n in view.nodes if n.op_type == "Constant" and n.output}
    for node in view.nodes:  # the view orders nodes topologically
        if node.op_type in CARRIERS and node.input and node.input[0] in source:
            for out in node.output[:1]:
                source[out] = source[node.input[0]]
        elif node.op_type in INDEX_OPS:
            origins = {source[x] for x in node.input if x in source}
            if len(origins) == 1 and all(x in source or x in constant for x in node.input if x):
                source[node.output[0]] = origins.pop()
        elif node.input and all(x in constant for x in node.input if x) and not node.op_type.startswith(RANDOM):
            constant.update(o for o in node.output if o)
    return source


def find_embeddings(model) -> list[Embedding]:
    """Every embedding lookup of the graph (an `onnx.ModelProto` or a `GraphView`), in graph order:
    Gathers on axis 0 from a 2-D float constant."""
    view = _view(model)
    source = _id_sources(view)
    found = []
    for node in view.nodes:
        if node.op_type != "Gather" or len(node.input) < 2:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        table = _table(view, node.input[0])
        if axis != 0 or table is None or view.elem_type(node.input[1]) not in INT_TYPES:
            continue
        found.append(Embedding(node.output[0], node.input[0], source.get(node.input[1]), *table))
    return found


def word_embeddings(model) -> Embedding:
    """The word-embedding lookup: of the lookups indexed by a graph input, the one with the largest
    table (token-type tables have two rows, position ids are computed inside the graph)."""
    lookups = [e for e in find_embeddings(model) if e.ids is not None]
    if not lookups:
        raise UnsupportedModelError(
            "the model has no embedding lookup (a Gather from a float [vocab, hidden] table indexed by an integer "
            "input), so wrt='embeddings' cannot be found; name the tensor to explain with wrt=.")
    return max(lookups, key=lambda e: e.vocab)


def _skip_carriers(view, name: str) -> str:
    """`name` followed forward through single-consumer shape-only ops."""
    while True:
        users = view.consumers.get(name, [])
        if len(users) == 1 and users[0].op_type in ("Identity", "Dropout", "Cast") and users[0].input[0] == name:
            name = users[0].output[0]
            continue
        return name


def embedding_sum(model) -> str:
    """The tensor holding the word embeddings plus every other lookup added to them (position,
    token type): the last Add of the chain that starts at the word embeddings and whose other
    operand is a lookup (or a sum of lookups). The word embeddings themselves when nothing is added."""
    view = _view(model)
    lookups = {e.output for e in find_embeddings(view)}
    value = _skip_carriers(view, word_embeddings(view).output)

    def lookup_sum(name: str, depth: int = 0) -> bool:  # a lookup, or an Add of lookups
        name = _through_carriers_back(view, name)
        if name in lookups:
            return True
        node = view.producer.get(name)
        return depth < 4 and node is not None and node.op_type == "Add" and all(lookup_sum(x, depth + 1) for x in node.input)

    while True:
        adds = [n for n in view.consumers.get(value, []) if n.op_type == "Add"]
        if len(adds) != 1:
            return value
        add = adds[0]
        other = add.input[1] if add.input[0] == value else add.input[0]
        if not lookup_sum(other):
            return value
        value = _skip_carriers(view, add.output[0])


def _whole_slice(view, node) -> bool:
    """A Slice that keeps all of its input: starts 0, steps 1, ends past each axis (tf2onnx writes
    Keras' `x[None]` as an Unsqueeze followed by such a Slice, with end 1e9)."""
    if node.op_type != "Slice" or len(node.input) < 3:
        return False
    starts, ends, shape = view.const(node.input[1]), view.const(node.input[2]), view.shape(node.input[0])
    given = [view.const(node.input[i]) if len(node.input) > i and node.input[i] else None for i in (3, 4)]
    if starts is None or ends is None or shape is None or any(
            len(node.input) > i and node.input[i] and v is None for i, v in zip((3, 4), given)):
        return False
    axes = range(len(starts)) if given[0] is None else given[0]
    if given[1] is not None and any(int(step) != 1 for step in given[1]):
        return False
    for axis, start, end in zip(axes, starts, ends):
        dim = shape[int(axis)] if -len(shape) <= int(axis) < len(shape) else None
        if int(start) != 0 or not (int(end) >= 2 ** 29 or isinstance(dim, int) and int(end) >= dim):
            return False
    return True


def _through_carriers_back(view, name: str) -> str:
    node = view.producer.get(name)
    while node is not None and (node.op_type in CARRIERS or _whole_slice(view, node)):
        name = node.input[0]
        node = view.producer.get(name)
    return name


def embedding_output(model) -> str:
    """The output of the embedding block: the LayerNormalization applied to the summed embeddings
    (BERT, DistilBERT; the op, or written out), else the sum itself (GPT-2 adds its lookups and
    normalises per layer)."""
    view = _view(model)
    total = embedding_sum(view)
    users = view.consumers.get(total, [])
    if len(users) == 1 and users[0].op_type == "LayerNormalization" and users[0].input[0] == total:
        return _skip_carriers(view, users[0].output[0])
    written_out = _decomposed_norm(view, total)
    return total if written_out is None else _skip_carriers(view, written_out)


# a LayerNormalization written out in elementary ops (tf2onnx writes Keras' so: the moments as
# GlobalAveragePool or ReduceMean of x and of the squared difference, Sqrt, Reciprocal, Mul, Add)
NORM_OPS = ("ReduceMean", "GlobalAveragePool", "Sub", "Mul", "Add", "Div", "Sqrt", "Reciprocal", "Pow", "Neg", "Cast",
            "Identity")


def _exponent(view, node) -> float | None:
    value = view.const(node.input[1]) if len(node.input) > 1 else None
    return float(value) if value is not None and value.size == 1 else None


def _decomposed_norm(view, x: str, limit: int = 32) -> str | None:
    """The output of a normalisation of `x` written out in NORM_OPS: the first tensor that every
    path from `x` passes through, when only such ops (a square root among them) lie between; else
    None (a residual branch that goes around, as GPT-2's, reaches other ops first)."""
    remaining = {x: len(view.consumers.get(x, []))}  # reached tensors -> consumers not yet visited
    outputs, seen, root = set(view.output_names), [], False
    for node in view.nodes:  # topological order
        hits = [i for i in node.input if i in remaining]
        if not hits:
            continue
        if node.op_type not in NORM_OPS or len(seen) >= limit:
            return None
        seen.append(node.op_type)
        root = root or node.op_type == "Sqrt" or node.op_type == "Pow" and _exponent(view, node) in (0.5, -0.5)
        for i in hits:
            remaining[i] -= 1
            if remaining[i] <= 0 and i not in outputs:
                del remaining[i]
        for out in node.output:
            if out:
                remaining[out] = len(view.consumers.get(out, [])) or 1  # an unused output stays open
        if len(seen) > 1 and root and list(remaining) == [node.output[0]]:
            return _affine_tail(view, node.output[0])
    return None


def _affine_tail(view, name: str) -> str:
    """`name` followed through its single consumers that scale or shift it by a constant (the
    normalisation's gamma and beta) or only cast it."""
    while name not in view.output_names and len(view.consumers.get(name, [])) == 1:
        node = view.consumers[name][0]
        others = [i for i in node.input if i != name]
        if not (node.op_type in ("Cast", "Identity") or node.op_type in ("Mul", "Add", "Sub", "Div") and len(others) == 1
                and view.const(others[0]) is not None):
            break
        name = node.output[0]
    return name


def resolve(model, wrt: str) -> str:
    """The tensor that `wrt` names: "embeddings" (or "embeddings:word"), "embeddings:sum",
    "embeddings:output", else `wrt` itself (a graph input or an inner tensor)."""
    kind = ALIASES.get(wrt)
    if kind is None:
        return wrt
    if kind == "word":
        return word_embeddings(model).output
    if kind == "sum":
        return embedding_sum(model)
    return embedding_output(model)


def token_ids_input(model) -> str | None:
    """The graph input that holds the token ids (the one the word embeddings are read from), or None."""
    try:
        return word_embeddings(model).ids
    except UnsupportedModelError:
        return None
