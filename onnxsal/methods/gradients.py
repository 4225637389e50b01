"""Gradient methods, each one graph run: saliency (Simonyan et al.), guided backprop
(Springenberg et al.), deconvnet (Zeiler & Fergus), and input × gradient.

The first three differ only in the rules used through rectifiers (`onnxsal.autodiff.variants`).
"""

from __future__ import annotations

from . import Method, register
from .graphs import AttributionGraph, GraphEditor

GRADIENT_RULES = ("gradient", "guided_backprop", "deconvnet")


def gradient_graph(explainer, rules: str, target_kind: str, softmax: str, wrt, extra_outputs=()) -> AttributionGraph:
    gg = explainer.gradient_graph(rules, softmax, target_kind, wrt, extra_outputs)
    return AttributionGraph(gg.model, dict(gg.grads), gg.target_input, gg.seed_input, {n: n for n in extra_outputs})


def _build_gradient(rules: str):
    def build(explainer, target_kind, softmax, wrt):
        return gradient_graph(explainer, rules, target_kind, softmax, wrt)

    return build


def build_input_x_gradient(explainer, target_kind, softmax, wrt, base: str = "gradient"):
    """x ⊙ ∂y/∂x, elementwise (Shrikumar et al.), over any gradient rule set."""
    g = gradient_graph(explainer, base, target_kind, softmax, wrt)
    ed = GraphEditor(g.model, prefix="input_x_gradient/")
    outs = {x: ed.e.op("Mul", [x, gx], out=ed.e.fresh(f"{x}_input_x_gradient")) for x, gx in g.attributions.items()}
    model = ed.finish([(outs[x], gx) for x, gx in g.attributions.items()], drop=tuple(g.attributions.values()))
    return AttributionGraph(model, outs, g.target_input, g.seed_input)


register(Method("gradient", _build_gradient("gradient"), summary="∂y/∂x, the saliency map of Simonyan et al."))
register(Method("saliency", _build_gradient("gradient"), summary="alias of gradient"))
register(Method("guided_backprop", _build_gradient("guided_backprop"), summary="1[x>0]·max(g,0) through rectifiers"))
register(Method("deconvnet", _build_gradient("deconvnet"), summary="max(g,0) through rectifiers"))
register(Method("input_x_gradient", build_input_x_gradient, summary="x ⊙ ∂y/∂x"))
