"""A read-only view of a forward ONNX graph: producers, consumers, constants, types and shapes."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from ..errors import UnsupportedModelError

FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
}

Dim = int | str | None
Shape = tuple[Dim, ...]


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default ('' or 'ai.onnx') domain the model imports."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise UnsupportedModelError("the model imports no version of the default ONNX operator set.")


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value a Constant node holds, whichever attribute spelling it uses."""
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None


def _dims(type_proto: onnx.TypeProto) -> Shape | None:
    t = type_proto.tensor_type
    if not t.HasField("shape"):
        return None
    out: list[Dim] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            out.append(d.dim_param)
        else:
            out.append(None)
    return tuple(out)


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Outer-scope names a subgraph (If/Loop/Scan body) reads without defining them."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    reads: set[str] = set()
    for n in graph.node:
        reads.update(x for x in node_inputs(n) if x)
        defined.update(n.output)
    reads.update(o.name for o in graph.output)
    return reads - defined


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The subgraphs a node's attributes hold (If branches, Loop/Scan bodies)."""
    out: list[onnx.GraphProto] = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Explicit inputs plus the outer values a control-flow node's subgraphs read."""
    names = [x for x in node.input if x]
    for a in node.attribute:
        subgraphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for sub in subgraphs:
            names.extend(sorted(_subgraph_reads(sub) - set(names)))
    return names


def topological_order(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Nodes sorted so that every input is produced before it is used; a cycle is an error."""
    produced_by = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    pending = [sum(1 for x in set(node_inputs(n)) if x in produced_by) for n in nodes]
    users: dict[int, list[int]] = defaultdict(list)
    for i, n in enumerate(nodes):
        for x in set(node_inputs(n)):
            if x and x in produced_by:
                users[produced_by[x]].append(i)
    ready = [i for i, p in enumerate(pending) if p == 0]
    order: list[int] = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for u in users[i]:
            pending[u] -= 1
            if pending[u] == 0:
                ready.append(u)
    if len(order) != len(nodes):
        stuck = next(nodes[i] for i in range(len(nodes)) if pending[i] > 0)
        raise UnsupportedModelError(
            f"the graph has a cycle through node '{stuck.name}' ({stuck.op_type}); ONNX graphs must be acyclic."
        )
    return [nodes[i] for i in order]


def _infer_without_weights(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """ONNX shape inference on a copy that leaves out the large initializers (declared as inputs of
    their shape instead): the weights of a big model are never copied or scanned for it."""
    g = model.graph
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    lg = light.graph
    lg.name = g.name
    lg.node.extend(g.node)
    lg.input.extend(g.input)
    lg.output.extend(g.output)
    lg.value_info.extend(g.value_info)
    declared = {i.name for i in g.input}
    for t in g.initializer:
        if int(np.prod(t.dims)) <= 64:  # small constants (shapes, axes) take part in data propagation
            lg.initializer.append(t)
        elif t.name not in declared:
            lg.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    try:
        inferred = shape_inference.infer_shapes(light, data_prop=True).graph
        return list(inferred.value_info) + list(inferred.output)
    except Exception:  # inference is a help, not a requirement: rules ask for what they need
        return list(g.value_info)


class GraphView:
    """Everything the differentiator asks of the forward graph, computed once.

    The model is copied once (the copy is the view's own: `differentiate` builds its result in it),
    every node is given a unique name (gradient nodes are named after them), the nodes are put in
    topological order, and ONNX shape inference fills in types and shapes.
    """

    def __init__(self, model: onnx.ModelProto):
        model = onnx.ModelProto.FromString(model.SerializeToString())
        self.opset = default_opset(model)
        g = model.graph
        self._name_nodes(g)
        initializer_names = {t.name for t in g.initializer}
        available = {i.name for i in g.input} | initializer_names
        ordered = topological_order(list(g.node), available)
        del g.node[:]
        g.node.extend(ordered)
        self.model = model
        self.graph = model.graph
        inferred = _infer_without_weights(model)
        self.nodes: list[onnx.NodeProto] = list(self.graph.node)
        self.producer: dict[str, onnx.NodeProto] = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in self.nodes:
            for x in node_inputs(n):
                self.consumers[x].append(n)
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.input_names = [i.name for i in self.graph.input if i.name not in self.initializers]
        self.output_names = [o.name for o in self.graph.output]
        self._const_nodes = {n.output[0]: n for n in self.nodes if n.op_type == "Constant"}
        self._const_cache: dict[str, np.ndarray] = {}
        self.types: dict[str, int] = {}
        self.shapes: dict[str, Shape | None] = {}
        for vi in list(self.graph.input) + list(self.graph.output) + list(inferred):
            if vi.type.HasField("tensor_type"):
                self.types[vi.name] = vi.type.tensor_type.elem_type
                self.shapes[vi.name] = _dims(vi.type)
        for name, t in self.initializers.items():
            self.types[name] = t.data_type
            self.shapes[name] = tuple(int(d) for d in t.dims)
        for name, n in self._const_nodes.items():
            v = self.const(name)
            if v is not None:
                self.types.setdefault(name, helper.np_dtype_to_tensor_dtype(v.dtype))
                self.shapes[name] = tuple(v.shape)

    @staticmethod
    def _name_nodes(g: onnx.GraphProto) -> None:
        seen: set[str] = set()
        for i, n in enumerate(g.node):
            name = n.name or f"{n.op_type}_{i}"
            while name in seen:
                name = f"{name}_{i}"
            n.name = name
            seen.add(name)

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant-node output, else None (it is computed at run time)."""
        if not name:
            return None
        if name in self._const_cache:
            return self._const_cache[name]
        value = None
        if name in self.initializers:
            value = numpy_helper.to_array(self.initializers[name])
        elif name in self._const_nodes:
            value = _constant_node_value(self._const_nodes[name])
        if value is not None:
            self._const_cache[name] = value
        return value

    def know(self, name: str, value: np.ndarray) -> None:
        """Record a constant emitted after the view was built (a modified weight for LRP), so that
        rules read it as they read the forward graph's own constants."""
        self._const_cache[name] = value
        self.types[name] = helper.np_dtype_to_tensor_dtype(value.dtype)
        self.shapes[name] = tuple(value.shape)

    def is_float(self, name: str) -> bool:
        return self.types.get(name) in FLOAT_TYPES

    def elem_type(self, name: str) -> int | None:
        return self.types.get(name)

    def shape(self, name: str) -> Shape | None:
        return self.shapes.get(name)

    def rank(self, name: str) -> int | None:
        s = self.shapes.get(name)
        return None if s is None else len(s)

    def static_shape(self, name: str) -> tuple[int, ...] | None:
        """The shape when every dimension is a known integer, else None."""
        s = self.shapes.get(name)
        if s is None or any(not isinstance(d, int) for d in s):
            return None
        return tuple(s)
