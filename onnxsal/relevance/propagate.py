"""Relevance propagation on a graph: canonize, lower, assign rules to nodes, differentiate.

The LRP rule set is the vanilla gradient rule set with every op type overridden by a dispatcher
that looks up the rule the composite gave the node (`Composite.assign`) and falls back to the
vanilla rule where there is none or it does not apply. The driver, the seeds and the softmax
policy are those of every gradient method, so LRP graphs compile like them.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from ..autodiff import DEFAULT_RULES, GRADIENT, GradientGraph, RuleSet, SeedSpec, differentiate
from ..autodiff.driver import live_path
from ..autodiff.graph import GraphView
from ..autodiff.variants import identity_at_output
from ..prepare import lower
from .canonize import canonize as canonize_graph
from .composites import Composite
from .rules import LrpRule

Assignment = dict[str, tuple[LrpRule, str]]


def relevance_rules(composite: Composite, wrt: list[str], output: str, softmax: str = "identity",
                    assigned: Assignment | None = None) -> RuleSet:
    """The rule set that applies the composite's rules over the vanilla ones. The assignment is
    made on the driver's own view of the graph at the first node it differentiates (no second copy
    of the model), and left in `assigned` for the caller."""
    assignment = {} if assigned is None else assigned
    done: list[bool] = []

    def dispatch(ctx, r):
        if not done:
            nodes, live = live_path(ctx.view, GRADIENT, wrt, output)
            assignment.update(composite.assign(ctx.view, nodes, live))
            done.append(True)
        hit = assignment.get(ctx.node.name)
        if hit is None or not hit[0].applies(ctx):
            return ctx.base(r)
        return hit[0].backward(ctx, r)

    name = f"lrp:{composite.name}"
    rules = GRADIENT.override(name, **{op: dispatch for op in DEFAULT_RULES})
    if softmax == "identity":
        rules = rules.override(f"{name}+softmax_identity", Softmax=identity_at_output, LogSoftmax=identity_at_output)
    return rules


@dataclass
class RelevanceGraph:
    gradient: GradientGraph  # relevance of each wrt value (and of `score`, if asked) as its "gradient"
    assignment: Assignment
    notes: list[str]  # what the canonizers rewrote
    model: onnx.ModelProto  # the canonized, lowered forward model the rules were assigned on


def prepared(model: onnx.ModelProto, wrt: list[str], output: str, canonize: bool = True) -> tuple[onnx.ModelProto, list[str]]:
    """The forward model as LRP reads it: canonized, then lowered for the gradient rules."""
    notes: list[str] = []
    if canonize:
        model, notes = canonize_graph(model)
    return lower(model, GRADIENT.supports, wrt, output), notes


def relevance_graph(model: onnx.ModelProto, composite: Composite, wrt: list[str], output: str, seed: SeedSpec,
                    softmax: str = "identity", canonize: bool = True, also: list[str] = ()) -> RelevanceGraph:
    """The relevance of `output` (seeded by `seed`) at each of `wrt` (and at the values `also`)."""
    model, notes = prepared(model, wrt, output, canonize)
    assignment: Assignment = {}
    rules = relevance_rules(composite, list(wrt), output, softmax, assignment)
    gg = differentiate(model, rules, wrt=list(wrt) + [v for v in also if v not in wrt], output=output, seed=seed)
    return RelevanceGraph(gg, assignment, notes, model)


def rule_table(model: onnx.ModelProto, composite: Composite, wrt: list[str], output: str,
               canonize: bool = True) -> tuple[list[dict], list[str]]:
    """One row per node on the path: name, op type, kind, and the rule it gets (and why)."""
    model, notes = prepared(model, wrt, output, canonize)
    view = GraphView(model)
    nodes, live = live_path(view, GRADIENT, wrt, output)
    assignment = composite.assign(view, nodes, live)
    kinds = composite.kinds(view, nodes, live)
    rows = []
    for n in nodes:
        rule, why = assignment.get(n.name, (None, ""))
        rows.append({"node": n.name, "op_type": n.op_type, "kind": kinds[n.name],
                     "rule": rule.describe() if rule is not None else "gradient", "by": why or "default"})
    return rows, notes
