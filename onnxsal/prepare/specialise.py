"""Specialise: the call's concrete input shapes written into the graph, and what they make constant
folded away, so that the gradient rules see static shapes and constant operands.

Files from the wild compute the sizes of a Resize, the shape of a Reshape, the pads of a Pad or the
bounds of a Slice from the input's height and width at run time (every FPN/U-Net/YOLO neck does).
Once the input dims are fixed those values are constants, but only after three steps:

1. the given dims are written into the graph inputs (an int fixes a dim, None keeps it symbolic);
2. shapes are inferred again (ONNX's inference with data propagation; onnxruntime's symbolic shape
   inference where ONNX's leaves ranks or dims unknown) and written into value_info, where
   `GraphView` reads them;
3. the shape arithmetic is folded: a `Shape` of a tensor whose dims are now static (or the static
   part of it that a Gather/Slice picks), and every small computation on constants after it,
   become Constant nodes; an `If` whose condition became constant is replaced by the nodes of the
   branch it takes.

Steps 2 and 3 repeat until nothing more folds (a folded `If` can expose more shape arithmetic).
Only small values are evaluated (`MAX_FOLD_ELEMENTS`): shapes, axes, scales, never weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..autodiff.graph import _constant_node_value, default_opset, node_inputs, topological_order
from ..errors import InvalidInputError, OnnxsalError
from .repair import inferred_types, light_copy

MAX_FOLD_ELEMENTS = 4096  # values folded into constants stay this small
MAX_ROUNDS = 8  # inference + folding rounds (each folded If may expose more to fold)

# Ops evaluated when all their inputs are small constants: shape arithmetic and what feeds it.
FOLDABLE = {
    "Gather", "Slice", "Concat", "Cast", "Unsqueeze", "Squeeze", "Mul", "Div", "Add", "Sub", "Floor",
    "Ceil", "Round", "Range", "ConstantOfShape", "Reshape", "Identity", "Neg", "Abs", "Sqrt", "Pow",
    "Mod", "Max", "Min", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And",
    "Or", "Where", "Expand", "Tile", "ReduceProd", "ReduceSum", "ReduceMax", "ReduceMin", "Size",
    "Shape", "Transpose", "Flatten", "Sign", "Reciprocal", "CastLike", "Clip", "Sum", "Mean",
}


def specialise(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int | None]],
               values: Mapping[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """A copy of `model` whose inputs named in `shapes` have those dims (int: fixed, None: left as the
    file has it; other inputs untouched) and whose inputs named in `values` are read as those
    constants (the input stays declared, so the same feeds run it), with shapes inferred again into
    value_info and the shape arithmetic and `If`s that became constant folded."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    _write_input_dims(fixed.graph, shapes)
    _write_input_values(fixed.graph, values or {})
    _sort(fixed.graph)
    for _ in range(MAX_ROUNDS):
        infer_into(fixed)
        if not fold(fixed):
            break
    return fixed


# -- 1. input dims ------------------------------------------------------------------------------------
def _write_input_dims(graph: onnx.GraphProto, shapes: Mapping[str, Sequence[int | None]]) -> None:
    inputs = {i.name: i for i in graph.input}
    for name, dims in shapes.items():
        if name not in inputs:
            raise InvalidInputError(f"the model has no input named {name!r} to specialise; its inputs are {list(inputs)}.")
        t = inputs[name].type.tensor_type
        dims = list(dims)
        if t.HasField("shape") and len(t.shape.dim) != len(dims):
            raise InvalidInputError(f"input {name!r} has rank {len(t.shape.dim)}, and {len(dims)} dims were given for it ({dims}).")
        if not t.HasField("shape"):
            t.shape.dim.extend(onnx.TensorShapeProto.Dimension() for _ in dims)
        for i, (d, want) in enumerate(zip(t.shape.dim, dims)):
            if want is None:
                continue
            if not isinstance(want, (int, np.integer)) or want < 0:
                raise InvalidInputError(f"dim {i} of input {name!r} must be a non-negative int or None, not {want!r}.")
            if d.HasField("dim_value") and d.dim_value != want:
                raise InvalidInputError(f"dim {i} of input {name!r} is {d.dim_value} in the model, not {want}.")
            d.Clear()
            d.dim_value = int(want)


def _write_input_values(graph: onnx.GraphProto, values: Mapping[str, np.ndarray]) -> None:
    """Every read of each named input (in subgraphs too) redirected to a Constant node of its value."""
    inputs = {i.name for i in graph.input}
    taken = _all_names(graph)
    renamed = {}
    for name, value in values.items():
        if name not in inputs:
            raise InvalidInputError(f"the model has no input named {name!r} to specialise; its inputs are {sorted(inputs)}.")
        const = _fresh(f"{name}_value", taken)
        graph.node.insert(0, helper.make_node("Constant", [], [const], name=const,
                                              value=numpy_helper.from_array(np.asarray(value), const)))
        renamed[name] = const
    if renamed:
        _rename_reads(graph, renamed)


def _sort(graph: onnx.GraphProto) -> None:
    try:
        ordered = topological_order(list(graph.node), set())
    except OnnxsalError:
        return  # a cycle: GraphView refuses it in its own words
    copies = [onnx.NodeProto() for _ in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


# -- 2. shapes ---------------------------------------------------------------------------------------
def _dims(t: onnx.TypeProto) -> list | None:
    """The dims of a tensor type (int, str or None each), None when the rank is unknown."""
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.tensor_type.shape.dim]


def _symbolic_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """onnxruntime's symbolic shape inference, which computes many shapes ONNX's gives up on (it may
    raise, or be missing from a minimal onnxruntime build: then nothing)."""
    import logging

    quiet = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its "Unable to determine if ... treat as equal" warnings are not the user's
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        out = SymbolicShapeInference.infer_shapes(light_copy(model), auto_merge=True, guess_output_rank=True)
    except Exception:
        return {}
    finally:
        quiet.setLevel(level)
    if out is None:
        return {}
    return {v.name: v.type for v in list(out.graph.value_info) + list(out.graph.output)}


def _merge(onnx_type: onnx.TypeProto | None, ort_type: onnx.TypeProto | None) -> onnx.TypeProto | None:
    """ONNX's type with the rank or the dims it lacks taken from onnxruntime's."""
    if ort_type is None or _dims(ort_type) is None:
        return onnx_type
    if onnx_type is None or _dims(onnx_type) is None:
        return ort_type
    a, b = onnx_type.tensor_type.shape.dim, ort_type.tensor_type.shape.dim
    if len(a) != len(b):
        return onnx_type
    merged = onnx.TypeProto()
    merged.CopyFrom(onnx_type)
    for d, other in zip(merged.tensor_type.shape.dim, b):
        if not d.HasField("dim_value") and other.HasField("dim_value"):
            d.Clear()
            d.dim_value = other.dim_value
        elif not d.HasField("dim_value") and not d.dim_param and other.dim_param:
            d.dim_param = other.dim_param
    return merged


def _unknown(t: onnx.TypeProto | None, grounded: set[str]) -> bool:
    """Whether ONNX's inference left this value's rank, or one of its dims, unknown (a dim named
    after an input's symbolic dim is known: it is that dim)."""
    dims = None if t is None else _dims(t)
    return dims is None or any(not isinstance(d, int) and d not in grounded for d in dims)


def _guessed_ranks(graph: onnx.GraphProto, types: dict[str, onnx.TypeProto]) -> set[str]:
    """Values whose rank onnxruntime's symbolic inference could only guess: the output of a Squeeze
    without axes over a dim that is not a number (it assumes the dim is not 1), and every value
    computed from it whose rank ONNX's inference does not know."""
    guessed: set[str] = set()
    for n in graph.node:
        if n.op_type == "Squeeze" and not _attr(n, "axes") and len([x for x in n.input if x]) < 2:
            dims = _dims(types[n.input[0]]) if n.input[0] in types else None
            if dims is None or not all(isinstance(d, int) for d in dims):
                guessed.update(o for o in n.output if o)
        elif any(x in guessed for x in n.input):
            guessed.update(o for o in n.output if o and (o not in types or _dims(types[o]) is None))
    return guessed


def infer_into(model: onnx.ModelProto) -> None:
    """Infer every value's type and write it into value_info (and the graph outputs), with
    onnxruntime's symbolic inference filling in what ONNX's leaves unknown."""
    g = model.graph
    types = inferred_types(model) or inferred_types(model, keep_declared=False) or {}
    produced = [o for n in g.node for o in n.output if o]
    grounded = {d.dim_param for i in g.input for d in i.type.tensor_type.shape.dim if d.dim_param}
    if any(_unknown(types.get(v), grounded) for v in produced):
        ort = _symbolic_types(model)
        for v in _guessed_ranks(g, types):
            ort.pop(v, None)
        types = {v: _merge(types.get(v), ort.get(v)) for v in set(types) | set(ort)}
        types = {v: t for v, t in types.items() if t is not None}
    graph_inputs = {i.name for i in g.input} | {t.name for t in g.initializer}
    outputs = {o.name: o for o in g.output}
    infos = []
    for v in produced:
        t = types.get(v)
        if t is None or not t.HasField("tensor_type") or v in graph_inputs:
            continue
        if v in outputs:
            _refine_output(outputs[v], t)
        else:
            infos.append(helper.make_value_info(v, t))
    del g.value_info[:]
    g.value_info.extend(infos)


def _refine_output(output: onnx.ValueInfoProto, t: onnx.TypeProto) -> None:
    """A graph output's declared dims, with the ones inference now knows as numbers written in."""
    declared = output.type.tensor_type
    if not declared.HasField("shape"):
        if _dims(t) is not None:
            declared.shape.CopyFrom(t.tensor_type.shape)
        return
    dims = t.tensor_type.shape.dim if _dims(t) is not None else []
    if len(dims) != len(declared.shape.dim):
        return
    for d, known in zip(declared.shape.dim, dims):
        if known.HasField("dim_value") and not d.HasField("dim_value"):
            d.Clear()
            d.dim_value = known.dim_value


# -- 3. folding ----------------------------------------------------------------------------------------
class _Values:
    """What folding knows about values: small constants (numpy arrays) and partly known shape
    vectors (object arrays holding ints, symbolic dim names, or None for dims without a name)."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.const: dict[str, np.ndarray] = {}
        self.partial: dict[str, np.ndarray] = {}
        overridable = {i.name for i in g.input}
        for t in g.initializer:
            if t.name not in overridable and int(np.prod(t.dims)) <= MAX_FOLD_ELEMENTS:
                self.const[t.name] = numpy_helper.to_array(t)
        self.dims = {v.name: _dims(v.type) for v in list(g.value_info) + list(g.input) + list(g.output)}
        for t in g.initializer:
            self.dims.setdefault(t.name, list(t.dims))
        self.elem = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.output)
                     if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}

    def int_dtype(self, name: str) -> np.dtype:
        """The integer dtype a shape value has (int64 unless inference says another integer type)."""
        elem = self.elem.get(name)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem)) if elem else np.dtype(np.int64)
        return dtype if dtype.kind in "iu" else np.dtype(np.int64)

    def known(self, name: str) -> np.ndarray | None:
        """A constant, or a partial vector (which the structural ops can still move around)."""
        if name in self.const:
            return self.const[name]
        return self.partial.get(name)


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _is_partial(v: np.ndarray) -> bool:
    return v.dtype == object


def _shape_of(node: onnx.NodeProto, values: _Values) -> np.ndarray | None:
    """The output of a Shape node as far as the input's dims are known: ints, the names of symbolic
    dims (which later ops can match against other dims), None for dims without a name."""
    dims = values.dims.get(node.input[0])
    if dims is None and node.input[0] in values.const:
        dims = list(values.const[node.input[0]].shape)
    if dims is None:
        return None
    rank = len(dims)
    start, end = _attr(node, "start", 0), _attr(node, "end", rank)
    start, end = (max(0, min(rank, s + rank if s < 0 else s)) for s in (start, end))
    return np.array(list(dims[start:end]), dtype=object)


def _partial_op(node: onnx.NodeProto, ins: list, opset: int) -> list | None:
    """Gather/Slice/Concat/Unsqueeze/Squeeze/Cast/Identity/Reshape moved over partial shape vectors."""
    op = node.op_type
    if any(v is None for v in ins[:1]) or not any(_is_partial(v) for v in ins if v is not None):
        return None
    x = ins[0]
    if op == "Concat":
        if any(v is None or v.ndim == 0 for v in ins):
            return None
        return [np.concatenate([v.astype(object) for v in ins], axis=_attr(node, "axis", 0))]
    if op in ("Identity", "Cast"):
        if op == "Cast" and np.dtype(helper.tensor_dtype_to_np_dtype(_attr(node, "to"))).kind not in "iu":
            return None
        return [x]
    if any(v is not None and _is_partial(v) for v in ins[1:]):
        return None
    if op == "Gather":
        if len(ins) < 2 or ins[1] is None:
            return None
        return [np.take(x, ins[1].astype(np.int64), axis=_attr(node, "axis", 0))]
    if op == "Slice":
        if x.ndim != 1:
            return None
        if opset < 10:
            starts, ends, axes, steps = _attr(node, "starts"), _attr(node, "ends"), _attr(node, "axes"), None
        else:
            given = [i for i in range(1, len(node.input)) if node.input[i]]
            if len(ins) < 3 or any(ins[i] is None for i in given):
                return None
            starts, ends = ins[1], ins[2]
            axes = ins[3] if len(ins) > 3 and ins[3] is not None else None
            steps = ins[4] if len(ins) > 4 and ins[4] is not None else None
        if axes is not None and any(int(a) not in (0, -1) for a in np.ravel(axes)):
            return None
        step = 1 if steps is None else int(np.ravel(steps)[0])
        lo, hi = int(np.ravel(starts)[0]), int(np.ravel(ends)[0])
        n = len(x)
        lo, hi = (max(-n - 1, min(n, v)) for v in (lo, hi))  # INT64_MAX / INT64_MIN bounds clipped
        return [x[slice(lo, hi, step)]]
    if op in ("Unsqueeze", "Squeeze"):
        axes = _attr(node, "axes") if opset < 13 else (None if len(ins) < 2 or ins[1] is None else list(np.ravel(ins[1])))
        if op == "Unsqueeze":
            if axes is None:
                return None
            out = x
            for a in sorted(int(a) % (x.ndim + len(axes)) for a in axes):
                out = np.expand_dims(out, a)
            return [out]
        if axes is None:
            return [x.reshape([d for d in x.shape if d != 1])]
        return [np.squeeze(x, axis=tuple(int(a) % x.ndim for a in axes))]
    return None


def _output_size_ok(node: onnx.NodeProto, ins: list[np.ndarray]) -> bool:
    """Whether the ops that make large tensors from small ones would stay small here."""
    op = node.op_type
    try:
        if op == "ConstantOfShape":
            return int(np.prod(ins[0])) <= MAX_FOLD_ELEMENTS
        if op == "Expand":
            return int(np.prod(np.broadcast_shapes(ins[0].shape, tuple(int(d) for d in ins[1])))) <= MAX_FOLD_ELEMENTS
        if op == "Tile":
            return int(np.prod(ins[0].shape) * np.prod(ins[1])) <= MAX_FOLD_ELEMENTS
        if op == "Range":
            start, limit, delta = (float(np.ravel(v)[0]) for v in ins[:3])
            return delta != 0 and max(0.0, np.ceil((limit - start) / delta)) <= MAX_FOLD_ELEMENTS
    except Exception:
        return False
    return True


def _evaluate(node: onnx.NodeProto, ins: list[np.ndarray | None], opset: int) -> list[np.ndarray] | None:
    """Run one node on constant inputs with onnx.reference; None when it cannot be evaluated."""
    from onnx.reference import ReferenceEvaluator

    if not _output_size_ok(node, ins):
        return None
    feeds = {x: v for x, v in zip(node.input, ins) if x}
    try:
        outs = ReferenceEvaluator(node, opsets={"": opset}).run(None, feeds)
    except Exception:
        return None
    if len(outs) != len([o for o in node.output]) or not all(isinstance(o, np.ndarray) or np.isscalar(o) for o in outs):
        return None
    outs = [np.asarray(o) for o in outs]
    return outs if all(o.size <= MAX_FOLD_ELEMENTS for o in outs) else None


def _fold_node(node: onnx.NodeProto, values: _Values, opset: int) -> list[np.ndarray] | None:
    """The outputs of `node` as constants or partial vectors, None when they stay run-time values."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return None
    if op == "Constant":
        v = _constant_node_value(node)
        return None if v is None or v.size > MAX_FOLD_ELEMENTS else [v]
    if op == "Shape":
        shape = _shape_of(node, values)
        return None if shape is None else [shape]
    if op == "Size":
        dims = values.dims.get(node.input[0])
        return [np.array(int(np.prod(dims)), dtype=np.int64)] if dims is not None and all(isinstance(d, int) for d in dims) else None
    if op not in FOLDABLE:
        return None
    ins = [values.known(x) if x else None for x in node.input]
    if any(v is not None and _is_partial(v) for v in ins):
        try:
            outs = _partial_op(node, ins, opset)
        except (ValueError, IndexError, TypeError):  # indices out of range, axes that do not fit: left to run time
            return None
        return None if outs is None else [np.asarray(v, dtype=object) for v in outs]
    if any(v is None for x, v in zip(node.input, ins) if x):
        return None
    return _evaluate(node, ins, opset)


def _complete_partial(v: np.ndarray, dtype: np.dtype) -> np.ndarray | None:
    """A partial vector with every dim known, as a constant of `dtype` (int64, or int32 after a Cast)."""
    if not _is_partial(v) or not all(isinstance(d, (int, np.integer)) for d in v.ravel()):
        return None
    return v.astype(dtype)


def fold(model: onnx.ModelProto) -> bool:
    """Fold, in place, what became constant: Shape of static tensors and the small arithmetic after
    it into Constant nodes, and `If`s on constant conditions into their branches. True when anything
    changed."""
    g = model.graph
    opset = default_opset(model)
    values = _Values(model)
    taken = _all_names(g)
    nodes: list[onnx.NodeProto] = []
    changed = False
    for node in g.node:
        if node.op_type == "If" and node.domain in ("", "ai.onnx"):
            cond = values.const.get(node.input[0])
            if cond is not None and cond.size == 1:
                nodes.extend(inline_branch(node, bool(np.ravel(cond)[0]), taken))
                changed = True
                continue
        outs = _fold_node(node, values, opset)
        if outs is None:
            nodes.append(node)
            continue
        consts = []
        for name, v in zip(node.output, outs):
            full = _complete_partial(v, values.int_dtype(name)) if _is_partial(v) else v
            if full is not None:
                values.const[name] = full
                consts.append((name, full))
            else:
                values.partial[name] = v
        if node.op_type == "Constant" or len(consts) != len([o for o in node.output if o]):
            nodes.append(node)
            continue
        for name, v in consts:
            nodes.append(helper.make_node("Constant", [], [name], name=_fresh(f"{node.name}/folded", taken),
                                          value=numpy_helper.from_array(np.asarray(v), name)))
        changed = True
    nodes = _drop_dead(nodes, {o.name for o in g.output})
    changed = changed or len(nodes) != len(g.node)
    if changed:
        read_before = {x for n in g.node for x in node_inputs(n)}
        del g.node[:]
        g.node.extend(nodes)
        _drop_unread_initializers(g, read_before)
    _write_hints(g, _shape_hints(nodes, values))
    return changed


# -- output shapes from partly known shape vectors ----------------------------------------------------
def _reshape_dims(x_dims: list | None, target: np.ndarray, allowzero: int) -> list | None:
    """The output dims of Reshape(x, target) with target partly known; the -1 entry resolved when
    the symbolic dims cancel out (x [N, 4, 1, 1] to [N, -1] is [N, 4])."""
    out = list(target.ravel())
    if x_dims is None:
        return None if any(d == -1 or (d == 0 and not allowzero) for d in out) else out
    if not allowzero:
        out = [x_dims[i] if d == 0 and i < len(x_dims) else d for i, d in enumerate(out)]
    if out.count(-1) != 1:
        return out
    numerator = [d for d in x_dims]
    denominator = [d for d in out if d != -1]
    for d in list(denominator):
        if isinstance(d, str) and d in numerator:
            numerator.remove(d)
            denominator.remove(d)
    if all(isinstance(d, int) for d in numerator + denominator) and int(np.prod(denominator)) > 0:
        size, rest = int(np.prod(numerator)), int(np.prod(denominator))
        out[out.index(-1)] = size // rest if size % rest == 0 else None
    else:
        out[out.index(-1)] = None
    return out


def _broadcast_dim(x, t):
    """The dim of Expand's output from the input's dim `x` and the target's `t` (None: unknown)."""
    if (isinstance(x, int) and x != 1) or t == 1 or x == t:
        return x
    if x == 1 or isinstance(t, int):
        return t
    return None


def _shape_hints(nodes: list[onnx.NodeProto], values: _Values) -> dict[str, list]:
    """Output dims that follow from a partly known shape vector where ONNX's inference gives up:
    Resize sizes, Reshape/Expand/ConstantOfShape shapes holding a symbolic dim (the batch, say)."""
    hints: dict[str, list] = {}
    for n in nodes:
        op = n.op_type
        if op == "Resize" and len(n.input) > 3 and n.input[3]:
            shape_in, dims = values.known(n.input[3]), None
            if shape_in is not None and _attr(n, "axes") is None:
                dims = list(shape_in.ravel())
        elif op in ("Resize", "Upsample"):  # scales: an axis scaled by 1 keeps its (symbolic) dim
            scales = values.const.get(n.input[1 if op == "Upsample" or len(n.input) < 3 else 2]) if len(n.input) > 1 else None
            x_dims = values.dims.get(n.input[0])
            if scales is None or x_dims is None or scales.size != len(x_dims) or _attr(n, "axes") is not None:
                continue
            dims = [x if s == 1 else (int(np.floor(x * s)) if isinstance(x, int) else None) for x, s in zip(x_dims, scales.ravel())]
        elif op in ("Reshape", "Expand", "ConstantOfShape") and len(n.input) >= (1 if op == "ConstantOfShape" else 2):
            shape_in = values.known(n.input[0 if op == "ConstantOfShape" else 1])
            if shape_in is None or not _is_partial(shape_in):
                continue
            if op == "Reshape":
                dims = _reshape_dims(values.dims.get(n.input[0]), shape_in, _attr(n, "allowzero", 0))
            elif op == "Expand":
                x_dims = values.dims.get(n.input[0])
                target = list(shape_in.ravel())
                if x_dims is None or len(x_dims) > len(target):
                    continue
                lead = len(target) - len(x_dims)
                dims = target[:lead] + [_broadcast_dim(x, t) for x, t in zip(x_dims, target[lead:])]
            else:
                dims = list(shape_in.ravel())
        else:
            continue
        if dims is not None and n.output[0]:
            hints[n.output[0]] = [d if isinstance(d, (int, np.integer, str)) and (not isinstance(d, (int, np.integer)) or d >= 0) else None
                                  for d in dims]
    return hints


def _write_hints(graph: onnx.GraphProto, hints: dict[str, list]) -> None:
    """Fill the unknown or unnamed-symbolic dims of value_info (and outputs) from `hints`; a dim
    inference knows as a number, or an input's symbolic dim, is kept."""
    grounded = {d.dim_param for i in graph.input for d in i.type.tensor_type.shape.dim if d.dim_param}
    for v in list(graph.value_info) + list(graph.output):
        dims = hints.get(v.name)
        if dims is None or not v.type.HasField("tensor_type"):
            continue
        t = v.type.tensor_type
        if not t.HasField("shape"):
            t.shape.dim.extend(onnx.TensorShapeProto.Dimension() for _ in dims)
        if len(t.shape.dim) != len(dims):
            continue
        for d, hint in zip(t.shape.dim, dims):
            if hint is None or d.HasField("dim_value") or d.dim_param in grounded:
                continue
            d.Clear()
            if isinstance(hint, str):
                d.dim_param = hint
            else:
                d.dim_value = int(hint)


def _drop_unread_initializers(graph: onnx.GraphProto, read_before: set[str]) -> None:
    """Initializers that only folded nodes read (onnxruntime warns about unused ones)."""
    read = {x for n in graph.node for x in node_inputs(n)} | {o.name for o in graph.output} | {i.name for i in graph.input}
    keep = [t for t in graph.initializer if t.name in read or t.name not in read_before]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


def _drop_dead(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """Nodes without a reader left by folding: Constants and the shape arithmetic (Shape, Size and
    nodes none of whose outputs are read); nodes on float data are kept whether read or not."""
    while True:
        read = {x for n in nodes for x in node_inputs(n)} | outputs
        keep = [n for n in nodes if any(o in read for o in n.output) or n.op_type not in FOLDABLE | {"Constant"}]
        if len(keep) == len(nodes):
            return nodes
        nodes = keep


# -- If -------------------------------------------------------------------------------------------------
def _all_names(graph: onnx.GraphProto) -> set[str]:
    """Every value and node name of a graph and its subgraphs (new names must avoid them all)."""
    names = {i.name for i in graph.input} | {o.name for o in graph.output} | {t.name for t in graph.initializer}
    for n in graph.node:
        names.add(n.name)
        names.update(n.input)
        names.update(n.output)
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                names |= _all_names(sub)
    return names


def _fresh(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        name = f"{base}_{k}"
        k += 1
    taken.add(name)
    return name


def _rename_reads(graph: onnx.GraphProto, renamed: dict[str, str]) -> None:
    """In a nested subgraph, the outer values it reads renamed (its own values keep their names)."""
    for n in graph.node:
        for i, x in enumerate(n.input):
            if x in renamed:
                n.input[i] = renamed[x]
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                _rename_reads(sub, renamed)
    for o in graph.output:
        if o.name in renamed and o.name not in {n_o for n in graph.node for n_o in n.output}:
            o.name = renamed[o.name]


def inline_branch(node: onnx.NodeProto, taken_branch: bool, taken: set[str]) -> list[onnx.NodeProto]:
    """The nodes of the branch an If takes, standing in for it: the branch's own values renamed
    `<if name>/<value>` (unique in the graph), its outputs renamed to the If's outputs, the outer
    values it reads kept."""
    branch = _attr(node, "then_branch" if taken_branch else "else_branch")
    produced = {o for n in branch.node for o in n.output if o} | {t.name for t in branch.initializer}
    renamed: dict[str, str] = {}
    for out, target in zip(branch.output, node.output):
        if out.name in produced and out.name not in renamed and target:
            renamed[out.name] = target
    for v in produced:
        if v not in renamed:
            renamed[v] = _fresh(f"{node.name}/{v}", taken)
    nodes = [helper.make_node("Constant", [], [renamed[t.name]], name=_fresh(f"{node.name}/{t.name}", taken), value=t)
             for t in branch.initializer]
    for n in branch.node:
        c = onnx.NodeProto()
        c.CopyFrom(n)
        c.name = _fresh(f"{node.name}/{n.name or n.op_type}", taken)
        for i, x in enumerate(c.input):
            if x in renamed:
                c.input[i] = renamed[x]
        for i, x in enumerate(c.output):
            if x:
                c.output[i] = renamed[x]
        for a in c.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                _rename_reads(sub, renamed)
        nodes.append(c)
    for out, target in zip(branch.output, node.output):
        if target and renamed.get(out.name) != target:  # an outer value, or an output given twice
            nodes.append(helper.make_node("Identity", [renamed.get(out.name, out.name)], [target],
                                          name=_fresh(f"{node.name}/{target}", taken)))
    return nodes
