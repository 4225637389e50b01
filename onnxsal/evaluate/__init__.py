"""Measuring whether a saliency map can be trusted: `onnxsal.evaluate(model, images, methods=..., metrics=...)`.

    >>> result = onnxsal.evaluate("model.onnx", x, methods=["gradient", "gradcam"], metrics=["deletion", "insertion"])
    >>> print(result.table())            # one row per method
    >>> result.save("out/")               # evaluation.txt / .md / .json, curves.png

Metrics (`METRICS`): deletion and insertion AUC (Petsiuk et al. 2018), MoRF and LeRF AOPC (Samek et
al. 2017) in `curves`; Captum's infidelity and max-sensitivity in `robustness`; with `sanity=True`,
the model-parameter randomisation cascade (Adebayo et al. 2018) of `randomisation`. Every perturbed
copy goes through the model's one onnxruntime session in chunks of at most `per_eval`.
"""

from __future__ import annotations

import sys
import time
import types

import numpy as np

from .. import methods as _methods
from ..errors import InvalidInputError, OnnxsalError
from . import curves, robustness
from .curves import Curve, deletion, insertion, perturbation_curve, pixel_flipping
from .report import METRICS, Evaluation
from .robustness import infidelity, sensitivity_max
from .scoring import SCORES, as_explainer, forward, image_input, resolve_target

DEFAULT_METHODS = ("gradient", "guided_backprop", "smoothgrad", "integrated_gradients", "gradcam")
DEFAULT_METRICS = tuple(METRICS)

__all__ = ["Curve", "DEFAULT_METHODS", "DEFAULT_METRICS", "Evaluation", "METRICS", "deletion", "evaluate",
           "evaluate_images", "infidelity", "insertion", "perturbation_curve", "pixel_flipping", "sensitivity_max"]


def _names(given, known, what: str) -> list[str]:
    """A list of names (or one comma-separated string), each checked against `known`."""
    names = [s.strip() for s in given.split(",")] if isinstance(given, str) else list(given)
    names = [n for n in names if n]
    if not names:
        raise InvalidInputError(f"no {what}s were given; choose from {sorted(known)}.")
    for n in names:
        if n not in known:
            raise InvalidInputError(f"unknown {what} {n!r}; choose from {sorted(known)}.")
    return list(dict.fromkeys(names))


def _metric(kind: str, ex, x, attr, t, method: str, common: dict, options: dict):
    """(values [N], curve or None) of one metric for one method's maps."""
    if kind in curves.KINDS:
        opts = {"steps": common["steps"], "score": common["score"], "seed": common["seed"],
                "per_eval": common["per_eval"], "progress": common["progress"], **options}
        c = perturbation_curve(ex, x, attr, t, kind=kind, **opts)
        return getattr(c, METRICS[kind][2]), c
    if kind == "infidelity":
        opts = {"normalize": True, "score": common["score"], "seed": common["seed"], "per_eval": common["per_eval"],
                "progress": common["progress"], **options}
        return infidelity(ex, x, attr, t, **opts), None
    opts = {"seed": common["seed"], "per_eval": common["per_eval"], "batch_size": common["batch_size"], **options}
    return sensitivity_max(ex, x, method, t, attributions=attr, method_options=common["method_options"].get(method), **opts), None


def evaluate(model, inputs, methods=DEFAULT_METHODS, metrics=DEFAULT_METRICS, target=None, *,
             method_options: dict | None = None, metric_options: dict | None = None, score: str = "probability",
             steps: int = 50, seed: int = 0, batch_size: int | None = 16, per_eval: int | None = 64,
             sanity: bool = False, sanity_options: dict | None = None, providers="auto", progress: bool | None = None,
             names=None) -> Evaluation:
    """Evaluate attribution `methods` on `inputs` (an array [N, ...] for the model's one float input)
    with `metrics`, and return an `Evaluation` (table, to_json, plot, save).

    `target`: each input's top class (None), one class, or one per input; every method explains it.
    `method_options`: {method: {option: value}} passed to `Explainer.attribute` (n_samples, layer, ...).
    `metric_options`: {metric: {option: value}} for the metric functions (baseline, patch, reduce,
    n_perturb_samples, perturb_func, normalize, ...). `score`: "probability" (the RISE paper's class
    probability; the output's softmax unless it already is one), "softmax" or "raw". Infidelity is
    normalised (Captum's `normalize=True`) unless told otherwise, so methods of different scales compare.
    `sanity=True` adds the randomisation cascade of each method (`sanity_options` passed to it)."""
    method_list = _names(methods, set(_methods.available()), "method")
    metric_list = _names(metrics, set(METRICS), "metric")
    if score not in SCORES:
        raise InvalidInputError(f"score must be one of {list(SCORES)}, not {score!r}.")
    method_options = dict(method_options or {})
    metric_options = dict(metric_options or {})
    for given, chosen, what in ((method_options, method_list, "method"), (metric_options, metric_list, "metric")):
        for key in given:
            if key not in chosen:
                raise InvalidInputError(f"options were given for {key!r}, which is not among the {what}s evaluated {chosen}.")
    for m in method_list:
        _methods.check_options(_methods.get(m), method_options.get(m, {}))
    cascade = _cascade() if sanity else None
    ex = as_explainer(model, providers)
    name, x = image_input(ex, inputs)
    t = resolve_target(target, forward(ex, name, x))
    common = {"steps": steps, "score": score, "seed": seed, "per_eval": per_eval, "progress": progress,
              "batch_size": batch_size, "method_options": method_options}
    values, curve_sets, seconds, cascades = {}, {}, {}, {}
    for m in method_list:
        start = time.perf_counter()
        attr = ex.attribute(x, target=t, method=m, batch_size=batch_size, **method_options.get(m, {}))
        seconds[m] = {"attribution": time.perf_counter() - start}
        values[m], curve_sets[m] = {}, {}
        for k in metric_list:
            start = time.perf_counter()
            values[m][k], c = _metric(k, ex, x, attr, t, m, common, metric_options.get(k, {}))
            if c is not None:
                curve_sets[m][k] = c
            seconds[m][k] = time.perf_counter() - start
        if cascade is not None:
            start = time.perf_counter()
            cascades[m] = cascade(ex, x, m, target=t, **method_options.get(m, {}), **(sanity_options or {}))
            seconds[m]["sanity"] = time.perf_counter() - start
    settings = {"score": score, "steps": steps, "seed": seed, "per_eval": per_eval, "batch_size": batch_size,
                "method_options": _plain(method_options), "metric_options": _plain(metric_options),
                "model_output": ex.output, "input_shape": list(x.shape)}
    labels = list(names) if names is not None else [f"sample {i}" for i in range(len(x))]
    return Evaluation(method_list, metric_list, values, curve_sets, seconds, labels, t, settings, cascades)


def _cascade():
    """`randomisation.randomisation_cascade`, or one sentence when this install lacks it."""
    try:
        from .randomisation import randomisation_cascade
    except ImportError:
        raise InvalidInputError("the randomisation sanity check is not available in this onnxsal install.") from None
    return randomisation_cascade


def _plain(options: dict) -> dict:
    """Options as JSON can hold them (functions and arrays by their repr)."""
    def plain(v):
        if isinstance(v, dict):
            return {str(k): plain(w) for k, w in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(w) for w in v]
        return v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)[:80]
    return plain(options)


def load_images(explainer, images, preset: str = "auto", size: tuple[int, int] | None = None):
    """Image files (or folders of them) as the model's input batch, read and preprocessed as
    `onnxsal explain` does. Returns (x, stems, skipped) with skipped = [(path, why)] of unreadable files."""
    from ..batch import output_stems
    from ..images import collect, image_input as input_of, load, preprocess, preset_from_metadata

    floats = [s for s in explainer.inputs if s.dtype.kind == "f"]
    if len(explainer.inputs) != 1 or not floats:
        raise InvalidInputError("evaluating image files needs a model with one float image input; use the Python API.")
    spec = input_of(floats[0], size)
    if preset == "auto":
        preset = preset_from_metadata({p.key: p.value for p in explainer.model.metadata_props})
    paths = collect(images)
    stems = output_stems(paths)
    pixels, kept, skipped = [], [], []
    for path, stem in zip(paths, stems):
        try:
            pixels.append(load(path, (spec.height, spec.width), spec.channels))
            kept.append(stem)
        except OnnxsalError as exc:
            skipped.append((str(path), str(exc)))
    if not pixels:
        raise InvalidInputError(f"none of the {len(paths)} images could be read: {skipped[0][1]}")
    return spec.to_model(preprocess(np.stack(pixels), preset)), kept, skipped


def evaluate_images(model, images, methods=DEFAULT_METHODS, metrics=DEFAULT_METRICS, *, preset: str = "auto",
                    size: tuple[int, int] | None = None, providers="auto", **options) -> Evaluation:
    """`evaluate` on image files or folders (what `onnxsal evaluate` runs); unreadable files are
    listed in the result's `skipped`, the others evaluated."""
    _names(methods, set(_methods.available()), "method")  # names are checked before any image is read
    _names(metrics, set(METRICS), "metric")
    ex = as_explainer(model, providers)
    x, stems, skipped = load_images(ex, images, preset, size)
    result = evaluate(ex, x, methods, metrics, names=stems, **options)
    result.skipped = skipped
    result.settings["preprocess"] = preset
    return result


class _CallableModule(types.ModuleType):
    """`onnxsal.evaluate` is this package and, called, the `evaluate` function: so `onnxsal.evaluate(...)`
    works and so do `import onnxsal.evaluate.curves` and `from onnxsal.evaluate import deletion`, which a
    function of the package's name, re-exported in its place, would break."""

    def __call__(self, *args, **kwargs) -> Evaluation:
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
