"""Loading ONNX models from strangers: parse only, never execute; external data stays in its folder."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx import external_data_helper

from .errors import ModelLoadError
from .prepare.repair import repair, run_checker

MAX_OPSET = 26  # the newest default-domain opset onnxruntime 1.31 runs
MAX_IR_VERSION = 13  # the newest IR version onnxruntime 1.31 loads (it refuses 14)


def _check_external_data(model: onnx.ModelProto, folder: Path) -> None:
    root = folder.resolve()
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        if not location or os.path.isabs(location) or Path(location).drive:
            raise ModelLoadError(f"tensor {tensor.name!r} keeps its data at {location!r}, outside the model's folder.")
        target = (folder / location).resolve()
        if root not in target.parents:
            raise ModelLoadError(f"tensor {tensor.name!r} keeps its data at {location!r}, outside the model's folder.")
        if not target.is_file():
            raise ModelLoadError(f"tensor {tensor.name!r} keeps its data in {location!r}, which does not exist.")


def _texts(graph: onnx.GraphProto):
    """Every text field of a graph (names, op types, domains), subgraphs included."""
    yield graph.name
    yield graph.doc_string
    for v in list(graph.input) + list(graph.output) + list(graph.value_info):
        yield v.name
        yield from (d.dim_param for d in v.type.tensor_type.shape.dim)
    for t in graph.initializer:
        yield t.name
        for e in t.external_data:
            yield e.key
            yield e.value
    for n in graph.node:
        yield from (n.name, n.op_type, n.domain, n.doc_string, *n.input, *n.output)
        for a in n.attribute:
            yield a.name
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _texts(sub)


def _valid_text(model: onnx.ModelProto) -> bool:
    """Protobuf hands invalid UTF-8 text back as bytes (or raises when it is read): a corrupt file."""
    try:
        top = [model.producer_name, model.producer_version, model.domain, model.doc_string]
        top += [p.key for p in model.metadata_props] + [p.value for p in model.metadata_props]
        top += [o.domain for o in model.opset_import]
        return all(isinstance(t, str) for t in top) and all(isinstance(t, str) for t in _texts(model.graph))
    except UnicodeDecodeError:
        return False


def check_model(model: onnx.ModelProto, source: str = "the model") -> onnx.ModelProto:
    """Validate against what onnxruntime can load, repair what it tolerates (nodes out of order,
    model-local functions, wrong declared shapes: `prepare.repair`), then check with the ONNX
    checker. Returns the repaired copy."""
    if not isinstance(model, onnx.ModelProto) or not model.HasField("graph"):
        raise ModelLoadError(f"{source} is not an ONNX model (it has no graph).")
    if not _valid_text(model):
        raise ModelLoadError(f"{source} holds text that is not valid UTF-8: the file is corrupt.")
    if model.ir_version > MAX_IR_VERSION:
        raise ModelLoadError(
            f"{source} has ONNX IR version {model.ir_version}; onnxruntime loads up to {MAX_IR_VERSION} "
            f"(re-save it with a lower ir_version)."
        )
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version > MAX_OPSET:
            raise ModelLoadError(f"{source} uses opset {imp.version}; onnxruntime runs opsets up to {MAX_OPSET}.")
    try:
        model = repair(model)
    except Exception:  # a file too broken to repair (nested beyond recursion, say): the checker judges it as it is
        pass
    try:
        run_checker(model)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{source} fails the ONNX checker: {first}") from exc
    return model


def external_files(path) -> list[Path]:
    """The files a model file keeps its external data in (resolved; each once)."""
    proto = onnx.load(str(path), load_external_data=False)
    found: dict[Path, None] = {}
    for tensor in external_data_helper._get_all_tensors(proto):
        if external_data_helper.uses_external_data(tensor):
            location = {e.key: e.value for e in tensor.external_data}.get("location", "")
            found[(Path(path).parent / location).resolve()] = None
    return list(found)


def load_model(model) -> onnx.ModelProto:
    """A checked ModelProto from a path, bytes, or a ModelProto."""
    if isinstance(model, onnx.ModelProto):
        return check_model(model)
    if isinstance(model, (bytes, bytearray)):
        try:
            proto = onnx.load_from_string(bytes(model))
        except Exception as exc:
            raise ModelLoadError("the bytes given are not an ONNX model (protobuf parsing failed).") from exc
        return check_model(proto)
    if not isinstance(model, (str, os.PathLike)):
        raise ModelLoadError(f"expected an ONNX model path, bytes or onnx.ModelProto, not {type(model).__name__}.")
    path = Path(model)
    if not path.exists():
        raise ModelLoadError(f"model file {str(path)!r} does not exist.")
    if not path.is_file():
        raise ModelLoadError(f"{str(path)!r} is not a file.")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"{str(path)!r} is not an ONNX model (protobuf parsing failed).") from exc
    if not proto.HasField("graph") or len(proto.graph.node) == 0:
        raise ModelLoadError(f"{str(path)!r} is not an ONNX model (it has no graph).")
    _check_external_data(proto, path.parent)
    try:
        external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:
        raise ModelLoadError(f"the external data of {str(path)!r} cannot be read: {exc}") from exc
    return check_model(proto, repr(str(path)))
