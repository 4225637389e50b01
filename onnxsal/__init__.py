"""onnxsal: saliency maps and attributions for any ONNX model, computed as ONNX graphs.

    >>> import onnxsal
    >>> ex = onnxsal.Explainer("model.onnx")
    >>> maps = ex.attribute(images, method="guided_backprop")      # same shape as images
    >>> onnx.save(onnxsal.compile("model.onnx", method="gradient"), "explain.onnx")
"""

from .errors import (
    ConversionError, InvalidInputError, ModelLoadError, ModelRunError, OnnxsalError, ProviderError, UnsupportedModelError,
)
from .explainer import Explainer, compile
from . import evaluate  # noqa: E402  onnxsal.evaluate(...): the package is callable (see onnxsal/evaluate/__init__.py)

__version__ = "0.1.0"

__all__ = [
    "ConversionError", "Explainer", "InvalidInputError", "ModelLoadError", "ModelRunError", "OnnxsalError",
    "ProviderError", "UnsupportedModelError", "compile", "__version__",
]
