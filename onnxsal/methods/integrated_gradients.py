"""Integrated Gradients (Sundararajan et al.): (x − x') × ∫₀¹ ∂F(x' + α(x − x'))/∂x dα.

The integral is a quadrature (`integration=`) over n_steps points (default 50): Gauss-Legendre or
the Riemann left/right/middle/trapezoid rules (see `quadrature`). The completeness gap
Σ attribution − (F(x) − F(x')) is returned with return_convergence_delta=True and a warning is
raised when it is large. F is the explained score: the logit when softmax is taken as identity.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..autodiff import output_heads
from ..errors import InvalidInputError
from . import Method, register
from ..runtime import create_session, run
from .graphs import GraphEditor
from .expand import build_integrated_gradients
from .sampling import accumulate, fixed_target

RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
GAP_WARNING = 0.05  # relative completeness gap above which a warning is raised


def quadrature(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes α in [0, 1] and weights of the integration rule.

    Captum's nodes and weights, except for the trapezoid rule: Captum weighs its n points by 1/n
    (halved at the ends), which sums to (n−1)/n and shrinks every attribution by that factor;
    here they are the trapezoid rule's 1/(n−1), summing to 1."""
    if n_steps < 1 or (method == "riemann_trapezoid" and n_steps < 2):
        raise InvalidInputError(f"n_steps must be at least {2 if method == 'riemann_trapezoid' else 1}, not {n_steps}.")
    if method == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(n_steps)
        return 0.5 * (nodes + 1), 0.5 * w
    if method == "riemann_left":
        return np.linspace(0, 1 - 1 / n_steps, n_steps), np.full(n_steps, 1 / n_steps)
    if method == "riemann_right":
        return np.linspace(1 / n_steps, 1, n_steps), np.full(n_steps, 1 / n_steps)
    if method == "riemann_middle":
        return np.linspace(1 / (2 * n_steps), 1 - 1 / (2 * n_steps), n_steps), np.full(n_steps, 1 / n_steps)
    if method == "riemann_trapezoid":
        w = np.full(n_steps, 1 / (n_steps - 1))
        w[0] = w[-1] = 1 / (2 * (n_steps - 1))
        return np.linspace(0, 1, n_steps), w
    raise InvalidInputError(f"integration must be one of {RULES}, not {method!r}.")


def baseline_for(name: str, x: np.ndarray, baselines) -> np.ndarray:
    """Zeros, a scalar, one baseline for the batch (sample shape) or one per sample."""
    b = baselines.get(name) if isinstance(baselines, dict) else baselines
    if b is None:
        return np.zeros_like(x)
    b = np.asarray(b, dtype=x.dtype)
    if b.ndim == 0 or b.shape == x.shape[1:]:
        return np.broadcast_to(b, x.shape).copy()
    if b.shape == x.shape:
        return b
    raise InvalidInputError(f"the baseline for {name!r} must be a scalar or have shape {x.shape[1:]} or {x.shape}, got {b.shape}.")


def score_value(explainer, softmax: str) -> str:
    """The value whose seeded sum is F: the softmax's input under softmax-as-identity, else the output."""
    heads = output_heads(explainer.view, explainer.output) if softmax == "identity" else set()
    if heads:
        return next(n for n in explainer.view.nodes if n.name in heads).input[0]
    return explainer.output


def scores(explainer, feeds: dict[str, np.ndarray], target, softmax: str) -> np.ndarray:
    """F for each sample: the target's score (or Σ seed·output) at the score value."""
    name = score_value(explainer, softmax)
    key = ("scores", name)
    if key not in explainer._sessions:
        ed = GraphEditor(explainer.model)
        model = ed.finish([(name, explainer.view.elem_type(name) or 1, None)] if name not in explainer.view.output_names else [])
        explainer._sessions[key] = (None, create_session(model, explainer.providers, explainer._options))
    values = run(explainer._sessions[key][1], [name], feeds)[0]
    n = values.shape[0]
    if target.kind == "tensor":
        return (values.reshape(target.value.shape) * target.value).reshape(n, -1).sum(axis=1)
    values = values.reshape(n, values.shape[1], -1) if values.ndim > 2 else values.reshape(n, -1, 1)
    return values[np.arange(n), target.value].sum(axis=-1)


def integrated_gradients(explainer, feeds, target, softmax="identity", wrt=None, batch_size=None, *,
                         baselines=None, n_steps=50, integration="gausslegendre", base="gradient",
                         internal_batch_size=None, progress=None):
    """Returns ({wrt: attribution}, {"convergence_delta": Σ attribution − (F(x) − F(x')) per sample}).

    An inner tensor in `wrt` (the embeddings of a token model) is interpolated itself, as Captum's
    LayerIntegratedGradients does: the model is cut there and the tensor fed (`inner`); its baseline
    may then also be given as baseline inputs (token ids: see `inner.inner_baselines`)."""
    wrt = explainer._wrt(wrt)
    if any(name not in feeds for name in wrt):
        return _inner(explainer, feeds, target, softmax, wrt, batch_size, baselines=baselines, n_steps=n_steps,
                      integration=integration, base=base, internal_batch_size=internal_batch_size, progress=progress)
    alphas, weights = quadrature(integration, int(n_steps))
    target = fixed_target(explainer, feeds, target)
    base_values = {name: baseline_for(name, feeds[name], baselines) for name in wrt}

    def perturb(name, n_idx, s_idx):
        b = base_values[name][n_idx]
        a = alphas[s_idx].astype(b.dtype).reshape((-1,) + (1,) * (b.ndim - 1))
        return b + a * (feeds[name][n_idx] - b)

    acc, _ = accumulate(explainer, feeds, target, base, softmax, wrt, len(alphas), perturb, weights,
                        internal_batch_size=internal_batch_size or batch_size, progress=progress, desc="Integrated Gradients")
    out = {name: ((feeds[name] - base_values[name]) * acc[name]).astype(feeds[name].dtype) for name in wrt}
    at_baseline = dict(feeds)
    at_baseline.update(base_values)
    change = scores(explainer, feeds, target, softmax) - scores(explainer, at_baseline, target, softmax)
    total = sum(a.reshape(a.shape[0], -1).sum(axis=1, dtype=np.float64) for a in out.values())
    delta = total - change
    worst = np.max(np.abs(delta) / np.maximum(np.abs(change), 1e-6))
    if worst > GAP_WARNING:
        warnings.warn(
            f"Integrated Gradients completeness gap is {worst:.1%} of F(x) − F(baseline) for some sample; "
            f"increase n_steps (now {len(alphas)}) or check the baseline.", RuntimeWarning, stacklevel=4)
    return out, {"convergence_delta": delta}


def _inner(explainer, feeds, target, softmax, wrt, batch_size, baselines, **options):
    """Integrated Gradients of inner tensors: on the model cut at them, fed with their values."""
    from .inner import cut_explainer, inner_baselines, inner_values

    missing = tuple(name for name in wrt if name not in feeds)
    values = inner_values(explainer, feeds, missing)
    base_values = inner_baselines(explainer, feeds, missing, values, baselines)
    if isinstance(baselines, dict):  # explained model inputs beside the inner tensors: their own baselines
        base_values.update({name: baselines[name] for name in wrt if name in feeds and name in baselines})
    child = cut_explainer(explainer, missing)
    return integrated_gradients(child, {**feeds, **values}, target, softmax, wrt, batch_size, baselines=base_values, **options)


register(Method("integrated_gradients", build_integrated_gradients, integrated_gradients, summary="path integral of gradients from a baseline"))
