"""The model-parameter randomisation sanity check (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

A map that explains the model must change when the model's learned weights are destroyed. The
check replaces the weights of one more layer at each step, from the output down ("cascading"), or
of one layer at a time ("independent"), recomputes the attribution for the same class on the
modified model, and compares each map with the original one. Maps that stay similar (high rank
correlation, high SSIM) after the top layers are randomised do not depend on what those layers
learned: the paper found this of guided backprop, and not of the plain gradient.

Layers are the Conv, ConvTranspose, Gemm and MatMul nodes (their weights and biases; a MatMul's
bias is the constant operand of the one Add that consumes it) and the BatchNormalization nodes
(scale and shift; the running statistics are kept, so that a normalisation stays a valid one),
in reverse topological order. A parameter is an initializer or a Constant node's value; one that
several layers share belongs to the topmost of them.

Randomisation, seeded per layer (a layer draws the same values whichever layers go with it):
"normal" (the default) draws each tensor anew from a zero-mean normal with the original tensor's
standard deviation: a re-initialisation (as Adebayo et al. re-initialised with the layers'
initializers) at the trained weights' own scale. Zero mean matters: a trained layer's small mean
weight, summed over thousands of non-negative inputs, would otherwise shut every rectifier after
it and leave an all-zero map. "permute" shuffles the tensor's values, which keeps their
distribution (mean included) exactly. A constant tensor (zero biases, unit scales) has no spread to draw
from and is kept as it is under both. Every step's model is built in memory from a copy; the
Explainer's own model is never touched.

Metrics, per step and sample, between the original map and the randomised one, after reducing
image channels (NCHW or NHWC, detected as `onnxsal.visualize` does): "spearman_abs", the Spearman
rank correlation of the maps' magnitudes (max |.| over channels); "spearman", that of the signed
maps (channel sum); "ssim", the structural similarity (scikit-image) of the magnitudes, each
min-max scaled to [0, 1]. A correlation with a constant map is undefined (NaN) and left out of
the means.

    >>> result = randomisation_cascade(ex, images, method="guided_backprop")
    >>> result.mean("ssim")               # one value per step, top layer first
    >>> result.plot("cascade.png")
"""

from __future__ import annotations

import gc
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import InvalidInputError
from ..explainer import Explainer
from ..io_utils import write_bytes_atomic
from ..visualize import normalize, reduce_channels

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization")
MODES = ("cascading", "independent")
SCHEMES = ("normal", "permute")
METRICS = ("spearman_abs", "spearman", "ssim")
_FLOAT_TENSORS = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)

__all__ = ["CascadeResult", "Layer", "METRICS", "MODES", "SCHEMES", "plot_cascades", "randomisable_layers",
           "randomisation_cascade", "randomise", "spearman"]


# -- which tensors make a layer ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layer:
    """One layer node and the float parameter tensors (by value name) that randomising it replaces."""

    name: str
    op_type: str
    params: tuple[str, ...]


def _float_constants(graph: onnx.GraphProto) -> set[str]:
    """Names of float tensors fixed in the file: initializers and Constant nodes' `value`s."""
    names = {t.name for t in graph.initializer if t.data_type in _FLOAT_TENSORS}
    for n in graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            if value is not None and value.data_type in _FLOAT_TENSORS:
                names.add(n.output[0])
    return names


def _bias_of_matmul(node: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]], constants: set[str]) -> list[str]:
    """The constant operand of the single Add that takes a MatMul's output (a Linear layer's bias)."""
    users = consumers.get(node.output[0], [])
    if len(users) != 1 or users[0].op_type != "Add":
        return []
    return [x for x in users[0].input if x != node.output[0] and x in constants]


def _layer_params(node: onnx.NodeProto, consumers, constants: set[str]) -> list[str]:
    """The parameters of one layer node: constant weights and biases, or a normalisation's scale and shift."""
    if node.op_type == "BatchNormalization":
        return [x for x in node.input[1:3] if x in constants]
    params = [x for x in node.input if x and x in constants]
    if node.op_type == "MatMul" and params:
        params += _bias_of_matmul(node, consumers, constants)
    return params


def randomisable_layers(model) -> list[Layer]:
    """The layers the check randomises, top (nearest the output) first: every Conv, ConvTranspose,
    Gemm, MatMul and BatchNormalization node with constant float parameters. `model` is an
    Explainer or an `onnx.ModelProto` whose nodes are in topological order (as an Explainer keeps them)."""
    proto = model.model if isinstance(model, Explainer) else model
    graph = proto.graph
    constants = _float_constants(graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    layers, claimed = [], set()
    for i, node in reversed(list(enumerate(graph.node))):
        if node.op_type not in LAYER_OPS or node.domain not in ("", "ai.onnx"):
            continue
        params = tuple(p for p in dict.fromkeys(_layer_params(node, consumers, constants)) if p not in claimed)
        if params:
            claimed.update(params)
            layers.append(Layer(node.name or f"{node.op_type}_{i}", node.op_type, params))
    return layers


# -- replacing them -------------------------------------------------------------------------------------------
class _Tensors:
    """Read and write a model's constant tensors by value name, wherever the file keeps them."""

    def __init__(self, model: onnx.ModelProto):
        self.where: dict[str, onnx.TensorProto] = {t.name: t for t in model.graph.initializer}
        for n in model.graph.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.where[n.output[0]] = a.t

    def get(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.where[name])

    def set(self, name: str, value: np.ndarray) -> None:
        proto = self.where[name]
        new = numpy_helper.from_array(np.ascontiguousarray(value, dtype=numpy_helper.to_array(proto).dtype), proto.name)
        proto.CopyFrom(new)


def _random_like(a: np.ndarray, rng: np.random.Generator, scheme: str) -> np.ndarray:
    """New values for one tensor at its own scale; a constant tensor is returned as it is."""
    wide = a.astype(np.float64)
    std = float(wide.std()) if a.size else 0.0
    if not np.isfinite(std) or std == 0.0:
        return a.copy()
    if scheme == "permute":
        return rng.permutation(wide.ravel()).reshape(a.shape).astype(a.dtype)
    return (std * rng.standard_normal(a.shape)).astype(a.dtype)


def _layer_values(tensors: _Tensors, layer: Layer, position: int, seed: int, scheme: str) -> dict[str, np.ndarray]:
    """The random replacement of every parameter of a layer (seeded by the layer's place in the model)."""
    out = {}
    for j, name in enumerate(layer.params):
        rng = np.random.default_rng([int(seed), position, j])
        out[name] = _random_like(tensors.get(name), rng, scheme)
    return out


def _check_options(seed, scheme: str, mode: str | None = None) -> None:
    if scheme not in SCHEMES:
        raise InvalidInputError(f"scheme must be one of {list(SCHEMES)}, not {scheme!r}.")
    if mode is not None and mode not in MODES:
        raise InvalidInputError(f"mode must be one of {list(MODES)}, not {mode!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, not {seed!r}.")


def select_layers(available: list[Layer], layers) -> list[Layer]:
    """`layers`: None (all), an int k (the top k), or layer names (taken in the model's top-down order)."""
    if layers is None:
        return list(available)
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        if not 1 <= layers <= len(available):
            raise InvalidInputError(f"layers={layers} asks for more top layers than the model's {len(available)} "
                                    f"randomisable ones (or fewer than one).")
        return list(available[:int(layers)])
    names = [layers] if isinstance(layers, str) else list(layers)
    by_name = {layer.name: layer for layer in available}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise InvalidInputError(f"the model has no randomisable layer named {unknown[0]!r}; "
                                f"its layers, top first, are {list(by_name)[:20]}{' ...' if len(by_name) > 20 else ''}.")
    wanted = set(names)
    return [layer for layer in available if layer.name in wanted]


def randomise(model, layers=None, seed: int = 0, scheme: str = "normal") -> onnx.ModelProto:
    """A copy of `model` (Explainer or ModelProto) with the parameters of `layers` (as in
    `randomisation_cascade`) replaced by random values; the values a layer gets depend only on
    the seed, the scheme and the layer, not on which other layers are randomised with it."""
    _check_options(seed, scheme)
    proto = model.model if isinstance(model, Explainer) else model
    available = randomisable_layers(proto)
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    tensors = _Tensors(copy)
    for layer in select_layers(available, layers):
        for name, value in _layer_values(tensors, layer, available.index(layer), seed, scheme).items():
            tensors.set(name, value)
    return copy


# -- comparing maps -------------------------------------------------------------------------------------------
def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a vector, ties given their mean rank (as Spearman's coefficient needs)."""
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    starts = np.concatenate([[True], sorted_v[1:] != sorted_v[:-1]])
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    counts = np.diff(np.append(first, len(v)))
    mean_rank = first + (counts + 1) / 2.0
    ranks = np.empty(len(v), dtype=np.float64)
    ranks[order] = mean_rank[group]
    return ranks


def spearman(a, b) -> float:
    """Spearman's rank correlation of two arrays of the same size (NaN when either is constant)."""
    ra, rb = _ranks(np.asarray(a, np.float64).ravel()), _ranks(np.asarray(b, np.float64).ravel())
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def _structural_similarity():
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        raise ImportError("the SSIM metric needs scikit-image: pip install scikit-image "
                          "(or pass metrics=('spearman_abs', 'spearman') to leave it out).") from None
    return structural_similarity


def _ssim(a: np.ndarray, b: np.ndarray, structural_similarity) -> float:
    """SSIM of two maps already scaled to [0, 1], with the largest odd window (up to 7) they hold."""
    side = min(a.shape)
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        return float("nan")
    return float(structural_similarity(a, b, data_range=1.0, win_size=win))


def _views(maps: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """(magnitude, signed) per sample: image channels reduced, other ranks kept as they are."""
    m = np.asarray(maps, np.float64)
    if m.ndim == 4:
        return reduce_channels(m, "max_abs", layout), reduce_channels(m, "sum", layout)
    return np.abs(m), m


def compare(original: np.ndarray, randomised: np.ndarray, metrics: Sequence[str], layout: str = "auto") -> dict[str, np.ndarray]:
    """Each metric per sample [N] between two batches of maps of the same shape."""
    mag0, sig0 = _views(original, layout)
    mag1, sig1 = _views(randomised, layout)
    out = {}
    if "spearman_abs" in metrics:
        out["spearman_abs"] = np.array([spearman(a, b) for a, b in zip(mag0, mag1)])
    if "spearman" in metrics:
        out["spearman"] = np.array([spearman(a, b) for a, b in zip(sig0, sig1)])
    if "ssim" in metrics:
        ssim = _structural_similarity()
        n0, n1 = normalize(mag0).astype(np.float64), normalize(mag1).astype(np.float64)
        if n0.ndim == 1:  # one value per sample: nothing to compare structurally
            n0, n1 = n0[:, None], n1[:, None]
        out["ssim"] = np.array([_ssim(a, b, ssim) for a, b in zip(n0, n1)])
    return out


# -- the result --------------------------------------------------------------------------------------------
def _nanmean(a: np.ndarray, axis=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def _json_floats(a) -> list:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, np.float64).ravel()]


@dataclass
class CascadeResult:
    """What the check measured. `steps[k]` names the layer randomised at step k (with every layer
    above it, in the cascading mode); `metrics[name]` is [steps, samples]; `output_change` [steps,
    samples] is the largest |output - original output| of each sample, which shows that each step
    changed the model; `maps` ([steps + 1, N, ...], the original first) is kept with keep_maps=True."""

    method: str
    mode: str
    scheme: str
    seed: int
    steps: list[str]
    op_types: list[str]
    target: np.ndarray | None
    metrics: dict[str, np.ndarray]
    output_change: np.ndarray
    maps: np.ndarray | None = field(default=None, repr=False)

    def mean(self, metric: str) -> np.ndarray:
        """The metric averaged over samples (NaNs left out), one value per step."""
        if metric not in self.metrics:
            raise InvalidInputError(f"this result has no metric {metric!r}; it has {list(self.metrics)}.")
        return _nanmean(self.metrics[metric], axis=1)

    @property
    def spearman_abs(self) -> np.ndarray:
        return self.metrics["spearman_abs"]

    @property
    def spearman(self) -> np.ndarray:
        return self.metrics["spearman"]

    @property
    def ssim(self) -> np.ndarray:
        return self.metrics["ssim"]

    def to_dict(self) -> dict:
        """A JSON-safe summary: settings, steps, per-sample and mean metrics (NaN as null)."""
        n_steps = len(self.steps)
        return {
            "method": self.method, "mode": self.mode, "scheme": self.scheme, "seed": int(self.seed),
            "steps": list(self.steps), "op_types": list(self.op_types),
            "target": None if self.target is None else np.asarray(self.target).tolist(),
            "metrics": {name: {"mean": _json_floats(self.mean(name)),
                               "per_sample": [_json_floats(v) for v in np.asarray(values).reshape(n_steps, -1)]}
                        for name, values in self.metrics.items()},
            "output_change": [_json_floats(v) for v in self.output_change.reshape(n_steps, -1)],
        }

    def plot(self, path, sample: int = 0, max_columns: int = 12) -> Path:
        """A PNG of the metric curves (and, with kept maps, of one sample's maps per step)."""
        return plot_cascades([self], path, sample=sample, max_columns=max_columns)


# -- the check ----------------------------------------------------------------------------------------------
def _attribution(ex: Explainer, inputs, method: str, target, options: dict) -> np.ndarray:
    maps = ex.attribute(inputs, target=target, method=method, **options)
    if isinstance(maps, dict):
        raise InvalidInputError("the randomisation check compares one map per sample: explain a single input "
                                "(wrt= one name, not a list).")
    return np.asarray(maps)


def _output_change(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    diff = np.abs(np.asarray(after, np.float64) - np.asarray(before, np.float64))
    return diff.reshape(len(diff), -1).max(axis=1) if diff.ndim else diff.reshape(1)


def _fixed_target(ex: Explainer, inputs, target):
    """The class each step explains: the original model's top class unless given (seeds pass as they are)."""
    if target is not None:
        return target
    return ex.top_classes(ex.feeds(inputs)).value


def randomisation_cascade(explainer, inputs, method: str = "gradient", target=None, layers=None, seed: int = 0,
                          *, mode: str = "cascading", scheme: str = "normal", metrics: Sequence[str] = METRICS,
                          layout: str = "auto", keep_maps: bool = False, **method_options) -> CascadeResult:
    """Adebayo et al.'s model-parameter randomisation check of `method` on `inputs`.

    `explainer`: an Explainer (or a model path, bytes, ModelProto). `target`: fixed for every step,
    each sample's top class on the original model by default. `layers`: None (all, top first), an
    int k (the top k) or layer names (see `randomisable_layers`). `mode`: "cascading" (step k
    randomises the top k + 1 layers) or "independent" (step k randomises layer k alone). `scheme`:
    "normal" or "permute" (see the module's docstring); `seed` makes it reproducible. Method options
    (n_samples, n_steps, layer, ...) go to `Explainer.attribute`. Each step's model is built in
    memory and explained by a fresh Explainer on the same providers."""
    _check_options(seed, scheme, mode)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise InvalidInputError(f"metrics must be some of {list(METRICS)}, not {list(metrics)!r}.")
    if "ssim" in metrics:
        _structural_similarity()  # fail before any work when scikit-image is missing
    ex = explainer if isinstance(explainer, Explainer) else Explainer(explainer)
    available = randomisable_layers(ex.model)
    if not available:
        raise InvalidInputError("the model has no layer to randomise (no Conv, ConvTranspose, Gemm, MatMul or "
                                "BatchNormalization node with constant float weights).")
    chosen = select_layers(available, layers)
    fixed = _fixed_target(ex, inputs, target)
    original = _attribution(ex, inputs, method, fixed, method_options)
    clean = ex.predict(inputs)
    working = onnx.ModelProto()
    working.CopyFrom(ex.model)
    tensors = _Tensors(working)
    values = {name: [] for name in metrics}
    changes, kept = [], [original] if keep_maps else None
    for layer in chosen:
        saved = {name: tensors.get(name) for name in layer.params}
        for name, value in _layer_values(tensors, layer, available.index(layer), seed, scheme).items():
            tensors.set(name, value)
        step = Explainer(working, providers=ex.providers, output=ex.output, session_options=ex._options)
        maps = _attribution(step, inputs, method, fixed, method_options)
        changes.append(_output_change(clean, step.predict(inputs)))
        for name, per_sample in compare(original, maps, metrics, layout).items():
            values[name].append(per_sample)
        if kept is not None:
            kept.append(maps)
        del step
        gc.collect()  # one step's sessions at a time
        if mode == "independent":
            for name, value in saved.items():
                tensors.set(name, value)
    return CascadeResult(
        method=method, mode=mode, scheme=scheme, seed=int(seed), steps=[layer.name for layer in chosen],
        op_types=[layer.op_type for layer in chosen],
        target=None if fixed is None else np.asarray(fixed),
        metrics={name: np.stack(v) for name, v in values.items()}, output_change=np.stack(changes),
        maps=np.stack(kept) if kept is not None else None,
    )


# -- the picture -------------------------------------------------------------------------------------------
def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting the randomisation cascade needs matplotlib: pip install matplotlib.") from None
    return plt


def _columns(n_steps: int, max_columns: int) -> list[int]:
    """Which kept maps to draw: the original (0) and up to max_columns - 1 steps, evenly spread, the last included."""
    if n_steps + 1 <= max_columns:
        return list(range(n_steps + 1))
    picks = np.linspace(1, n_steps, max_columns - 1).round().astype(int)
    return [0] + sorted(set(picks.tolist()))


def plot_cascades(results: Sequence[CascadeResult], path, sample: int = 0, max_columns: int = 12,
                  image: np.ndarray | None = None, layout: str = "auto") -> Path:
    """One PNG for several methods' checks on the same model: a row of one sample's maps per step
    (magnitudes, per-map min-max) for each result that kept its maps, then one panel per metric
    with each method's mean curve and its spread over samples. `image` adds the input itself."""
    plt = _pyplot()
    results = list(results)
    if not results:
        raise InvalidInputError("plot_cascades needs at least one CascadeResult.")
    with_maps = [r for r in results if r.maps is not None]
    metrics = [m for m in METRICS if all(m in r.metrics for r in results)]
    steps = results[0].steps
    cols = _columns(len(steps), max_columns)
    n_cols = len(cols) + (image is not None)
    fig_w = max(2.0 + 1.2 * n_cols, 4.5 * len(metrics))
    heights = [1.2] * len(with_maps) + ([3.2] if metrics else [])
    fig = plt.figure(figsize=(fig_w, sum(heights) + 0.8), dpi=110)
    grid = fig.add_gridspec(len(heights), 1, height_ratios=heights, hspace=0.45)
    labels = ["original"] + list(steps)
    for row, r in enumerate(with_maps):
        sub = grid[row].subgridspec(1, n_cols, wspace=0.05)
        mag, _ = _views(r.maps[:, sample], layout)
        if image is not None:
            ax = fig.add_subplot(sub[0])
            img = np.asarray(image, np.float64)
            ax.imshow(reduce_channels(img[None], "sum", layout)[0] if img.ndim == 3 else img, cmap="gray")
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title("input", fontsize=7)
            ax.set_ylabel(r.method, fontsize=8)
        for j, k in enumerate(cols):
            ax = fig.add_subplot(sub[j + (image is not None)])
            ax.imshow(normalize(mag[k]), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(labels[k] if k == 0 else f"{k}: {labels[k]}", fontsize=6)
            if j == 0 and image is None:
                ax.set_ylabel(r.method, fontsize=8)
    if metrics:
        sub = grid[len(with_maps)].subgridspec(1, len(metrics), wspace=0.3)
        x = np.arange(len(steps) + 1)
        for j, metric in enumerate(metrics):
            ax = fig.add_subplot(sub[j])
            for r in results:
                per = np.asarray(r.metrics[metric], np.float64)
                mean = np.concatenate([[1.0], _nanmean(per, axis=1)])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    std = np.concatenate([[0.0], np.nanstd(per, axis=1)])
                ax.plot(x, mean, marker="o", ms=3, label=r.method)
                ax.fill_between(x, mean - std, mean + std, alpha=0.2)
            ax.axhline(0.0, color="gray", lw=0.5)
            ax.set_ylim(-1.05 if metric == "spearman" else -0.3, 1.05)
            ax.set_title(metric.replace("_", " "), fontsize=9)
            ax.set_xticks(x)
            ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=6)
            ax.set_xlabel(f"{results[0].mode} randomisation, top layer first", fontsize=7)
            if j == 0:
                ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return write_bytes_atomic(buf.getvalue(), path)
