"""`Explainer`: one model, its gradient graphs and sessions, and `attribute(...)` on top."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import onnx

from . import methods as _methods
from .autodiff import GradientGraph, SeedSpec, differentiate, rule_set
from .autodiff.graph import GraphView
from .errors import InvalidInputError
from .methods import modifiers as _modifiers
from .methods.graphs import AttributionGraph
from .inputs import Target, TensorSpec, check_feeds, check_target, model_inputs, specs
from .model_io import load_model
from .prepare import lower
from .runtime import create_session, resolve_providers, run


class Explainer:
    """Explains one ONNX model.

    `model` is a path, bytes or an `onnx.ModelProto`; `providers` is "auto" (CUDA when
    onnxruntime-gpu can use a GPU, else CPU), "cpu", "cuda" or an onnxruntime provider list.
    `output` names the output to explain (default: the first).
    """

    def __init__(self, model, providers="auto", output: str | None = None, session_options=None):
        self.model = load_model(model)
        self.providers = resolve_providers(providers)
        self._strict_cuda = isinstance(providers, str) and providers.lower() == "cuda"
        self._options = session_options
        self.inputs: list[TensorSpec] = model_inputs(self.model)
        self.outputs: list[TensorSpec] = specs(self.model.graph.output)
        names = [o.name for o in self.outputs]
        if output is not None and output not in names:
            raise InvalidInputError(f"the model has no output named {output!r}; its outputs are {names}.")
        self.output = output or names[0]
        self._graphs: dict[tuple, GradientGraph] = {}
        self._sessions: dict[tuple, tuple[AttributionGraph, object]] = {}
        self._forward = None
        self._view: GraphView | None = None

    # -- graphs and sessions ------------------------------------------------------------------------
    def _wrt(self, wrt) -> tuple[str, ...]:
        if wrt is None:
            floats = [s.name for s in self.inputs if s.dtype.kind == "f"]
            if not floats:
                raise InvalidInputError("the model has no float input to explain; name the value with wrt=.")
            return (floats[0],)
        return (wrt,) if isinstance(wrt, str) else tuple(wrt)

    def gradient_graph(
        self, rules: str = "gradient", softmax: str = "identity", seed: str = "argmax", wrt=None, extra_outputs: Sequence[str] = ()
    ) -> GradientGraph:
        """The (cached) gradient graph for a rule set, softmax policy, seed kind and wrt values."""
        key = ("gradient_graph", rules, softmax, seed, self._wrt(wrt), tuple(extra_outputs))
        if key not in self._graphs:
            rs = rule_set(rules, softmax)
            model = lower(self.model, rs.supports, list(key[4]), self.output)
            self._graphs[key] = differentiate(model, rs, wrt=list(key[4]), output=self.output,
                                              seed=SeedSpec(seed), extra_outputs=list(extra_outputs))
        return self._graphs[key]

    def method_graph(self, method: str, target_kind: str = "argmax", softmax: str = "identity", wrt=None, **options):
        """The (cached) attribution graph of a graph method, and its session."""
        m = _methods.get(method)
        if m.build is None:
            raise InvalidInputError(f"method {method!r} is not one graph run; graph methods: {_methods.compilable()}.")
        key = ("method", method, target_kind, softmax, self._wrt(wrt), tuple(sorted(options.items())))
        if key not in self._sessions:
            graph = m.build(self, target_kind, softmax, self._wrt(wrt), **options)
            self._sessions[key] = (graph, create_session(graph.model, self.providers, self._options, strict=self._strict_cuda))
        return self._sessions[key]

    def run_graph(self, graph: AttributionGraph, session, feeds: dict[str, np.ndarray], target: Target,
                  batch_size: int | None = None, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run an attribution graph over checked feeds in chunks of `batch_size` samples.

        Returns the attributions by explained value (and any `names` asked for, by name).
        """
        wanted = list(graph.attributions.values()) + list(names or [])
        n = next(iter(feeds.values())).shape[0]
        step = n if not batch_size or batch_size >= n else int(batch_size)
        parts: list[list[np.ndarray]] = [[] for _ in wanted]
        for lo in range(0, n, step):
            chunk = {k: v[lo:lo + step] for k, v in feeds.items()}
            if target.kind == "target":
                chunk[graph.target_input] = target.value[lo:lo + step]
            elif target.kind == "tensor":
                chunk[graph.seed_input] = target.value[lo:lo + step]
            for i, out in enumerate(run(session, wanted, chunk)):
                parts[i].append(out)
        joined = [np.concatenate(p, axis=0) if len(p) > 1 else p[0] for p in parts]
        result = dict(zip(graph.attributions.keys(), joined))
        result.update(zip(names or [], joined[len(graph.attributions):]))
        return result

    @property
    def view(self) -> GraphView:
        """The analysed forward graph (shapes, producers, layouts), computed once."""
        if self._view is None:
            self._view = GraphView(self.model)
        return self._view

    @property
    def forward_session(self):
        if self._forward is None:
            self._forward = create_session(self.model, self.providers, self._options, strict=self._strict_cuda)
        return self._forward

    @property
    def session_providers(self) -> list[str]:
        """The providers onnxruntime actually runs this model with."""
        return self.forward_session.get_providers()

    # -- running --------------------------------------------------------------------------------------
    def feeds(self, inputs) -> dict[str, np.ndarray]:
        return check_feeds(inputs, self.inputs)

    def predict(self, inputs) -> np.ndarray:
        """The explained output for `inputs` (the forward pass alone)."""
        feeds = self.feeds(inputs)
        return run(self.forward_session, [self.output], feeds)[0]

    def n_classes(self) -> int | None:
        spec = next(o for o in self.outputs if o.name == self.output)
        if spec.shape is not None and len(spec.shape) >= 2 and isinstance(spec.shape[1], int) and spec.shape[1] > 0:
            return spec.shape[1]
        return None

    def target(self, target, feeds: dict[str, np.ndarray]) -> Target:
        n = next(iter(feeds.values())).shape[0]
        spec = next(o for o in self.outputs if o.name == self.output)
        k = self.n_classes()
        if k is None and target is not None and not (isinstance(target, np.ndarray) and target.dtype.kind == "f"):
            first = {name: a[:1] for name, a in feeds.items()}
            k = int(run(self.forward_session, [self.output], first)[0].shape[1])
        return check_target(target, n, k, spec.shape, spec.dtype)

    def top_classes(self, feeds: dict[str, np.ndarray]) -> Target:
        """Each sample's top class as an explicit target (sampling methods fix it on the clean input)."""
        scores = run(self.forward_session, [self.output], feeds)[0]
        if scores.ndim > 2:
            scores = scores.reshape(scores.shape[0], scores.shape[1], -1).sum(-1)
        return Target("target", scores.argmax(axis=1).astype(np.int64))

    def attribute(self, inputs, target=None, method: str = "gradient", *, softmax: str = "identity", wrt=None,
                  batch_size: int | None = None, return_convergence_delta: bool = False, modifier: str | None = None,
                  **options):
        """Attribution of the explained output to `inputs`, with the same shape and layout.

        `target`: None for each sample's top class, an int, one int per sample, or a float seed array
        of the output's shape. `method`: one of `onnxsal.methods.available()`. `softmax`:
        "identity" (start from the logits when the output is a softmax) or "keep". For several
        inputs pass a dict and name the one(s) to explain with `wrt`; a list of names returns a dict.
        Method options (n_samples, n_steps, layer, ...) are passed through. With
        return_convergence_delta=True (Integrated Gradients) returns (attribution, delta per sample).
        `modifier` (keras-vis' grad_modifier): "absolute", "negate", "positive" or "negative".
        """
        _modifiers.check(modifier)
        feeds = self.feeds(inputs)
        checked = self.target(target, feeds)
        m = _methods.get(method)
        _methods.check_options(m, options)
        info: dict = {}
        if m.attribute is not None:
            result = m.attribute(self, feeds, checked, softmax=softmax, wrt=wrt, batch_size=batch_size, **options)
            if isinstance(result, tuple):
                result, info = result
        else:
            graph, session = self.method_graph(method, checked.kind, softmax, wrt, **options)
            result = self.run_graph(graph, session, feeds, checked, batch_size)
        result = {name: _modifiers.apply(value, modifier) for name, value in result.items()}
        for name, value in result.items():
            if not np.all(np.isfinite(value)):
                warnings.warn(f"the {method} attribution of {name!r} holds NaN or infinite values "
                              f"(the model overflows or divides by zero on these inputs).", RuntimeWarning, stacklevel=2)
        if wrt is None or isinstance(wrt, str):
            result = next(iter(result.values()))
        if return_convergence_delta:
            if "convergence_delta" not in info:
                raise InvalidInputError(f"method {method!r} has no convergence delta; integrated_gradients has.")
            return result, info["convergence_delta"]
        return result

    def check(self, method: str = "gradient", target=None, **options) -> None:
        """Raise now what `attribute` would raise for every input: an unknown method or option, an op
        without a gradient rule on the path, a class index out of range."""
        from .autodiff import GRADIENT, differentiable_path

        m = _methods.get(method)
        _methods.check_options(m, options)
        base = _methods.get(options["base"]) if isinstance(options.get("base"), str) else m
        if "layer" not in _methods.options(base):  # layer methods start at an inner tensor, checked when it is chosen
            differentiable_path(self.view, GRADIENT, list(self._wrt(None)), self.output)
        if target is not None and self.n_classes() is not None:
            check_target(target, 1, self.n_classes(), None, np.dtype(np.float32))

    def compile(self, method: str = "gradient", target: str = "argmax", softmax: str = "identity", wrt=None,
                modifier: str | None = None, **options) -> onnx.ModelProto:
        """The standalone attribution graph (see `onnxsal.compile`)."""
        _modifiers.check(modifier)
        if target not in ("argmax", "target", "tensor"):
            raise InvalidInputError(f"target must be 'argmax', 'target' or 'tensor' for a compiled graph, not {target!r}.")
        m = _methods.get(method)
        if m.build is None:
            raise InvalidInputError(f"method {method!r} cannot be compiled to one graph; compilable: {_methods.compilable()}.")
        _methods.check_options(m, options, compiled=True)
        graph = m.build(self, target, softmax, self._wrt(wrt), **options)
        return _modifiers.append(graph.model, list(graph.attributions.values()), modifier)


def compile(model, method: str = "gradient", target: str = "argmax", softmax: str = "identity", wrt=None,
            modifier: str | None = None, **options) -> onnx.ModelProto:
    """A standalone ONNX graph: the model's inputs (plus an int64 `target` [N] when target="target",
    or a seed when target="tensor") in; the model's outputs plus the attribution out."""
    return Explainer(model, providers="cpu").compile(method, target=target, softmax=softmax, wrt=wrt,
                                                     modifier=modifier, **options)
