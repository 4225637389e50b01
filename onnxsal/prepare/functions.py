"""Lowering by ONNX function body: an op with no gradient rule whose schema defines it as a function
of other ops (onnx.defs knows 48 such) is expanded into that body and differentiated through it.

The body is the one `onnx.defs` gives for the model's opset (a plain function, or one built for the
node's attributes and input types: LayerNormalization, RMSNormalization, CenterCropPad, ...).
Attributes the body refers to (`@alpha`) are bound to the node's values or the function's defaults,
the body's own values are named `<node name>/<value>`, and its inputs and outputs are the node's.
`lower` uses it for any op on the path that has neither a rule nor a registered lowering; a body
node that has no rule is expanded in its turn (or refused by the differentiator, by its own name).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import checker, defs, helper, numpy_helper

# Bodies that draw random numbers (Bernoulli) have no gradient to follow; sequences are not tensors.
RANDOM_OPS = {"RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Multinomial", "Bernoulli"}
NOT_EXPANDED = {"SequenceMap"}


def function_body(node: onnx.NodeProto, view) -> onnx.FunctionProto | None:
    """The schema's function body of `node` at the model's opset, or None when it has none there
    (the op defines no body, or only for a newer opset, or the body needs input types inference lost).

    CastLike is a Cast to the element type of its second input: that one node is its body here
    (onnx.defs builds CastLike's body for no input types given from Python)."""
    if node.domain not in ("", "ai.onnx") or node.op_type in NOT_EXPANDED:
        return None
    if node.op_type == "CastLike":
        return _cast_like_body(view.elem_type(node.input[1]) if len(node.input) > 1 else None)
    try:
        schema = defs.get_schema(node.op_type, view.opset, "")
    except defs.SchemaError:
        return None
    try:
        if schema.has_function:
            raw = schema.get_function_with_opset_version(view.opset)
        elif schema.has_context_dependent_function:
            types = [_input_type(view, x).SerializeToString() for x in node.input]
            raw = schema.get_context_dependent_function_with_opset_version(view.opset, node.SerializeToString(), types)
        else:
            return None
    except Exception:  # the body builder refuses what it cannot type (an input of unknown element type)
        return None
    return onnx.FunctionProto.FromString(raw) if raw else None


def _cast_like_body(to: int | None) -> onnx.FunctionProto | None:
    if not to:
        return None
    fn = onnx.FunctionProto(name="CastLike", input=["input", "target_type"], output=["output"])
    fn.node.append(helper.make_node("Cast", ["input"], ["output"], to=to))
    return fn


def _input_type(view, name: str) -> onnx.TypeProto:
    """The tensor type of an input as the graph knows it (an absent optional input: an empty type)."""
    if not name:
        return onnx.TypeProto()
    elem = view.elem_type(name)
    if elem is None:
        raise ValueError(f"the element type of {name!r} is unknown")
    shape = view.shape(name)
    return helper.make_tensor_type_proto(elem, None if shape is None else list(shape))


def expand(ctx) -> None:
    """Emit the function body of `ctx.node` (a LowerContext) in its place: body nodes with the
    node's attributes bound and values renamed, constant ones folded, `If`s on constants resolved."""
    node, e = ctx.node, ctx.emitter
    body = function_body(node, ctx.view)
    if body is None:
        ctx.cannot(f"opset {ctx.opset} gives {node.op_type} no function body to expand")
    drawn = sorted({n.op_type for n in body.node} & RANDOM_OPS)
    if drawn:
        ctx.cannot(f"its function body draws random numbers ({', '.join(drawn)}), which have no gradient")
    names = _bind_values(node, body, e)
    attrs = _caller_attributes(node, body, defs.get_schema(node.op_type, ctx.opset, ""))
    outputs = {names[o] for o in body.output}
    folder = _Folder(ctx.view, ctx.opset)
    pending = list(body.node)
    while pending:
        inner = pending.pop(0)
        if inner.op_type == "If":
            pending[:0] = _taken_branch(ctx, inner, names, folder)
            continue
        if inner.op_type == "CastLike":
            inner = _as_cast(inner, names, ctx.view, folder)
        made = _instantiate(ctx, inner, names, attrs)
        folded = None if outputs & set(made.output) else folder.fold(made)
        if folded is None:
            e.nodes.append(made)
        else:
            e.initializers.extend(numpy_helper.from_array(value, v) for v, value in zip(made.output, folded))


def _instantiate(ctx, inner: onnx.NodeProto, names: dict[str, str], attrs: dict) -> onnx.NodeProto:
    """A body node as a node of the graph: values renamed (fresh names for the body's own), attribute
    references bound, checked against the model's opset."""
    if inner.domain not in ("", "ai.onnx"):
        ctx.cannot(f"its function body uses op {inner.op_type} of domain '{inner.domain}'")
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in inner.attribute):
        ctx.cannot(f"its function body holds a subgraph ({inner.op_type})")
    e, prefix = ctx.emitter, f"{ctx.node.name}/"
    for v in inner.output:
        if v and v not in names:
            names[v] = e.fresh(prefix + v)
    made = helper.make_node(inner.op_type, [names.get(x, "") if x else "" for x in inner.input],
                            [names[v] if v else "" for v in inner.output], name=e.fresh(prefix + (inner.name or inner.op_type)))
    made.attribute.extend(_bound_attributes(inner, attrs))
    check = checker.C.CheckerContext()
    check.ir_version = onnx.IR_VERSION
    check.opset_imports = {"": ctx.opset}
    try:
        checker.check_node(made, check)
    except checker.ValidationError as err:
        ctx.cannot(f"its function body needs a {inner.op_type} node that opset {ctx.opset} cannot express "
                   f"({str(err).strip().splitlines()[0]})")
    return made


def _taken_branch(ctx, node: onnx.NodeProto, names: dict[str, str], folder: "_Folder") -> list[onnx.NodeProto]:
    """The nodes of the branch an `If` of the body takes, when its condition is a constant (an
    attribute such as AffineGrid's align_corners decides it); the branch's outputs become the If's."""
    cond = folder.value(names.get(node.input[0], ""))
    if cond is None:
        ctx.cannot("its function body branches (If) on a value known only at run time")
    branch = next(helper.get_attribute_value(a) for a in node.attribute
                  if a.name == ("then_branch" if bool(np.ravel(cond)[0]) else "else_branch"))
    nodes = list(branch.node)
    nodes += [helper.make_node("Identity", [inner.name], [out]) for out, inner in zip(node.output, branch.output) if out]
    return nodes


class _Folder:
    """Evaluates, while a body is expanded, the body nodes that only compute constants: shape
    arithmetic (Shape, Size, the axes of RMSNormalization's ReduceMean...), so that the rules see
    constant axes and known ranks. Values are known from the graph's constants, static shapes, and
    the rank of a Shape of a value whose rank is known (Size of it is that rank)."""

    def __init__(self, view, opset: int):
        self.view, self.opset = view, opset
        self.known: dict[str, np.ndarray] = {}
        self.shape_length: dict[str, int] = {}  # outputs of Shape nodes whose length (not value) is known

    def value(self, name: str) -> np.ndarray | None:
        if name in self.known:
            return self.known[name]
        return self.view.const(name)

    def fold(self, node: onnx.NodeProto) -> list[np.ndarray] | None:
        """The node's output values when they are constants, else None (the node is then emitted)."""
        if node.op_type in RANDOM_OPS:
            return None
        inputs = [self.value(x) if x else None for x in node.input]
        if all(v is not None for x, v in zip(node.input, inputs) if x):
            values = self._evaluate(node, inputs)
            return None if values is None else self._keep(node, *values)
        if node.op_type == "Shape":
            return self._shape(node)
        if node.op_type == "Size" and node.input[0] in self.shape_length:
            return self._keep(node, np.array(self.shape_length[node.input[0]], dtype=np.int64))
        if node.op_type == "Size":
            shape = self.view.static_shape(node.input[0])
            return None if shape is None else self._keep(node, np.array(int(np.prod(shape)), dtype=np.int64))
        return None

    def _shape(self, node: onnx.NodeProto):
        rank = self.view.rank(node.input[0])
        if rank is None:
            return None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        start, end = attrs.get("start", 0), attrs.get("end", rank)
        start, end = (min(max(i + rank if i < 0 else i, 0), rank) for i in (start, end))
        shape = self.view.static_shape(node.input[0])
        if shape is None:
            self.shape_length[node.output[0]] = max(end - start, 0)
            return None
        return self._keep(node, np.array(shape[start:end], dtype=np.int64))

    def _keep(self, node: onnx.NodeProto, *values: np.ndarray) -> list[np.ndarray]:
        out = [np.asarray(v) for v in values]
        self.known.update(zip(node.output, out))
        return out

    def _evaluate(self, node: onnx.NodeProto, inputs: list) -> list[np.ndarray]:
        from onnx.reference import ReferenceEvaluator

        feeds = {x: v for x, v in zip(node.input, inputs) if x}
        graph = helper.make_graph(
            [node], "fold", [], [onnx.ValueInfoProto(name=o) for o in node.output],
            initializer=[numpy_helper.from_array(np.asarray(v), x) for x, v in feeds.items()],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        try:
            return list(ReferenceEvaluator(model).run(None, {}))
        except Exception:  # not evaluable here (the reference lacks the op): the node stays in the graph
            return None


def _as_cast(inner: onnx.NodeProto, names: dict[str, str], view, folder: "_Folder") -> onnx.NodeProto:
    """A body's CastLike whose target has a known type (one of the node's inputs, or a constant) as a
    plain Cast, so the target (often the differentiated input itself) is no longer read."""
    target = names.get(inner.input[1], "") if len(inner.input) > 1 else ""
    to = view.elem_type(target) if target else None
    known = folder.value(target) if target else None
    if known is not None:
        to = helper.np_dtype_to_tensor_dtype(known.dtype)
    if not to:
        return inner
    return helper.make_node("Cast", [inner.input[0]], list(inner.output), name=inner.name, to=to)


def _bind_values(node: onnx.NodeProto, body: onnx.FunctionProto, e) -> dict[str, str]:
    """Formal inputs and outputs of the body mapped to the node's own value names; an output the node
    does not name (LayerNormalization's Mean, say) gets a fresh name of its own."""
    names = {formal: (node.input[i] if i < len(node.input) else "") for i, formal in enumerate(body.input)}
    for i, formal in enumerate(body.output):
        actual = node.output[i] if i < len(node.output) else ""
        names[formal] = actual or e.fresh(f"{node.name}/{formal}")
    return names


def _caller_attributes(node: onnx.NodeProto, body: onnx.FunctionProto, schema) -> dict[str, onnx.AttributeProto]:
    """The attribute values a body's `@name` references resolve to: the node's, else the function's
    default, else the operator's documented default."""
    values = {}
    for name, spec in schema.attributes.items():
        if spec.default_value.type:  # an AttributeProto with a value
            values[name] = spec.default_value
    values.update({a.name: a for a in body.attribute_proto})
    values.update({a.name: a for a in node.attribute})
    return values


def _bound_attributes(inner: onnx.NodeProto, caller: dict[str, onnx.AttributeProto]) -> list[onnx.AttributeProto]:
    """A body node's attributes with every reference bound; one whose reference has no value is dropped."""
    out = []
    for a in inner.attribute:
        if not a.ref_attr_name:
            out.append(a)
            continue
        value = caller.get(a.ref_attr_name)
        if value is None:
            continue
        bound = onnx.AttributeProto()
        bound.CopyFrom(value)
        bound.name = a.name
        out.append(bound)
    return out
