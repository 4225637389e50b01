"""DeepLIFT (Rescale, RevealCancel), DeepLiftShap and GradientShap.

1. Agreement with Captum 0.9 where its hooks are right: a small CNN (nn.ReLU modules, MaxPool,
   Linear) and torchvision resnet18 (random weights, BN statistics randomised), the same baselines,
   and for GradientShap the same noise, baseline draws and α (Captum's draws replayed).
   Captum's hooks go wrong in three ways, which the models here steer around and the tests show:
   - a module called twice (resnet18's BasicBlock calls `self.relu` twice) raises in Captum's
     backward hook; the blocks here get one nn.ReLU per call;
   - two hooked modules that touch (ReLU -> MaxPool, resnet18's stem) share a tensor, whose hook
     records the first module's output gradient before the second module's rule rewrites it; the
     small CNN puts a Conv in between, resnet18's stem a clone;
   - Captum's maxpool rule unpools with max_unpool2d, which keeps one of the contributions of
     overlapping windows (resnet18's 3x3 stride-2 pool) instead of adding them; resnet18 is compared
     with Captum's rule with its unpooling done by autograd (`benchmarks.relevance.maxpool_routed`).
2. Where Captum is wrong: a ReLU module called twice, and a functional F.relu, against a NumPy
   DeepLIFT; RevealCancel (no Captum reference) against a NumPy transcription of the paper's rules.
3. Summation-to-delta, the compiled graph in a process that never imports onnxsal, bad input.
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import types

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
captum_attr = pytest.importorskip("captum.attr")

import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import onnxsal  # noqa: E402
from onnxsal.errors import InvalidInputError, UnsupportedModelError  # noqa: E402
from benchmarks.relevance import maxpool_routed  # noqa: E402  (Captum's rule, overlaps added)

TOL = 1e-4  # max|ours - captum| / max|captum|, float32
pytestmark = pytest.mark.filterwarnings(
    "ignore:Setting forward, backward hooks:UserWarning",
    "ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning",
    "ignore:The feature will be removed:DeprecationWarning",
    "ignore:Input Tensor 0 did not already require gradients:UserWarning",
)


def rel(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def export(model: nn.Module, sample: tuple, dynamic: bool = True) -> onnx.ModelProto:
    f = io.BytesIO()
    axes = {"x": {0: "N"}, "y": {0: "N"}} if dynamic else None
    torch.onnx.export(model, (torch.zeros(1, *sample),), f, dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"], dynamic_axes=axes)
    return onnx.load_from_string(f.getvalue())


def numpy_of(t) -> np.ndarray:
    return t.detach().numpy()


# ---------------------------------------------------------------------------------------------------
# models


class SmallCNN(nn.Module):
    """Conv -> ReLU -> Conv -> MaxPool -> Linear -> ReLU -> Linear (no two hooked modules touch)."""

    def __init__(self):
        super().__init__()
        self.c1, self.r1 = nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()
        self.c2, self.pool = nn.Conv2d(6, 8, 3, padding=1), nn.MaxPool2d(2)
        self.fc1, self.r2, self.fc2 = nn.Linear(8 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 5)

    def forward(self, x):
        h = self.pool(self.c2(self.r1(self.c1(x))))
        return self.fc2(self.r2(self.fc1(h.flatten(1))))


CNN_SAMPLE = (3, 12, 12)


class Clone(nn.Module):
    """A new tensor between two hooked modules, so that each hook sees its own gradient."""

    def forward(self, x):
        return x.clone()


def _block_forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    return self.relu_out(self.bn2(self.conv2(out)) + identity)


def resnet18() -> nn.Module:
    """torchvision resnet18, random weights, BN statistics randomised; one nn.ReLU per call."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model.relu = nn.Sequential(nn.ReLU(), Clone())
    for block in model.modules():
        if isinstance(block, torchvision.models.resnet.BasicBlock):
            block.relu, block.relu_out = nn.ReLU(), nn.ReLU()
            block.forward = types.MethodType(_block_forward, block)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    return model, onnxsal.Explainer(export(model, CNN_SAMPLE), providers="cpu")


@pytest.fixture(scope="module")
def resnet():
    model = resnet18()
    return model, onnxsal.Explainer(export(model, (3, 64, 64)), providers="cpu")


def inputs(seed: int, n: int, sample=CNN_SAMPLE, scale=1.0) -> torch.Tensor:
    return torch.randn(n, *sample, generator=torch.Generator().manual_seed(seed)) * scale


# ---------------------------------------------------------------------------------------------------
# 1. Captum


@pytest.mark.parametrize("baseline", ["none", "scalar", "sample", "per_sample"])
def test_deeplift_matches_captum_on_a_cnn(cnn, baseline):
    model, ex = cnn
    x = inputs(1, 3)
    given = {"none": None, "scalar": 0.25, "sample": inputs(2, 1, scale=0.5)[0],
             "per_sample": inputs(3, 3, scale=0.5)}[baseline]
    theirs_b = given if given is None or isinstance(given, float) else (given[None] if given.ndim == 3 else given)
    target = [0, 3, 4]
    ref = numpy_of(captum_attr.DeepLift(model).attribute(x, baselines=theirs_b, target=target))
    ours = ex.attribute(x.numpy(), target=target, method="deeplift",
                        baselines=None if given is None else (given if isinstance(given, float) else given.numpy()))
    assert rel(ours, ref) <= TOL


def test_deeplift_argmax_seeds_both_halves_with_the_inputs_class(cnn):
    model, ex = cnn
    x, b = inputs(4, 2), inputs(5, 2, scale=0.5)
    top = model(x).argmax(1)
    ref = numpy_of(captum_attr.DeepLift(model).attribute(x, baselines=b, target=top))
    ours = ex.attribute(x.numpy(), method="deeplift", baselines=b.numpy())
    assert rel(ours, ref) <= TOL


def test_deeplift_shap_matches_captum(cnn):
    model, ex = cnn
    x, bs = inputs(6, 2), inputs(7, 4, scale=0.5)
    ref = numpy_of(captum_attr.DeepLiftShap(model).attribute(x, baselines=bs, target=[1, 2]))
    ours, delta = ex.attribute(x.numpy(), target=[1, 2], method="deeplift_shap", baselines=bs.numpy(),
                               internal_batch_size=3, return_convergence_delta=True)
    assert rel(ours, ref) <= TOL
    assert np.abs(delta).max() <= 1e-4 * np.abs(ours.reshape(2, -1).sum(1)).max() + 1e-5


def test_gradient_shap_matches_captum_with_the_same_draws(cnn):
    model, ex = cnn
    x, bs = inputs(8, 2), inputs(9, 5, scale=0.5)
    n, s, sd = 2, 6, 0.3
    np.random.seed(11)
    torch.manual_seed(12)
    ref = numpy_of(captum_attr.GradientShap(model).attribute(x, baselines=bs, target=[0, 4], n_samples=s, stdevs=sd))
    # Captum's draws, replayed in its order: baseline indices (NumPy), noise (torch), then α (NumPy)
    np.random.seed(11)
    torch.manual_seed(12)
    index = np.random.choice(bs.shape[0], n * s)
    noise = torch.normal(0, torch.tensor(sd).repeat((n * s,) + CNN_SAMPLE)).numpy()
    alphas = np.random.uniform(0.0, 1.0, n * s)
    ours = ex.attribute(x.numpy(), target=[0, 4], method="gradient_shap", baselines=bs.numpy(), n_samples=s,
                        noise=noise.reshape((n, s) + CNN_SAMPLE), baseline_index=index.reshape(n, s),
                        alphas=alphas.reshape(n, s), internal_batch_size=5)
    assert rel(ours, ref) <= TOL


def test_gradient_shap_is_seeded():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    ex = onnxsal.Explainer(export(model, CNN_SAMPLE), providers="cpu")
    x, bs = inputs(10, 2).numpy(), inputs(11, 3).numpy()
    a = ex.attribute(x, method="gradient_shap", baselines=bs, n_samples=4, stdevs=0.2, seed=3, internal_batch_size=3)
    b = ex.attribute(x, method="gradient_shap", baselines=bs, n_samples=4, stdevs=0.2, seed=3)
    c = ex.attribute(x, method="gradient_shap", baselines=bs, n_samples=4, stdevs=0.2, seed=4)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert rel(c, a) > 1e-3


def test_deeplift_matches_captum_on_resnet18(resnet, monkeypatch):
    import captum.attr._core.deep_lift as captum_deep_lift

    model, ex = resnet
    x, b = inputs(12, 2, (3, 64, 64)), inputs(13, 2, (3, 64, 64), scale=0.2)
    stock = numpy_of(captum_attr.DeepLift(model).attribute(x, baselines=b, target=[1, 2]))
    monkeypatch.setitem(captum_deep_lift.SUPPORTED_NON_LINEAR, nn.MaxPool2d, maxpool_routed)
    ref, ref_delta = captum_attr.DeepLift(model).attribute(x, baselines=b, target=[1, 2], return_convergence_delta=True)
    ours, delta = ex.attribute(x.numpy(), target=[1, 2], method="deeplift", baselines=b.numpy(),
                               return_convergence_delta=True)
    assert rel(ours, numpy_of(ref)) <= TOL
    change = np.abs(numpy_of(model(x) - model(b))).max()
    assert np.abs(delta).max() <= 1e-4 * change and np.abs(numpy_of(ref_delta)).max() <= 1e-4 * change
    assert rel(ours, stock) > 0.1  # stock Captum loses contributions at the overlapping stem pool


# ---------------------------------------------------------------------------------------------------
# 2. NumPy references


def _relu(z):
    return np.maximum(z, 0)


def rescale_reference(x, r, layers, target):
    """DeepLIFT Rescale of x -> (W, b, act?) layers, numpy float64: multipliers Δy/Δz at each act."""
    a, ar, slopes = x.astype(np.float64), r.astype(np.float64), []
    for w, b, act in layers:
        z, zr = a @ w.T + b, ar @ w.T + b
        if act:
            d = z - zr
            safe = np.where(np.abs(d) < 1e-10, 1.0, d)
            slopes.append(np.where(np.abs(d) < 1e-10, (z > 0).astype(np.float64), (_relu(z) - _relu(zr)) / safe))
            z, zr = _relu(z), _relu(zr)
        else:
            slopes.append(None)
        a, ar = z, zr
    m = np.zeros((x.shape[0], layers[-1][0].shape[0]))
    m[np.arange(x.shape[0]), target] = 1
    for (w, _, _), slope in zip(reversed(layers), reversed(slopes)):
        if slope is not None:
            m = m * slope
        m = m @ w
    return (x - r) * m


class TwiceReLU(nn.Module):
    """One nn.ReLU module called twice; and the same network with a functional F.relu first."""

    def __init__(self, functional: bool = False):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.relu, self.functional = nn.ReLU(), functional

    def forward(self, x):
        h = F.relu(self.fc1(x)) if self.functional else self.relu(self.fc1(x))
        return self.fc3(self.relu(self.fc2(h)))

    def layers(self):
        return [(numpy_of(fc.weight).astype(np.float64), numpy_of(fc.bias).astype(np.float64), act)
                for fc, act in ((self.fc1, True), (self.fc2, True), (self.fc3, False))]


@pytest.mark.parametrize("functional", [False, True])
def test_where_captum_is_wrong_onnxsal_matches_the_reference(functional):
    torch.manual_seed(1)
    model = TwiceReLU(functional).eval()
    ex = onnxsal.Explainer(export(model, (6,)), providers="cpu")
    x, r = inputs(14, 4, (6,)), inputs(15, 4, (6,), scale=0.5)
    target = np.array([0, 1, 2, 1])
    reference = rescale_reference(x.numpy(), r.numpy(), model.layers(), target)
    ours = ex.attribute(x.numpy(), target=target, method="deeplift", baselines=r.numpy())
    assert rel(ours, reference) <= 1e-5
    if functional:  # Captum sees one ReLU module of two: the functional one keeps its gradient
        theirs = numpy_of(captum_attr.DeepLift(model).attribute(x, baselines=r, target=target.tolist()))
        assert rel(theirs, reference) > 1e-2
    else:  # Captum refuses a module called twice
        with pytest.raises(RuntimeError, match="used more than once"):
            captum_attr.DeepLift(model).attribute(x, baselines=r, target=target.tolist())


class ReluThenPool(nn.Module):
    """Conv -> nn.ReLU -> nn.MaxPool2d: two hooked modules that share a tensor in Captum."""

    def __init__(self):
        super().__init__()
        self.conv, self.relu, self.pool, self.fc = nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


def test_adjacent_hooked_modules_break_captums_summation_not_ours():
    torch.manual_seed(0)
    model = ReluThenPool().eval()
    ex = onnxsal.Explainer(export(model, (1, 4, 4)), providers="cpu")
    x, r = inputs(27, 3, (1, 4, 4)), inputs(28, 3, (1, 4, 4))
    _, theirs = captum_attr.DeepLift(model).attribute(x, baselines=r, target=0, return_convergence_delta=True)
    _, ours = ex.attribute(x.numpy(), target=0, method="deeplift", baselines=r.numpy(), return_convergence_delta=True)
    with torch.no_grad():
        change = np.abs(numpy_of(model(x) - model(r))[:, 0]).max()
    assert np.abs(ours).max() <= 1e-5 * change
    assert np.abs(numpy_of(theirs)).max() > 1e-2 * change


def reveal_cancel_reference(x, r, layers, target, f, eps=1e-10):
    """RevealCancel (Shrikumar et al. 2017, sec. 3.5.1 and 3.5.3) on x -> (W, b, act?) dense layers."""
    a, ar, saved = x.astype(np.float64), r.astype(np.float64), []
    for w, b, act in layers:
        d = a - ar
        dp, dn = np.maximum(d, 0), np.minimum(d, 0)
        wp, wn = np.maximum(w, 0), np.minimum(w, 0)
        zp, zn = dp @ wp.T + dn @ wn.T, dp @ wn.T + dn @ wp.T  # linear rule: by the sign of each w·Δx
        z, zr = a @ w.T + b, ar @ w.T + b
        if act:
            y, yr = f(z), f(zr)
            yp = 0.5 * (f(zr + zp) - yr) + 0.5 * (f(zr + zn + zp) - f(zr + zn))
            yn = 0.5 * (f(zr + zn) - yr) + 0.5 * (f(zr + zp + zn) - f(zr + zp))
            mp = np.where(np.abs(zp) < eps, 0.0, yp / np.where(np.abs(zp) < eps, 1, zp))
            mn = np.where(np.abs(zn) < eps, 0.0, yn / np.where(np.abs(zn) < eps, 1, zn))
            z, zr = y, yr
        else:
            mp = mn = np.ones_like(z)
        saved.append((w, d, mp, mn))
        a, ar = z, zr
    g = np.zeros((x.shape[0], layers[-1][0].shape[0]))
    g[np.arange(x.shape[0]), target] = 1
    for w, d, mp, mn in reversed(saved):
        gp, gn = g * mp, g * mn  # multipliers of Δz⁺ and Δz⁻
        wp, wn = np.maximum(w, 0), np.minimum(w, 0)
        pos, neg = gp @ wp + gn @ wn, gp @ wn + gn @ wp
        g = np.where(d > 0, pos, np.where(d < 0, neg, 0.5 * (gp + gn) @ w))
    return (x - r) * g


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_reveal_cancel_matches_the_papers_rules(act):
    torch.manual_seed(2)
    fc = [nn.Linear(5, 7), nn.Linear(7, 6), nn.Linear(6, 3)]
    module = nn.ReLU if act == "relu" else nn.Tanh
    model = nn.Sequential(fc[0], module(), fc[1], module(), fc[2]).eval()
    ex = onnxsal.Explainer(export(model, (5,)), providers="cpu")
    x, r = inputs(16, 6, (5,)), inputs(17, 6, (5,), scale=0.5)
    target = np.array([0, 1, 2, 0, 1, 2])
    layers = [(numpy_of(m.weight).astype(np.float64), numpy_of(m.bias).astype(np.float64), i < 2) for i, m in enumerate(fc)]
    f = _relu if act == "relu" else np.tanh
    reference = reveal_cancel_reference(x.numpy(), r.numpy(), layers, target, f)
    ours, delta = ex.attribute(x.numpy(), target=target, method="deeplift", baselines=r.numpy(), rule="reveal_cancel",
                               return_convergence_delta=True)
    assert rel(ours, reference) <= 1e-5
    if act == "relu":  # the rules differ: RevealCancel is not Rescale under another name
        assert rel(ours, rescale_reference(x.numpy(), r.numpy(), layers, target)) > 1e-2
    assert np.abs(delta).max() <= 1e-5 * np.abs(ours).sum(1).max()


# ---------------------------------------------------------------------------------------------------
# 3. invariants, compiled graph, bad input


@pytest.mark.parametrize("rule", ["rescale", "reveal_cancel"])
def test_summation_to_delta(cnn, rule):
    model, ex = cnn
    x, b = inputs(18, 4), inputs(19, 4, scale=0.5)
    target = np.array([0, 1, 2, 3])
    ours = ex.attribute(x.numpy(), target=target, method="deeplift", baselines=b.numpy(), rule=rule)
    with torch.no_grad():
        change = numpy_of(model(x) - model(b))[np.arange(4), target]
    total = ours.reshape(4, -1).sum(1, dtype=np.float64)
    np.testing.assert_allclose(total, change, rtol=1e-4, atol=1e-4 * np.abs(change).max())


RUNNER = textwrap.dedent("""
    import sys
    import numpy as np
    import onnxruntime as ort
    assert "onnxsal" not in sys.modules
    path, folder = sys.argv[1], sys.argv[2]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = np.load(folder + "/x.npy")
    default = session.run(None, {"x": x})
    fed = session.run(None, {"x": x, "x_baseline": np.load(folder + "/b.npy")})
    for i, out in enumerate(default + fed):
        np.save(f"{folder}/{i}.npy", out)
    print(" ".join(o.name for o in session.get_outputs()))
    assert "onnxsal" not in sys.modules
""")


def test_compiled_deeplift_runs_without_onnxsal(cnn, tmp_path):
    model, ex = cnn
    x, b = inputs(20, 3).numpy(), inputs(21, 3, scale=0.5).numpy()
    path = tmp_path / "deeplift.onnx"
    onnx.save(onnxsal.compile(ex.model, method="deeplift"), path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "b.npy", b)
    run = subprocess.run([sys.executable, "-I", "-c", RUNNER, str(path), str(tmp_path)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["y", "x_deeplift"]
    y, zero_base, _, per_sample = (np.load(tmp_path / f"{i}.npy") for i in range(4))
    np.testing.assert_allclose(y, ex.predict(x), rtol=1e-5, atol=1e-6)
    for got, base in ((zero_base, None), (per_sample, b)):
        expected = ex.attribute(x, method="deeplift", baselines=base)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_compiled_reveal_cancel_with_a_baseline_default(cnn):
    import onnxruntime as ort

    _, ex = cnn
    x, b = inputs(22, 2).numpy(), inputs(23, 1, scale=0.5).numpy()[0]
    model = onnxsal.compile(ex.model, method="deeplift", rule="reveal_cancel", baselines=b)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["x_deeplift"], {"x": x})[0]
    expected = ex.attribute(x, method="deeplift", rule="reveal_cancel", baselines=b)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_bad_input_is_one_sentence(cnn):
    _, ex = cnn
    x = inputs(24, 2).numpy()
    cases = [
        (dict(method="deeplift", baselines=np.zeros((5, 5), np.float32)), "baseline for 'x' must be"),
        (dict(method="deeplift", rule="reveal"), "unknown DeepLIFT rule 'reveal'"),
        (dict(method="deeplift_shap"), "needs baselines"),
        (dict(method="gradient_shap", baselines=np.zeros((3, 5), np.float32)), "must be a set of samples"),
        (dict(method="gradient_shap", baselines=x, n_samples=2, alphas=np.zeros(3)), "alphas must have shape"),
    ]
    for options, text in cases:
        with pytest.raises(InvalidInputError, match=text) as info:
            ex.attribute(x, **options)
        assert "\n" not in str(info.value) and str(info.value).count(". ") == 0
    with pytest.raises(InvalidInputError, match="compiled DeepLIFT takes a scalar baseline"):
        onnxsal.compile(ex.model, method="deeplift", baselines=np.zeros((2, 2), np.float32))


class TimeMajor(nn.Module):
    """x [N, T, C] -> [T, N, C] -> ReLU: the batch is on axis 1 at the nonlinearity."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 5), nn.Linear(5 * 3, 2)

    def forward(self, x):
        h = torch.relu(self.fc1(x.transpose(0, 1))).transpose(0, 1)
        return self.fc2(h.reshape(h.shape[0], -1))


class FixedBatch(nn.Module):
    """A Reshape to a constant batch of 1 (what a file exported with a fixed batch may hold)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x).reshape(1, 6)))


def test_unpairable_batch_is_refused_with_the_node():
    ex = onnxsal.Explainer(export(TimeMajor().eval(), (3, 4)), providers="cpu")
    with pytest.raises(UnsupportedModelError, match="Relu node .* holds the batch on axis 1"):
        ex.attribute(np.ones((2, 3, 4), np.float32), method="deeplift")
    fixed = onnxsal.Explainer(export(FixedBatch().eval(), (4,), dynamic=False), providers="cpu")
    with pytest.raises(UnsupportedModelError, match="fixed leading dim 1"):
        fixed.attribute(np.ones((1, 4), np.float32), method="deeplift")
    assert fixed.attribute(np.ones((1, 4), np.float32), method="gradient").shape == (1, 4)


def test_fixed_batch_file_without_fixed_shapes_inside_runs():
    torch.manual_seed(3)
    model = TwiceReLU(functional=True).eval()
    ex = onnxsal.Explainer(export(model, (6,), dynamic=False), providers="cpu")
    x, r = inputs(25, 1, (6,)), inputs(26, 1, (6,), scale=0.5)
    reference = rescale_reference(x.numpy(), r.numpy(), model.layers(), np.array([2]))
    assert rel(ex.attribute(x.numpy(), target=2, method="deeplift", baselines=r.numpy()), reference) <= 1e-5
