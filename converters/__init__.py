"""Framework -> ONNX converters (Keras/TensorFlow, PyTorch); their heavy dependencies are imported lazily.

    >>> from converters import convert, export_keras, export_torch
    >>> convert("model.keras", "model.onnx")          # any supported file: checked, stamped, written atomically
    >>> export_torch(module, example_input, "m.onnx")  # the lower-level exporters, on model objects

Importing this package imports neither torch nor tensorflow.
"""

from onnxsal.errors import ConversionError

from .convert import convert, detect, summary
from .keras_export import export_keras
from .torch_export import export_torch

__all__ = ["ConversionError", "convert", "detect", "export_keras", "export_torch", "summary"]
