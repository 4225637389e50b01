"""PyTorch -> ONNX for onnxsal: one call over both of torch's exporters, returning a ModelProto
that stock onnxruntime loads.

    >>> from converters.torch_export import export_torch
    >>> proto = export_torch(model, torch.randn(1, 3, 224, 224), "model.onnx")
    >>> onnxsal.Explainer(proto).attribute(images)

torch is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx

MAX_IR_VERSION = 10  # what the returned proto declares at most (onnxruntime 1.31 refuses IR 14)
MAX_OPSET = 26  # the newest default-domain opset onnxruntime 1.31 runs
DYNAMO_MIN_OPSET = 18  # the dynamo exporter has no implementations below this


def export_torch(
    module,
    example_input,
    path: str | Path | None = None,
    *,
    dynamo: bool = False,
    opset: int = 17,
    input_names: Sequence[str] = ("input",),
    output_names: Sequence[str] = ("output",),
    dynamic_batch: bool = True,
) -> onnx.ModelProto:
    """Export `module` to ONNX and return the model as one self-contained `onnx.ModelProto`.

    `example_input` is a tensor or a tuple of tensors (one per forward argument). The module is
    exported in eval mode (its mode is restored afterwards). `dynamo=False` uses the TorchScript
    exporter, `dynamo=True` the torch.export-based one; the latter has no implementations below
    opset 18, so a lower `opset` is raised to 18 there. With `dynamic_batch` the first axis of
    every input and output is symbolic ("batch"). When `path` is given the model is also written
    there (the dynamo exporter may keep the weights beside it in `<path>.data`); the returned proto
    always holds its weights in memory. Its IR version is at most 10 and its default opset at
    most 26, so onnxruntime 1.31 loads it.
    """
    import torch

    args = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise TypeError("example_input must be a tensor or a tuple of tensors, one per forward argument.")
    input_names, output_names = list(input_names), list(output_names)
    if len(input_names) != len(args):
        raise ValueError(f"{len(args)} example input(s) but {len(input_names)} input name(s): {input_names}.")
    if not 7 <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be between 7 and {MAX_OPSET} (what onnxruntime runs), not {opset}.")

    was_training = module.training
    module.eval()
    try:
        with tempfile.TemporaryDirectory(prefix="onnxsal-export-") as tmp:
            target = Path(path) if path is not None else Path(tmp) / "model.onnx"
            target.parent.mkdir(parents=True, exist_ok=True)
            if dynamo:
                _export_dynamo(module, args, target, max(opset, DYNAMO_MIN_OPSET), input_names, output_names, dynamic_batch)
            else:
                _export_torchscript(module, args, target, opset, input_names, output_names, dynamic_batch)
            if path is not None:
                _fit_header(target)
            proto = onnx.load(str(target))  # reads any external data from the same folder
    finally:
        module.train(was_training)
    return _fit_for_onnxruntime(proto)


def _export_torchscript(module, args, target: Path, opset, input_names, output_names, dynamic_batch) -> None:
    import torch

    axes = {name: {0: "batch"} for name in input_names + output_names} if dynamic_batch else None
    torch.onnx.export(
        module, args, str(target), dynamo=False, opset_version=opset, input_names=input_names,
        output_names=output_names, dynamic_axes=axes, do_constant_folding=True,
    )


def _export_dynamo(module, args, target: Path, opset, input_names, output_names, dynamic_batch) -> None:
    import torch

    shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        shapes = tuple({0: batch} for _ in args)
    torch.onnx.export(
        module, args, str(target), dynamo=True, opset_version=opset, input_names=input_names,
        output_names=output_names, dynamic_shapes=shapes, external_data=True, verbose=False,
    )


def _fit_header(target: Path) -> None:
    """Lower the IR version of the file on disk too, without touching its external data."""
    header = onnx.load(str(target), load_external_data=False)
    if header.ir_version > MAX_IR_VERSION:
        header.ir_version = MAX_IR_VERSION
        target.write_bytes(header.SerializeToString())


def _fit_for_onnxruntime(proto: onnx.ModelProto) -> onnx.ModelProto:
    if proto.ir_version > MAX_IR_VERSION:
        proto.ir_version = MAX_IR_VERSION
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version > MAX_OPSET:
            raise ValueError(f"the exporter wrote opset {imp.version}; onnxruntime runs opsets up to {MAX_OPSET}.")
    return proto
