"""The exceptions onnxsal raises: one family, each with a single sentence a user can act on."""


class OnnxsalError(Exception):
    """Base of every error onnxsal raises on purpose (bad model, bad input, unsupported graph)."""


class ModelLoadError(OnnxsalError):
    """The file or object is not a loadable, valid ONNX model, or it reaches outside its folder."""


class UnsupportedModelError(OnnxsalError):
    """The model is valid ONNX but cannot be differentiated as asked (missing rule, integer path...)."""


class NeedsShapesError(UnsupportedModelError):
    """A rule needs a shape (or rank) the file leaves dynamic: the graph can be built once the call's
    concrete input shapes are written into it (`Explainer` does that by itself; `compile` takes
    `input_shapes=`)."""


class InvalidInputError(OnnxsalError):
    """An input array, target or option does not fit the model."""


class ModelRunError(OnnxsalError):
    """onnxruntime failed while running a (valid-looking) model on the given inputs."""


class ProviderError(OnnxsalError):
    """The requested execution provider cannot run here."""


class ConversionError(OnnxsalError):
    """A framework model cannot be converted to ONNX, or its ONNX twin does not compute what it computes."""
