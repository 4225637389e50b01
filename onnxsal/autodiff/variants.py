"""The rule sets attribution needs, as overrides of the vanilla rules.

- gradient: the true gradient (Simonyan et al.);
- guided_backprop (Springenberg et al.): through every rectifier, 1[x>0]·max(g, 0);
- deconvnet (Zeiler & Fergus): through every rectifier, max(g, 0);
- softmax as identity: a Softmax/LogSoftmax that produces the explained output passes the
  gradient straight through, so differentiation starts at the logits (keras-vis' advice).
A rectifier is a Relu, or a Clip whose minimum is 0 (ReLU6); for a Clip the guided rule keeps
its own mask, 1[0<x<max]·max(g, 0).
"""

from __future__ import annotations

from . import rules  # noqa: F401  (registers the default rules)
from .registry import DEFAULT_RULES, RuleContext, RuleSet
from .rules.activations import is_rectifier


def guided_rectifier(ctx: RuleContext, g):
    if not is_rectifier(ctx):
        return ctx.base(g)
    return ctx.base(ctx.op("Relu", [g]))


def deconvnet_rectifier(ctx: RuleContext, g):
    if not is_rectifier(ctx):
        return ctx.base(g)
    return [ctx.op("Relu", [g])] + [None] * (len(ctx.node.input) - 1)


def identity_at_output(ctx: RuleContext, g):
    if not ctx.at_output:
        return ctx.base(g)
    return [g]


GRADIENT = RuleSet("gradient", DEFAULT_RULES)
GUIDED_BACKPROP = GRADIENT.override("guided_backprop", Relu=guided_rectifier, Clip=guided_rectifier)
DECONVNET = GRADIENT.override("deconvnet", Relu=deconvnet_rectifier, Clip=deconvnet_rectifier)
RULE_SETS = {rs.name: rs for rs in (GRADIENT, GUIDED_BACKPROP, DECONVNET)}
SOFTMAX_POLICIES = ("identity", "keep")


def rule_set(name: str = "gradient", softmax: str = "identity") -> RuleSet:
    """The rule set for a gradient method and a softmax policy."""
    if name not in RULE_SETS:
        raise ValueError(f"unknown gradient rule set {name!r}; expected one of {sorted(RULE_SETS)}")
    if softmax not in SOFTMAX_POLICIES:
        raise ValueError(f"softmax must be one of {SOFTMAX_POLICIES}, not {softmax!r}")
    base = RULE_SETS[name]
    if softmax == "keep":
        return base
    return base.override(f"{name}+softmax_identity", Softmax=identity_at_output, LogSoftmax=identity_at_output)
