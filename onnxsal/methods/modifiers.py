"""keras-vis gradient modifiers, applied to the finished attribution (its `grad_modifier`).

"absolute" |a|, "negate" −a (what argues against the class comes out positive), "positive" max(a, 0),
"negative" max(−a, 0). The same modifier is one elementwise node at the end of a compiled graph.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..errors import InvalidInputError

MODIFIERS = {
    "absolute": (np.abs, ["Abs"]),
    "negate": (np.negative, ["Neg"]),
    "positive": (lambda a: np.maximum(a, 0), ["Relu"]),
    "negative": (lambda a: np.maximum(-a, 0), ["Neg", "Relu"]),
}


def check(modifier: str | None) -> None:
    if modifier is not None and modifier not in MODIFIERS:
        raise InvalidInputError(f"unknown modifier {modifier!r}; choose one of {sorted(MODIFIERS)} (or None).")


def apply(attribution: np.ndarray, modifier: str | None) -> np.ndarray:
    check(modifier)
    return attribution if modifier is None else MODIFIERS[modifier][0](attribution).astype(attribution.dtype, copy=False)


def append(model: onnx.ModelProto, outputs: list[str], modifier: str | None) -> onnx.ModelProto:
    """`model` with each named output passed through the modifier; the outputs keep their names
    (the unmodified value is renamed `<name>_unmodified`)."""
    check(modifier)
    if modifier is None:
        return model
    g = model.graph
    for name in outputs:
        raw = f"{name}_unmodified"
        for node in g.node:
            node.output[:] = [raw if o == name else o for o in node.output]
            node.input[:] = [raw if i == name else i for i in node.input]
        ops = MODIFIERS[modifier][1]
        values = [raw] + [f"{name}_{modifier}_{k}" for k in range(len(ops) - 1)] + [name]
        for k, op in enumerate(ops):
            g.node.append(helper.make_node(op, [values[k]], [values[k + 1]], name=f"{name}/{modifier}/{op}"))
    return model
