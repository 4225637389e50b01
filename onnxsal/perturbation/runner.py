"""The score of the explained target on many perturbed copies of one input, in bounded batches.

Every perturbation method reduces to: make copies of the explained input (a copy belongs to one
sample n), run them through the model, and read each copy's score. The score is the one the
gradient methods differentiate (`integrated_gradients.score_value`): the target class's value at
the softmax's input (the logit) when the explained output is a softmax and softmax="identity",
the output itself with softmax="keep" (or when the output is no softmax); summed over the other
axes of a segmentation map; Σ seed·value for a seed tensor.

Copies go through one onnxruntime session, at most `perturbations_per_eval` × N of them per run
(Captum's meaning: N the number of samples), or as many as a budget of input elements allows when
it is not given; the scores are taken per chunk, so only one float per copy is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError
from ..forward import forward_batches
from ..inputs import Target, take
from ..methods.graphs import GraphEditor
from ..methods.integrated_gradients import score_value
from ..runtime import create_session

INPUT_BUDGET = 1 << 22  # elements of perturbed input per run when perturbations_per_eval is not given


@dataclass
class Problem:
    """One attribute call of a perturbation method: what is perturbed and what is scored."""

    explainer: object
    feeds: dict[str, np.ndarray]
    x: str  # the explained (perturbed) input
    axes: dict[str, int | None]
    target: Target  # "target" (indices) or "tensor" (a seed), never "argmax"
    score: str  # the value whose target entry is the score
    session: object
    per_eval: int | None
    progress: bool | None

    @property
    def value(self) -> np.ndarray:
        return self.feeds[self.x]

    @property
    def n(self) -> int:
        return self.value.shape[0]

    def chunk_size(self) -> int:
        if self.per_eval is not None:
            return int(self.per_eval) * self.n
        return max(1, INPUT_BUDGET // max(1, int(np.prod(self.value.shape[1:]))))

    def scores(self, make_x: Callable[[np.ndarray], np.ndarray], n_idx: np.ndarray, desc: str) -> np.ndarray:
        """float64 scores of len(n_idx) copies; `make_x(idx)` builds copies idx, copy i perturbing sample n_idx[i]."""
        others = {k: v for k, v in self.feeds.items() if k != self.x}

        def chunk(idx):
            feeds = {k: take(v, self.axes.get(k), n_idx[idx]) for k, v in others.items()}
            feeds[self.x] = np.ascontiguousarray(make_x(idx), dtype=self.value.dtype)
            return feeds

        return forward_batches(self.explainer, chunk, len(n_idx), self.chunk_size(), output=self.score,
                               progress=self.progress, desc=desc, session=self.session,
                               reduce=lambda idx, out: self.pick(out, n_idx[idx]))

    def clean_scores(self, x: np.ndarray | None = None) -> np.ndarray:
        """The scores of the samples themselves (or of `x`, one row per sample)."""
        x = self.value if x is None else x
        return self.scores(lambda idx: x[idx], np.arange(self.n), "clean")

    def pick(self, values: np.ndarray, n_idx: np.ndarray) -> np.ndarray:
        """Each copy's score from the score value's rows (copy i belongs to sample n_idx[i])."""
        k = values.shape[0]
        if self.target.kind == "tensor":
            seed = self.target.value[n_idx]
            return (values.reshape(seed.shape).astype(np.float64) * seed).reshape(k, -1).sum(axis=1)
        rows = values.reshape(k, values.shape[1], -1) if values.ndim > 2 else values.reshape(k, -1, 1)
        return rows[np.arange(k), self.target.value[n_idx]].astype(np.float64).sum(axis=-1)


def score_session(explainer, name: str):
    """A session returning `name`: the forward session for a model output, else the model with
    that inner value exposed (cached, shared with Integrated Gradients' scores)."""
    if name in {o.name for o in explainer.outputs}:
        return explainer.forward_session
    key = ("scores", name)
    if key not in explainer._sessions:
        model = GraphEditor(explainer.model).finish([(name, explainer.view.elem_type(name) or 1, None)])
        explainer._sessions[key] = (None, create_session(model, explainer.providers, explainer._options))
    return explainer._sessions[key][1]


def explained_input(explainer, wrt) -> str:
    """The one model input a perturbation method perturbs."""
    names = explainer._wrt(wrt)
    if len(names) != 1:
        raise InvalidInputError(f"perturbation methods explain one input at a time; wrt names {len(names)}: {list(names)}.")
    x = names[0]
    spec = next((s for s in explainer.inputs if s.name == x), None)
    if spec is None:
        raise InvalidInputError(f"perturbation methods perturb a model input; {x!r} is not one "
                                f"(inputs: {[s.name for s in explainer.inputs]}).")
    if spec.dtype.kind != "f":
        raise InvalidInputError(f"perturbation methods perturb a float input; {x!r} holds {spec.dtype.name} values.")
    return x


def prepare(explainer, feeds, target: Target, softmax: str, wrt, perturbations_per_eval=None, progress=None) -> Problem:
    """The checked call: the input to perturb, the target fixed on the clean input, the score session."""
    if softmax not in ("identity", "keep"):
        raise InvalidInputError(f"softmax must be 'identity' or 'keep', not {softmax!r}.")
    x = explained_input(explainer, wrt)
    if perturbations_per_eval is not None and (isinstance(perturbations_per_eval, bool) or not isinstance(perturbations_per_eval, (int, np.integer))
                                               or perturbations_per_eval < 1):
        raise InvalidInputError(f"perturbations_per_eval must be a positive integer, not {perturbations_per_eval!r}.")
    if target.kind == "tensor" and target.axis != 0:
        raise InvalidInputError("perturbation methods need the explained output's batch on axis 0; "
                                f"this seed holds it on axis {target.axis}.")
    axes = explainer.batch_axes(feeds, x)
    if target.kind == "argmax":
        target = explainer.top_classes(feeds)
    name = score_value(explainer, softmax)
    return Problem(explainer, feeds, x, axes, target, name, score_session(explainer, name), perturbations_per_eval, progress)
