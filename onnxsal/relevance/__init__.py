"""Relevance propagation (LRP) and DeepLIFT as rule sets over the differentiator.

LRP rules, composites that assign them to the nodes of a graph, and canonizers that put a graph
into the form the rules expect; DeepLIFT's Rescale and RevealCancel rules. Each is a `RuleSet`
that overrides the vanilla gradient rules, so the driver, the seeds and the compiled graphs are
the same as for every gradient method.
"""
