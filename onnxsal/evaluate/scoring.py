"""What every evaluation metric shares: the model's one float input, the class explained, and the
score read off the model's output for it (a class probability, as the RISE paper plots, or the raw
output, as Captum's metrics take it).

The metrics run thousands of perturbed copies, so the choices made here (which class, whether a
softmax is applied) are made once, on the clean inputs, and then applied to every copy alike.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from ..explainer import Explainer
from ..runtime import run

SCORES = ("probability", "softmax", "raw")


def as_explainer(model, providers="auto") -> Explainer:
    """An Explainer as given, or one made on a path, bytes or ModelProto."""
    return model if isinstance(model, Explainer) else Explainer(model, providers=providers)


def image_input(explainer: Explainer, inputs) -> tuple[str, np.ndarray]:
    """(name, array) of the one float input the metrics perturb; a model with other inputs is refused."""
    if isinstance(inputs, dict):
        if len(inputs) != 1:
            raise InvalidInputError("evaluation perturbs one input: pass a single array for a single-input model.")
        inputs = next(iter(inputs.values()))
    if len(explainer.inputs) != 1 or explainer.inputs[0].dtype.kind != "f":
        raise InvalidInputError("evaluation needs a model with exactly one float input; this one has "
                                f"{[s.name for s in explainer.inputs]}.")
    feeds = explainer.feeds(inputs)
    name = explainer.inputs[0].name
    x = feeds[name]
    if x.ndim < 2 or len(x) < 1:
        raise InvalidInputError(f"evaluation needs a batch of samples [N, ...], not an array of shape {x.shape}.")
    return name, x


def forward(explainer: Explainer, name: str, x: np.ndarray) -> np.ndarray:
    """The explained output on `x` as one run (the clean inputs: a batch the caller already holds)."""
    return run(explainer.forward_session, [explainer.output], {name: x})[0]


def class_scores(outputs: np.ndarray) -> np.ndarray:
    """The output as [m, K] (a scalar output per sample is one class); other shapes are refused."""
    out = np.asarray(outputs, np.float64)
    if out.ndim == 1:
        return out[:, None]
    flat = out.reshape(len(out), -1)
    if out.ndim > 2 and flat.shape[1] != out.shape[1]:
        raise InvalidInputError(f"evaluation needs a classifier output [N, classes] or a score per sample; "
                                f"this output has shape {out.shape[1:]} per sample.")
    return flat


def resolve_target(target, clean: np.ndarray) -> np.ndarray:
    """One class per sample: each sample's top class on the clean input (None), an int, or one int each."""
    scores = class_scores(clean)
    n, k = scores.shape
    if target is None:
        return scores.argmax(axis=1).astype(np.int64)
    t = np.asarray(target)
    if t.dtype.kind not in "iu" or t.ndim > 1 or (t.ndim == 1 and len(t) != n):
        raise InvalidInputError(f"target must be None, a class index or one class index per sample ({n}), not {target!r}.")
    t = np.broadcast_to(t.astype(np.int64), (n,)).copy()
    if t.min() < 0 or t.max() >= k:
        raise InvalidInputError(f"target class {int(t.max() if t.max() >= k else t.min())} is out of range: "
                                f"the output has {k} classes (0..{k - 1}).")
    return t


class Scorer:
    """The score of the target class read off model outputs, the same way for every copy.

    "probability": the output itself when it already is a distribution on the clean inputs (a
    softmax head: non-negative rows that sum to 1), else its softmax; "softmax": always the softmax
    of the output; "raw": the output as it is (what Captum's infidelity compares)."""

    def __init__(self, how: str, clean: np.ndarray):
        if how not in SCORES:
            raise InvalidInputError(f"score must be one of {list(SCORES)}, not {how!r}.")
        scores = class_scores(clean)
        is_distribution = bool(np.all(scores >= 0) and np.allclose(scores.sum(1), 1.0, atol=1e-3))
        self.how = how
        self.softmax = how == "softmax" or (how == "probability" and scores.shape[1] > 1 and not is_distribution)

    def __call__(self, outputs: np.ndarray, target: np.ndarray) -> np.ndarray:
        scores = class_scores(outputs)
        if self.softmax:
            scores = np.exp(scores - scores.max(axis=1, keepdims=True))
            scores /= scores.sum(axis=1, keepdims=True)
        column = np.minimum(np.asarray(target), scores.shape[1] - 1)  # a single-score output ignores the class
        return scores[np.arange(len(scores)), column]


def call_perturb(func, x: np.ndarray, rng: np.random.Generator):
    """A perturbation function called as `func(x, rng)`, or `func(x)` when it takes one argument."""
    import inspect

    try:
        n = len([p for p in inspect.signature(func).parameters.values()
                 if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])
    except (TypeError, ValueError):
        n = 2
    return func(x) if n == 1 else func(x, rng)
