"""Reverse-mode differentiation of an ONNX graph into ONNX.

The driver owns the work every rule shares: finding the nodes on a path from the `wrt` values to
the explained output, visiting them in reverse topological order, summing gradients where a
value fans out, un-broadcasting for broadcasting ops, and naming (`v_grad` for the gradient of
`v`; nodes emitted for forward node `n` are named `n_grad/...`). Rules only do the local math.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import onnx
from onnx import helper

from ..errors import NeedsShapesError, UnsupportedModelError
from .emitter import Emitter
from .graph import GraphView, Shape, node_inputs
from .registry import RuleContext, RuleSet
from .seeds import SeedSpec, emit_seed

# Ops whose (non-float) outputs legitimately carry no gradient: shapes, indices, comparisons.
NON_DIFFERENTIABLE = {
    "Shape", "Size", "ArgMax", "ArgMin", "NonZero", "Equal", "Greater", "Less", "GreaterOrEqual",
    "LessOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf", "EyeLike", "ConstantOfShape",
}
QUANTIZED = {
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu",
    "QLinearGlobalAveragePool", "QLinearConcat", "QLinearAveragePool", "DynamicQuantizeMatMul",
}
CONTROL_FLOW = {"If", "Loop", "Scan", "SequenceMap"}
# Ops that only move values around: a Softmax followed only by these still "is" the output.
SHAPE_ONLY = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Transpose", "Cast"}


@dataclass
class GradientGraph:
    """The result of `differentiate`: the new model and the names a caller needs."""

    model: onnx.ModelProto
    output: str  # the explained forward output
    grads: dict[str, str]  # wrt value -> name of its gradient output
    target_input: str | None  # int64 [N] class indices, when seeded by target
    seed_input: str | None  # seed tensor input, when seeded by a tensor
    path: list[str]  # names of the forward nodes that were differentiated
    seed_value: str  # the value holding the seed of the output (reusable by a second pass)


def _describe_node(n: onnx.NodeProto) -> str:
    return f"{n.op_type} node '{n.name}'"


class _Driver:
    def __init__(self, view: GraphView, rules: RuleSet):
        self.view = view
        self.rules = rules
        taken = {n.name for n in view.nodes} | {v for n in view.nodes for v in list(n.input) + list(n.output)}
        taken |= {i.name for i in view.graph.input} | set(view.initializers)
        self.e = Emitter(taken, view.opset)
        self.contribs: dict[str, list[str]] = defaultdict(list)
        self.final: dict[str, str] = {}

    # -- which nodes lie on the path -------------------------------------------------------------
    def path(self, wrt: list[str], output: str, check_rules: bool = True) -> list[onnx.NodeProto]:
        """Nodes on a path from wrt to output; raises for integer/quantized breaks and, when
        `check_rules`, for control flow and ops without a rule on the path."""
        v = self.view
        live = set(wrt)  # float values that depend differentiably on wrt
        touched = set(wrt)  # values that depend on wrt in any way
        breaks: dict[str, onnx.NodeProto] = {}  # value -> node that turned the path non-differentiable
        for n in v.nodes:
            ins = node_inputs(n)
            if not any(x in touched for x in ins):
                continue
            on = any(x in live for x in ins)
            for o in n.output:
                if not o:
                    continue
                touched.add(o)
                if on and n.op_type not in NON_DIFFERENTIABLE and n.op_type not in QUANTIZED and v.is_float(o):
                    live.add(o)
                elif on and n.op_type not in NON_DIFFERENTIABLE:
                    breaks[o] = n
                else:
                    for x in ins:
                        if x in breaks:
                            breaks.setdefault(o, breaks[x])
        needed = {output}
        for n in reversed(v.nodes):
            if any(o in needed for o in n.output):
                needed.update(node_inputs(n))
        for o, n in breaks.items():
            if o in needed and (n.op_type in QUANTIZED or o not in live):
                kind = "a quantized operator" if n.op_type in QUANTIZED else "it turns the values into integers"
                raise UnsupportedModelError(
                    f"{_describe_node(n)} lies on the path from {wrt[0]!r} to {output!r} and is not "
                    f"differentiable: {kind}; attribution needs a float path (export the float model)."
                )
        if output not in live:
            raise UnsupportedModelError(
                f"output {output!r} does not depend on {', '.join(map(repr, wrt))}: there is no gradient to compute."
            )
        nodes = [n for n in v.nodes if any(x in live for x in node_inputs(n)) and any(o in live and o in needed for o in n.output)]
        self.live, self.needed = live, needed
        for n in nodes if check_rules else []:
            if n.op_type in CONTROL_FLOW:
                raise UnsupportedModelError(
                    f"{_describe_node(n)} lies on the path from {wrt[0]!r} to {output!r}; control flow "
                    f"(If/Loop/Scan) cannot be differentiated by onnxsal."
                )
            if n.domain not in ("", "ai.onnx") or not self.rules.supports(n.op_type):
                dom = f" (domain '{n.domain}')" if n.domain not in ("", "ai.onnx") else ""
                raise UnsupportedModelError(
                    f"no gradient rule for op type {n.op_type}{dom} at node '{n.name}', which lies on "
                    f"the path from {wrt[0]!r} to {output!r}."
                )
        return nodes

    # -- gradient bookkeeping ----------------------------------------------------------------------
    def add(self, value: str, grad: str) -> None:
        self.contribs[value].append(grad)

    def finalize(self, value: str) -> str | None:
        """The gradient of `value`, its contributions summed, named `value_grad`."""
        if value in self.final:
            return self.final[value]
        parts = self.contribs.pop(value, [])
        if not parts:
            return None
        name = self.e.fresh(f"{value}_grad")
        self.e.prefix = f"{value}_grad/"
        if len(parts) > 1:
            self.e.op("Sum", parts, out=name)
        elif not self._renamable(parts[0]) or not self.e.rename_output(parts[0], name):
            self.e.op("Identity", parts, out=name)
        self.final[value] = name
        return name

    def _renamable(self, v: str) -> bool:
        if v in self.final.values() or v in self.e.consumed:
            return False
        return sum(Counter(p)[v] for p in self.contribs.values()) == 0

    def unbroadcast(self, g: str, g_shape: Shape | None, x: str) -> str:
        """Sum `g` (of broadcast shape g_shape) down to the shape of `x`."""
        xs = self.view.shape(x)
        if xs is None or g_shape is None:
            return self._unbroadcast_dynamic(g, x, None if g_shape is None else len(g_shape), xs)
        lead = len(g_shape) - len(xs)
        axes = list(range(lead))
        dynamic = False
        for i, d in enumerate(xs):
            gd = g_shape[lead + i]
            if d == gd and d is not None:
                continue
            if d == 1:
                if gd != 1:
                    axes.append(lead + i)
            elif isinstance(d, int):
                continue  # d > 1 broadcasts only against itself
            else:
                dynamic = True
        if dynamic:
            return self._unbroadcast_dynamic(g, x, len(g_shape), xs)
        out = self.e.reduce("ReduceSum", g, axes, keepdims=1) if axes else g
        return self.e.squeeze(out, list(range(lead))) if lead else out

    def _unbroadcast_dynamic(self, g: str, x: str, g_rank: int | None, xs: Shape | None) -> str:
        if g_rank is None or xs is None:
            raise NeedsShapesError(f"cannot un-broadcast the gradient of {x!r}: its rank is unknown; "
                                   f"fix the input shape (input_shapes= / --input-shape).")
        if self.e.opset < 13:  # the axes would be known only at run time, and ReduceSum takes them as an input from 13
            raise NeedsShapesError(f"cannot un-broadcast the gradient of {x!r} below opset 13 while its shape is "
                                   f"dynamic; fix the input shape (input_shapes= / --input-shape).")
        lead = g_rank - len(xs)
        if lead:
            g = self.e.squeeze(self.e.reduce("ReduceSum", g, list(range(lead)), keepdims=1), list(range(lead)))
        e = self.e
        one = e.ints([1], name="one")
        mask = e.op("And", [e.op("Equal", [e.op("Shape", [x]), one]), e.op("Not", [e.op("Equal", [e.op("Shape", [g]), one])])])
        axes = e.op("Reshape", [e.op("NonZero", [mask]), e.ints([-1], name="flat")])
        return e.reduce("ReduceSum", g, axes, keepdims=1)

    # -- the backward pass ---------------------------------------------------------------------------
    def backward(self, nodes: list[onnx.NodeProto], heads: set[str]) -> None:
        v = self.view
        for n in reversed(nodes):
            grads = [self.finalize(o) if o else None for o in n.output]
            if all(g is None for g in grads):
                continue
            wants = [bool(x) and x in self.live for x in n.input]
            chain = self.rules.chain(n.op_type)
            self.e.prefix = f"{n.name}_grad/"
            ctx = RuleContext(n, v, self.e, grads, wants, at_output=n.name in heads, _chain=chain)
            result = chain[0].fn(ctx, grads[0])
            for i, x in enumerate(n.input):
                if not wants[i]:
                    continue
                gx = result[i] if i < len(result) else None
                if gx is None:
                    raise UnsupportedModelError(
                        f"the gradient rule of {n.op_type} gives no gradient for input {i} ('{x}') of node "
                        f"'{n.name}', which lies on the path being differentiated."
                    )
                if chain[0].broadcasting:
                    gx = self.unbroadcast(gx, v.shape(n.output[0]), x)
                self.add(x, gx)


def output_heads(view: GraphView, output: str) -> set[str]:
    """Softmax/LogSoftmax nodes that produce `output` up to shape-only ops (for softmax-as-identity)."""
    node = view.producer.get(output)
    while node is not None and node.op_type in SHAPE_ONLY:
        node = view.producer.get(node.input[0])
    if node is not None and node.op_type in ("Softmax", "LogSoftmax"):
        return {node.name}
    return set()


def differentiate(
    model: onnx.ModelProto,
    rules: RuleSet,
    wrt: list[str] | None = None,
    output: str | None = None,
    seed: SeedSpec | None = None,
    extra_outputs: list[str] | None = None,
) -> GradientGraph:
    """Build a model whose outputs are the original ones plus d(seeded output)/d(each wrt value)."""
    view = GraphView(model)
    output = output or view.output_names[0]
    if output not in view.producer and output not in view.input_names:
        raise UnsupportedModelError(f"the model has no value named {output!r} to explain.")
    if wrt is None:
        floats = [i for i in view.input_names if view.is_float(i)]
        if not floats:
            raise UnsupportedModelError("the model has no float input to differentiate with respect to.")
        wrt = floats[:1]
    for w in wrt:
        if w not in view.producer and w not in view.input_names:
            raise UnsupportedModelError(f"the model has no input or inner value named {w!r}.")
        if not view.is_float(w):
            raise UnsupportedModelError(f"{w!r} is not a float tensor; only float values have gradients.")
    drv = _Driver(view, rules)
    nodes = drv.path(wrt, output)
    seed = seed or SeedSpec("argmax")
    drv.e.prefix = "seed/"
    seed_value, new_inputs = emit_seed(drv.e, view, output, seed)
    drv.add(output, seed_value)
    drv.backward(nodes, output_heads(view, output))
    seed_value = drv.final.get(output, seed_value)

    grads: dict[str, str] = {}
    for w in wrt:
        name = drv.finalize(w)
        if name is None:
            raise UnsupportedModelError(f"no gradient reaches {w!r} from {output!r}.")
        grads[w] = name

    model_out = view.model  # the view's own copy; the view is not used after this
    graph = model_out.graph
    graph.node.extend(drv.e.nodes)
    graph.initializer.extend(drv.e.used_initializers(list(grads.values()) + [seed_value]))
    graph.input.extend(new_inputs)
    for w, name in grads.items():
        graph.output.append(helper.make_tensor_value_info(name, view.elem_type(w), _shape_for_info(view.shape(w))))
    existing = {o.name for o in graph.output}
    for name in extra_outputs or []:
        if name not in existing:
            graph.output.append(helper.make_tensor_value_info(name, view.elem_type(name) or 0, _shape_for_info(view.shape(name))))
            existing.add(name)
    del graph.value_info[:]  # inferred shapes of the forward graph are not needed and can go stale
    model_out.ir_version = max(model.ir_version, 4)  # IR 3 lists every initializer as an input; the gradient's constants are not
    del model_out.opset_import[:]
    model_out.opset_import.extend(model.opset_import)
    target = next((i.name for i in new_inputs if i.type.tensor_type.elem_type == onnx.TensorProto.INT64), None)
    seed_in = next((i.name for i in new_inputs if i.type.tensor_type.elem_type != onnx.TensorProto.INT64), None)
    return GradientGraph(model_out, output, grads, target, seed_in, [n.name for n in nodes], seed_value)


def _shape_for_info(shape: Shape | None):
    if shape is None:
        return None
    return [d if d is not None else None for d in shape]


def differentiable_path(view: GraphView, rules: RuleSet, wrt: list[str], output: str, check_rules: bool = True) -> list[onnx.NodeProto]:
    """The nodes on a path from `wrt` to `output`, checked as `differentiate` checks them."""
    return _Driver(view, rules).path(wrt, output, check_rules)


def live_path(view: GraphView, rules: RuleSet, wrt: list[str], output: str) -> tuple[list[onnx.NodeProto], set[str]]:
    """The nodes on the path and the values that depend differentiably on `wrt` (what a rule's
    `wants` is made of): for assigning rules to nodes before differentiating."""
    drv = _Driver(view, rules)
    return drv.path(wrt, output), drv.live
