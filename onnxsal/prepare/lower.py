"""Lowering: an op on the differentiated path with no gradient rule, rewritten into ops that have one.

A lowering is registered by op type, like a rule: `fn(ctx) -> None` emits, through `ctx.op(...)`,
nodes that compute the node's outputs (the last node writing each of them uses `out=`), or calls
`ctx.cannot(why)` when this node cannot be lowered (a dynamic sequence length, say). Only nodes on
the path from `wrt` to the explained output whose op the rule set does not cover are lowered, until
none is left: a lowering may emit ops that are themselves lowered. The lowered graph computes the
same values as the original, so forward outputs are unchanged.

An op with neither a rule nor a registered lowering whose ONNX schema defines a function body for
the model's opset (Swish, Shrink, RMSNormalization, CenterCropPad, AffineGrid, ...) is expanded
into that body (`functions.expand`), which the rules then differentiate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx

from ..autodiff import GRADIENT, differentiable_path
from ..autodiff.emitter import Emitter
from ..autodiff.registry import NodeAccess
from ..autodiff.graph import GraphView
from ..errors import UnsupportedModelError
from . import functions

LowerFn = Callable[["LowerContext"], None]
LOWERINGS: dict[str, LowerFn] = {}
MAX_ROUNDS = 8  # lowerings that emit lowered ops nest this deep at most


def lowering(*op_types: str):
    """Register the lowering of one or more op types."""

    def register(fn: LowerFn) -> LowerFn:
        for op in op_types:
            LOWERINGS[op] = fn
        return fn

    return register


class CannotLower(Exception):
    """Raised by `LowerContext.cannot`: this node stays as it is (an error only if it is on the path)."""


@dataclass
class LowerContext(NodeAccess):
    """What a lowering sees: the node, the graph view (shapes, constants) and an emitter."""

    node: onnx.NodeProto
    view: GraphView
    emitter: Emitter

    def cannot(self, why: str):
        raise CannotLower(why)


def lower(model: onnx.ModelProto, supports: Callable[[str], bool], wrt: list[str], output: str) -> onnx.ModelProto:
    """`model` with every node on the path from `wrt` to `output` that `supports` refuses and that has a
    lowering replaced by its lowering; the model itself when there is nothing to lower.

    A node on the path that has neither a rule nor a lowering is left for the driver to refuse; one
    whose lowering cannot apply is refused here, with the lowering's reason.
    """
    for _ in range(MAX_ROUNDS):
        view = GraphView(model)
        path = differentiable_path(view, GRADIENT, wrt, output, check_rules=False)
        todo = [n for n in path if n.domain in ("", "ai.onnx") and not supports(n.op_type) and _lowerable(n, view)]
        if not todo:
            return model
        model = _rewrite(view, todo)
    return model


def _lowerable(node: onnx.NodeProto, view: GraphView) -> bool:
    """Whether a lowering is registered for the node's op, or its schema gives it a function body."""
    return node.op_type in LOWERINGS or functions.function_body(node, view) is not None


def _rewrite(view: GraphView, todo: list[onnx.NodeProto]) -> onnx.ModelProto:
    g = view.graph
    taken = {n.name for n in g.node} | {v for n in g.node for v in list(n.input) + list(n.output)}
    taken |= {i.name for i in g.input} | set(view.initializers)
    e = Emitter(taken, view.opset)
    replaced: dict[str, list[onnx.NodeProto]] = {}
    for n in todo:
        e.prefix = f"{n.name}/"
        start = len(e.nodes)
        try:
            LOWERINGS.get(n.op_type, functions.expand)(LowerContext(n, view, e))
        except CannotLower as why:
            raise UnsupportedModelError(
                f"{n.op_type} node '{n.name}' lies on the path being differentiated and cannot be rewritten "
                f"into differentiable ops: {why}."
            ) from None
        replaced[n.name] = e.nodes[start:]
    nodes = []
    for n in g.node:
        nodes.extend(replaced.get(n.name, [n]))
    model = view.model
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(e.used_initializers([o for n in todo for o in n.output]))
    return model
