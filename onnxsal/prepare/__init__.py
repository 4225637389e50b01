"""Preparation: from a stranger's file to a graph the gradient rules can read.

The stages run in this order, each in its own module with one job:

- `repair`: what onnxruntime tolerates, onnxsal tolerates too (nodes out of topological order,
  model-local functions, declared shapes that contradict the graph);
- `specialise`: the call's concrete input shapes written into the graph, shapes inferred again and
  the shape arithmetic (and `If`s on values that became constant) folded away;
- `lower`: ops on the differentiated path that have no gradient rule rewritten into ops that have
  one (an ONNX function body, recurrent cells over a static sequence, loops with a static count).

`differentiate` (onnxsal.autodiff) then reads the prepared graph.
"""

from . import control_flow, functions, recurrent  # noqa: F401  (register their lowerings)
from .lower import LOWERINGS, LowerContext, lower, lowering
from .repair import repair
from .specialise import specialise

__all__ = ["LOWERINGS", "LowerContext", "lower", "lowering", "repair", "specialise"]
