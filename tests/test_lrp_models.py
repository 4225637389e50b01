"""Whole-model LRP: onnxsal against Zennit 0.5.1, against a hand-written reference, and conservation.

1. torchvision VGG16 (224x224: its adaptive average pool needs a 7x7 map) and ResNet50 (64x64), random
   weights, for each of EpsilonPlus, EpsilonPlusFlat, EpsilonGammaBox (low/high = the input's bounds)
   and EpsilonAlpha2Beta1, against Zennit with its own canonizers (VGGCanonizer, ResNetCanonizer):
   max|ours - zennit| / max|zennit| <= 1e-4, float32, the same target class.
   - Every BatchNorm's eps is 0: Zennit's merge canonizer leaves each merged BN computing
     x / sqrt(1 + eps) instead of the identity (see benchmarks/relevance.py).
   - Weights: torchvision's own init (kaiming conv, N(0, 0.01) dense, zero biases); ResNet50's BN
     statistics and affine parameters are random, so the folded conv biases are not zero. The last
     dense layer is scaled (weight and bias by one factor) so that the logits have std 1.
   - Inputs are seeded away from near-ties at MaxPool: where two values of a window differ by
     ~1e-7 relative, torch's and onnxruntime's float32 convolutions can pick different maxima and
     route that window's relevance to another pixel (seen with another seed on ResNet50: 6e-3).
2. A small model with functional ReLUs, one nn.ReLU module called twice and an inline residual `+`,
   against a float64 NumPy/torch-functional LRP written out layer by layer (EpsilonPlusFlat).
   Zennit sees modules only: the inline `+` gets the gradient (each branch receives all of the
   relevance instead of its share) and the functional ReLUs the gradient instead of Pass. Its result
   equals the same hand-written reference with those rules swapped in, and differs from the right one.
3. Conservation: with every bias zero (BN: running mean and beta zero), the input relevance sums to the
   explained logit per sample, on VGG16, ResNet50 and DenseNet121 (rules that absorb nothing there:
   Epsilon with epsilon = stabilizer = 1e-9, and EpsilonPlus; MaxPool, Flatten and Concat route the
   relevance, averages and residual adds split it, BN scales pass it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
zennit = pytest.importorskip("zennit")

import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from zennit import composites as zc  # noqa: E402
from zennit.attribution import Gradient  # noqa: E402
from zennit.torchvision import ResNetCanonizer, VGGCanonizer  # noqa: E402

import onnxsal  # noqa: E402
from converters.torch_export import export_torch  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Full backward hook will not fire:UserWarning"),
]

TOL = 1e-4  # whole models against Zennit, float32
REF_TOL = 1e-5  # the small model against the float64 reference
CONSERVE_TOL = 1e-4  # |sum R - logit| / |logit| per sample
COMPOSITES = ("EpsilonPlus", "EpsilonPlusFlat", "EpsilonGammaBox", "EpsilonAlpha2Beta1")


def rel(ours, ref) -> float:
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@dataclass
class Case:
    """A model, its onnxsal Explainer (built once), an input and the class explained for each sample.

    Each composite's relevance is computed once and kept (the comparison and the conservation test
    share VGG16's); the Explainer's graph and session are then dropped: one VGG16 LRP graph with
    its session holds ~2.5 GB, and the Explainer would keep one per composite."""

    model: nn.Module
    explainer: onnxsal.Explainer
    x: torch.Tensor
    target: np.ndarray
    logits: np.ndarray
    canonizer: type | None = None
    results: dict = field(default_factory=dict)

    def ours(self, composite: str, **options) -> np.ndarray:
        key = (composite, tuple(sorted(options.items())))
        if key not in self.results:
            self.results[key] = self.explainer.attribute(self.x.numpy(), target=self.target, method="lrp",
                                                         composite=composite, **options)
            self.explainer._sessions.clear()  # no public way to drop a cached graph
        return self.results[key]

    def zennit(self, composite) -> np.ndarray:
        one_hot = torch.eye(self.logits.shape[1])[torch.from_numpy(self.target)]
        with Gradient(model=self.model, composite=composite) as attributor:
            _, relevance = attributor(self.x, lambda out: out * one_hot)
        return relevance.numpy()


# ---------------------------------------------------------------------------------------------------
# models


def _no_inplace(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return model.eval()


def _random_batchnorm(model: nn.Module, seed: int, biased: bool) -> None:
    """Non-trivial BN statistics (as a trained model has) and eps 0; with biased=False the running
    mean and beta are zero, so BN is a per-channel scale and the conv it folds into keeps no bias."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                if biased:
                    m.running_mean.uniform_(-0.5, 0.5, generator=g)
                    m.bias.uniform_(-0.3, 0.3, generator=g)
                else:
                    m.running_mean.zero_()
                    m.bias.zero_()
                m.eps = 0.0  # Zennit's merged BN computes x / sqrt(1 + eps), not the identity


def _unit_logits(model: nn.Module, head: nn.Linear, x: torch.Tensor) -> None:
    """Scale the last dense layer so that the logits on x have std 1 (random nets give 0.1 or 20)."""
    with torch.no_grad():
        factor = 1.0 / float(model(x).std())
        head.weight.mul_(factor)
        if head.bias is not None:
            head.bias.mul_(factor)


def _case(model: nn.Module, head: nn.Linear, x: torch.Tensor, canonizer=None) -> Case:
    _unit_logits(model, head, x)
    with torch.no_grad():
        logits = model(x).numpy()
    proto = export_torch(model, torch.zeros(1, *x.shape[1:]))
    explainer = onnxsal.Explainer(proto, providers="cpu")
    return Case(model, explainer, x, logits.argmax(1), logits, canonizer)


def _input(seed: int, n: int, size: int) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def vgg16() -> Case:
    """torchvision's init has zero biases: the same model serves the comparison and conservation."""
    torch.manual_seed(0)
    model = _no_inplace(torchvision.models.vgg16(weights=None))
    return _case(model, model.classifier[-1], _input(10, 1, 224), VGGCanonizer)


@pytest.fixture(scope="module")
def resnet50() -> Case:
    torch.manual_seed(0)
    model = _no_inplace(torchvision.models.resnet50(weights=None))
    _random_batchnorm(model, seed=2, biased=True)
    with torch.no_grad():
        model.fc.bias.uniform_(-0.05, 0.05, generator=torch.Generator().manual_seed(3))
    return _case(model, model.fc, _input(11, 2, 64), ResNetCanonizer)


@pytest.fixture(scope="module")
def resnet50_unbiased() -> Case:
    torch.manual_seed(1)
    model = _no_inplace(torchvision.models.resnet50(weights=None))
    _random_batchnorm(model, seed=4, biased=False)
    with torch.no_grad():
        model.fc.bias.zero_()  # torchvision leaves nn.Linear's default (non-zero) bias on ResNet's fc
    return _case(model, model.fc, _input(12, 2, 64))


@pytest.fixture(scope="module")
def densenet121_unbiased() -> Case:
    torch.manual_seed(2)
    model = _no_inplace(torchvision.models.densenet121(weights=None))
    _random_batchnorm(model, seed=5, biased=False)
    return _case(model, model.classifier, _input(13, 2, 64))


# ---------------------------------------------------------------------------------------------------
# 1. Zennit


def _composites(name: str, case: Case):
    """(onnxsal's options, Zennit's composite) for one composite name."""
    canon = [case.canonizer()]
    low, high = float(case.x.min()), float(case.x.max())
    if name == "EpsilonGammaBox":
        return {"low": low, "high": high}, zc.EpsilonGammaBox(low=low, high=high, canonizers=canon)
    return {}, getattr(zc, name)(canonizers=canon)


@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("model_name", ["vgg16", "resnet50"])
def test_lrp_matches_zennit(request, model_name, composite):
    case: Case = request.getfixturevalue(model_name)
    options, theirs = _composites(composite, case)
    ref = case.zennit(theirs)
    ours = case.ours(composite, **options)
    assert np.all(np.isfinite(ours))
    assert rel(ours, ref) <= TOL, (model_name, composite, rel(ours, ref))


# ---------------------------------------------------------------------------------------------------
# 2. where Zennit's hooks mis-assign rules


class HiddenFromHooks(nn.Module):
    """conv -> act -> conv -> F.relu -> conv, + the block's input (inline) -> act -> maxpool -> flatten
    -> linear -> F.relu -> linear; `act` is one nn.ReLU module called twice."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc1, self.fc2 = nn.Linear(6 * 4 * 4, 12), nn.Linear(12, 5)

    def forward(self, x):
        h = self.act(self.c1(x))
        u = F.relu(self.c2(h))
        v = self.act(self.c3(u) + h)
        p = self.pool(v).flatten(1)
        return self.fc2(F.relu(self.fc1(p)))


def _stab(z, eps=1e-6):
    """z + eps·sign(z), sign(0) = +1."""
    return torch.where(z < 0, z - eps, z + eps)


def _conv(x, w, b=None):
    return F.conv2d(x, w, b, padding=1)


def _conv_t(s, w):
    """Wᵀ s for a 3x3, pad 1, stride 1 convolution."""
    return F.conv_transpose2d(s, w, padding=1)


def _zplus_conv(x, r, w, b):
    """ZPlus on a convolution whose input is a rectifier's output (x >= 0)."""
    wp = w.clamp(min=0)
    return x * _conv_t(r / _stab(_conv(x, wp, b.clamp(min=0))), wp)


def _epsilon_dense(x, r, w, b, eps=1e-6):
    return x * ((r / _stab(x @ w.T + b, eps)) @ w)


def _maxpool_route(v, r):
    """The gradient of a 2x2, stride 2 MaxPool: each window's relevance to its first maximum."""
    n, c, h, w = v.shape
    windows = v.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
    first = torch.from_numpy(np.argmax(windows.numpy(), axis=-1))  # NumPy: first of equal maxima
    routed = F.one_hot(first, 4).to(r.dtype) * r[..., None]
    return routed.reshape(n, c, h // 2, w // 2, 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


def reference_lrp(model: HiddenFromHooks, x: torch.Tensor, target, add_rule="norm", functional_relu="pass"):
    """EpsilonPlusFlat on HiddenFromHooks, written out layer by layer in float64 (no autograd):
    Flat at c1, ZPlus at c2/c3, Epsilon at fc1/fc2, Norm at the residual add, Pass at every ReLU,
    MaxPool routes. `add_rule="gradient"` / `functional_relu="gradient"` apply the rules Zennit's
    hooks end up applying to what they cannot see."""
    p = {k: v.detach().double() for k, v in model.state_dict().items()}
    x = x.double()
    a1 = _conv(x, p["c1.weight"], p["c1.bias"]); h = a1.relu()  # noqa: E702
    a2 = _conv(h, p["c2.weight"], p["c2.bias"]); u = a2.relu()  # noqa: E702
    a3 = _conv(u, p["c3.weight"], p["c3.bias"]); s = a3 + h; v = s.relu()  # noqa: E702
    f = F.max_pool2d(v, 2).flatten(1)
    a4 = f @ p["fc1.weight"].T + p["fc1.bias"]; g = a4.relu()  # noqa: E702
    y = g @ p["fc2.weight"].T + p["fc2.bias"]

    def relu_back(a, r):  # a functional relu, as the composite wants it (Pass) or as Zennit runs it
        return r if functional_relu == "pass" else r * (a > 0)

    r_y = torch.zeros_like(y)
    r_y[torch.arange(len(y)), torch.as_tensor(target)] = y[torch.arange(len(y)), torch.as_tensor(target)]
    r_a4 = relu_back(a4, _epsilon_dense(g, r_y, p["fc2.weight"], p["fc2.bias"]))
    r_f = _epsilon_dense(f, r_a4, p["fc1.weight"], p["fc1.bias"])
    r_s = _maxpool_route(v, r_f.reshape(v.shape[0], v.shape[1], v.shape[2] // 2, v.shape[3] // 2))  # act: Pass
    if add_rule == "norm":
        ratio = r_s / _stab(s)
        r_a3, r_h = a3 * ratio, h * ratio
    else:
        r_a3, r_h = r_s, r_s
    r_a2 = relu_back(a2, _zplus_conv(u, r_a3, p["c3.weight"], p["c3.bias"]))
    r_a1 = r_h + _zplus_conv(h, r_a2, p["c2.weight"], p["c2.bias"])  # act: Pass
    ones = torch.ones_like(p["c1.weight"])
    return _conv_t(r_a1 / _stab(_conv(torch.ones_like(x), ones)), ones).numpy()


@pytest.fixture(scope="module")
def hidden() -> Case:
    torch.manual_seed(3)
    model = HiddenFromHooks().eval()
    x = _input(14, 3, 8)
    with torch.no_grad():
        logits = model(x).numpy()
    explainer = onnxsal.Explainer(export_torch(model, torch.zeros(1, 3, 8, 8)), providers="cpu")
    return Case(model, explainer, x, np.array([0, 3, 4]), logits)


def test_lrp_matches_a_hand_written_reference_where_hooks_cannot_see(hidden):
    ours = hidden.ours("EpsilonPlusFlat")
    ref = reference_lrp(hidden.model, hidden.x, hidden.target)
    assert rel(ours, ref) <= REF_TOL, rel(ours, ref)
    # the relevance reaching the input is the logit, up to what the first layer's Flat rule and the
    # biases absorb: a sanity check that the reference is not trivially equal to anything
    assert np.all(np.isfinite(ours)) and np.abs(ours).max() > 0


def test_zennit_mis_assigns_the_inline_add(hidden):
    """Zennit gives the inline `+` the gradient: its result is the reference with that rule swapped
    in, and far from the right one. Its hooks on the twice-called nn.ReLU and the functional ReLUs'
    gradient change nothing here: every rule above a ReLU multiplies by the ReLU's output, so no
    relevance arrives where the ReLU is zero (measured, not assumed: see the two references)."""
    theirs = hidden.zennit(zc.EpsilonPlusFlat())
    right = reference_lrp(hidden.model, hidden.x, hidden.target)
    as_zennit_runs = reference_lrp(hidden.model, hidden.x, hidden.target, add_rule="gradient", functional_relu="gradient")
    as_zennit_runs_pass = reference_lrp(hidden.model, hidden.x, hidden.target, add_rule="gradient")
    assert rel(theirs, as_zennit_runs) <= TOL, rel(theirs, as_zennit_runs)
    assert rel(theirs, right) > 0.1, rel(theirs, right)
    assert rel(as_zennit_runs, as_zennit_runs_pass) <= 1e-12


# ---------------------------------------------------------------------------------------------------
# 3. conservation


CONSERVING = {"Epsilon": {"epsilon": 1e-9, "stabilizer": 1e-9}, "EpsilonPlus": {}}
# VGG16 only with EpsilonPlus: its relevance is the one the Zennit comparison computed (a VGG16 graph
# costs ~15 s to build); EpsilonPlus's epsilon and stabilizer of 1e-6 absorb ~2e-5 of it there
CONSERVATION_CASES = [("vgg16", "EpsilonPlus")] + [(m, c) for m in ("resnet50_unbiased", "densenet121_unbiased")
                                                   for c in sorted(CONSERVING)]


@pytest.mark.parametrize("model_name, composite", CONSERVATION_CASES)
def test_relevance_sums_to_the_logit_without_biases(request, model_name, composite):
    case: Case = request.getfixturevalue(model_name)
    relevance = case.ours(composite, **CONSERVING[composite])
    total = relevance.reshape(len(relevance), -1).astype(np.float64).sum(1)
    logit = case.logits[np.arange(len(case.target)), case.target].astype(np.float64)
    gap = np.abs(total - logit) / np.abs(logit)
    assert np.all(gap <= CONSERVE_TOL), (model_name, composite, gap)
