"""Plain gradient methods: saliency (Simonyan et al.), guided backprop, deconvnet.

Each is one run of a gradient graph built with its rule set; they differ only in the rules used
through rectifiers (see `onnxsal.autodiff.variants`).
"""

from __future__ import annotations

from . import register


def _gradient_method(rules: str):
    def attribute(explainer, feeds, target, softmax="identity", wrt=None, batch_size=None):
        grads, _ = explainer.run_gradient(feeds, target, rules=rules, softmax=softmax, wrt=wrt, batch_size=batch_size)
        return grads

    def compile_graph(explainer, target, softmax, wrt):
        gg, _ = explainer.gradient_graph(rules, softmax, target, wrt)
        return gg.model

    attribute.__name__ = rules
    attribute.__doc__ = f"The input gradient with the {rules!r} rule set."
    return attribute, compile_graph


for _name in ("gradient", "guided_backprop", "deconvnet"):
    _fn, _compiler = _gradient_method(_name)
    register(_name, _compiler)(_fn)
register("saliency", _gradient_method("gradient")[1])(_gradient_method("gradient")[0])
