"""Attribution graphs: a gradient graph plus the nodes that turn gradients into an attribution.

Every method that is one graph run builds an `AttributionGraph`; `Explainer.attribute` runs it
and `onnxsal.compile` writes it out, so the two give the same numbers by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import helper

from ..autodiff.emitter import Emitter
from ..autodiff.graph import default_opset, topological_order


@dataclass
class AttributionGraph:
    model: onnx.ModelProto
    attributions: dict[str, str]  # explained value -> output name of its attribution
    target_input: str | None = None
    seed_input: str | None = None
    extras: dict[str, str] = field(default_factory=dict)  # other named outputs (e.g. the Grad-CAM layer)


class GraphEditor:
    """Appends nodes to a copy of a model with an opset-aware `Emitter`, then sets the outputs."""

    def __init__(self, model: onnx.ModelProto, prefix: str = ""):
        self.model = onnx.ModelProto.FromString(model.SerializeToString())
        g = self.model.graph
        taken = {n.name for n in g.node} | {v for n in g.node for v in list(n.input) + list(n.output)}
        taken |= {i.name for i in g.input} | {t.name for t in g.initializer} | {o.name for o in g.output}
        self.e = Emitter(taken, default_opset(self.model))
        self.e.prefix = prefix

    def typed(self, name: str) -> onnx.ValueInfoProto | None:
        """The value info of an existing input or output called `name`."""
        g = self.model.graph
        return next((v for v in list(g.output) + list(g.input) if v.name == name), None)

    def finish(self, outputs: list, drop: tuple[str, ...] = ()) -> onnx.ModelProto:
        """The model with the emitted nodes, minus outputs in `drop`, plus `outputs`.

        Each output is (name, like) to copy the type of existing value `like`, or
        (name, elem_type, shape).
        """
        g = self.model.graph
        infos = []
        for out in outputs:
            if len(out) == 2:
                like = self.typed(out[1])
                vi = onnx.ValueInfoProto()
                vi.CopyFrom(like)
                vi.name = out[0]
            else:
                vi = helper.make_tensor_value_info(*out)
            infos.append(vi)
        g.node.extend(self.e.nodes)
        g.initializer.extend(self.e.used_initializers([vi.name for vi in infos]))
        # emitted nodes may feed the model's own (inputs stacked in the graph): keep the order valid
        ordered = topological_order(list(g.node), {i.name for i in g.input} | {t.name for t in g.initializer})
        del g.node[:]
        g.node.extend(ordered)
        kept = [o for o in g.output if o.name not in drop]
        del g.output[:]
        g.output.extend(kept)
        g.output.extend(infos)
        return self.model
