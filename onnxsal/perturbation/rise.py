"""RISE (Petsiuk et al. 2018, "Randomized Input Sampling for Explanation of Black-box Models").

n_masks random masks M_i: a grid_size × grid_size grid of cells each kept (1) with probability p,
upsampled bilinearly to (grid_size + 1) × the cell size ⌈H / grid_size⌉ and cropped to H × W at a
random shift within one cell, so the masks are smooth and every position is equally likely to be
kept. The saliency is the mask-weighted mean of the score over the masked images x ⊙ M_i,
normalised by the masks' expectation as in the paper:

    S(x) = 1 / (n_masks · p) · Σ_i F(x ⊙ M_i) · M_i

The paper's F is the class probability: that is softmax="keep" on a model that ends in a softmax
(with the default softmax="identity" F is the logit, the score every onnxsal method explains).
Masks are drawn with NumPy from `seed`; since they are a fixed set, RISE also compiles to one
graph (`build_rise`) that gives the same numbers. The map is [N, 1, H, W] (NCHW) or [N, H, W, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError
from .masks import as_map, interpolation_matrix, on_image, spatial
from .runner import explained_input, prepare

BLOCK = 256  # masks made at once when accumulating the saliency


@dataclass(frozen=True)
class RiseMasks:
    """The seeded masks, as factors: mask i = rows[i] @ grids[i] @ cols[i] ([H, s] [s, s] [s, W])."""

    rows: np.ndarray  # [M, H, s]
    grids: np.ndarray  # [M, s, s]
    cols: np.ndarray  # [M, s, W]
    p: float

    def __len__(self) -> int:
        return self.grids.shape[0]

    def take(self, idx) -> np.ndarray:
        """Masks idx as [len, H, W] float32."""
        return np.matmul(np.matmul(self.rows[idx], self.grids[idx]), self.cols[idx])


def _check(n_masks, grid_size, p):
    if isinstance(n_masks, bool) or not isinstance(n_masks, (int, np.integer)) or n_masks < 1:
        raise InvalidInputError(f"n_masks must be a positive integer, not {n_masks!r}.")
    if isinstance(grid_size, bool) or not isinstance(grid_size, (int, np.integer)) or grid_size < 1:
        raise InvalidInputError(f"grid_size must be a positive integer (cells per side), not {grid_size!r}.")
    if not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise InvalidInputError(f"p (the probability of keeping a cell) must lie in (0, 1], not {p!r}.")


def rise_masks(height: int, width: int, n_masks: int = 4000, grid_size: int = 7, p: float = 0.5, seed: int = 0) -> RiseMasks:
    """The masks of RISE for an H × W image, reproducible from `seed`."""
    _check(n_masks, grid_size, p)
    if grid_size > min(height, width):
        raise InvalidInputError(f"grid_size {grid_size} exceeds the image's size {height}x{width}.")
    rng = np.random.default_rng(seed)
    s = int(grid_size)
    grids = (rng.random((n_masks, s, s)) < p).astype(np.float32)
    ch, cw = -(-height // s), -(-width // s)
    dy = rng.integers(0, ch, n_masks)
    dx = rng.integers(0, cw, n_masks)
    up_rows = interpolation_matrix(s, (s + 1) * ch).astype(np.float32)
    up_cols = interpolation_matrix(s, (s + 1) * cw).astype(np.float32)
    rows = np.stack([up_rows[d: d + height] for d in dy])
    cols = np.stack([up_cols[d: d + width].T for d in dx])
    return RiseMasks(rows, grids, cols, float(p))


def rise(explainer, feeds, target, softmax="identity", wrt=None, batch_size=None, *, n_masks=4000, grid_size=7, p=0.5,
         seed=0, perturbations_per_eval=None, progress=None):
    """{input: saliency [N, 1, H, W] or [N, H, W, 1]}."""
    pb = prepare(explainer, feeds, target, softmax, wrt, perturbations_per_eval, progress)
    x = pb.value
    layout, h, w = spatial(x.shape)
    masks = rise_masks(h, w, n_masks, grid_size, p, seed)
    n_idx = np.repeat(np.arange(pb.n), len(masks))
    m_idx = np.tile(np.arange(len(masks)), pb.n)
    scores = pb.scores(lambda idx: x[n_idx[idx]] * on_image(masks.take(m_idx[idx]), layout), n_idx, "RISE")
    scores = scores.reshape(pb.n, len(masks))
    saliency = np.zeros((pb.n, h * w))
    for lo in range(0, len(masks), BLOCK):
        block = np.arange(lo, min(lo + BLOCK, len(masks)))
        saliency += scores[:, block] @ masks.take(block).reshape(len(block), -1).astype(np.float64)
    saliency /= len(masks) * masks.p
    return {pb.x: as_map(saliency.reshape(pb.n, h, w), layout).astype(x.dtype)}


def build_rise(explainer, target_kind, softmax, wrt, n_masks=4000, grid_size=7, p=0.5, seed=0):
    """The compiled RISE: the masks' factors as constants, the model run once on [x ; x ⊙ M_1 ; ... ]."""
    from .compiled import Perturbed

    x = explained_input(explainer, wrt)
    shape = explainer.view.shape(x)
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise InvalidInputError(f"a compiled RISE needs an image input with its sample shape fixed (pass input_shapes=), not {shape}.")
    layout, h, w = spatial(shape)
    masks = rise_masks(h, w, n_masks, grid_size, p, seed)
    m = len(masks)
    pg = Perturbed(explainer, x, m, "rise", softmax)
    e = pg.e
    dt = pg.dtype
    product = e.op("MatMul", [e.op("MatMul", [e.const(masks.rows, name="mask_rows"), e.const(masks.grids, name="mask_grids")]),
                              e.const(masks.cols, name="mask_cols")])  # [M, H, W] float32
    if np.dtype(dt) != np.float32:
        product = e.cast(product, dt)
    placed = e.unsqueeze(product, [1, 2] if layout == "NCHW" else [1, 4])  # [M, 1, 1, H, W] or [M, 1, H, W, 1]
    copies = e.op("Mul", [e.unsqueeze(x, [0]), placed])
    scores = pg.run(copies, target_kind)  # [M + 1, N]
    weights = e.transpose(e.slice(scores, [1], [m + 1], [0]), [1, 0])  # [N, M]
    flat = e.op("Reshape", [product, e.ints([m, h * w], name="flat")])
    sal = e.op("Div", [e.op("MatMul", [weights, flat]), e.scalar(m * masks.p, dt, name="normaliser")])
    out = e.fresh(f"{x}_rise")
    e.op("Reshape", [sal, e.ints([-1, 1, h, w] if layout == "NCHW" else [-1, h, w, 1], name="map_shape")], out=out)
    return pg.finish(out, [shape[0], 1, h, w] if layout == "NCHW" else [shape[0], h, w, 1])
