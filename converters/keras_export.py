"""Keras / TensorFlow -> ONNX, ready for onnxsal.

    >>> from converters.keras_export import export_keras
    >>> proto = export_keras(model, "model.onnx")        # NHWC in, NHWC attributions out

TensorFlow and tf2onnx are imported inside the function, so importing this module costs nothing.
The exported graph keeps the model's own layout (no NHWC -> NCHW change: attributions come back in
the layout of the input), has a dynamic batch dimension, and an IR version onnxruntime loads.
"""

from __future__ import annotations

import os

MAX_IR_VERSION = 10  # onnxruntime 1.31 refuses IR 14; tf2onnx 1.17 writes 8 for opset 17


def _is_sequential(model) -> bool:
    return any(cls.__name__ == "Sequential" for cls in type(model).__mro__)


def _functional(model):
    """A functional model with defined inputs and outputs (tf2onnx cannot read a Keras 3 Sequential)."""
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        raise ValueError(
            f"the Keras model {getattr(model, 'name', '')!r} has no defined inputs yet; give it an Input layer "
            "(or input_shape=), or call it once on data, before exporting."
        )
    if not _is_sequential(model):
        return model
    # keras.Model (Keras 3) or tf.keras.Model (tf_keras): called on tensors, it builds a functional model.
    cls = next(c for c in type(model).__mro__ if c.__name__ == "Model")
    return cls(inputs, outputs, name=getattr(model, "name", None))


def _input_name(tensor, i: int) -> str:
    history = getattr(tensor, "_keras_history", None)
    layer = getattr(history, "operation", None) or getattr(history, "layer", None)
    name = getattr(layer, "name", None) or getattr(tensor, "name", None) or f"input_{i}"
    return name.split(":")[0]


def _output_names(model, n: int) -> list[str]:
    names = list(getattr(model, "output_names", None) or [])
    return names if len(names) == n else [f"output_{i}" for i in range(n)]


def _dynamic_batch(values) -> None:
    for vi in values:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"


def export_keras(model, path: str | os.PathLike | None = None, *, opset: int = 17):
    """Convert a built Keras model (Sequential or functional) to an `onnx.ModelProto`.

    The input keeps the model's layout (NHWC for Keras image models), the batch dimension is
    dynamic, the ONNX outputs are named after the Keras outputs. With `path`, the model is also
    saved there. Needs tensorflow and tf2onnx (the `tensorflow` extra).
    """
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("export_keras needs tensorflow and tf2onnx: pip install 'onnxsal[tensorflow]'.") from exc
    import onnx

    from . import tf2onnx_ops  # noqa: F401  (registers the handlers tf2onnx lacks: Erfc, the exact GELU)

    try:
        import keras

        backend = keras.backend.backend() if hasattr(keras.backend, "backend") else "tensorflow"
    except ImportError:  # pragma: no cover
        backend = "tensorflow"
    if backend != "tensorflow":
        raise ValueError(f"export_keras needs the Keras TensorFlow backend; this Keras runs on {backend!r}.")

    fmodel = _functional(model)
    signature = [
        tf.TensorSpec((None,) + tuple(t.shape[1:]), t.dtype, name=_input_name(t, i)) for i, t in enumerate(fmodel.inputs)
    ]
    out_names = _output_names(fmodel, len(fmodel.outputs))

    try:
        proto, _ = tf2onnx.convert.from_keras(fmodel, input_signature=signature, opset=opset)
    except Exception:  # tf2onnx's Keras path breaks on some Keras 3 models: trace the call instead
        def call(*xs):
            return fmodel(list(xs) if len(xs) > 1 else xs[0], training=False)

        fn = tf.function(call, input_signature=signature)
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=signature, opset=opset)
        graph_outputs = [o.name for o in proto.graph.output]
        if len(graph_outputs) == len(out_names):
            renames = dict(zip(graph_outputs, out_names))
            for node in proto.graph.node:
                node.output[:] = [renames.get(o, o) for o in node.output]
                node.input[:] = [renames.get(i, i) for i in node.input]
            for o in proto.graph.output:
                o.name = renames[o.name]

    _dynamic_batch(proto.graph.input)
    _dynamic_batch(proto.graph.output)
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    onnx.checker.check_model(proto)
    if path is not None:
        onnx.save(proto, os.fspath(path))
    return proto
