"""Score-CAM (Wang et al. 2020, "Score-CAM: Score-Weighted Visual Explanations for CNNs").

The activations A_k of a layer (chosen as Grad-CAM chooses it: the last feature map with spatial
extent on the path from the input to the output, or `layer=`) are upsampled bilinearly to the
input's size and min-max normalised to [0, 1], giving masks H_k. Each channel's weight is the
softmax over channels of the score of the masked input, α_k = softmax_k F(x ⊙ H_k) (the paper's
weights; the softmax makes them the same as those of the increase of confidence
F(x ⊙ H_k) − F(baseline)); map = ReLU(Σ_k α_k A_k) upsampled to the input's size, min-max
normalised per sample (unless normalize=False). Constant channels give no mask and weigh nothing.
No gradient is used, so the layer is found on any forward path, through quantized ops too.
"""

from __future__ import annotations

import numpy as np

from ..autodiff.graph import node_inputs
from ..errors import InvalidInputError
from ..layers import feature_maps, resolve_layer
from ..methods.graphs import GraphEditor
from ..runtime import create_session, run
from .masks import as_map, interpolation_matrix, spatial
from .runner import prepare


def forward_path(view, x: str, output: str) -> list[str]:
    """Names of the nodes that depend on `x` and feed `output`, whatever their dtypes."""
    touched = {x}
    for n in view.nodes:
        if any(i in touched for i in node_inputs(n)):
            touched.update(o for o in n.output if o)
    needed = {output}
    for n in reversed(view.nodes):
        if any(o in needed for o in n.output):
            needed.update(node_inputs(n))
    return [n.name for n in view.nodes if any(o in touched and o in needed for o in n.output)]


def find_layer(explainer, x: str, layer):
    return resolve_layer(explainer.view, feature_maps(explainer.view, forward_path(explainer.view, x, explainer.output)), layer)


def activations(explainer, feeds, value: str) -> np.ndarray:
    """The layer's activations for the clean inputs (a session exposing it, cached)."""
    key = ("score_cam_layer", value)
    if key not in explainer._sessions:
        model = GraphEditor(explainer.model).finish([(value, explainer.view.elem_type(value) or 1, None)])
        explainer._sessions[key] = (None, create_session(model, explainer.providers, explainer._options))
    return run(explainer._sessions[key][1], [value], feeds)[0]


def _upsample(maps: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """[..., h, w] -> [..., H, W] bilinear."""
    return rows @ maps @ cols.T


def score_cam(explainer, feeds, target, softmax="identity", wrt=None, batch_size=None, *, layer=None, normalize=True,
              perturbations_per_eval=None, progress=None):
    """({input: map [N, 1, H, W] or [N, H, W, 1]}, {"layer": the value used, "weights": α [N, K]})."""
    pb = prepare(explainer, feeds, target, softmax, wrt, perturbations_per_eval, progress)
    x = pb.value
    layout, h, w = spatial(x.shape)
    fm = find_layer(explainer, pb.x, layer)
    acts = activations(explainer, feeds, fm.value).astype(np.float64)
    if acts.ndim != 4:
        raise InvalidInputError(f"Score-CAM needs a layer of rank 4; {fm.value!r} has shape {acts.shape}.")
    if fm.layout == "NHWC":
        acts = acts.transpose(0, 3, 1, 2)
    n, k = acts.shape[:2]
    rows, cols = interpolation_matrix(acts.shape[2], h), interpolation_matrix(acts.shape[3], w)
    lo = acts.min(axis=(2, 3))
    span = acts.max(axis=(2, 3)) - lo
    live = span > 0
    n_idx, k_idx = np.nonzero(live)

    def make(idx):
        a = acts[n_idx[idx], k_idx[idx]]
        masks = _upsample((a - lo[n_idx[idx], k_idx[idx], None, None]) / span[n_idx[idx], k_idx[idx], None, None], rows, cols)
        masks = masks[:, None] if layout == "NCHW" else masks[..., None]
        return x[n_idx[idx]] * masks.astype(x.dtype)

    weights = np.zeros((n, k))
    if len(n_idx):
        logits = np.full((n, k), -np.inf)
        logits[n_idx, k_idx] = pb.scores(make, n_idx, "Score-CAM")
        top = logits.max(axis=1, keepdims=True)
        e = np.where(live, np.exp(logits - np.where(np.isfinite(top), top, 0)), 0)
        weights = e / np.maximum(e.sum(axis=1, keepdims=True), 1e-300)
    cam = np.maximum(np.einsum("nk,nkhw->nhw", weights, acts), 0)
    cam = _upsample(cam, rows, cols)
    if normalize:
        low = cam.min(axis=(1, 2), keepdims=True)
        cam = (cam - low) / np.maximum(cam.max(axis=(1, 2), keepdims=True) - low, 1e-12)
    return {pb.x: as_map(cam, layout).astype(x.dtype)}, {"layer": fm.value, "weights": weights}
