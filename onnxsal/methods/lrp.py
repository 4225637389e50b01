"""Layer-wise Relevance Propagation (Bach et al. 2015; Montavon et al. 2019), one graph run.

The relevance of the explained class's score is propagated from the output to the input with the
rules a composite assigns to each node (`onnxsal.relevance`). The output relevance is the score
itself (the logit under softmax-as-identity) at the target class and zero elsewhere, so that with
zero biases and ε -> 0 the input relevance sums to the score; a seed tensor (target="tensor") is
taken as the output relevance as it is (Zennit's `attr_output`).
"""

from __future__ import annotations

from ..autodiff import SeedSpec
from ..relevance.composites import resolve
from ..relevance.propagate import relevance_graph
from . import Method, register
from .graphs import AttributionGraph, GraphEditor
from .integrated_gradients import score_value


def build_lrp(explainer, target_kind, softmax, wrt, composite="EpsilonPlusFlat", epsilon=None, stabilizer=None,
              gamma=None, low=None, high=None, canonize=True):
    comp = resolve(composite, epsilon=epsilon, stabilizer=stabilizer, gamma=gamma, low=low, high=high)
    score = score_value(explainer, softmax)
    scaled = target_kind != "tensor"
    rg = relevance_graph(explainer.model, comp, list(wrt), explainer.output, SeedSpec(target_kind), softmax,
                         canonize, also=[score] if scaled else [])
    gg = rg.gradient
    relevances = {w: gg.grads[w] for w in wrt}
    if not scaled:
        return AttributionGraph(gg.model, relevances, gg.target_input, gg.seed_input)
    ed = GraphEditor(gg.model, prefix="lrp/")
    e = ed.e
    rank = explainer.view.rank(score)
    seed_at_score = gg.grads[score]
    per_sample = e.reduce("ReduceSum", e.op("Mul", [seed_at_score, score]), list(range(1, rank)), keepdims=0) if rank > 1 \
        else e.op("Mul", [seed_at_score, score])
    outs = {}
    for w, r in relevances.items():
        shape = e.ints([-1] + [1] * (explainer.view.rank(w) - 1), name="per_sample")
        outs[w] = e.op("Mul", [r, e.op("Reshape", [per_sample, shape])], out=e.fresh(f"{w}_relevance"))
    model = ed.finish([(outs[w], relevances[w]) for w in wrt], drop=tuple(relevances.values()) + (seed_at_score,))
    return AttributionGraph(model, outs, gg.target_input, gg.seed_input)


register(Method("lrp", build_lrp, summary="layer-wise relevance propagation with a composite of LRP rules"))
