"""Attribution methods on top of the differentiator, by name (one module per family)."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import InvalidInputError

MethodFn = Callable[..., dict]
_METHODS: dict[str, MethodFn] = {}
_COMPILERS: dict[str, Callable] = {}


def register(name: str, compiler: Callable | None = None):
    """Register `fn(explainer, feeds, target, **options) -> {wrt: attribution}` under `name`."""

    def deco(fn: MethodFn) -> MethodFn:
        _METHODS[name] = fn
        if compiler is not None:
            _COMPILERS[name] = compiler
        return fn

    return deco


def available() -> list[str]:
    return sorted(_METHODS)


def get(name: str) -> MethodFn:
    if name not in _METHODS:
        raise InvalidInputError(f"unknown method {name!r}; choose one of {available()}.")
    return _METHODS[name]


def compile_method(explainer, method: str, target: str, softmax: str, wrt):
    get(method)  # an unknown name is reported as such
    if method not in _COMPILERS:
        raise InvalidInputError(f"method {method!r} cannot be compiled to one graph; compilable: {sorted(_COMPILERS)}.")
    return _COMPILERS[method](explainer, target=target, softmax=softmax, wrt=wrt)


from . import gradients  # noqa: E402,F401  (registers the methods)
