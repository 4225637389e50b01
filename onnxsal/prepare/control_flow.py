"""Lowerings of control flow (Loop, Scan, If) into straight-line graphs the rules can differentiate.

A subgraph is inlined by copying its nodes into the outer graph with every name it defines given a
fresh, readable one (`<node>/iter3/<name>`), its formal inputs bound to outer values, and its reads
of outer-scope values left as they are; nested subgraphs (an If inside a Loop body) are copied with
their reads of renamed values rewritten, and are lowered in turn on the next round.

- Loop: unrolled when the trip count is a constant (or computable from constants and static
  shapes) and the condition stays true (absent or a constant true, and the body's condition
  output a constant true or the condition input passed through). Loop-carried values are threaded
  from one copy of the body to the next; each scan output is the per-iteration values stacked on
  a new axis 0.
- Scan (opset 9 and later): unrolled over the static length of its scan inputs, honouring
  scan_input_axes/directions and scan_output_axes/directions.
- If: with a constant condition, the taken branch is inlined. With a condition computed at run
  time, both branches are inlined and each output is Where(cond, then, else). That is the same
  function of the inputs, and its gradient is the right one: Where's rule sends the incoming
  gradient to the branch the condition selects and zeros to the other, so the untaken branch
  contributes nothing, exactly as if it had not run. It needs both branches to give outputs of the
  same type and shape and to be computable on the inputs the node sees (the untaken one is now
  computed too): a branch that shape inference cannot follow, or static shapes that differ, make the
  node refused; shapes that differ only in symbolic dims raise NeedsShapesError (they may agree once
  the input shapes are fixed).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from ..autodiff.graph import GraphView, node_inputs, subgraphs
from ..errors import NeedsShapesError
from .lower import LowerContext, lowering

MAX_UNROLL = 4096  # iterations; beyond this a loop is not unrolled
_FOLDABLE = {
    "Identity", "Cast", "Squeeze", "Unsqueeze", "Gather", "Concat", "Slice", "Reshape", "Add", "Sub", "Mul", "Div",
    "Min", "Max", "Neg", "Floor", "Ceil", "ReduceProd", "ReduceMin", "ReduceMax", "ReduceSum", "Expand", "Tile",
    "ConstantOfShape",
}


# -- subgraph copying --------------------------------------------------------------------------
def _names_in(graph: onnx.GraphProto) -> set[str]:
    """Every value name a graph and its nested subgraphs mention."""
    names = {i.name for i in graph.input} | {o.name for o in graph.output} | {t.name for t in graph.initializer}
    for n in graph.node:
        names.update(x for x in list(n.input) + list(n.output) if x)
        for sub in subgraphs(n):
            names |= _names_in(sub)
    return names


def _rename_reads(graph: onnx.GraphProto, rename: dict[str, str]) -> onnx.GraphProto:
    """A copy of a nested subgraph whose reads of outer names in `rename` use the new names; names
    the subgraph defines itself shadow the outer ones."""
    g = onnx.GraphProto()
    g.CopyFrom(graph)
    local = {i.name for i in g.input} | {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
    outer = {k: v for k, v in rename.items() if k not in local}
    for n in g.node:
        for k, x in enumerate(n.input):
            if x in outer:
                n.input[k] = outer[x]
        _rename_node_subgraphs(n, outer)
    for o in g.output:
        if o.name in outer:
            o.name = outer[o.name]
    return g


def _rename_node_subgraphs(node: onnx.NodeProto, rename: dict[str, str]) -> None:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            a.g.CopyFrom(_rename_reads(a.g, rename))
        elif a.type == onnx.AttributeProto.GRAPHS:
            new = [_rename_reads(sub, rename) for sub in a.graphs]
            del a.graphs[:]
            a.graphs.extend(new)


def _inline(ctx: LowerContext, graph: onnx.GraphProto, bindings: dict[str, str], tag: str) -> dict[str, str]:
    """Copy `graph`'s nodes after the nodes emitted so far, its inputs bound per `bindings` (formal
    input -> outer value); returns the renaming of every name it defines (outputs included)."""
    e = ctx.emitter
    base = f"{ctx.node.name}/{tag}/"
    for name in _names_in(graph):  # no fresh name may collide with one a nested subgraph uses
        e.fresh(name)
    rename = dict(bindings)
    if graph.sparse_initializer:
        ctx.cannot("its subgraph holds sparse initializers")
    for t in graph.initializer:
        new = e.fresh(base + t.name.lstrip("/"))
        copy = onnx.TensorProto()
        copy.CopyFrom(t)
        copy.name = new
        e.initializers.append(copy)
        rename[t.name] = new
    for n in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(n)
        copy.name = e.fresh(base + (n.name or n.op_type).lstrip("/"))
        for k, x in enumerate(copy.input):
            if x:
                copy.input[k] = rename.get(x, x)
        for k, o in enumerate(copy.output):
            if o:
                rename[o] = copy.output[k] = e.fresh(base + o.lstrip("/"))
        _rename_node_subgraphs(copy, rename)
        e.nodes.append(copy)
        e.consumed.update(copy.input)
        for o in copy.output:
            e.producer[o] = copy
    return rename


def _outputs(graph: onnx.GraphProto, rename: dict[str, str]) -> list[str]:
    """The outer names of a subgraph's outputs after inlining (an output may be an outer value)."""
    return [rename.get(o.name, o.name) for o in graph.output]


def _reads(graph: onnx.GraphProto, name: str) -> bool:
    """Whether the graph (or a subgraph inside it) reads `name`."""
    return name in _uses(graph)


def _write(ctx: LowerContext, value: str, out: str) -> None:
    if out:
        ctx.op("Identity", [value], out=out)


# -- constants the graph computes ------------------------------------------------------------------
def static_value(view: GraphView, name: str, depth: int = 0) -> np.ndarray | None:
    """The value of `name` when it is a constant or follows from constants and static shapes by a
    little integer arithmetic (a trip count from Shape -> Gather, say); else None."""
    value = view.const(name)
    if value is not None or depth > 32:
        return value
    node = view.producer.get(name)
    if node is None:
        return None
    if node.op_type == "Shape":
        dims = _shape_dims(view, node)
        return None if dims is None or None in dims else np.asarray(dims, np.int64)
    if node.op_type == "Gather" and node.input[0] in view.producer and view.producer[node.input[0]].op_type == "Shape":
        return _gathered_dims(view, node)  # x.shape[1] of an x whose other dims may be dynamic
    if node.op_type == "Size":
        shape = view.static_shape(node.input[0])
        return None if shape is None else np.asarray(int(np.prod(shape)), np.int64)
    if node.op_type not in _FOLDABLE or len(node.output) != 1:
        return None
    values = [static_value(view, x, depth + 1) if x else None for x in node.input]
    if any(x and v is None for x, v in zip(node.input, values)):
        return None
    return _evaluate(view, node, values)


def _shape_dims(view: GraphView, shape_node: onnx.NodeProto) -> list[int | None] | None:
    """The dims a Shape node returns, None for each dynamic one (None when even the rank is unknown)."""
    shape = view.shape(shape_node.input[0])
    if shape is None:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in shape_node.attribute}
    return [d if isinstance(d, int) else None for d in shape[attrs.get("start", 0):attrs.get("end", len(shape))]]


def _gathered_dims(view: GraphView, node: onnx.NodeProto) -> np.ndarray | None:
    dims = _shape_dims(view, view.producer[node.input[0]])
    indices = static_value(view, node.input[1])
    if dims is None or indices is None:
        return None
    picked = np.vectorize(lambda i: dims[int(i)] if -len(dims) <= int(i) < len(dims) else None, otypes=[object])(indices)
    if any(d is None for d in np.ravel(picked)):
        return None
    return np.asarray(picked, np.int64).reshape(np.shape(indices))


def _evaluate(view: GraphView, node: onnx.NodeProto, values: list) -> np.ndarray | None:
    from onnx.reference import ReferenceEvaluator

    inits = [numpy_helper.from_array(np.asarray(v), x) for x, v in zip(node.input, values) if x]
    graph = helper.make_graph([node], "fold", [], [onnx.ValueInfoProto(name=node.output[0])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", view.opset)])
    try:
        return np.asarray(ReferenceEvaluator(model).run(None, {})[0])
    except Exception:  # not foldable after all: the caller refuses with its own reason
        return None


def _always_true(view: GraphView, body: onnx.GraphProto, name: str) -> bool:
    """Whether the body's condition output is true on every iteration: a constant true, or the
    condition input passed through (unchanged, or via Identity/Cast)."""
    cond_in = body.input[1].name if len(body.input) > 1 else None
    producers = {o: n for n in body.node for o in n.output}
    consts = {t.name: numpy_helper.to_array(t) for t in body.initializer}
    for _ in range(len(body.node) + 1):
        if name == cond_in:
            return True
        if name in consts:
            return bool(np.all(consts[name]))
        node = producers.get(name)
        if node is None:
            outer = static_value(view, name)
            return outer is not None and bool(np.all(outer))
        if node.op_type == "Constant":
            value = helper.get_attribute_value(node.attribute[0])
            return isinstance(value, onnx.TensorProto) and bool(np.all(numpy_helper.to_array(value)))
        if node.op_type not in ("Identity", "Cast"):
            return False
        name = node.input[0]
    return False


# -- Loop ------------------------------------------------------------------------------------------------
@lowering("Loop")
def lower_loop(ctx: LowerContext) -> None:
    """Unrolled: one copy of the body per iteration, loop-carried values threaded through."""
    body = ctx.attr("body")
    trips = _trip_count(ctx)
    cond = ctx.input(1)
    if cond:
        value = static_value(ctx.view, cond)
        if value is None or not bool(np.all(value)):
            ctx.cannot(f"its condition '{cond}' is not a constant true, so the number of iterations is known "
                       f"only at run time")
    if not _always_true(ctx.view, body, body.output[0].name):
        ctx.cannot("its body computes its continuation condition at run time (a while loop), so the number of "
                   "iterations is known only at run time")
    n_carried = len(body.input) - 2
    carried = [ctx.input(2 + i) for i in range(n_carried)]
    n_scan = len(body.output) - 1 - n_carried
    if n_scan and trips == 0:
        ctx.cannot("it runs zero times, so its scan outputs have no shape to build")
    reads_iter = _reads(body, body.input[0].name)
    reads_cond = _reads(body, body.input[1].name)
    scans: list[list[str]] = [[] for _ in range(n_scan)]
    for k in range(trips):
        bindings = dict(zip([i.name for i in body.input[2:]], carried))
        if reads_iter:
            bindings[body.input[0].name] = ctx.emitter.const(np.asarray(k, np.int64), name=f"iteration{k}")
        if reads_cond:
            bindings[body.input[1].name] = ctx.emitter.const(np.asarray(True), name="true")
        outs = _outputs(body, _inline(ctx, body, bindings, f"iter{k}"))
        carried = outs[1:1 + n_carried]
        for j in range(n_scan):
            scans[j].append(outs[1 + n_carried + j])
    for i in range(n_carried):
        _write(ctx, carried[i], ctx.output(i))
    for j in range(n_scan):
        if ctx.output(n_carried + j):
            _stack(ctx, scans[j], 0, ctx.output(n_carried + j))


def _trip_count(ctx: LowerContext) -> int:
    if not ctx.input(0):
        ctx.cannot("it has no trip count (a while loop), so the number of iterations is known only at run time")
    value = static_value(ctx.view, ctx.input(0))
    if value is None:
        ctx.cannot(f"its trip count '{ctx.input(0)}' is computed at run time; fix the input shapes it depends on "
                   f"(input_shapes= / --input-shape) or make it a constant")
    trips = int(np.ravel(value)[0])
    if trips > MAX_UNROLL:
        ctx.cannot(f"its trip count {trips} is above the {MAX_UNROLL} iterations onnxsal unrolls")
    return max(trips, 0)


def _stack(ctx: LowerContext, values: list[str], axis: int, out: str) -> None:
    """The values stacked along a new axis `axis`, written to `out`."""
    parts = [ctx.emitter.unsqueeze(v, [axis]) for v in values]
    if len(parts) == 1:
        ctx.op("Identity", parts, out=out)
    else:
        ctx.op("Concat", parts, axis=axis, out=out)


# -- Scan ------------------------------------------------------------------------------------------------
@lowering("Scan")
def lower_scan(ctx: LowerContext) -> None:
    """Unrolled over the static scan length; state threaded, scan inputs sliced, scan outputs stacked."""
    if ctx.opset < 9:
        ctx.cannot("the opset-8 form of Scan (with a batch axis and sequence_lens) is not unrolled; convert the "
                   "model to opset 9 or later (onnx.version_converter)")
    body = ctx.attr("body")
    m = int(ctx.attr("num_scan_inputs"))
    n_state = len(ctx.node.input) - m
    scan_ins = list(ctx.node.input[n_state:])
    in_axes = list(ctx.attr("scan_input_axes", [0] * m))
    in_dirs = list(ctx.attr("scan_input_directions", [0] * m))
    n_out = len(body.output) - n_state
    out_axes = list(ctx.attr("scan_output_axes", [0] * n_out))
    out_dirs = list(ctx.attr("scan_output_directions", [0] * n_out))
    steps = _scan_length(ctx, scan_ins, in_axes)
    states = list(ctx.node.input[:n_state])
    e = ctx.emitter
    results: list[list[str]] = [[] for _ in range(n_out)]
    for t in range(steps):
        bindings = dict(zip([i.name for i in body.input[:n_state]], states))
        for j, x in enumerate(scan_ins):
            idx = t if not in_dirs[j] else steps - 1 - t
            bindings[body.input[n_state + j].name] = e.squeeze(e.slice(x, [idx], [idx + 1], [in_axes[j]]), [in_axes[j]])
        outs = _outputs(body, _inline(ctx, body, bindings, f"step{t}"))
        states = outs[:n_state]
        for k in range(n_out):
            results[k].append(outs[n_state + k])
    for i in range(n_state):
        _write(ctx, states[i], ctx.output(i))
    for k in range(n_out):
        if ctx.output(n_state + k):
            values = results[k][::-1] if out_dirs[k] else results[k]
            _stack(ctx, values, out_axes[k], ctx.output(n_state + k))


def _scan_length(ctx: LowerContext, scan_ins: list[str], axes: list[int]) -> int:
    lengths = set()
    for x, axis in zip(scan_ins, axes):
        shape = ctx.view.shape(x)
        dim = shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None
        if not isinstance(dim, int):
            n = ctx.node
            raise NeedsShapesError(
                f"Scan node '{n.name}' lies on the path being differentiated and cannot be unrolled: the sequence "
                f"length of '{x}' is dynamic; fix it with input_shapes= / --input-shape.")
        lengths.add(dim)
    if len(lengths) != 1:
        ctx.cannot(f"its scan inputs have different lengths {sorted(lengths)}")
    steps = lengths.pop()
    if steps > MAX_UNROLL:
        ctx.cannot(f"its scan length {steps} is above the {MAX_UNROLL} steps onnxsal unrolls")
    if steps == 0:
        ctx.cannot("its scan inputs are empty")
    return steps


# -- If --------------------------------------------------------------------------------------------------
@lowering("If")
def lower_if(ctx: LowerContext) -> None:
    """The taken branch when the condition is constant; else both branches and Where per output."""
    then_g, else_g = ctx.attr("then_branch"), ctx.attr("else_branch")
    cond = ctx.input(0)
    value = static_value(ctx.view, cond)
    if value is not None:
        branch = then_g if bool(np.ravel(value)[0]) else else_g
        outs = _outputs(branch, _inline(ctx, branch, {}, "then" if branch is then_g else "else"))
        for i, v in enumerate(outs):
            _write(ctx, v, ctx.output(i))
        return
    _check_branches(ctx, then_g, else_g)
    then_outs = _outputs(then_g, _inline(ctx, then_g, {}, "then"))
    else_outs = _outputs(else_g, _inline(ctx, else_g, {}, "else"))
    scalar = ctx.op("Reshape", [cond, ctx.emitter.ints([], name="scalar_shape")])
    for i, (a, b) in enumerate(zip(then_outs, else_outs)):
        if ctx.output(i):
            ctx.op("Where", [scalar, a, b], out=ctx.output(i))


def _check_branches(ctx: LowerContext, then_g: onnx.GraphProto, else_g: onnx.GraphProto) -> None:
    """Both branches infer, with outputs of the same element type and shape."""
    a, b = _branch_types(ctx, then_g, "then"), _branch_types(ctx, else_g, "else")
    for i, (ta, tb) in enumerate(zip(a, b)):
        if ta is not None and ta == tb:
            continue
        why = (f"its branches give output {i} ('{ctx.output(i)}') as {_describe(ta)} and {_describe(tb)}, and both "
               f"branches are computed when the condition is known only at run time")
        n = ctx.node
        if fixed_by_the_call(ctx.view, ctx.input(0)):  # the specialised graph takes one branch
            raise NeedsShapesError(f"If node '{n.name}' lies on the path being differentiated: {why}, and its "
                                   f"condition depends only on input shapes and integer inputs; fix them "
                                   f"(input_shapes= / --input-shape) so that it folds.")
        static = ta is not None and tb is not None and all(isinstance(d, int) for d in ta[1] + tb[1])
        if static or (ta is not None and tb is not None and (ta[0] != tb[0] or len(ta[1]) != len(tb[1]))):
            ctx.cannot(why)
        # the shapes may agree once the input shapes are fixed
        raise NeedsShapesError(f"If node '{n.name}' lies on the path being differentiated and cannot be rewritten "
                               f"into differentiable ops: {why}; fix the input shapes (input_shapes= / --input-shape).")


def fixed_by_the_call(view: GraphView, name: str) -> bool:
    """Whether `name` depends on nothing but constants, tensor shapes and integer graph inputs: then
    the graph specialised on a call's input shapes and small integer inputs holds it as a constant."""
    stack, seen = [name], set()
    while stack:
        v = stack.pop()
        if not v or v in seen or view.const(v) is not None:
            continue
        seen.add(v)
        if v in view.input_names:
            if view.is_float(v):
                return False
            continue
        node = view.producer.get(v)
        if node is None:
            return False
        if node.op_type not in ("Shape", "Size"):
            stack.extend(node_inputs(node))
    return True


def _describe(t) -> str:
    if t is None:
        return "an unknown shape"
    elem, shape = t
    return f"{helper.tensor_dtype_to_np_dtype(elem)} of shape {list(shape)}" if elem else f"shape {list(shape)}"


def _branch_types(ctx: LowerContext, branch: onnx.GraphProto, which: str) -> list:
    """(elem type, shape) of each output of a branch, from ONNX shape inference of the branch as a
    graph whose inputs are the outer values it reads; None where unknown. A branch that does not
    infer (it cannot run on these inputs) is refused."""
    view = ctx.view
    reads = sorted(_uses(branch) - _defined(branch))
    inputs, inits = [], []
    for x in reads:
        small = view.const(x)
        if small is not None and small.size <= 64:
            inits.append(numpy_helper.from_array(small, x))
        elif view.elem_type(x):
            shape = view.shape(x)
            dims = None if shape is None else [d if d is not None else f"{x}:{k}" for k, d in enumerate(shape)]
            inputs.append(helper.make_tensor_value_info(x, view.elem_type(x), dims))  # one symbol per unknown dim
    # the outputs' declared shapes are left out: exporters name their dims per branch
    outputs = [onnx.ValueInfoProto(name=o.name) for o in branch.output]
    graph = helper.make_graph(list(branch.node), "branch", inputs, outputs,
                              initializer=list(branch.initializer) + inits)
    model = helper.make_model(graph, opset_imports=list(view.model.opset_import))
    model.ir_version = view.model.ir_version
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=True, data_prop=True).graph
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        ctx.cannot(f"its {which} branch cannot be computed on the inputs the node sees ({first}); both branches "
                   f"run when the condition is known only at run time")
    known = {v.name: v for v in list(inferred.value_info) + list(inferred.output) + list(inferred.input)}
    out = []
    for o in branch.output:
        vi = known.get(o.name, o)
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not t.HasField("shape"):
            out.append(None)
            continue
        dims = []
        for d in t.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        out.append(None if any(d is None for d in dims) else (t.elem_type, tuple(dims)))
    return out


def _defined(graph: onnx.GraphProto) -> set[str]:
    return {i.name for i in graph.input} | {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}


def _uses(graph: onnx.GraphProto) -> set[str]:
    """Every name the graph reads: node inputs, its outputs, and what nested subgraphs read from it."""
    reads = {o.name for o in graph.output}
    for n in graph.node:
        reads.update(x for x in n.input if x)
        for sub in subgraphs(n):
            reads |= _uses(sub) - _defined(sub)
    return reads
