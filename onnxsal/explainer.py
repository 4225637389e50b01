"""`Explainer`: one model, its gradient graphs and sessions, and `attribute(...)` on top."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from . import methods as _methods
from .autodiff import GradientGraph, SeedSpec, differentiate, rule_set
from .errors import InvalidInputError
from .inputs import Target, TensorSpec, check_feeds, check_target, model_inputs, specs
from .model_io import load_model
from .runtime import create_session, resolve_providers


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
        self._graphs: dict[tuple, tuple[GradientGraph, object]] = {}
        self._forward = None

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
    ) -> tuple[GradientGraph, object]:
        """The (cached) gradient graph and its session for a rule set, softmax policy and seed kind."""
        key = (rules, softmax, seed, self._wrt(wrt), tuple(extra_outputs))
        if key not in self._graphs:
            gg = differentiate(self.model, rule_set(rules, softmax), wrt=list(key[3]), output=self.output,
                               seed=SeedSpec(seed), extra_outputs=list(extra_outputs))
            session = create_session(gg.model, self.providers, self._options, strict=self._strict_cuda)
            self._graphs[key] = (gg, session)
        return self._graphs[key]

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
        return self.forward_session.run([self.output], feeds)[0]

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
            k = int(self.forward_session.run([self.output], first)[0].shape[1])
        return check_target(target, n, k, spec.shape, spec.dtype)

    def run_gradient(
        self, feeds: dict[str, np.ndarray], target: Target, rules: str = "gradient", softmax: str = "identity",
        wrt=None, batch_size: int | None = None, extra_outputs: Sequence[str] = (),
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Gradients of the explained output for checked feeds, in chunks of `batch_size` samples.

        Returns (gradients by wrt name, extra outputs by name).
        """
        gg, session = self.gradient_graph(rules, softmax, target.kind, wrt, extra_outputs)
        n = next(iter(feeds.values())).shape[0]
        step = n if not batch_size or batch_size >= n else int(batch_size)
        names = list(gg.grads.values()) + list(extra_outputs)
        parts: list[list[np.ndarray]] = [[] for _ in names]
        for lo in range(0, n, step):
            chunk = {k: v[lo:lo + step] for k, v in feeds.items()}
            if target.kind == "target":
                chunk[gg.target_input] = target.value[lo:lo + step]
            elif target.kind == "tensor":
                chunk[gg.seed_input] = target.value[lo:lo + step]
            for i, out in enumerate(session.run(names, chunk)):
                parts[i].append(out)
        joined = [np.concatenate(p, axis=0) if len(p) > 1 else p[0] for p in parts]
        grads = dict(zip(gg.grads.keys(), joined[: len(gg.grads)]))
        return grads, dict(zip(extra_outputs, joined[len(gg.grads):]))

    def attribute(self, inputs, target=None, method: str = "gradient", *, softmax: str = "identity", wrt=None,
                  batch_size: int | None = None, **options):
        """Attribution of the explained output to `inputs`, with the same shape and layout.

        `target`: None for each sample's top class, an int, one int per sample, or a float seed array
        of the output's shape. `method`: one of `onnxsal.methods.available()`. `softmax`:
        "identity" (start from the logits when the output is a softmax) or "keep". For several
        inputs pass a dict and name the one(s) to explain with `wrt`; a list of names returns a dict.
        """
        feeds = self.feeds(inputs)
        checked = self.target(target, feeds)
        result = _methods.get(method)(self, feeds, checked, softmax=softmax, wrt=wrt, batch_size=batch_size, **options)
        if wrt is None or isinstance(wrt, str):
            return next(iter(result.values()))
        return result

    def compile(self, method: str = "gradient", target: str = "argmax", softmax: str = "identity", wrt=None) -> onnx.ModelProto:
        """The standalone attribution graph (see `onnxsal.compile`)."""
        if target not in ("argmax", "target", "tensor"):
            raise InvalidInputError(f"target must be 'argmax', 'target' or 'tensor' for a compiled graph, not {target!r}.")
        return _methods.compile_method(self, method, target, softmax, wrt)


def compile(model, method: str = "gradient", target: str = "argmax", softmax: str = "identity", wrt=None) -> onnx.ModelProto:
    """A standalone ONNX graph: the model's inputs (plus an int64 `target` [N] when target="target",
    or a seed when target="tensor") in, the model's outputs plus the attribution (`<input>_grad`) out."""
    return Explainer(model, providers="cpu").compile(method, target=target, softmax=softmax, wrt=wrt)
