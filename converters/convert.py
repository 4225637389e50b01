"""One front door from framework models to ONNX files onnxsal can explain without further flags.

    >>> from converters import convert
    >>> convert("model.keras", "model.onnx")                           # Keras .keras / .h5
    >>> convert("saved_model_dir", "model.onnx")                       # TensorFlow SavedModel
    >>> convert("model_scripted.pt", "model.onnx", input_shape="1,3,224,224")   # TorchScript
    >>> convert("program.pt2", "model.onnx")                           # torch.export
    >>> convert(torch_module, "model.onnx", input_shape=(1, 3, 224, 224))

What the source is comes from its content (zip listing, HDF5 signature, saved_model.pb), not its
name. Pickled PyTorch files (torch.save of a state_dict or a module) are refused without being
unpickled. Every conversion is checked: the framework model and the ONNX model run on the same
seeded input and must agree to ~1e-4 of the output's scale, else ConversionError and nothing is
written. The result carries metadata_props (onnxsal.layout, .input_size, .preprocess, .source,
.converted_by, .self_check) so that `onnxsal explain` needs no flags.
"""

from __future__ import annotations

import importlib.util as importlib_util
import json
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import onnx

from onnxsal.errors import ConversionError, OnnxsalError

from ._common import PRESETS, RTOL, finish, metadata, parse_input_shape

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar"}
TF_KINDS = {"keras", "h5", "savedmodel"}
TORCH_KINDS = {"torchscript", "pt2"}
FRAMEWORK_MODULES = r"(torch|converters\.(torch|keras)_export|keras|tensorflow|tf2onnx|tf_keras|onnxscript|google\.protobuf)(\.|$)"

_EXPORT_INSTEAD = (
    "save the model as TorchScript (torch.jit.script or torch.jit.trace, then torch.jit.save), as a torch.export "
    "program (torch.export.export, then torch.export.save to a .pt2 file), or as ONNX directly (torch.onnx.export "
    "or converters.export_torch)"
)


def pickled_message(name: str) -> str:
    return (f"{name!r} is a pickled PyTorch file (torch.save of a state_dict or a module), which onnxsal never "
            f"unpickles because loading it can run arbitrary code; {_EXPORT_INSTEAD}.")


def detect(path) -> str:
    """What a source file or folder is: 'keras', 'h5', 'savedmodel', 'torchscript' or 'pt2'.

    Reads only the zip listing or the first bytes; refuses pickles, ONNX files and anything else
    with a ConversionError that says what to do.
    """
    path = Path(path)
    name = path.name or str(path)
    if not path.exists():
        raise ConversionError(f"{str(path)!r} does not exist.")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        if (path / "saved_model.pbtxt").is_file():
            raise ConversionError(f"the SavedModel {name!r} is saved as text (saved_model.pbtxt); re-save it in binary form.")
        raise ConversionError(f"{str(path)!r} is a folder but not a TensorFlow SavedModel (it has no saved_model.pb).")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise ConversionError(f"{str(path)!r} cannot be read: {exc.strerror or exc}.") from None
    if head.startswith(HDF5_SIGNATURE):
        return "h5"
    if zipfile.is_zipfile(path):
        return _detect_zip(path)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise ConversionError(pickled_message(name))
    if path.suffix.lower() == ".onnx":
        raise ConversionError(f"{name!r} is already an ONNX model; use it directly (onnxsal inspect, onnxsal explain).")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ConversionError(pickled_message(name))
    raise ConversionError(
        f"{name!r} is not a model file onnxsal can convert: expected a Keras .keras or .h5 file, a TensorFlow SavedModel "
        "folder, a TorchScript archive or a torch.export .pt2 file."
    )


def _detect_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ConversionError(f"{path.name!r} is a damaged zip archive: {exc}.") from None
    top = set(names)
    if {"config.json", "metadata.json"} <= top or "model.weights.h5" in top and "config.json" in top:
        return "keras"
    rest = {n.split("/", 1)[1] for n in names if "/" in n}  # torch archives keep everything under one folder
    if "archive_format" in rest or any(r.startswith("models/") and r.endswith(".json") for r in rest):
        return "pt2"
    if "constants.pkl" in rest or any(r.startswith("code/") for r in rest):
        return "torchscript"
    if "data.pkl" in rest:
        raise ConversionError(pickled_message(path.name))
    raise ConversionError(
        f"{path.name!r} is a zip archive but neither a Keras .keras file nor a PyTorch TorchScript or .pt2 archive."
    )


def _is_torch_module(obj) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _is_keras_model(obj) -> bool:
    return any(c.__module__.startswith(("keras", "tf_keras", "tensorflow")) and c.__name__ in ("Model", "Sequential",
               "Functional") for c in type(obj).__mro__)


def _isolate_default() -> bool:
    """TensorFlow goes to a child process when torch is loaded here and TensorFlow is not (they can crash together)."""
    return "torch" in sys.modules and "tensorflow" not in sys.modules


def convert(
    source,
    output_path=None,
    *,
    input_shape=None,
    preprocess: str | None = None,
    opset: int = 17,
    check: bool = True,
    allow_lambda: bool = False,
    isolate: bool | None = None,
    rtol: float = RTOL,
) -> onnx.ModelProto:
    """Convert a Keras/TensorFlow/PyTorch model to ONNX, check it, stamp its metadata and write it atomically.

    `source`: a path (.keras, .h5, SavedModel folder, TorchScript archive, .pt2) or a model object
    (torch.nn.Module, Keras model). `input_shape` ("1,3,224,224", a tuple, or one per input) fills
    the axes the source leaves free (a TorchScript archive or an nn.Module records none); the batch
    axis stays free. `preprocess` names the input preset ("imagenet", "keras", "caffe", "unit",
    "raw"; inferred for keras.applications and torchvision models when not given). With `check`
    (the default) the ONNX model must reproduce the framework's outputs on a seeded sample to
    `rtol` of their scale, else ConversionError and nothing is written. `isolate` runs a
    Keras/TensorFlow conversion in a child process (default: when torch is already imported).
    `output_path=None` writes nothing. Returns the ONNX model.
    """
    if not 7 <= int(opset) <= 26:
        raise ConversionError(f"opset must be between 7 and 26 (what onnxruntime runs), not {opset}.")
    if preprocess is not None and preprocess not in PRESETS:
        raise ConversionError(f"unknown preprocessing {preprocess!r}; choose one of {', '.join(PRESETS)}.")
    shapes = parse_input_shape(input_shape)
    with warnings.catch_warnings():  # the frameworks' deprecation notes are not the user's business here
        warnings.filterwarnings("ignore", module=FRAMEWORK_MODULES)
        return _convert(source, output_path, shapes, preprocess=preprocess, opset=opset, check=check,
                        allow_lambda=allow_lambda, isolate=isolate, rtol=rtol)


def _convert(source, output_path, shapes, *, preprocess, opset, check, allow_lambda, isolate, rtol) -> onnx.ModelProto:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        kind = detect(path)
        if kind in TF_KINDS and (_isolate_default() if isolate is None else isolate):
            return _convert_in_child(path, output_path, input_shape=shapes, preprocess=preprocess, opset=opset,
                                     check=check, allow_lambda=allow_lambda)
        conv = _from_file(path, kind, shapes, opset=opset, allow_lambda=allow_lambda)
    elif _is_torch_module(source):
        from . import torch_convert

        conv = torch_convert.from_module(source, shapes, opset=opset)
    elif _is_keras_model(source):
        from . import keras_convert

        name = getattr(source, "name", None) or type(source).__name__
        conv = keras_convert.from_keras_model(source, shapes, opset=opset, source=f"Keras model {name}")
    else:
        raise ConversionError(f"cannot convert a {type(source).__name__}: expected a model file or folder, a "
                              "torch.nn.Module or a Keras model.")
    proto, _ = finish(conv, check=check, preprocess=preprocess, rtol=rtol)
    if output_path is not None:
        from onnxsal.io_utils import save_model_atomic

        try:
            save_model_atomic(proto, output_path)
        except ValueError as exc:  # protobuf's 2 GiB limit
            raise ConversionError(f"the converted model cannot be written as one file: {exc}") from exc
        except OSError as exc:
            raise ConversionError(f"cannot write {str(output_path)!r}: {exc.strerror or exc}.") from exc
    return proto


def _from_file(path: Path, kind: str, shapes, *, opset: int, allow_lambda: bool):
    if kind in ("keras", "h5"):
        from . import keras_convert

        return keras_convert.from_keras_file(path, shapes, opset=opset, allow_lambda=allow_lambda)
    if kind == "savedmodel":
        from . import keras_convert

        return keras_convert.from_saved_model(path, shapes, opset=opset)
    from . import torch_convert

    if kind == "torchscript":
        return torch_convert.from_torchscript(path, shapes, opset=opset)
    return torch_convert.from_pt2(path, shapes, opset=opset)


def _shape_arg(shapes) -> str | None:
    return None if shapes is None else ";".join(",".join(map(str, s)) for s in shapes)


def _convert_in_child(path: Path, output_path, *, input_shape, preprocess, opset, check, allow_lambda) -> onnx.ModelProto:
    """Run keras_convert in a fresh interpreter (no torch there), then read back what it wrote."""
    if importlib_util.find_spec("tensorflow") is None or importlib_util.find_spec("tf2onnx") is None:
        raise ConversionError(
            "converting a Keras or TensorFlow model needs tensorflow and tf2onnx: pip install 'onnxsal[tensorflow]'."
        )
    with tempfile.TemporaryDirectory(prefix="onnxsal-convert-") as tmp:
        out = Path(output_path) if output_path is not None else Path(tmp) / "model.onnx"
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "converters.keras_convert", str(path), str(out), "--opset", str(opset),
               "--report", str(report)]
        if input_shape is not None:
            cmd += ["--input-shape", _shape_arg(input_shape)]
        if preprocess is not None:
            cmd += ["--preprocess", preprocess]
        if not check:
            cmd.append("--no-check")
        if allow_lambda:
            cmd.append("--allow-lambda")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
        root = str(Path(__file__).resolve().parents[1])  # so that `converters` imports from a source checkout too
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        data = json.loads(report.read_text()) if report.is_file() else None
        if data is None or (proc.returncode != 0 and data.get("ok")):
            tail = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
            raise ConversionError(f"the TensorFlow conversion process failed (exit code {proc.returncode})"
                                  + (f": {tail[-1].strip()}" if tail else "."))
        if not data.get("ok"):
            from onnxsal import errors

            cls = getattr(errors, data.get("error", ""), None)
            cls = cls if isinstance(cls, type) and issubclass(cls, OnnxsalError) else ConversionError
            raise cls(data.get("message", "the conversion failed."))
        return onnx.load(str(out))


def summary(proto: onnx.ModelProto, output_path=None) -> str:
    """One line: what was converted, input and output shapes, and the self-check's largest difference."""
    meta = metadata(proto)

    def shape(vi):
        dims = vi.type.tensor_type.shape.dim
        return "[" + ",".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims) + "]"

    inits = {t.name for t in proto.graph.initializer}
    ins = ", ".join(f"{i.name} {shape(i)}" for i in proto.graph.input if i.name not in inits)
    outs = ", ".join(f"{o.name} {shape(o)}" for o in proto.graph.output)
    extra = [meta[k] for k in ("onnxsal.layout",) if k in meta]
    if "onnxsal.preprocess" in meta:
        extra.append(f"preprocess {meta['onnxsal.preprocess']}")
    check = meta.get("onnxsal.self_check", "skipped")
    try:
        c = json.loads(check)
        check = f"self-check max |diff| {c['max_abs_diff']:.2g} (output scale {c['scale']:.3g}, batch {c['batch']})"
    except (ValueError, TypeError, KeyError):
        check = "self-check skipped"
    where = f" -> {output_path}" if output_path is not None else ""
    return (f"converted {meta.get('onnxsal.source', 'model')}{where}: input {ins}"
            + (f" ({', '.join(extra)})" if extra else "") + f"; output {outs}; {check}")
