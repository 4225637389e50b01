"""Reverse-mode differentiation of ONNX graphs into ONNX graphs."""

from .driver import GradientGraph, differentiable_path, differentiate, output_heads
from .registry import DEFAULT_RULES, RuleContext, RuleSet, rule
from .seeds import SeedSpec
from .variants import DECONVNET, GRADIENT, GUIDED_BACKPROP, RULE_SETS, rule_set

__all__ = [
    "DECONVNET", "DEFAULT_RULES", "GRADIENT", "GUIDED_BACKPROP", "GradientGraph", "RULE_SETS", "differentiable_path", "output_heads",
    "RuleContext", "RuleSet", "SeedSpec", "differentiate", "rule", "rule_set",
]
