"""Gradient rules: the registry by op type, the context a rule sees, and rule sets with overrides.

A rule is `rule(ctx, g) -> [grad of input 0, grad of input 1, ...]` where `g` is the gradient of
the node's first output (`ctx.grads` holds all of them). It returns None for inputs that need no
gradient (shapes, indices, constants). Variants such as guided backprop are `RuleSet`s that
override a few op types and can defer to the rule they replace with `ctx.base(g)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from ..errors import NeedsShapesError, UnsupportedModelError
from .emitter import Emitter
from .graph import GraphView

RuleFn = Callable[["RuleContext", str], list]


@dataclass(frozen=True)
class Rule:
    fn: RuleFn
    broadcasting: bool = False  # gradients come back in the output's shape; the driver un-broadcasts


DEFAULT_RULES: dict[str, Rule] = {}


def rule(*op_types: str, broadcasting: bool = False):
    """Register the default (vanilla) gradient rule of one or more op types."""

    def register(fn: RuleFn) -> RuleFn:
        for op in op_types:
            DEFAULT_RULES[op] = Rule(fn, broadcasting)
        return fn

    return register


class RuleSet:
    """A table of rules by op type; `override` makes a variant that falls back to this one."""

    def __init__(self, name: str, table: dict[str, Rule], parent: RuleSet | None = None):
        self.name = name
        self._table = table  # kept by reference: the default table fills as rule modules import
        self.parent = parent

    def override(self, name: str, **fns: RuleFn) -> RuleSet:
        table = {op: Rule(fn, self.lookup(op).broadcasting if self.lookup(op) else False) for op, fn in fns.items()}
        return RuleSet(name, table, parent=self)

    def lookup(self, op_type: str) -> Rule | None:
        r = self._table.get(op_type)
        if r is None and self.parent is not None:
            return self.parent.lookup(op_type)
        return r

    def chain(self, op_type: str) -> list[Rule]:
        """The rule for op_type and every rule it overrides, most specific first."""
        out, rs = [], self
        while rs is not None:
            if op_type in rs._table:
                out.append(rs._table[op_type])
            rs = rs.parent
        return out

    def overridden_ops(self) -> set[str]:
        """Op types whose rule differs from the vanilla one in this set."""
        out, rs = set(), self
        while rs is not None and rs.parent is not None:
            out |= set(rs._table)
            rs = rs.parent
        return out

    def supports(self, op_type: str) -> bool:
        return self.lookup(op_type) is not None


class NodeAccess:
    """Reading one forward node (`self.node`) in its graph (`self.view`): what rules and lowerings share."""

    node: onnx.NodeProto
    view: GraphView
    emitter: Emitter

    @property
    def opset(self) -> int:
        return self.view.opset

    def input(self, i: int) -> str:
        """Name of input i ('' when absent)."""
        return self.node.input[i] if i < len(self.node.input) else ""

    def output(self, i: int = 0) -> str:
        """Name of output i ('' when absent)."""
        return self.node.output[i] if i < len(self.node.output) else ""

    def attr(self, name: str, default=None):
        for a in self.node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def const(self, i: int) -> np.ndarray | None:
        return self.view.const(self.input(i))

    def op(self, op_type: str, inputs, **kw):
        return self.emitter.op(op_type, inputs, **kw)


@dataclass
class RuleContext(NodeAccess):
    """What a rule sees: the forward node, its graph, the incoming gradients, and an emitter."""

    node: onnx.NodeProto
    view: GraphView
    emitter: Emitter
    grads: list[str | None]
    wants: list[bool]
    at_output: bool = False
    _chain: list[Rule] = field(default_factory=list)

    # -- the forward node --------------------------------------------------------------------------
    @property
    def x(self) -> str:
        return self.node.input[0]

    @property
    def y(self) -> str:
        return self.node.output[0]

    def shape(self, name: str):
        return self.view.shape(name)

    def rank(self, name: str) -> int:
        r = self.view.rank(name)
        if r is None:
            self.needs_shapes(f"the rank of '{name}' is unknown (ONNX shape inference could not tell)")
        return r

    def static_shape(self, name: str) -> tuple[int, ...]:
        s = self.view.static_shape(name)
        if s is None:
            self.needs_shapes(f"'{name}' needs a static shape here, and shape inference gives {self.view.shape(name)}")
        return s

    @property
    def dtype(self) -> np.dtype:
        """NumPy dtype of the node's first output: the dtype of the gradients flowing in."""
        et = self.view.elem_type(self.y) or self.view.elem_type(self.x)
        return np.dtype(helper.tensor_dtype_to_np_dtype(et or onnx.TensorProto.FLOAT))

    # -- emitting --------------------------------------------------------------------------------
    @property
    def g(self) -> str | None:
        return self.grads[0]


    def scalar(self, value: float, dtype=None) -> str:
        return self.emitter.const(np.asarray(value, dtype=dtype or self.dtype), name="scalar")

    def zeros_like(self, name: str) -> str:
        return self.emitter.zeros_like(name, self.dtype)

    def base(self, g: str) -> list:
        """Apply the rule this one overrides, with incoming gradient g."""
        if len(self._chain) < 2:
            raise RuntimeError(f"no rule under the override for {self.node.op_type}")
        outer = RuleContext(self.node, self.view, self.emitter, [g] + self.grads[1:], self.wants, self.at_output, self._chain[1:])
        return self._chain[1].fn(outer, g)

    def unsupported(self, why: str):
        n = self.node
        raise UnsupportedModelError(f"cannot differentiate {n.op_type} node '{n.name}': {why}.")

    def needs_shapes(self, why: str):
        """Refuse for want of a shape the file leaves dynamic; specialising on concrete input shapes fixes it."""
        n = self.node
        raise NeedsShapesError(f"cannot differentiate {n.op_type} node '{n.name}' with dynamic input shapes: {why}; "
                               f"fix the input shape (input_shapes= / --input-shape).")
