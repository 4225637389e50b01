"""The corpus: one `Case` per model file, named, grouped, and tied to the builder that makes it.

This module imports no framework, so the runner can list, filter and group cases cheaply; the
builders in `torch_build` and `keras_build` import torch or TensorFlow (never both in one process:
TensorFlow imported before torch segfaults).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Case:
    """One model file of the corpus.

    `name` is unique and names the cached file; `family` is the architecture family it stands for;
    `group` is the row of the summary table; `backend` picks the worker process ("torch" or "tf");
    `builder` names a function in that backend's module, called with `options`; `tolerance` bounds
    max|onnxsal - reference| / max|reference|."""

    name: str
    family: str
    group: str
    source: str
    exporter: str
    backend: str
    builder: str
    options: dict = field(default_factory=dict, hash=False)
    tolerance: float = 1e-4
    quick: bool = False  # part of the slice tests/test_corpus.py runs


def _timm(name: str, size: int = 64, family: str | None = None, quick: bool = False, **kw) -> Case:
    """A timm classifier with random weights, exported by torch's legacy exporter, batch dynamic."""
    return Case(name=f"timm-{name}", family=family or name, group="timm", source=f"timm {name}",
                exporter="torch.onnx (legacy)", backend="torch", builder="timm_model",
                options={"arch": name, "size": size, "kwargs": kw}, quick=quick)


def _tv(name: str, size: int = 64, family: str | None = None, quick: bool = False, **kw) -> Case:
    """A torchvision classifier with random weights."""
    return Case(name=f"tv-{name}", family=family or name, group="torchvision", source=f"torchvision {name}",
                exporter="torch.onnx (legacy)", backend="torch", builder="torchvision_model",
                options={"arch": name, "size": size, "kwargs": kw}, quick=quick)


def _seg(name: str, size: int = 64) -> Case:
    """A torchvision segmentation network (output [N, C, H, W], explained for one class map)."""
    return Case(name=f"tvseg-{name}", family=name, group="segmentation", source=f"torchvision {name}",
                exporter="torch.onnx (legacy)", backend="torch", builder="segmentation_model",
                options={"arch": name, "size": size})


def _hf(name: str, quick: bool = False) -> Case:
    """A transformers model built from a tiny config with random weights."""
    return Case(name=f"hf-{name}", family=name, group="transformers", source=f"transformers {name}",
                exporter="torch.onnx (legacy)", backend="torch", builder="transformers_model",
                options={"arch": name}, quick=quick)


def _keras(name: str, exporter: str, size: int = 96, quick: bool = False) -> Case:
    """A keras.applications network with weights=None, exported by tf2onnx (opset 13) or Keras itself."""
    tag = {"tf2onnx": "tf2onnx", "keras": "kexport"}[exporter]
    return Case(name=f"keras-{name}-{tag}", family=name, group=f"keras ({tag})",
                source=f"keras.applications {name}",
                exporter="tf2onnx opset 13" if exporter == "tf2onnx" else 'keras model.export(format="onnx")',
                backend="tf", builder="keras_model", options={"arch": name, "size": size, "exporter": exporter},
                quick=quick)


def _derived(name: str, base: str, transform: str, family: str, tolerance: float = 1e-4, quick: bool = False,
             **kw) -> Case:
    """A file made from another case's file by an ONNX-level transform (opset conversion, shuffle, fp16)."""
    return Case(name=name, family=family, group="derived", source=f"{base} via {transform}",
                exporter=transform, backend="torch", builder="derived",
                options={"base": base, "transform": transform, **kw}, tolerance=tolerance, quick=quick)


TIMM = [
    _timm("resnet18", quick=True), _timm("resnet26d"), _timm("resnest14d"), _timm("regnetx_002"),
    _timm("regnety_002"), _timm("efficientnet_b0"), _timm("efficientnet_lite0"), _timm("mobilenetv2_050"),
    _timm("mobilenetv3_small_050"), _timm("mnasnet_050"), _timm("ghostnet_050"),
    _timm("densenet121"), _timm("inception_v3", size=96), _timm("inception_v4", size=96),
    _timm("xception41"), _timm("dla34"), _timm("dpn68"), _timm("hrnet_w18_small"), _timm("cspresnet50"),
    _timm("cspdarknet53"), _timm("darknet53"), _timm("convnext_atto"), _timm("convnextv2_atto"),
    _timm("vit_tiny_patch16_224", img_size=64, quick=True), _timm("deit_tiny_patch16_224", img_size=64),
    _timm("swin_tiny_patch4_window7_224", size=64, img_size=64, window_size=2),
    _timm("mobilevit_xxs"), _timm("levit_128s", size=64, img_size=64),
    _timm("poolformer_s12"), _timm("mixer_s16_224", img_size=64), _timm("resmlp_12_224", img_size=64),
    _timm("coat_lite_tiny", img_size=64), _timm("pit_ti_224", img_size=64),
    _timm("tnt_s_patch16_224", img_size=64), _timm("cait_xxs24_224", img_size=64),
    _timm("xcit_nano_12_p16_224", img_size=64), _timm("efficientformer_l1", size=224),
    _timm("edgenext_xx_small"), _timm("fastvit_t8"), _timm("repvgg_a0"), _timm("rexnet_100"),
    _timm("selecsls42b"), _timm("skresnet18"), _timm("seresnext26d_32x4d"), _timm("res2net50_14w_8s"),
    _timm("lcnet_050"), _timm("tinynet_e"), _timm("mobileone_s0"), _timm("ese_vovnet19b_dw"),
    _timm("resnetv2_50x1_bit", family="resnetv2 (BiT, GroupNorm+StdConv)"), _timm("nf_resnet26"),
    _timm("pvt_v2_b0"), _timm("twins_svt_small", img_size=64), _timm("visformer_tiny", img_size=64),
    _timm("mobilenetv4_conv_small"), _timm("efficientvit_b0"), _timm("hgnetv2_b0"),
    _timm("inception_next_tiny"), _timm("repvit_m1"), _timm("gernet_s"), _timm("hardcorenas_a"),
    _timm("beit_base_patch16_224", img_size=64, family="beit"),
    _timm("sequencer2d_s", family="sequencer2d (LSTM)"),
]

TORCHVISION = [
    _tv("squeezenet1_1"), _tv("shufflenet_v2_x0_5"), _tv("googlenet", aux_logits=False, init_weights=True),
    _tv("alexnet", size=224), _tv("vgg11_bn", size=224), _tv("mnasnet0_5"), _tv("mobilenet_v3_small"),
    _tv("regnet_y_400mf"),
]

SEGMENTATION = [_seg("fcn_resnet50"), _seg("deeplabv3_mobilenet_v3_large"), _seg("lraspp_mobilenet_v3_large")]

TRANSFORMERS = [_hf("bert", quick=True), _hf("distilbert"), _hf("gpt2"), _hf("vit"), _hf("clip_vision")]

CUSTOM = [
    Case("rnn-lstm-states", "LSTM with h0/c0 state inputs", "recurrent", "torch.nn.LSTM (2 layers)",
         "torch.onnx (legacy)", "torch", "recurrent_model", {"cell": "LSTM", "layers": 2}, quick=True),
    Case("rnn-gru-states", "GRU with h0 state input", "recurrent", "torch.nn.GRU (2 layers)",
         "torch.onnx (legacy)", "torch", "recurrent_model", {"cell": "GRU", "layers": 2}),
    Case("rnn-bilstm-states", "bidirectional LSTM with states", "recurrent", "torch.nn.LSTM (bidirectional)",
         "torch.onnx (legacy)", "torch", "recurrent_model", {"cell": "LSTM", "layers": 1, "bidirectional": True}),
    Case("yolo-neck-dynamic-hw", "YOLO-style neck (Upsample to dynamic sizes)", "detection",
         "torch module (FPN neck)", "torch.onnx (legacy), dynamic H/W", "torch", "yolo_neck", {}, quick=True),
]

DERIVED = [
    _derived("opset11-timm-resnet18", "timm-resnet18", "onnx.version_converter -> 11", "resnet18 @ opset 11", target=11),
    _derived("opset9-timm-resnet18", "timm-resnet18", "onnx.version_converter -> 9", "resnet18 @ opset 9", target=9,
             quick=True),
    _derived("opset9-tv-squeezenet1_1", "tv-squeezenet1_1", "onnx.version_converter -> 9", "squeezenet @ opset 9",
             target=9),
    _derived("opset9-timm-densenet121", "timm-densenet121", "onnx.version_converter -> 9", "densenet121 @ opset 9",
             target=9),
    _derived("opset11-timm-mobilenetv2_050", "timm-mobilenetv2_050", "onnx.version_converter -> 11",
             "mobilenetv2 @ opset 11", target=11),
    _derived("opset9-tv-googlenet", "tv-googlenet", "onnx.version_converter -> 9", "googlenet @ opset 9", target=9),
    _derived("unsorted-timm-resnet18", "timm-resnet18", "nodes reversed (unsorted)", "unsorted node order",
             quick=True),
    _derived("fp16-timm-resnet18", "timm-resnet18", "onnxconverter_common float16", "fp16 resnet18",
             tolerance=2e-2),
    _derived("fp16-tv-squeezenet1_1", "tv-squeezenet1_1", "onnxconverter_common float16", "fp16 squeezenet",
             tolerance=2e-2),
]

KERAS_FAMILIES = [
    ("Xception", 96), ("VGG16", 96), ("ResNet50", 96), ("ResNet50V2", 96), ("InceptionV3", 96),
    ("InceptionResNetV2", 96), ("MobileNet", 96), ("MobileNetV2", 96), ("MobileNetV3Small", 96),
    ("DenseNet121", 96), ("NASNetMobile", 96), ("EfficientNetB0", 96), ("EfficientNetV2B0", 96),
    ("ConvNeXtTiny", 64),
]
KERAS = [_keras(name, exporter, size, quick=(name == "EfficientNetB0" and exporter == "tf2onnx"))
         for exporter in ("tf2onnx", "keras") for name, size in KERAS_FAMILIES]

ALL: list[Case] = TIMM + TORCHVISION + SEGMENTATION + TRANSFORMERS + CUSTOM + DERIVED + KERAS
BY_NAME = {case.name: case for case in ALL}
assert len(BY_NAME) == len(ALL), "case names must be unique"
