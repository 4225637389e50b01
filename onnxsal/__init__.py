"""onnxsal: saliency maps and attributions for any ONNX model, computed as ONNX graphs.

    >>> import onnxsal
    >>> ex = onnxsal.Explainer("model.onnx")
    >>> maps = ex.attribute(images, method="guided_backprop")      # same shape as images
    >>> onnx.save(onnxsal.compile("model.onnx", method="gradient"), "explain.onnx")

`Explainer`, `compile` and `evaluate` are imported on first use, so that a process which only runs
a cached graph (the warm start of `onnxsal explain`) never imports onnx or the graph builder.
"""

from .errors import (
    ConversionError, InvalidInputError, ModelLoadError, ModelRunError, OnnxsalError, ProviderError, UnsupportedModelError,
)

__version__ = "0.1.0"

__all__ = [
    "ConversionError", "Explainer", "InvalidInputError", "ModelLoadError", "ModelRunError", "OnnxsalError",
    "ProviderError", "UnsupportedModelError", "compile", "evaluate", "explain_dataset", "__version__",
]


def __getattr__(name: str):
    if name in ("Explainer", "compile"):
        from . import explainer

        return getattr(explainer, name)
    if name == "explain_dataset":  # Ray itself is imported only when a run asks for engine="ray"
        from . import dataset

        return dataset.explain_dataset
    if name == "evaluate":  # the package is callable: onnxsal.evaluate(...) (see onnxsal/evaluate/__init__.py)
        import importlib

        return importlib.import_module(".evaluate", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
