"""PyTorch builders: models with random weights, exported as a user would, with torch.autograd references.

Every builder returns an `Artifact`. Weights are seeded, so a rebuild makes the same file. Nothing
downloads: timm models are made with pretrained=False, torchvision ones with weights=None,
transformers ones from configs.
"""

from __future__ import annotations

import copy
import random
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from .artifact import CACHE, Artifact

OPSET = 17
BATCH = 2
TARGET = 1


def _seed(seed: int = 0) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _export(model: nn.Module, args: tuple, input_names, output_names, dynamic_axes, opset: int | None = None) -> onnx.ModelProto:
    """torch.onnx.export with the legacy (TorchScript) exporter, as most published files were made."""
    opset = opset or OPSET
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(model, args, str(path), input_names=list(input_names), output_names=list(output_names),
                          dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False, do_constant_folding=True)
        return onnx.load(str(path))


def _first_tensor(out):
    """The logits of whatever a model returns (a tensor, a tuple, a dict or a ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return next(iter(out.values()))
    return out[0]


class _Logits(nn.Module):
    """Wraps a model so that it returns one tensor (the first of its outputs)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return _first_tensor(self.inner(x))


def _image_case(name: str, model: nn.Module, size: int, dynamic_hw: bool = False, cache: Path = CACHE) -> Artifact:
    """Export an image model taking [N, 3, size, size] and record d logits[:, TARGET] / d input."""
    model = _Logits(model).eval()
    x = torch.randn(BATCH, 3, size, size)
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    with torch.no_grad():
        out = model(x)
    out_axes = {0: "batch"} if out.dim() == 2 or not dynamic_hw else {0: "batch", 2: "oh", 3: "ow"}
    proto = _export(model, (x,), ["input"], ["logits"], {"input": axes, "logits": out_axes})
    reference, reference32 = _reference(model, [x], 0)
    return Artifact.save(name, proto, {"input": x.numpy()}, reference, None, TARGET, "input", cache,
                         reference32=reference32)


def _reference(model: nn.Module, inputs: list[torch.Tensor], explained: int, call=None) -> tuple[np.ndarray, np.ndarray]:
    """d sum(output[:, TARGET]) / d inputs[explained] by torch.autograd: (float64, float32).

    Float64 is the truth a float32 file is measured against (the float32 gradient is itself off by
    more than 1e-4 on deep nets: Inception-v4 2.8e-4, BiT 2e-2); float32 is what the framework
    gets in the file's own precision, where near-ties in max pooling and kinks may break the
    other way than in float64. The check accepts agreement with either."""
    model.eval()
    call = call or (lambda m, *xs: m(*xs))
    if _HALF["on"]:
        _HALF["grad"] = _half_gradient(model, inputs, explained, call)
    grad32 = _gradient(model, [t.detach().clone() for t in inputs], explained, call)
    try:
        grad64 = _gradient(copy.deepcopy(model).double().eval(), [t.detach().double().clone() for t in inputs],
                           explained, call)
    except RuntimeError:  # an op without a float64 kernel
        grad64 = grad32
    return grad64, grad32


def _gradient(model: nn.Module, xs: list[torch.Tensor], explained: int, call) -> np.ndarray:
    xs[explained].requires_grad_(True)
    call(model, *xs)[:, TARGET].sum().backward()
    return xs[explained].grad.float().numpy()


_HALF = {"on": False, "grad": None}  # set by `_torch_half_error`: also take torch's own float16 gradient


def _half_gradient(model: nn.Module, inputs: list[torch.Tensor], explained: int, call) -> np.ndarray:
    """torch.autograd's gradient of the model cast to float16: what the framework itself gets in fp16."""
    m16 = copy.deepcopy(model).half().eval()
    xs = [t.detach().half().clone() if t.is_floating_point() else t for t in inputs]
    xs[explained].requires_grad_(True)
    call(m16, *xs)[:, TARGET].float().sum().backward()
    return xs[explained].grad.float().numpy()


def timm_model(name: str, arch: str, size: int, kwargs: dict, cache: Path = CACHE) -> Artifact:
    import timm

    _seed()
    model = _no_zero_weights(timm.create_model(arch, pretrained=False, **kwargs))
    return _image_case(name, model, size, cache=cache)


def _no_zero_weights(model: nn.Module) -> nn.Module:
    """Give weights that are initialised to zero (timm zero-inits some heads, e.g. MLP-Mixer's and
    ResMLP's) small random values: with them the gradient is zero everywhere and checks nothing."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() >= 2 and not p.any():
                p.normal_(0.0, 0.02)
    return model


def torchvision_model(name: str, arch: str, size: int, kwargs: dict, cache: Path = CACHE) -> Artifact:
    import torchvision

    _seed()
    model = torchvision.models.get_model(arch, weights=None, **kwargs)
    return _image_case(name, model, size, cache=cache)


def segmentation_model(name: str, arch: str, size: int, cache: Path = CACHE) -> Artifact:
    """A segmentation net: output [N, classes, H, W]; the target is one class map (summed over pixels)."""
    import torchvision

    _seed()
    model = torchvision.models.get_model(arch, weights=None, weights_backbone=None, aux_loss=False)
    return _image_case(name, model, size, cache=cache)


class _Recurrent(nn.Module):
    """An LSTM/GRU over [N, T, F] with explicit initial states [layers * dirs, N, H], then a linear head."""

    def __init__(self, cell: str, layers: int, bidirectional: bool = False, features: int = 8, hidden: int = 16):
        super().__init__()
        self.cell = cell
        self.rnn = getattr(nn, cell)(features, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), 5)

    def forward(self, x, *states):
        state = states if self.cell == "LSTM" else states[0]
        y, _ = self.rnn(x, state)
        return self.head(y[:, -1])


def recurrent_model(name: str, cell: str, layers: int, bidirectional: bool = False, cache: Path = CACHE) -> Artifact:
    """Recurrent model with state inputs whose batch axis is 1 (as VAD and OCR models ship)."""
    _seed()
    model = _Recurrent(cell, layers, bidirectional).eval()
    dirs = 2 if bidirectional else 1
    x = torch.randn(BATCH, 6, 8)
    states = [torch.randn(layers * dirs, BATCH, 16) * 0.5 for _ in range(2 if cell == "LSTM" else 1)]
    names = ["x"] + (["h0", "c0"] if cell == "LSTM" else ["h0"])
    axes = {"x": {0: "batch"}, "logits": {0: "batch"}, **{n: {1: "batch"} for n in names[1:]}}
    proto = _export(model, (x, *states), names, ["logits"], axes)
    reference, reference32 = _reference(model, [x, *states], 0)
    feeds = {n: t.numpy() for n, t in zip(names, [x, *states])}
    return Artifact.save(name, proto, feeds, reference, "x", TARGET, "x", cache, reference32=reference32)


class _YoloNeck(nn.Module):
    """A tiny backbone with three strides and an FPN neck that upsamples to the skip's (dynamic) size."""

    def __init__(self, classes: int = 6):
        super().__init__()

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU())

        self.c1, self.c2, self.c3 = block(3, 8, 2), block(8, 16, 2), block(16, 32, 2)
        self.lat3, self.lat2 = nn.Conv2d(32, 16, 1), block(32, 16, 1)
        self.pool = nn.MaxPool2d(5, 1, 2)  # SPPF-style overlapping max pooling
        self.head = nn.Conv2d(16 + 8, classes + 4, 1)

    def forward(self, x):
        f1 = self.c1(x)
        f2 = self.c2(f1)
        f3 = self.pool(self.c3(f2))
        up3 = nn.functional.interpolate(self.lat3(f3), size=f2.shape[-2:], mode="nearest")
        p2 = self.lat2(torch.cat([up3, f2], 1))
        up2 = nn.functional.interpolate(p2, scale_factor=2.0, mode="nearest")
        return self.head(torch.cat([up2, f1], 1))


def yolo_neck(name: str, cache: Path = CACHE) -> Artifact:
    _seed()
    return _image_case(name, _YoloNeck(), 64, dynamic_hw=True, cache=cache)


# ---------------------------------------------------------------- transformers


def _hf_text(name: str, model: nn.Module, vocab: int, seq: int = 7) -> Artifact:
    """A token model explained from its word-embedding output: the Gather that reads `input_ids`.

    The reference is autograd with respect to inputs_embeds (the same tensor)."""
    model.eval()
    ids = torch.randint(1, vocab, (BATCH, seq))

    class Ids(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids):
            return self.inner(input_ids=input_ids).logits

    proto = _export(Ids(model).eval(), (ids,), ["input_ids"], ["logits"],
                    {"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}})
    model.eval()  # the exporter restores the mode it found; dropout must stay off for the reference
    wrt = _embedding_output(proto, "input_ids")
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
    reference, reference32 = _reference(model, [embeds], 0, call=lambda m, e: m(inputs_embeds=e).logits)
    return Artifact.save(name, proto, {"input_ids": ids.numpy()}, reference, wrt, TARGET, wrt, reference32=reference32)


def _embedding_output(proto: onnx.ModelProto, ids: str) -> str:
    """The output of the Gather that looks the graph input `ids` up in a [vocab, hidden] table
    (following shape-only ops between them: GPT-2 reshapes its ids first)."""
    tables = {t.name for t in proto.graph.initializer if len(t.dims) == 2}
    carriers = {ids}
    for node in proto.graph.node:  # exporters write nodes in topological order
        if node.op_type in ("Reshape", "Unsqueeze", "Squeeze", "Cast", "Identity", "Flatten") and node.input[0] in carriers:
            carriers.add(node.output[0])
        if node.op_type == "Gather" and node.input[1] in carriers and node.input[0] in tables:
            return node.output[0]
    raise RuntimeError(f"no embedding Gather reads {ids!r}")


def transformers_model(name: str, arch: str) -> Artifact:
    import transformers as tr

    _seed()
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    if arch == "bert":
        cfg = tr.BertConfig(vocab_size=100, max_position_embeddings=32, num_labels=4, **tiny)
        return _hf_text(name, tr.BertForSequenceClassification(cfg), 100)
    if arch == "distilbert":
        cfg = tr.DistilBertConfig(vocab_size=100, max_position_embeddings=32, dim=32, n_layers=2, n_heads=2,
                                  hidden_dim=64, num_labels=4)
        return _hf_text(name, tr.DistilBertForSequenceClassification(cfg), 100)
    if arch == "gpt2":
        cfg = tr.GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=2, num_labels=4,
                            pad_token_id=0)
        return _hf_text(name, tr.GPT2ForSequenceClassification(cfg), 100)
    if arch == "vit":
        cfg = tr.ViTConfig(image_size=32, patch_size=8, num_labels=10, **tiny)
        return _image_case(name, _Pixels(tr.ViTForImageClassification(cfg), "logits"), 32)
    if arch == "clip_vision":
        cfg = tr.CLIPVisionConfig(image_size=32, patch_size=8, projection_dim=16, **tiny)
        return _image_case(name, _Pixels(tr.CLIPVisionModelWithProjection(cfg), "image_embeds"), 32)
    raise ValueError(f"unknown transformers arch {arch!r}")


class _Pixels(nn.Module):
    """A transformers vision model called on pixel_values, returning one named output."""

    def __init__(self, inner: nn.Module, field: str):
        super().__init__()
        self.inner, self.field = inner, field

    def forward(self, x):
        return getattr(self.inner(pixel_values=x), self.field)


# ---------------------------------------------------------------- files made from other files


def derived(name: str, base: str, transform: str, target: int | None = None, build_base=None) -> Artifact:
    """A file made from `base`'s file: converted to an older opset, nodes unsorted, or cast to fp16.

    The reference is the base's (float32) reference gradient for the same feeds. Where
    onnx.version_converter has no downgrade adapter for an op of the file (it has few), the base
    model is exported again by torch at the older opset, with the same seed (so the same weights,
    input and reference), and the artifact says so."""
    if not Artifact.exists(base):
        build_base(base)
    src = Artifact.load(base)
    model = onnx.load(str(src.path))
    feeds = dict(src.feeds)
    made_by = transform
    if transform.startswith("onnx.version_converter"):
        try:
            model = onnx.version_converter.convert_version(model, target)
            onnx.checker.check_model(model)
        except Exception as exc:  # no adapter: export at that opset instead
            made_by = f"torch.onnx opset {target} (version_converter: {str(exc).splitlines()[0][-60:]})"
            model = _reexport(base, target)
    elif transform.startswith("nodes reversed"):
        nodes = list(model.graph.node)[::-1]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    elif "float16" in transform:
        from onnxconverter_common import float16

        model = float16.convert_float_to_float16(model, keep_io_types=False)
        feeds = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in feeds.items()}
        tolerance = _torch_half_error(base, src.reference)
        made_by = f"{transform}; torch's own fp16 gradient is {tolerance:.3g} off the float32 one"
    else:
        raise ValueError(f"unknown transform {transform!r}")
    art = Artifact.save(name, model, feeds, src.reference, src.wrt, src.target, src.explained, CACHE,
                        made_by=made_by, reference32=src.reference32)
    if "float16" in transform:
        art.save_extra(fp16_baseline=tolerance)
    return art


def _torch_half_error(base: str, reference: np.ndarray) -> float:
    """max|g16 - ref| / max|ref| for torch's own float16 gradient of the base model (same seed)."""
    from .cases import BY_NAME

    case = BY_NAME[base]
    with tempfile.TemporaryDirectory() as tmp:
        _HALF.update(on=True, grad=None)
        try:
            globals()[case.builder](base, **case.options, cache=Path(tmp))
        finally:
            _HALF["on"] = False
    return float(np.max(np.abs(_HALF["grad"] - reference)) / np.max(np.abs(reference)))


def _reexport(base: str, opset: int) -> onnx.ModelProto:
    """The base case's model exported at `opset` (same seed, so the same weights and input)."""
    from .cases import BY_NAME

    global OPSET
    case, saved = BY_NAME[base], OPSET
    with tempfile.TemporaryDirectory() as tmp:
        OPSET = opset
        try:
            art = globals()[case.builder](base, **case.options, cache=Path(tmp))
        finally:
            OPSET = saved
        return onnx.load(str(art.path))
