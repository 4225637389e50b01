"""Repair: what onnxruntime tolerates in a file, onnxsal tolerates too.

Real exports break rules that onnxruntime does not enforce: fp16 converters leave nodes out of
topological order (the ONNX checker refuses them, onnxruntime sorts them), model-local functions
hide ops from the rules, node names are empty or repeated, and declared shapes (value_info, graph
outputs) contradict what the graph computes (onnxruntime warns and runs: a CTC output declared
[T, N, C] whose batch really is on axis 0, a wrong class count). `repair` fixes each of these on a
copy, and leaves alone what it cannot fix, for the checker to refuse.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.inliner
from onnx import helper, shape_inference

from ..autodiff.graph import node_inputs, subgraphs, topological_order
from ..errors import OnnxsalError

SMALL_INITIALIZER = 4096  # initializers up to this many elements take part in shape inference


def repair(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with model-local functions inlined, nodes in topological order (subgraphs
    too), every node named uniquely, and declared shapes that contradict shape inference dropped
    (the dims that agree are kept). What cannot be repaired (a cycle, a broken function) is left as
    it is."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    if len(fixed.functions):
        fixed = _inline_functions(fixed)
    _sort_graph(fixed.graph)
    _name_nodes(fixed.graph, set())
    if _passes_checker(light_copy(fixed)):  # shape inference runs on checked graphs only (the weights are checked on load)
        drop_contradicting_shapes(fixed)
    return fixed


# -- structure ------------------------------------------------------------------------------------
def _inline_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its local functions expanded into their nodes (as onnxruntime does)."""
    try:
        return onnx.inliner.inline_local_functions(model)
    except Exception:  # a function the inliner cannot expand stays, for the checker or the rules to judge
        return model


def _is_sorted(graph: onnx.GraphProto) -> bool:
    """Whether every value a node reads that some node of this graph produces is produced before."""
    produced = {o for n in graph.node for o in n.output if o}
    seen: set[str] = set()
    for n in graph.node:
        if any(x in produced and x not in seen for x in node_inputs(n)):
            return False
        seen.update(o for o in n.output if o)
    return True


def _sort_graph(graph: onnx.GraphProto) -> None:
    """Put the nodes of `graph` and of its subgraphs in topological order; a cycle is left as it is."""
    for n in graph.node:
        for sub in subgraphs(n):
            _sort_graph(sub)
    if _is_sorted(graph):
        return
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    try:
        ordered = topological_order(list(graph.node), available)
    except OnnxsalError:  # a cycle: the checker refuses it with its own words
        return
    copies = [onnx.NodeProto() for _ in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def _name_nodes(graph: onnx.GraphProto, seen: set[str]) -> None:
    """Give every node (subgraphs included) a non-empty name no other node has."""
    for i, n in enumerate(graph.node):
        name = n.name or f"{n.op_type or 'node'}_{i}"
        base, k = name, 1
        while name in seen:
            name = f"{base}_{k}"
            k += 1
        n.name = name
        seen.add(name)
        for sub in subgraphs(n):
            _name_nodes(sub, seen)


def run_checker(model: onnx.ModelProto) -> None:
    """The ONNX checker, raising what it raises, except about graph outputs of unknown rank: it
    insists on a shape there, tf2onnx writes such outputs (after a Squeeze without axes, say) and
    onnxruntime runs them. Those outputs are left out while the checker runs, then put back."""
    outputs = list(model.graph.output)
    shapeless = [o for o in outputs if o.type.HasField("tensor_type") and not o.type.tensor_type.HasField("shape")]
    if not shapeless:
        onnx.checker.check_model(model)
        return
    del model.graph.output[:]
    model.graph.output.extend(o for o in outputs if o not in shapeless)
    try:
        onnx.checker.check_model(model)
    finally:
        del model.graph.output[:]
        model.graph.output.extend(outputs)


def _passes_checker(model: onnx.ModelProto) -> bool:
    try:
        run_checker(model)
    except Exception:
        return False
    return True


# -- declared shapes --------------------------------------------------------------------------------
def light_copy(model: onnx.ModelProto, keep_declared: bool = True) -> onnx.ModelProto:
    """A copy for shape inference without the large initializers (declared as inputs of their shape
    instead), so the weights of a big model are never copied; without the declared value_info and
    output shapes when not `keep_declared`."""
    g = model.graph
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    lg = light.graph
    lg.name = g.name
    lg.node.extend(g.node)
    lg.input.extend(g.input)
    if keep_declared:
        lg.output.extend(g.output)
        lg.value_info.extend(g.value_info)
    else:
        for o in g.output:
            lg.output.append(helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type, None)
                             if o.type.HasField("tensor_type") else o)
    declared = {i.name for i in g.input}
    for t in g.initializer:
        if int(np.prod(t.dims)) <= SMALL_INITIALIZER:
            lg.initializer.append(t)
        elif t.name not in declared:
            lg.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return light


def inferred_types(model: onnx.ModelProto, keep_declared: bool = True) -> dict[str, onnx.TypeProto] | None:
    """Types ONNX shape inference (with data propagation) gives every value, None when it fails."""
    try:
        out = shape_inference.infer_shapes(light_copy(model, keep_declared), data_prop=True).graph
    except Exception:
        return None
    return {v.name: v.type for v in list(out.value_info) + list(out.output)}


def _grounded_params(graph: onnx.GraphProto) -> set[str]:
    """Symbolic dims named by the graph inputs: names that mean one thing across the graph."""
    return {d.dim_param for i in graph.input for d in i.type.tensor_type.shape.dim if d.dim_param}


def _dim_known(d: onnx.TensorShapeProto.Dimension, grounded: set[str]) -> bool:
    return d.HasField("dim_value") or (d.HasField("dim_param") and d.dim_param in grounded)


def _dim_text(d: onnx.TensorShapeProto.Dimension) -> int | str | None:
    if d.HasField("dim_value"):
        return d.dim_value
    return d.dim_param or None


def _contradicts(declared, inferred, i: int, grounded: set[str]) -> bool:
    """Whether declared dim i contradicts the inferred shape: two different known sizes, or an input's
    symbolic dim declared at an axis where inference puts another one."""
    d, f = declared.dim[i], inferred.dim[i]
    dv, fv = _dim_text(d), _dim_text(f)
    if dv is None or dv == fv:
        return False
    if _dim_known(f, grounded) and not (d.dim_param in grounded and f.HasField("dim_value")):
        return True  # (an input's symbolic dim where inference finds a number may just be that number)
    inferred_elsewhere = {_dim_text(x) for j, x in enumerate(inferred.dim) if j != i}
    return d.dim_param in grounded and d.dim_param in inferred_elsewhere


def _drop_contradictions(value: onnx.ValueInfoProto, inferred: onnx.TypeProto, grounded: set[str]) -> None:
    t = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not t.HasField("shape") or not inferred.HasField("tensor_type"):
        return
    it = inferred.tensor_type
    if not it.HasField("shape"):
        return
    if len(t.shape.dim) != len(it.shape.dim):
        t.ClearField("shape")
        return
    for i, d in enumerate(t.shape.dim):
        if _contradicts(t.shape, it.shape, i, grounded):
            d.Clear()


def drop_contradicting_shapes(model: onnx.ModelProto) -> None:
    """Clear the declared dims of value_info and graph outputs that shape inference contradicts, and
    value_info entries whose element type it contradicts (onnxruntime warns about both and runs);
    give graph outputs declared without a shape the one inference finds."""
    g = model.graph
    inferred = inferred_types(model, keep_declared=False)
    if inferred is None:
        return
    grounded = _grounded_params(g)
    keep = []
    for v in g.value_info:
        found = inferred.get(v.name)
        if found is not None and found.HasField("tensor_type") and v.type.HasField("tensor_type"):
            elem, want = v.type.tensor_type.elem_type, found.tensor_type.elem_type
            if elem and want and elem != want:
                continue
            _drop_contradictions(v, found, grounded)
        keep.append(v)
    if len(keep) != len(g.value_info):
        del g.value_info[:]
        g.value_info.extend(keep)
    for o in g.output:
        found = inferred.get(o.name)
        if found is None or not found.HasField("tensor_type") or not o.type.HasField("tensor_type"):
            continue
        if not o.type.tensor_type.HasField("shape") and found.tensor_type.HasField("shape"):
            o.type.tensor_type.shape.CopyFrom(found.tensor_type.shape)  # an output of unknown rank whose rank inference knows
        _drop_contradictions(o, found, grounded)
