"""Attribution methods by name: graph methods (one ONNX graph run) and sampling methods.

A graph method only says how to build its `AttributionGraph`; the Explainer runs it and
`onnxsal.compile` writes it out. A sampling method (SmoothGrad, Integrated Gradients) runs a
gradient graph over batches of perturbed inputs, and can also be compiled with its samples
batched inside one graph.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InvalidInputError


@dataclass(frozen=True)
class Method:
    name: str
    build: Callable | None  # (explainer, target_kind, softmax, wrt, **options) -> AttributionGraph
    attribute: Callable | None = None  # (explainer, feeds, target, softmax, wrt, batch_size, **options) -> dict
    summary: str = ""
    gradient_free: bool = False  # runs forward passes only: no gradient path is needed (quantized models work)


_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    _METHODS[method.name] = method
    return method


def available() -> list[str]:
    return sorted(_METHODS)


def compilable() -> list[str]:
    return sorted(n for n, m in _METHODS.items() if m.build is not None)


def options(method: Method, compiled: bool = False) -> list[str]:
    """The keyword options a method takes (beyond inputs, target, softmax, wrt, batch_size)."""
    fn = method.build if compiled or method.attribute is None else method.attribute
    params = inspect.signature(fn).parameters.values()
    fixed = {"explainer", "feeds", "target", "target_kind", "softmax", "wrt", "batch_size"}
    return [p.name for p in params if p.name not in fixed and p.kind is not p.VAR_KEYWORD]


def check_options(method: Method, given: dict, compiled: bool = False) -> None:
    """Unknown options are a clear error naming the ones the method takes."""
    allowed = options(method, compiled)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise InvalidInputError(f"method {method.name!r} has no option {unknown[0]!r}; its options are {allowed}.")


def get(name: str) -> Method:
    if name not in _METHODS:
        raise InvalidInputError(f"unknown method {name!r}; choose one of {available()}.")
    return _METHODS[name]


from . import gradients, gradcam, integrated_gradients, smoothgrad  # noqa: E402,F401  (register the methods)
# further method modules register themselves here, one import line each:
from . import deeplift  # noqa: E402,F401
from . import perturbation  # noqa: E402,F401
from . import lrp  # noqa: E402,F401
from . import attention_rollout  # noqa: E402,F401
