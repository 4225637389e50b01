"""Vision transformers: Grad-CAM on token maps and attention rollout, against torch references.

Models, random weights, exported once per module with torch's TorchScript exporter (opset 17,
batch dynamic):
- a tiny `transformers` ViT (image 32, patch 8 so a 4x4 grid and T = 17 tokens, hidden 32, 2
  layers, 2 heads, eager attention so that the Softmax is in the graph; initializer_range 0.2 so
  that attention is far from uniform);
- timm's vit_tiny_patch16_224 at img_size 64 (4x4 grid, 12 blocks, 3 heads) with 2 register
  tokens, so 3 prefix tokens precede the patches, its qkv weights scaled by 8 so that attention is
  far from uniform (the maps would be flat, and compare flat, otherwise); timm computes attention with
  F.scaled_dot_product_attention, which the exporter writes out as MatMul/Softmax/MatMul.

1. Grad-CAM on token maps against the same formula computed in torch (float64) from autograd
   hooks on the same module: drop the prefix tokens, α = mean of ∂y/∂A over the patch tokens,
   ReLU(Σ α A) on the 4x4 grid, F.interpolate bilinear (align_corners=False) to the input size;
   rel = max|ours - ref| / max|ref| <= 1e-4. The default layer is the last block's first
   LayerNorm (pytorch-grad-cam's `blocks[-1].norm1`); `layer=` by value, node or path component.
   Grad-CAM++ on the token map too, and a named rank-4 layer (the patch embedding) still takes
   the feature-map path.
2. Attention rollout against a NumPy rollout of the model's own attentions (transformers'
   output_attentions=True; for timm, softmax(q k^T · scale) from hooks on each block's qkv), with
   mean/max/min head fusion and discard_ratio, rel <= 1e-5; the compiled graph in a bare
   onnxruntime session gives the same numbers. Exports at opsets 9 and 12 (decomposed LayerNorm,
   unknown shapes) give the opset-17 maps. Both methods also on transformers' CLIP vision tower and
   torchvision's VisionTransformer (nn.MultiheadAttention) against the same references.
3. Refusals are one sentence: no attention in the graph, no class token, a grid that does not
   fit, bad options; the command line writes the library's map and refuses in one line.
4. examples/vit_gradcam_rollout.py (the README figure) runs with --small.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # torch before anything that may import TensorFlow
tr = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import onnxsal  # noqa: E402
from onnxsal.autodiff.graph import GraphView  # noqa: E402
from onnxsal.errors import InvalidInputError  # noqa: E402
from onnxsal.methods.graphs import GraphEditor  # noqa: E402
from onnxsal.vit import attention_blocks  # noqa: E402
from tests.tiny import rel  # noqa: E402

GRADCAM_TOL = 1e-4
ROLLOUT_TOL = 1e-5


def one_sentence(message: str) -> bool:
    return message.endswith(".") and "\n" not in message and not re.search(r"[.;:]\s+[A-Z]", message)


def export(model, size: int, path) -> onnx.ModelProto:
    torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(path), input_names=["pixel_values"],
                      output_names=["logits"], dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False, do_constant_folding=True)
    return onnx.load(str(path))


class Logits(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(pixel_values=x).logits


class Case:
    def __init__(self, model, proto, size, prefix):
        self.model, self.proto, self.size, self.prefix = model, proto, size, prefix
        self.explainer = onnxsal.Explainer(proto, providers="cpu")
        self.view = GraphView(proto)
        rng = np.random.default_rng(1)
        self.x = rng.standard_normal((2, 3, size, size)).astype(np.float32)

    def value_of(self, node_suffix: str) -> str:
        """The output of the ONNX node whose name ends with `node_suffix`."""
        return next(n.output[0] for n in self.view.nodes if n.name.endswith(node_suffix))


@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory):
    torch.manual_seed(0)
    cfg = tr.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, num_labels=10, initializer_range=0.2,
                       attn_implementation="eager")
    model = tr.ViTForImageClassification(cfg).eval()
    proto = export(Logits(model), 32, tmp_path_factory.mktemp("vit") / "vit.onnx")
    return Case(model, proto, 32, prefix=1)


@pytest.fixture(scope="module")
def timm_vit(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=10, reg_tokens=2).eval()
    with torch.no_grad():  # timm's initialisation (std 0.02) leaves attention almost uniform: sharpen it
        for block in model.blocks:
            block.attn.qkv.weight.mul_(8)
    proto = export(model, 64, tmp_path_factory.mktemp("timm") / "vit_tiny.onnx")
    return Case(model, proto, 64, prefix=3)


# ---------------------------------------------------------------------------------------------------
# torch references


def torch_gradcam(forward, module, x: np.ndarray, target, prefix: int, grid, plus: bool = False) -> np.ndarray:
    """Grad-CAM (or Grad-CAM++) on a token map [N, T, D] (or a feature map [N, C, h, w] with prefix None)
    from autograd hooks on `module`, in float64 from the layer on."""
    store = {}

    def hook(mod, inputs, out):
        store["a"] = out
        out.register_hook(lambda g: store.__setitem__("g", g))

    handle = module.register_forward_hook(hook)
    try:
        logits = forward(torch.from_numpy(x))
        logits.gather(1, torch.as_tensor(target).reshape(-1, 1)).sum().backward()
    finally:
        handle.remove()
    a, g = store["a"].detach().double(), store["g"].double()
    n = a.shape[0]
    if prefix is not None:  # tokens -> the patch grid [N, D, h, w], as pytorch-grad-cam's reshape_transform
        a = a[:, prefix:].reshape(n, *grid, -1).permute(0, 3, 1, 2)
        g = g[:, prefix:].reshape(n, *grid, -1).permute(0, 3, 1, 2)
    if plus:
        g2, g3 = g * g, g * g * g
        denom = 2 * g2 + a.sum((2, 3), keepdim=True) * g3 + 1e-7
        alpha = torch.where(g != 0, g2 / denom, torch.zeros_like(g))
        weights = (F.relu(g) * alpha).sum((2, 3), keepdim=True)
    else:
        weights = g.mean((2, 3), keepdim=True)
    cam = F.relu((weights * a).sum(1, keepdim=True))
    return F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False).numpy()


def numpy_rollout(attentions, prefix: int, grid, size: int, head_fusion="mean", discard_ratio=0.0) -> np.ndarray:
    """Attention rollout of [N, heads, T, T] maps in float64, upsampled bilinearly to size x size."""
    n, _, t, _ = attentions[0].shape
    joint = None
    for a in attentions:
        fused = {"mean": a.mean(1), "max": a.max(1), "min": a.min(1)}[head_fusion]
        k = int(t * t * discard_ratio)
        if k:
            flat = fused.reshape(n, -1).copy()
            lowest = np.argsort(flat, axis=1, kind="stable")[:, :k]
            for i in range(n):
                flat[i, lowest[i][lowest[i] != 0]] = 0  # the class token's attention to itself is kept
            fused = flat.reshape(n, t, t)
        aug = fused + np.eye(t)
        aug = aug / aug.sum(-1, keepdims=True)
        joint = aug if joint is None else aug @ joint
    cam = torch.from_numpy(joint[:, 0, prefix:].reshape(n, 1, *grid))
    return F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False).numpy()


def hf_attentions(case: Case) -> list[np.ndarray]:
    with torch.no_grad():
        out = case.model(pixel_values=torch.from_numpy(case.x), output_attentions=True)
    return [a.double().numpy() for a in out.attentions]


def timm_attentions(case: Case) -> list[np.ndarray]:
    """softmax(q k^T · scale) of every block, from hooks on the qkv projections (timm's fused
    attention never forms the matrix in eager torch)."""
    maps, handles = [], []
    for block in case.model.blocks:
        attn = block.attn

        def hook(mod, inputs, qkv, attn=attn):
            b, t, _ = qkv.shape
            q, k, _ = qkv.reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            q, k = attn.q_norm(q), attn.k_norm(k)
            maps.append(torch.softmax((q * attn.scale) @ k.transpose(-2, -1), dim=-1).double().numpy())

        handles.append(attn.qkv.register_forward_hook(hook))
    try:
        with torch.no_grad():
            case.model(torch.from_numpy(case.x))
    finally:
        for h in handles:
            h.remove()
    return maps


# ---------------------------------------------------------------------------------------------------
# 1. Grad-CAM on token maps


def test_attention_blocks_found(hf_vit, timm_vit):
    for case, blocks, heads in ((hf_vit, 2, 2), (timm_vit, 12, 3)):
        found = attention_blocks(case.view)
        assert len(found) == blocks
        exposed = GraphEditor(case.proto).finish([(a.probs, onnx.TensorProto.FLOAT, None) for a in found])
        outs = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            [a.probs for a in found], {"pixel_values": case.x})
        t = case.prefix + 16
        for p in outs:
            assert p.shape == (2, heads, t, t)
            np.testing.assert_allclose(p.sum(-1), 1, atol=1e-5)


@pytest.mark.parametrize("layer", [None, "layers.0-by-value", "layernorm_before"])
def test_gradcam_on_tokens_matches_torch_hf(hf_vit, layer):
    case = hf_vit
    if layer is None:
        value, module = case.value_of("layers.1/layernorm_before/LayerNormalization"), case.model.vit.layers[1].layernorm_before
    elif layer == "layers.0-by-value":
        value = layer = case.value_of("layers.0/layernorm_before/LayerNormalization")
        module = case.model.vit.layers[0].layernorm_before
    else:  # a path component matches the last such node, as for Keras layer names
        value, module = case.value_of("layers.1/layernorm_before/LayerNormalization"), case.model.vit.layers[1].layernorm_before
    graph, _ = case.explainer.method_graph("gradcam", "target", layer=layer, normalize=False)
    assert graph.extras["layer"] == value
    target = np.array([3, 7])
    ours = case.explainer.attribute(case.x, target=target, method="gradcam", layer=layer, normalize=False)
    ref = torch_gradcam(Logits(case.model), module, case.x, target, 1, (4, 4))
    assert ours.shape == (2, 1, 32, 32)
    assert np.abs(ref).max() > 0 and (ref > 0).mean() > 0.1, "a reference with nothing to compare"
    assert rel(ours, ref) <= GRADCAM_TOL, f"rel {rel(ours, ref):.3g}"
    assert rel(ours, ref.transpose(0, 1, 3, 2)) > 1e-2  # the grid's orientation matters: the test can fail


def test_gradcam_plus_plus_on_tokens_matches_torch(hf_vit):
    case = hf_vit
    module = case.model.vit.layers[1].layernorm_before
    target = case.explainer.predict(case.x).argmax(1)
    ours = case.explainer.attribute(case.x, method="gradcam_plus_plus", normalize=False)
    ref = torch_gradcam(Logits(case.model), module, case.x, target, 1, (4, 4), plus=True)
    assert rel(ours, ref) <= GRADCAM_TOL, f"rel {rel(ours, ref):.3g}"


def test_gradcam_named_feature_map_keeps_the_feature_map_path(hf_vit):
    """The patch embedding Conv's output [N, D, 4, 4] is an ordinary feature map."""
    case = hf_vit
    layer = next(n.name for n in case.view.nodes if n.op_type == "Conv")
    target = np.array([0, 5])
    ours = case.explainer.attribute(case.x, target=target, method="gradcam", layer=layer, normalize=False)
    ref = torch_gradcam(Logits(case.model), case.model.vit.embeddings.patch_embeddings.projection, case.x, target, None, None)
    assert rel(ours, ref) <= GRADCAM_TOL, f"rel {rel(ours, ref):.3g}"


def test_gradcam_given_grid_equals_found_grid(hf_vit):
    case = hf_vit
    found = case.explainer.attribute(case.x, method="gradcam")
    given = case.explainer.attribute(case.x, method="gradcam", grid=(4, 4))
    np.testing.assert_array_equal(found, given)
    assert found.min() == 0 and abs(found.max() - 1) < 1e-6  # min-max normalised per sample by default


def test_gradcam_on_tokens_matches_torch_timm(timm_vit):
    case = timm_vit
    graph, _ = case.explainer.method_graph("gradcam", "argmax", normalize=False)
    assert graph.extras["layer"] == case.value_of("blocks.11/norm1/LayerNormalization")  # blocks[-1].norm1
    target = case.explainer.predict(case.x).argmax(1)
    ours = case.explainer.attribute(case.x, method="gradcam", normalize=False)
    ref = torch_gradcam(case.model, case.model.blocks[-1].norm1, case.x, target, case.prefix, (4, 4))
    assert ours.shape == (2, 1, 64, 64)
    assert rel(ours, ref) <= GRADCAM_TOL, f"rel {rel(ours, ref):.3g}"


# ---------------------------------------------------------------------------------------------------
# 2. Attention rollout


@pytest.mark.parametrize("head_fusion,discard_ratio", [("mean", 0.0), ("max", 0.0), ("min", 0.0), ("mean", 0.5),
                                                       ("max", 0.9)])
def test_rollout_matches_output_attentions(hf_vit, head_fusion, discard_ratio):
    case = hf_vit
    ref = numpy_rollout(hf_attentions(case), 1, (4, 4), 32, head_fusion, discard_ratio)
    ours = case.explainer.attribute(case.x, method="attention_rollout", head_fusion=head_fusion,
                                    discard_ratio=discard_ratio, normalize=False)
    assert ours.shape == (2, 1, 32, 32)
    assert ref.max() > 2 * ref.min(), "a flat reference tells nothing"
    assert rel(ours, ref) <= ROLLOUT_TOL, f"rel {rel(ours, ref):.3g}"


def test_rollout_discarding_changes_the_map(hf_vit):
    case = hf_vit
    kept = case.explainer.attribute(case.x, method="attention_rollout", normalize=False)
    discarded = case.explainer.attribute(case.x, method="attention_rollout", discard_ratio=0.9, normalize=False)
    assert rel(discarded, kept) > 1e-2


def test_rollout_normalised_ignores_target_and_compiles(hf_vit):
    case = hf_vit
    raw = case.explainer.attribute(case.x, method="attention_rollout", normalize=False)
    default = case.explainer.attribute(case.x, target=[1, 2], method="attention_rollout")
    lo, hi = raw.min(axis=(1, 2, 3), keepdims=True), raw.max(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(default, (raw - lo) / (hi - lo), atol=1e-5)
    compiled = onnxsal.compile(case.proto, method="attention_rollout", target="target")
    sess = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    assert names == ["pixel_values", "target"]
    logits, rollout = sess.run(None, {"pixel_values": case.x, "target": np.array([1, 2], np.int64)})
    np.testing.assert_allclose(logits, case.explainer.predict(case.x), atol=1e-6)
    np.testing.assert_allclose(rollout, default, atol=1e-6)


def test_rollout_matches_timm_attention(timm_vit):
    case = timm_vit
    maps = timm_attentions(case)
    assert len(maps) == 12 and maps[0].shape == (2, 3, 19, 19)
    for head_fusion, discard_ratio in (("mean", 0.0), ("max", 0.9)):
        ref = numpy_rollout(maps, case.prefix, (4, 4), 64, head_fusion, discard_ratio)
        ours = case.explainer.attribute(case.x, method="attention_rollout", head_fusion=head_fusion,
                                        discard_ratio=discard_ratio, normalize=False)
        assert ours.shape == (2, 1, 64, 64)
        assert ref.max() > 1.5 * ref.min(), "a flat reference tells nothing"
        assert rel(ours, ref) <= ROLLOUT_TOL, f"{head_fusion}/{discard_ratio}: rel {rel(ours, ref):.3g}"


@pytest.mark.parametrize("opset", [9, 12])
def test_old_opset_exports_give_the_same_maps(hf_vit, tmp_path, opset):
    """Below opset 17 torch writes LayerNorm out as ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add, Softmax has
    opset 11's semantics, the shapes are unknown until the input is fixed, and (opset 9) TopK and
    Scatter take attributes: the default layer is then the decomposed LayerNorm's output, and
    Grad-CAM and rollout agree with the opset-17 file."""
    case = hf_vit
    torch.onnx.export(Logits(case.model), (torch.zeros(1, 3, 32, 32),), str(tmp_path / "old.onnx"),
                      input_names=["pixel_values"], output_names=["logits"], dynamic_axes={"pixel_values": {0: "batch"}},
                      opset_version=opset, dynamo=False)
    old = onnxsal.Explainer(str(tmp_path / "old.onnx"), providers="cpu")
    assert not any(n.op_type == "LayerNormalization" for n in old.model.graph.node)
    graph, _ = old.specialised({"pixel_values": [2, 3, 32, 32]}).method_graph("gradcam")
    assert "/layers.1/layernorm_before/" in graph.extras["layer"]
    for method, options in (("gradcam", {}), ("attention_rollout", {}), ("attention_rollout", {"discard_ratio": 0.5})):
        ours = old.attribute(case.x, method=method, normalize=False, **options)
        new = case.explainer.attribute(case.x, method=method, normalize=False, **options)
        assert rel(ours, new) <= 1e-5, f"{method} {options} at opset {opset}: rel {rel(ours, new):.3g}"


class Embeds(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(pixel_values=x).image_embeds


def test_clip_vision_and_torchvision_vit(tmp_path):
    """Two more implementations: transformers' CLIP vision tower (pre-LayerNorm after the embeddings,
    explained at an image-embedding dimension) and torchvision's VisionTransformer (attention in
    nn.MultiheadAttention; its zero-initialised head re-drawn so that there is a gradient)."""
    torch.manual_seed(0)
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    clip = tr.CLIPVisionModelWithProjection(tr.CLIPVisionConfig(
        image_size=32, patch_size=8, projection_dim=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, initializer_range=0.2, attn_implementation="eager")).eval()
    ex = onnxsal.Explainer(export(Embeds(clip), 32, tmp_path / "clip.onnx"), providers="cpu")
    target = np.array([2, 9])
    ours = ex.attribute(x, target=target, method="gradcam", normalize=False)
    ref = torch_gradcam(Embeds(clip), clip.vision_model.encoder.layers[-1].layer_norm1, x, target, 1, (4, 4))
    assert rel(ours, ref) <= GRADCAM_TOL, f"CLIP Grad-CAM: rel {rel(ours, ref):.3g}"
    with torch.no_grad():
        attentions = [a.double().numpy() for a in clip(pixel_values=torch.from_numpy(x), output_attentions=True).attentions]
    ref = numpy_rollout(attentions, 1, (4, 4), 32)
    ours = ex.attribute(x, method="attention_rollout", normalize=False)
    assert rel(ours, ref) <= ROLLOUT_TOL, f"CLIP rollout: rel {rel(ours, ref):.3g}"

    torchvision = pytest.importorskip("torchvision")
    tv = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                              mlp_dim=64, num_classes=10).eval()
    torch.nn.init.normal_(tv.heads.head.weight, std=0.2)
    ex = onnxsal.Explainer(export(tv, 32, tmp_path / "tv.onnx"), providers="cpu")
    ours = ex.attribute(x, target=target, method="gradcam", normalize=False)
    ref = torch_gradcam(tv, tv.encoder.layers[-1].ln_1, x, target, 1, (4, 4))
    assert rel(ours, ref) <= GRADCAM_TOL, f"torchvision Grad-CAM: rel {rel(ours, ref):.3g}"
    maps, handles = [], []
    for layer in tv.encoder.layers:  # the block calls its attention with need_weights=False: ask again
        def hook(mod, inputs, out, layer=layer):
            maps.append(layer.self_attention(out, out, out, need_weights=True, average_attn_weights=False)[1].double().numpy())

        handles.append(layer.ln_1.register_forward_hook(hook))
    try:
        with torch.no_grad():
            tv(torch.from_numpy(x))
    finally:
        for h in handles:
            h.remove()
    ref = numpy_rollout(maps, 1, (4, 4), 32, "max", 0.5)
    ours = ex.attribute(x, method="attention_rollout", head_fusion="max", discard_ratio=0.5, normalize=False)
    assert rel(ours, ref) <= ROLLOUT_TOL, f"torchvision rollout: rel {rel(ours, ref):.3g}"


# ---------------------------------------------------------------------------------------------------
# 3. Refusals


@pytest.fixture(scope="module")
def tiny_cnn(tmp_path_factory):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    return export(model, 16, tmp_path_factory.mktemp("cnn") / "cnn.onnx")


@pytest.fixture(scope="module")
def pooled_vit(tmp_path_factory):
    """A timm ViT without a class token (global average pooling): rollout has no row to read."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=3, depth=1,
                              class_token=False, global_pool="avg").eval()
    return export(model, 32, tmp_path_factory.mktemp("pooled") / "pooled.onnx")


def refusal(call) -> str:
    with pytest.raises(InvalidInputError) as info:
        call()
    message = str(info.value)
    assert one_sentence(message), message
    return message


def test_refusals_are_one_sentence(hf_vit, tiny_cnn, pooled_vit):
    x = hf_vit.x
    ex = hf_vit.explainer
    assert "eager" in refusal(lambda: onnxsal.Explainer(tiny_cnn).attribute(
        np.zeros((1, 3, 16, 16), np.float32), method="attention_rollout"))
    assert "class token" in refusal(lambda: onnxsal.Explainer(pooled_vit).attribute(
        np.zeros((1, 3, 32, 32), np.float32), method="attention_rollout"))
    assert "head_fusion" in refusal(lambda: ex.attribute(x, method="attention_rollout", head_fusion="median"))
    assert "discard_ratio" in refusal(lambda: ex.attribute(x, method="attention_rollout", discard_ratio=1.0))
    message = refusal(lambda: ex.attribute(x, method="gradcam", grid=(5, 5)))
    assert "25 patch tokens" in message and "17 tokens" in message and "layernorm_before" in message
    assert "grid" in refusal(lambda: ex.attribute(x, method="gradcam", grid="4x4"))
    assert "no layer named" in refusal(lambda: ex.attribute(x, method="gradcam", layer="no_such_block"))


def test_cli(hf_vit, tmp_path):
    """`onnxsal explain -m attention_rollout` writes the library's map; `onnxsal compile` refuses a
    bad option in one line, exit code 2, nothing written."""
    import contextlib
    import io

    from PIL import Image

    from onnxsal.cli import main

    onnx.save(hf_vit.proto, str(tmp_path / "vit.onnx"))
    img = (np.random.default_rng(3).random((32, 32, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "img.png")
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(["explain", str(tmp_path / "vit.onnx"), str(tmp_path / "img.png"), "-m", "attention_rollout", "-p", "unit",
                   "--option", "discard_ratio=0.9", "--option", "grid=4,4", "-o", str(tmp_path / "out")])
    assert rc == 0
    written = np.load(tmp_path / "out" / "img.attention_rollout.npy")
    x = (img.astype(np.float32) / 255).transpose(2, 0, 1)[None]
    ours = hf_vit.explainer.attribute(x, method="attention_rollout", discard_ratio=0.9)
    np.testing.assert_allclose(written.reshape(ours.shape), ours, atol=1e-6)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["compile", str(tmp_path / "vit.onnx"), "--method", "attention_rollout", "--option", "head_fusion=median",
                   "-o", str(tmp_path / "rollout.onnx")])
    assert rc == 2 and len(err.getvalue().strip().splitlines()) == 1 and "head_fusion" in err.getvalue()
    assert not (tmp_path / "rollout.onnx").exists()


# ---------------------------------------------------------------------------------------------------
# 4. The example behind the README figure


def test_example_runs(tmp_path):
    pytest.importorskip("skimage")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "examples" / "vit_gradcam_rollout.py"), "--out", str(tmp_path),
                           "--small", "--providers", "cpu"], cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    summary = json.loads((tmp_path / "vit_gradcam_rollout.json").read_text())
    assert summary["gradcam_layer"] == "/blocks/blocks.11/norm1/LayerNormalization_output_0"
    assert summary["grid"] == [4, 4] and summary["attention_blocks"] == 12
    assert all(shape == [64, 64] for shape in summary["map_shapes"].values())
    assert summary["raw_max"]["rollout_mean"] > 0
    assert (tmp_path / "vit_gradcam_rollout.png").stat().st_size > 10_000
