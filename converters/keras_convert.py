"""Keras / TensorFlow -> ONNX for converters.convert: .keras and .h5 files, SavedModel folders, Keras models.

TensorFlow is imported inside the functions. Where torch is already loaded (TensorFlow imported after
it can crash), converters.convert runs this module as a child process instead:

    python -m converters.keras_convert SOURCE OUTPUT [--input-shape 1,224,224,3] [--preprocess keras]
                                       [--opset 17] [--no-check] [--allow-lambda] [--report REPORT.json]

The child converts, self-checks and writes OUTPUT (atomically, only when the check passes) and, with
--report, writes {"ok": true} or {"ok": false, "error": "ConversionError", "message": "..."} there.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np

from onnxsal.errors import ConversionError

from ._common import Converted, _first_line, merge_shape, versions

# keras.applications model names -> the preprocessing their weights were trained with
KERAS_APPLICATION_PRESETS = [
    (r"mobilenet(v2)?_\d\.\d\d_\d+", "keras"),  # mode "tf": x/127.5 - 1
    (r"inception_v3|xception|inception_resnet_v2|resnet(50|101|152)v2", "keras"),
    (r"resnet(50|101|152)|vgg1[69]", "caffe"),  # mode "caffe": BGR minus the ImageNet mean
    (r"densenet(121|169|201)", "imagenet"),  # mode "torch"
]

# TensorFlow ops a SavedModel's graphs must not hold: they run Python or touch files outside the model
UNSAFE_TF_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc", "ReadFile", "WriteFile", "MatchingFiles"}


def keras_preset(name: str | None) -> str | None:
    for pattern, preset in KERAS_APPLICATION_PRESETS:
        if name and re.fullmatch(pattern, name):
            return preset
    return None


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
        import tf2onnx  # noqa: F401
    except ImportError:
        raise ConversionError(
            "converting a Keras or TensorFlow model needs tensorflow and tf2onnx: pip install 'onnxsal[tensorflow]'."
        ) from None
    from . import tf2onnx_ops  # noqa: F401  (registers the handlers tf2onnx lacks: Erfc, the exact GELU)

    return tf


def load_keras_file(path: Path, allow_lambda: bool = False):
    """keras.models.load_model in safe mode (no Lambda code, no unregistered classes) and without compiling."""
    _tf()
    import keras

    try:
        return keras.models.load_model(str(path), safe_mode=not allow_lambda, compile=False)
    except Exception as exc:
        text = str(exc)
        if "Lambda" in text and ("safe_mode" in text or "unsafe" in text):
            raise ConversionError(
                f"{path.name!r} holds a Keras Lambda layer with Python code, which safe mode does not load because it "
                "could run anything; pass --allow-lambda (allow_lambda=True) only if you trust the file's author."
            ) from None
        if "safe_mode" in text or "unsafe_deserialization" in text:
            raise ConversionError(f"{path.name!r} holds code that Keras' safe mode does not load: {_first_line(exc)}") from None
        if re.search(r"Could not locate|Unknown layer|unknown (class|layer)", text, re.I):
            raise ConversionError(
                f"{path.name!r} uses a custom Keras class that is not registered here ({_first_line(exc)}); load the model "
                "in your own code and convert the model object with converters.convert."
            ) from None
        raise ConversionError(f"{path.name!r} is not a loadable Keras model: {_first_line(exc)}") from None


def from_keras_model(model, input_shapes, *, opset: int, source: str) -> Converted:
    """A built Keras model (Sequential or functional) through converters.keras_export."""
    tf = _tf()
    from .keras_export import export_keras

    try:
        inputs = [(tuple(t.shape), t.dtype) for t in model.inputs]
    except (AttributeError, ValueError):
        inputs = []
    traced = not inputs
    if traced:  # e.g. a Sequential whose Lambda layers hide their output shape: trace a call instead
        built = (getattr(model, "_build_shapes_dict", None) or {}).get("input_shape")
        if not built:
            raise ConversionError(f"{source} has no defined inputs; give it an Input layer before saving it.")
        inputs = [(tuple(built), "float32")]
    if input_shapes is not None and len(input_shapes) != len(inputs):
        raise ConversionError(f"{len(input_shapes)} input shape(s) given but {source} takes {len(inputs)} input(s).")
    shapes = []
    for i, (shape, _) in enumerate(inputs):
        declared = tuple(None if d is None else int(d) for d in shape)
        shape = merge_shape(declared, input_shapes[i] if input_shapes else None, f"{source}'s input {i}")
        shapes.append((shape[0] or 1,) + tuple(shape[1:]))
    dtypes = [np.dtype(tf.as_dtype(d).as_numpy_dtype) for _, d in inputs]

    def run(xs):
        arg = [tf.constant(x) for x in xs] if len(xs) > 1 else tf.constant(xs[0])
        out = model(arg, training=False)
        return [np.asarray(o) for o in tf.nest.flatten(out)]

    try:
        if traced:
            proto = _export_traced(model, shapes, dtypes, opset)
        else:
            proto = export_keras(model, opset=opset)
    except Exception as exc:
        raise ConversionError(f"tf2onnx cannot convert {source}: {_first_line(exc)}") from exc
    return Converted(proto, run, shapes, dtypes, "Keras", source, "NHWC", keras_preset(getattr(model, "name", None)),
                     versions("tensorflow", "keras", "tf2onnx"))


def _export_traced(model, shapes, dtypes, opset: int):
    """tf2onnx on a traced call of the model, for Keras models without symbolic inputs."""
    tf = _tf()
    import tf2onnx

    from .keras_export import MAX_IR_VERSION

    signature = [tf.TensorSpec((None,) + tuple(s[1:]), tf.as_dtype(d), name="input" if len(shapes) == 1 else f"input_{i}")
                 for i, (s, d) in enumerate(zip(shapes, dtypes))]

    def call(*xs):
        return model(list(xs) if len(xs) > 1 else xs[0], training=False)

    proto, _ = tf2onnx.convert.from_function(tf.function(call, input_signature=signature), input_signature=signature,
                                             opset=opset)
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    return proto


def from_keras_file(path: Path, input_shapes, *, opset: int, allow_lambda: bool = False) -> Converted:
    model = load_keras_file(path, allow_lambda)
    kind = "HDF5" if path.suffix.lower() in (".h5", ".hdf5") else path.suffix or "file"
    return from_keras_model(model, input_shapes, opset=opset, source=f"Keras {kind} {path.name}")


def _saved_model_ops(path: Path) -> set[str]:
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    try:
        sm.ParseFromString((path / "saved_model.pb").read_bytes())
    except Exception as exc:
        raise ConversionError(f"{path.name!r}/saved_model.pb is not a SavedModel protobuf.") from exc
    ops = set()
    for mg in sm.meta_graphs:
        ops.update(n.op for n in mg.graph_def.node)
        for fn in mg.graph_def.library.function:
            ops.update(n.op for n in fn.node_def)
    return ops


def from_saved_model(path: Path, input_shapes, *, opset: int) -> Converted:
    """The 'serving_default' signature (or the only one) of a SavedModel folder, through tf2onnx."""
    tf = _tf()
    import tf2onnx

    from .keras_export import MAX_IR_VERSION

    unsafe = sorted(_saved_model_ops(path) & UNSAFE_TF_OPS)
    if unsafe:
        raise ConversionError(f"{path.name!r} holds TensorFlow ops that run Python or touch files ({', '.join(unsafe)}), "
                              "which onnxsal does not load.")
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise ConversionError(f"{path.name!r} is not a loadable TensorFlow SavedModel: {_first_line(exc)}") from exc
    sigs = dict(loaded.signatures)
    if not sigs:
        raise ConversionError(f"the SavedModel {path.name!r} has no signatures; save it with a serving signature "
                              "(keras model.export or tf.saved_model.save(..., signatures=...)).")
    sig = sigs.get("serving_default") or (sigs[next(iter(sigs))] if len(sigs) == 1 else None)
    if sig is None:
        raise ConversionError(f"the SavedModel {path.name!r} has several signatures ({', '.join(sorted(sigs))}) and none "
                              "is 'serving_default'.")
    args, kwargs = sig.structured_input_signature
    specs = dict(kwargs) if kwargs else {f"input_{i}": s for i, s in enumerate(args)}
    names = sorted(specs)
    if input_shapes is not None and len(input_shapes) != len(names):
        raise ConversionError(f"{len(input_shapes)} input shape(s) given but the SavedModel takes {len(names)}: {names}.")
    shapes, signature = [], []
    for i, name in enumerate(names):
        spec = specs[name]
        declared = tuple(spec.shape.as_list())
        shape = merge_shape(declared, input_shapes[i] if input_shapes else None, f"the SavedModel's input {name!r}")
        shapes.append((shape[0] or 1,) + tuple(shape[1:]))
        signature.append(tf.TensorSpec((None,) + tuple(shape[1:]), spec.dtype, name=name))
    dtypes = [np.dtype(s.dtype.as_numpy_dtype) for s in signature]

    def call(*xs):
        out = sig(**dict(zip(names, xs))) if kwargs else sig(*xs)
        return out

    out_keys = sorted(sig.structured_outputs) if isinstance(sig.structured_outputs, dict) else None

    def run(xs):
        out = call(*[tf.constant(x) for x in xs])
        return [np.asarray(o) for o in tf.nest.flatten(out)]  # dict outputs: sorted by key, as in the ONNX graph

    try:
        fn = tf.function(call, input_signature=signature)
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=signature, opset=opset)
    except Exception as exc:
        raise ConversionError(f"tf2onnx cannot convert the SavedModel {path.name!r}: {_first_line(exc)}") from exc
    if out_keys and len(out_keys) == len(proto.graph.output):
        _rename_outputs(proto, out_keys)
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    return Converted(proto, run, shapes, dtypes, "TensorFlow", f"TensorFlow SavedModel {path.name}", "NHWC", None,
                     versions("tensorflow", "tf2onnx"))


def _rename_outputs(proto, names) -> None:
    current = [o.name for o in proto.graph.output]
    renames = {c: n for c, n in zip(current, names) if c != n}
    if not renames:
        return
    taken = {o for node in proto.graph.node for o in node.output} | {i.name for i in proto.graph.input}
    if any(n in taken and n not in renames for n in renames.values()):
        return  # a clash with an inner name: keep tf2onnx's names
    for node in proto.graph.node:
        node.output[:] = [renames.get(o, o) for o in node.output]
        node.input[:] = [renames.get(i, i) for i in node.input]
    for o in proto.graph.output:
        o.name = renames.get(o.name, o.name)


# ---------------------------------------------------------------------------------------------------
# the child process


def main(argv=None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m converters.keras_convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("source")
    parser.add_argument("output", nargs="?")
    parser.add_argument("--input-shape")
    parser.add_argument("--preprocess")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--no-check", action="store_true")
    parser.add_argument("--allow-lambda", action="store_true")
    parser.add_argument("--report")
    args = parser.parse_args(argv)

    from onnxsal import errors

    from .convert import convert, summary

    def report(data) -> None:
        if args.report:
            Path(args.report).write_text(json.dumps(data))

    try:
        proto = convert(args.source, args.output, input_shape=args.input_shape, preprocess=args.preprocess,
                        opset=args.opset, check=not args.no_check, allow_lambda=args.allow_lambda, isolate=False)
    except errors.OnnxsalError as exc:
        report({"ok": False, "error": type(exc).__name__, "message": str(exc)})
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report({"ok": True})
    print(summary(proto, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
