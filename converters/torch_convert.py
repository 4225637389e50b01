"""PyTorch -> ONNX for converters.convert: nn.Modules, TorchScript archives and torch.export .pt2 files.

Pickled files (torch.save of a state_dict or a whole module) are never loaded: converters.convert
refuses them from their zip listing before this module is imported. TorchScript archives are read
by torch.jit.load (TorchScript's own loader, which builds TorchScript types and tensors only), and
.pt2 archives are checked entry by entry first and loaded without their pickled sample inputs, so
no Python pickle from the file is ever run. torch is imported inside the functions.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from onnxsal.errors import ConversionError

from ._common import Converted, _first_line, merge_shape, versions

TORCHVISION_SKIP = ("detection", "video", "optical_flow", "quantization")  # not the plain ImageNet preset


def _torch():
    try:
        import torch
    except ImportError:
        raise ConversionError("converting a PyTorch model needs torch: pip install 'onnxsal[torch]'.") from None
    return torch


def _flatten(out) -> list:
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flatten(o)]
    return [out]


def torchvision_preset(qualified: str) -> str | None:
    """'imagenet' for torchvision's classification/segmentation models (they expect ImageNet normalisation)."""
    q = qualified.removeprefix("__torch__.")
    if q.startswith("torchvision.models.") and not any(f".{s}." in q + "." for s in TORCHVISION_SKIP):
        return "imagenet"
    return None


def convert_module(module, input_shapes, *, opset: int, source: str, dtypes=None, dynamic_batch: bool = True,
                   preprocess: str | None = None) -> Converted:
    """Export a module (nn.Module or TorchScript) with export_torch; its forward takes one tensor per shape."""
    torch = _torch()
    from . import torch_export

    if not input_shapes:
        raise ConversionError(f"converting {source} needs the input shape (input_shape= or --input-shape), "
                              "such as 1,3,224,224: the module does not record it.")
    dtypes = [np.dtype(d) for d in (dtypes or [np.float32] * len(input_shapes))]
    gen = torch.Generator().manual_seed(0)
    example = tuple(
        torch.randn(s, generator=gen, dtype=getattr(torch, d.name)) if d.kind == "f"
        else torch.randint(0, 10, s, generator=gen, dtype=getattr(torch, d.name))
        for s, d in zip(input_shapes, dtypes)
    )

    def run(xs):
        was = module.training
        module.eval()
        try:
            with torch.no_grad():
                out = module(*[torch.from_numpy(np.ascontiguousarray(x)) for x in xs])
        finally:
            module.train(was)
        return [t.detach().cpu().numpy() for t in _flatten(out)]

    try:
        n_out = len(run([t.numpy() for t in example]))
    except Exception as exc:
        raise ConversionError(f"{source} fails on an input of shape {[tuple(s) for s in input_shapes]}: {_first_line(exc)}") from exc
    in_names = ["input"] if len(example) == 1 else [f"input_{i}" for i in range(len(example))]
    out_names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    try:
        proto = torch_export.export_torch(module, example, opset=opset, input_names=in_names, output_names=out_names,
                                          dynamic_batch=dynamic_batch)
    except Exception as exc:
        root = exc
        while root.__cause__ is not None:  # torch.onnx wraps the exporter's own error in a generic one
            root = root.__cause__
        raise ConversionError(f"torch.onnx cannot export {source}: {_first_line(root)}") from exc
    return Converted(proto, run, [tuple(s) for s in input_shapes], dtypes, "PyTorch", source, "NCHW", preprocess,
                     versions("torch"), dynamic_batch)


def from_module(module, input_shapes, *, opset: int) -> Converted:
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise ConversionError(f"expected a torch.nn.Module, not {type(module).__name__}.")
    cls = type(module)
    qualified = getattr(getattr(module, "_c", None), "qualified_name", None) or f"{cls.__module__}.{cls.__qualname__}"
    name = getattr(module, "original_name", None) or cls.__name__
    return convert_module(module, input_shapes, opset=opset, source=f"PyTorch nn.Module {name}",
                          preprocess=torchvision_preset(qualified))


def from_torchscript(path: Path, input_shapes, *, opset: int) -> Converted:
    torch = _torch()
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ConversionError(f"{path.name!r} is not a loadable TorchScript archive: {_first_line(exc)}") from exc
    qualified = getattr(getattr(module, "_c", None), "qualified_name", "")
    return convert_module(module, input_shapes, opset=opset, source=f"PyTorch TorchScript {path.name}",
                          preprocess=torchvision_preset(qualified))


# ---------------------------------------------------------------------------------------------------
# torch.export .pt2 archives

_PT2_FIXED = {"archive_format", "archive_version", "byteorder", "version", ".data/version", ".data/serialization_id"}


def check_pt2_listing(path: Path) -> None:
    """Refuse a .pt2 archive holding anything that loading it would unpickle or execute.

    Allowed: the exported programs (JSON), raw tensor weights and constants with their JSON
    configs, extra text files, and sample inputs (which are not read: they are pickles).
    Refused: pickled weights or constants, legacy .pt payloads, custom/opaque objects, and
    compiled code (AOTInductor, ExecuTorch, MTIA).
    """
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        prefix = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else ""
        rel = [n[len(prefix):] if n.startswith(prefix) else n for n in names]
        for n in rel:
            if n in _PT2_FIXED or n.endswith("/") or n.startswith(".data/") or n.startswith("extra/"):
                continue
            if n.startswith("models/") and n.endswith(".json"):
                continue
            if n.startswith("data/sample_inputs/"):
                continue
            if n.startswith("data/weights/") and (n.endswith("_weights_config.json") or n.rsplit("/", 1)[1].startswith("weight_")):
                continue
            if n.startswith("data/constants/") and (n.endswith("_constants_config.json") or n.rsplit("/", 1)[1].startswith("tensor_")):
                continue
            raise ConversionError(
                f"{path.name!r} holds {n!r}, which loading would unpickle or run (pickled payloads, custom objects or "
                "compiled code are not loaded); re-save the program with torch.export.save from plain tensors."
            )
        for n, r in zip(names, rel):
            if r.endswith(("_weights_config.json", "_constants_config.json")):
                try:
                    config = json.loads(zf.read(n)).get("config", {})
                except (ValueError, AttributeError) as exc:
                    raise ConversionError(f"{path.name!r} has an unreadable {r!r}.") from exc
                for key, meta in config.items():
                    if not isinstance(meta, dict) or meta.get("use_pickle", True) or not isinstance(meta.get("path_name"), str):
                        raise ConversionError(
                            f"{path.name!r} stores {key!r} as a pickle, which onnxsal never loads; re-save the program "
                            "with torch.export.save from plain tensors."
                        )


def load_pt2(path: Path):
    """torch.export.load without running any pickle: the listing is checked and sample inputs are left out."""
    torch = _torch()
    from torch.export.pt2_archive._package import PT2ArchiveReader, PT2ArchiveWriter

    check_pt2_listing(path)
    buf = io.BytesIO()
    try:
        with PT2ArchiveReader(str(path)) as reader, PT2ArchiveWriter(buf) as writer:
            for name in reader.get_file_names():
                if name.startswith(".data/"):
                    continue  # the writer adds its own
                data = b"" if name.startswith("data/sample_inputs/") else reader.read_bytes(name)
                writer.write_bytes(name, data)
        buf.seek(0)
        return torch.export.load(buf)
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"{path.name!r} is not a loadable torch.export program: {_first_line(exc)}") from exc


def _program_module(gm):
    """An nn.Module around an ExportedProgram's module, whose own train()/eval() raise: modes are fixed in it."""
    torch = _torch()

    class ExportedProgramModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.program = gm

        def train(self, mode: bool = True):
            self.training = mode  # not passed on: the program was exported in one mode for good
            return self

        def forward(self, *inputs):
            # forward itself, not __call__: the input-constraint pre-hook of an unlifted program cannot be traced
            return self.program.forward(*inputs)

    return ExportedProgramModule()


def from_pt2(path: Path, input_shapes, *, opset: int) -> Converted:
    ep = load_pt2(path)
    user = list(ep.graph_signature.user_inputs)
    nodes = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    declared, hints, dtypes = [], [], []
    for name in user:
        val = nodes[name].meta.get("val") if name in nodes else None
        if val is None or not hasattr(val, "shape"):
            raise ConversionError(f"{path.name!r} takes a non-tensor input {name!r}; only tensor inputs can be converted.")
        dims, hint = [], []
        for d in val.shape:
            if isinstance(d, int):
                dims.append(d)
                hint.append(d)
            else:
                dims.append(None)
                node = getattr(d, "node", None)
                h = getattr(node, "hint", None)
                hint.append(int(h) if h is not None else None)
        declared.append(tuple(dims))
        hints.append(hint)
        dtypes.append(np.dtype(str(val.dtype).removeprefix("torch.")))
    if input_shapes is not None and len(input_shapes) != len(declared):
        raise ConversionError(f"{len(input_shapes)} input shape(s) given but {path.name!r} takes {len(declared)} input(s).")
    dynamic = bool(declared) and all(len(d) and d[0] is None for d in declared)
    shapes = []
    for i, d in enumerate(declared):
        given = input_shapes[i] if input_shapes else None
        if given is None and None not in hints[i]:
            given = tuple(hints[i])  # the sizes the program was exported with
        shape = merge_shape(d, given, f"the program's input {user[i]!r}")
        shapes.append((1 if shape[0] is None else shape[0],) + tuple(shape[1:]))
    if not dynamic:
        for s, d in zip(shapes, declared):
            if s[0] != d[0]:
                raise ConversionError(f"{path.name!r} was exported for batch size {d[0]}; export with a torch.export.Dim "
                                      "on axis 0 for a free batch.")
    module = _program_module(ep.module())
    return convert_module(module, shapes, opset=opset, source=f"PyTorch torch.export {path.name}", dtypes=dtypes,
                          dynamic_batch=dynamic)
