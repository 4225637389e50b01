"""DeepLIFT (Shrikumar et al. 2017), DeepLiftShap and GradientShap (expected gradients), as Captum
defines them.

- deeplift: (x − x_ref) ⊙ m, with m the multiplier of the input under the Rescale rule (Captum's
  DeepLift) or RevealCancel (`onnxsal.relevance.deeplift`). One graph run: the model runs once on
  [x ; x_ref] stacked on the batch axis, the backward pass over both halves, and the class explained
  is the same for both halves (the top class of x, or the given target).
- deeplift_shap: the mean over a set of B baselines b of deeplift(x, b) (Captum's DeepLiftShap);
  the N·B pairs run through the deeplift graph in bounded batches.
- gradient_shap: n_samples copies per sample; copy s draws noise ε ~ N(0, stdevs²), a baseline b
  from the set and α ~ U(0, 1), and the attribution is the mean of (x + ε − b) ⊙ ∂F/∂x at
  b + α(x + ε − b) (Captum's GradientShap). Seeded (`seed`); the draws can also be given
  (`noise` (N, S, *sample), `baseline_index` (N, S), `alphas` (N, S)), e.g. to replay Captum's.

Baselines: zeros by default, a scalar, one array of the sample's shape or one per sample
(deeplift), a set [B, *sample] (deeplift_shap, gradient_shap). return_convergence_delta=True gives
Σ attribution − (F(x) − F(x_ref)) per sample (deeplift; deeplift_shap against the mean over b).

The compiled graph (`onnxsal.compile(model, method="deeplift")`): the model's inputs, plus one
graph input `<input>_baseline` per explained input. It is an overridable initializer: when it is
not fed, its default (zeros, or the `baselines=` given to compile: a scalar or one array of the
sample's shape) is used; a caller may feed any array that broadcasts to the input (one baseline
[1, ...], or one per sample [N, ...]). The graph's outputs are the model's outputs for x, plus the
attribution `<input>_deeplift`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..autodiff import GRADIENT, SeedSpec, differentiate
from ..errors import InvalidInputError, UnsupportedModelError
from ..autodiff.graph import GraphView
from ..inputs import Target, take
from ..prepare import lower
from ..relevance.deeplift import DEFAULT_EPS, RULES, deeplift_rules, half, pair, unpairable
from ..runtime import run
from . import Method, register
from .expand import Stacked
from .graphs import GraphEditor
from .integrated_gradients import baseline_for, scores
from .sampling import INPUT_BUDGET, base_graph, fixed_target


def baseline_input(name: str) -> str:
    """The graph input that takes the reference of explained input `name`."""
    return f"{name}_baseline"


def loaded(baselines):
    """Baselines as given, or read from a .npy file when given as a path (the CLI's `--option baselines=refs.npy`)."""
    if isinstance(baselines, str):
        try:
            return np.load(baselines, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"could not read the baselines from {baselines!r}: {exc}") from None
    return baselines


def _check(rule: str, eps) -> None:
    if rule not in RULES:
        raise InvalidInputError(f"unknown DeepLIFT rule {rule!r}; choose one of {list(RULES)}.")
    if not np.isscalar(eps) or not eps >= 0:
        raise InvalidInputError(f"eps must be a number >= 0, not {eps!r}.")


class Paired(Stacked):
    """The model run on [x ; x_ref], x_ref fed through the graph input `<x>_baseline` (broadcast to x)."""

    def __init__(self, explainer, wrt: tuple[str, ...], baselines=None):
        super().__init__(explainer, wrt, 1, "deeplift")
        self.wrt = wrt
        g = self.ed.model.graph
        taken = {v.name for v in list(g.input) + list(g.output)} | {t.name for t in g.initializer} | \
            {o for n in g.node for o in n.output}
        self.reference = {}
        for w in wrt:
            spec = next(s for s in explainer.inputs if s.name == w)
            vi = next(i for i in g.input if i.name == w)
            dims = vi.type.tensor_type.shape.dim
            if len(dims) and dims[0].HasField("dim_value"):  # a file that fixes the batch: 2N must run inside
                dims[0].Clear()
                dims[0].dim_param = "N"
            name = baseline_input(w)
            if name in taken:
                raise UnsupportedModelError(f"the model already has a value named {name!r}, the name DeepLIFT gives "
                                            f"the baseline input of {w!r}.")
            self.e.fresh(name)
            rank = len(spec.shape)
            g.input.append(helper.make_tensor_value_info(name, spec.elem_type, [None] * rank))
            g.initializer.append(numpy_helper.from_array(_default_baseline(w, spec, baselines), name))
            self.reference[w] = self.e.expand_like(name, w)
            self.e.op("Concat", [w, self.reference[w]], axis=0, out=self.stacked[w])

    def gradients(self, rule: str, softmax: str, target_kind: str, eps: float) -> dict[str, str]:
        """The gradient of the stacked copy of each explained input under the DeepLIFT rule, [2N, ...]."""
        seed, new_inputs = self.seed(target_kind)
        y = self.outputs[self.output]
        for name, stacked in self.outputs.items():
            self.e.op("Identity", [self.e.block(stacked, 2, 0)], out=name)
        forward = self.ed.finish([])
        forward.graph.input.extend(new_inputs)
        forward.graph.value_info.extend(self._stacked_types(self.wrt))
        wrt = [self.stacked[w] for w in self.wrt]
        forward = lower(forward, GRADIENT.supports, wrt, y)
        _check_output(forward, y, self.output)
        rules = deeplift_rules(rule, wrt, y, softmax, eps)
        gg = differentiate(forward, rules, wrt=wrt, output=y, seed=SeedSpec("value", seed))
        self.ed = GraphEditor(gg.model, prefix=self.e.prefix)
        self.e = self.ed.e
        self._drop = tuple(gg.grads.values())
        self.target_input = next((i.name for i in new_inputs if i.type.tensor_type.elem_type == onnx.TensorProto.INT64), None)
        self.seed_input = next((i.name for i in new_inputs if i.type.tensor_type.elem_type != onnx.TensorProto.INT64), None)
        return {w: gg.grads[self.stacked[w]] for w in self.wrt}


def _default_baseline(name: str, spec, baselines) -> np.ndarray:
    """The compiled graph's default reference: [1, ...] of a scalar or of one sample-shaped array."""
    b = loaded(baselines.get(name) if isinstance(baselines, dict) else baselines)
    rank = len(spec.shape)
    b = np.zeros((), spec.dtype) if b is None else np.asarray(b, dtype=spec.dtype)
    if b.ndim == 0:
        return b.reshape((1,) * rank)
    if b.ndim == rank - 1:
        b = b[None]
    sample = tuple(spec.shape[1:])
    if b.ndim != rank or b.shape[0] != 1 or any(isinstance(d, int) and d > 0 and d != s for d, s in zip(sample, b.shape[1:])):
        raise InvalidInputError(f"a compiled DeepLIFT takes a scalar baseline for {name!r} or one of the sample's shape "
                                f"{tuple(d if isinstance(d, int) else '?' for d in sample)}, not shape {b.shape}; "
                                f"feed '{baseline_input(name)}' at run time for one baseline per sample.")
    return b


def _check_output(model: onnx.ModelProto, y: str, output: str) -> None:
    why = unpairable(f"output {output!r}", y, GraphView(model).shape(y))
    if why:
        raise UnsupportedModelError(why)


def build_deeplift(explainer, target_kind, softmax, wrt, rule="rescale", baselines=None, eps=DEFAULT_EPS):
    _check(rule, eps)
    pg = Paired(explainer, wrt, baselines)
    grads = pg.gradients(rule, softmax, target_kind, float(eps))
    e = pg.e
    out = {}
    for w in wrt:
        p = pair(e, grads[w])
        d = e.op("Sub", [w, pg.reference[w]])
        if rule == "rescale":
            a = e.op("Mul", [d, half(e, p, 0)])
        else:  # m⁺Δx⁺ + m⁻Δx⁻
            zero = e.scalar(0.0, _dtype(explainer, w))
            a = e.op("Add", [e.op("Mul", [e.op("Relu", [d]), half(e, p, 0)]),
                             e.op("Mul", [e.op("Min", [d, zero]), half(e, p, 1)])])
        out[w] = e.op("Identity", [a], out=e.fresh(f"{w}_deeplift"))
    return pg.finish(out)


def _dtype(explainer, name: str) -> np.dtype:
    return next(s for s in explainer.inputs if s.name == name).dtype


# -- running over many (input, reference) pairs -----------------------------------------------------------------
def _pairs(explainer, feeds, wrt, per_sample: int, run_chunk, internal_batch_size=None) -> dict[str, np.ndarray]:
    """Σ over the `per_sample` copies of each sample of run_chunk(chunk feeds, n_idx, s_idx) -> {w: [k, ...]},
    in chunks of at most `internal_batch_size` copies (default: a budget of input elements)."""
    axes = explainer.batch_axes(feeds, wrt)
    n = feeds[explainer._batch_input(wrt)].shape[0]
    total = n * per_sample
    per_copy = sum(int(np.prod(feeds[w].shape[1:])) for w in wrt) or 1
    step = int(internal_batch_size) if internal_batch_size else max(1, min(total, INPUT_BUDGET // per_copy))
    if step < 1:
        raise InvalidInputError("internal_batch_size must be a positive integer.")
    acc = {w: np.zeros(feeds[w].shape, np.float64) for w in wrt}
    for lo in range(0, total, step):
        combo = np.arange(lo, min(lo + step, total))
        n_idx, s_idx = combo // per_sample, combo % per_sample
        chunk = {name: take(value, axes[name], n_idx) for name, value in feeds.items()}
        outs = run_chunk(chunk, n_idx, s_idx, axes)
        for w in wrt:
            np.add.at(acc[w], n_idx, outs[w].astype(np.float64))
    return acc


def _deeplift_runner(explainer, target: Target, softmax, wrt, rule, eps, references, batch_size):
    graph, session = explainer.method_graph("deeplift", target.kind, softmax, wrt, rule=rule, eps=eps)

    def run_chunk(chunk, n_idx, s_idx, axes):
        feeds = dict(chunk)
        axes = dict(axes)
        for w in wrt:
            feeds[baseline_input(w)] = references[w](n_idx, s_idx)
            axes[baseline_input(w)] = 0
        t = Target(target.kind, target.take(n_idx), target.axis) if target.kind != "argmax" else target
        return explainer.run_graph(graph, session, feeds, t, batch_size, axes=axes)

    return run_chunk


def _gap(explainer, feeds, wrt, target, softmax, attributions, references) -> np.ndarray:
    """Σ attribution − (F(x) − F(x_ref)) per sample."""
    at_ref = dict(feeds)
    at_ref.update(references)
    change = scores(explainer, feeds, target, softmax) - scores(explainer, at_ref, target, softmax)
    total = sum(a.reshape(a.shape[0], -1).sum(axis=1, dtype=np.float64) for a in attributions.values())
    return total - change


def deeplift(explainer, feeds, target, softmax="identity", wrt=None, batch_size=None, *, baselines=None,
             rule="rescale", eps=DEFAULT_EPS):
    """Returns ({wrt: attribution}, {"convergence_delta": a call giving Σ attribution − (F(x) − F(x_ref))}); the
    gap costs two forward passes of the batch, so the explainer makes the call only when it is asked for."""
    _check(rule, eps)
    wrt = explainer._wrt(wrt)
    _explained_inputs(explainer, wrt, "deeplift")
    target = fixed_target(explainer, feeds, target)
    refs = {w: baseline_for(w, feeds[w], loaded(baselines.get(w) if isinstance(baselines, dict) else baselines)) for w in wrt}
    graph, session = explainer.method_graph("deeplift", target.kind, softmax, wrt, rule=rule, eps=float(eps))
    full = dict(feeds)
    axes = dict(explainer.batch_axes(feeds, wrt))
    for w in wrt:
        full[baseline_input(w)] = refs[w]
        axes[baseline_input(w)] = 0
    out = explainer.run_graph(graph, session, full, target, batch_size, axes=axes)
    return out, {"convergence_delta": lambda: _gap(explainer, feeds, wrt, target, softmax, out, refs)}


def _baseline_set(explainer, feeds, wrt, baselines, method: str) -> dict[str, np.ndarray]:
    if baselines is None:
        raise InvalidInputError(f"{method} needs baselines: a set of reference samples [B, *sample shape].")
    out = {}
    for w in wrt:
        x = feeds[w]
        b = loaded(baselines.get(w) if isinstance(baselines, dict) else baselines)
        b = np.asarray(b, dtype=x.dtype) if b is not None else None
        if b is None or b.ndim != x.ndim or b.shape[1:] != x.shape[1:] or b.shape[0] < 1:
            got = None if b is None else b.shape
            raise InvalidInputError(f"the baselines of {method} for {w!r} must be a set of samples of shape "
                                    f"[B, {', '.join(map(str, x.shape[1:]))}], got {got}.")
        out[w] = b
    return out


def _explained_inputs(explainer, wrt, method: str) -> None:
    names = {s.name for s in explainer.inputs}
    for w in wrt:
        if w not in names:
            raise InvalidInputError(f"{method} explains model inputs; {w!r} is not one.")


def deeplift_shap(explainer, feeds, target, softmax="identity", wrt=None, batch_size=None, *, baselines=None,
                  rule="rescale", eps=DEFAULT_EPS, internal_batch_size=None):
    """Mean over the baselines b of deeplift(x, b); the convergence delta is against the mean of F(x) − F(b)."""
    _check(rule, eps)
    wrt = explainer._wrt(wrt)
    _explained_inputs(explainer, wrt, "deeplift_shap")
    target = fixed_target(explainer, feeds, target)
    sets = _baseline_set(explainer, feeds, wrt, baselines, "deeplift_shap")
    k = next(iter(sets.values())).shape[0]
    if any(b.shape[0] != k for b in sets.values()):
        raise InvalidInputError("every explained input needs the same number of baselines.")
    refs = {w: (lambda n_idx, s_idx, b=b: b[s_idx]) for w, b in sets.items()}
    runner = _deeplift_runner(explainer, target, softmax, wrt, rule, float(eps), refs, batch_size)
    acc = _pairs(explainer, feeds, wrt, k, runner, internal_batch_size or batch_size)
    out = {w: (a / k).astype(feeds[w].dtype) for w, a in acc.items()}
    change = np.zeros(feeds[wrt[0]].shape[0])
    for j in range(k):
        at_ref = dict(feeds)
        at_ref.update({w: np.broadcast_to(b[j], feeds[w].shape).copy() for w, b in sets.items()})
        change += scores(explainer, feeds, target, softmax) - scores(explainer, at_ref, target, softmax)
    total = sum(a.reshape(a.shape[0], -1).sum(axis=1, dtype=np.float64) for a in out.values())
    return out, {"convergence_delta": total - change / k}


def gradient_shap(explainer, feeds, target, softmax="identity", wrt=None, batch_size=None, *, baselines=None,
                  n_samples=5, stdevs=0.0, seed=0, noise=None, baseline_index=None, alphas=None,
                  internal_batch_size=None):
    """Mean over n_samples copies of (x + ε − b) ⊙ ∂F/∂x at b + α(x + ε − b)."""
    wrt = explainer._wrt(wrt)
    _explained_inputs(explainer, wrt, "gradient_shap")
    target = fixed_target(explainer, feeds, target)
    sets = _baseline_set(explainer, feeds, wrt, baselines, "gradient_shap")
    s = int(n_samples)
    if s < 1:
        raise InvalidInputError(f"n_samples must be at least 1, not {n_samples}.")
    n = feeds[wrt[0]].shape[0]
    k = min(b.shape[0] for b in sets.values())
    rng = np.random.default_rng(seed)
    index = rng.integers(0, k, (n, s)) if baseline_index is None else _draws(baseline_index, (n, s), "baseline_index", np.int64)
    if index.min() < 0 or index.max() >= k:
        raise InvalidInputError(f"baseline_index must lie in [0, {k}).")
    alpha = rng.uniform(0.0, 1.0, (n, s)) if alphas is None else _draws(alphas, (n, s), "alphas", np.float64)
    noises = {}
    for i, w in enumerate(wrt):
        given = noise.get(w) if isinstance(noise, dict) else noise
        sd = stdevs.get(w, 0.0) if isinstance(stdevs, dict) else stdevs
        if given is not None:
            noises[w] = _draws(given, (n, s) + feeds[w].shape[1:], f"noise for {w!r}", feeds[w].dtype)
        elif float(sd) < 0:
            raise InvalidInputError(f"stdevs must be >= 0, not {sd}.")
        elif float(sd) > 0:
            noises[w] = _SeededNoise(seed, i, s, feeds[w].shape[1:], float(sd), feeds[w].dtype)
    graph, session = base_graph(explainer, "gradient", softmax, wrt)
    names = [graph.attributions[w] for w in wrt]

    def run_chunk(chunk, n_idx, s_idx, axes):
        feeds_ = dict(chunk)
        diffs = {}
        a = alpha[n_idx, s_idx]
        for w in wrt:
            x = feeds[w][n_idx]
            if w in noises:
                x = x + noises[w][n_idx, s_idx].astype(x.dtype)
            b = sets[w][index[n_idx, s_idx]]
            diffs[w] = x - b
            feeds_[w] = (b + a.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype) * diffs[w]).astype(x.dtype)
        if target.kind == "target":
            feeds_[graph.target_input] = target.take(n_idx)
        else:
            feeds_[graph.seed_input] = target.take(n_idx)
        grads = run(session, names, feeds_)
        return {w: diffs[w] * gw for w, gw in zip(wrt, grads)}

    acc = _pairs(explainer, feeds, wrt, s, run_chunk, internal_batch_size or batch_size)
    return {w: (a / s).astype(feeds[w].dtype) for w, a in acc.items()}


class _SeededNoise:
    """N(0, sd²) noise of copy s of sample n, drawn per sample from a generator seeded by (seed, input, n),
    so that it does not depend on how the copies are batched and only one sample's draws are held."""

    def __init__(self, seed: int, i: int, copies: int, sample_shape: tuple, sd: float, dtype):
        self.key, self.copies, self.shape, self.sd, self.dtype = (int(seed), i), copies, tuple(sample_shape), sd, dtype
        self._last: tuple[int, np.ndarray] | None = None

    def of(self, n: int) -> np.ndarray:
        if self._last is None or self._last[0] != n:
            rng = np.random.default_rng(self.key + (int(n),))
            self._last = (n, (rng.standard_normal((self.copies,) + self.shape) * self.sd).astype(self.dtype))
        return self._last[1]

    def __getitem__(self, index) -> np.ndarray:
        n_idx, s_idx = index
        return np.stack([self.of(a)[b] for a, b in zip(n_idx, s_idx)])


def _draws(value, shape: tuple, what: str, dtype) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != tuple(shape):
        raise InvalidInputError(f"{what} must have shape {tuple(shape)} (samples, copies, ...), got {arr.shape}.")
    return arr.astype(dtype)


register(Method("deeplift", build_deeplift, deeplift, summary="(x − x_ref) ⊙ DeepLIFT multipliers (rule rescale or reveal_cancel)"))
register(Method("deeplift_shap", None, deeplift_shap, summary="mean of DeepLIFT over a set of baselines"))
register(Method("gradient_shap", None, gradient_shap, summary="expected gradients: noisy copies, random baselines and α"))
