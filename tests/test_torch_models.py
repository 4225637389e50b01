"""Whole PyTorch models, exported to ONNX, against PyTorch's own autograd (float32).

For each model onnxsal's attribution must equal the torch one to rel = max|ours - torch| / max|torch|
<= 1e-4:
- vanilla gradients against `torch.autograd`, for the argmax and for explicit targets;
- guided backprop and deconvnet against a reference that swaps the backward of *every* rectifier
  torch runs (nn.ReLU, F.relu, torch.relu, in-place forms, ReLU6 / F.relu6 / F.hardtanh(0, 6)) for
  a custom autograd.Function, caught with a TorchFunctionMode rather than module hooks;
- Captum's GuidedBackprop / Deconvolution where those hook every rectifier (only nn.ReLU modules),
  and a demonstration that they miss the functional ones where a model has them;
- softmax taken as identity (gradient of the logits) or kept.
resnet18 and the mixed-rectifier model go through both torch exporters.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

import onnxsal  # noqa: E402
from converters.torch_export import export_torch  # noqa: E402

pytestmark = [  # dynamo=False asks for the TorchScript exporter on purpose
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
]

TOL = 1e-4
EXPORTERS = {"torchscript": False, "dynamo": True}


def rel(ours, ref) -> float:
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


# ---------------------------------------------------------------------------------------------------
# models


class MixedRectifiers(nn.Module):
    """Conv/BN/MaxPool/Linear with every way torch code writes a rectifier."""

    def __init__(self):
        super().__init__()
        conv = lambda cin, cout: nn.Conv2d(cin, cout, 3, padding=1)  # noqa: E731
        self.conv1, self.bn1, self.relu = conv(3, 8), nn.BatchNorm2d(8), nn.ReLU(inplace=True)
        self.conv2, self.bn2 = conv(8, 16), nn.BatchNorm2d(16)
        self.conv3, self.conv4, self.conv5 = conv(16, 16), conv(16, 16), conv(16, 16)
        self.conv6, self.conv7 = conv(16, 16), conv(16, 16)
        self.relu6 = nn.ReLU6()
        self.pool = nn.MaxPool2d(2)
        self.fc1, self.fc2 = nn.Linear(16 * 4 * 4, 32), nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool(self.relu(self.bn1(self.conv1(x))))  # nn.ReLU(inplace=True)
        x = F.relu(self.bn2(self.conv2(x)))  # F.relu
        x = self.pool(torch.relu(self.conv3(x)))  # torch.relu
        x = self.conv4(x).relu_()  # Tensor.relu_
        x = self.relu6(self.conv5(x))  # nn.ReLU6
        x = F.relu6(self.conv6(x))  # F.relu6
        x = self.pool(F.hardtanh(self.conv7(x), 0.0, 6.0))  # F.hardtanh(0, 6)
        x = torch.relu_(self.fc1(x.flatten(1)))  # torch.relu_
        return self.fc2(x)


def _mixed():
    model = MixedRectifiers()
    with torch.no_grad():  # larger weights so that the ReLU6 clips saturate at 6 as well as at 0
        for conv in (model.conv4, model.conv5, model.conv6, model.conv7):
            conv.weight.mul_(8.0)
    return model


def _vgg11():
    return torchvision.models.vgg11(weights=None)


def _softmax_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10), nn.Softmax(dim=1),
    )


# name: (constructor, input shape, input scale)
MODELS = {
    "resnet18": (lambda: torchvision.models.resnet18(weights=None), (2, 3, 64, 64), 1.0),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(weights=None), (2, 3, 64, 64), 1.0),
    "densenet121": (lambda: torchvision.models.densenet121(weights=None), (2, 3, 32, 32), 1.0),
    "vgg11": (_vgg11, (1, 3, 224, 224), 1.0),  # its ImageNet head needs 224x224
    "mixed": (_mixed, (2, 3, 32, 32), 2.0),
    "softmax": (_softmax_net, (2, 3, 16, 16), 1.0),
}

# (model, exporter) pairs checked against autograd
CASES = [
    ("resnet18", "torchscript"), ("resnet18", "dynamo"),
    ("mobilenet_v2", "torchscript"), ("densenet121", "torchscript"), ("vgg11", "torchscript"),
    ("mixed", "torchscript"), ("mixed", "dynamo"),
]
CASE_IDS = [f"{m}-{e}" for m, e in CASES]


class Case:
    """One exported model; torch's own results on its input are computed once and kept."""

    def __init__(self, model, x, explainer, proto, path):
        self.model, self.x, self.explainer, self.proto, self.path = model, x, explainer, proto, path
        self._argmax = None
        self._gradients: dict[tuple, np.ndarray] = {}

    @property
    def x_np(self) -> np.ndarray:
        return self.x.numpy()

    def argmax(self) -> np.ndarray:
        if self._argmax is None:
            with torch.no_grad():
                self._argmax = self.model(self.x).argmax(1).numpy()
        return self._argmax

    def gradient(self, target=None) -> np.ndarray:
        """torch.autograd's input gradient for `target` (None: the argmax)."""
        target = self.argmax() if target is None else target
        key = tuple(np.broadcast_to(target, (self.x.shape[0],)).tolist())
        if key not in self._gradients:
            self._gradients[key] = torch_gradient(self.model, self.x, list(key))
        return self._gradients[key]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """case(name, exporter): the eval-mode torch model, its input and an Explainer on its export.

    Each model is built (seeded) once and exported once per exporter, for the whole module; the
    export is also written to `case.path` (the dynamo exporter puts the weights beside it)."""
    folder = tmp_path_factory.mktemp("exports")
    models: dict[str, tuple] = {}
    exported: dict[tuple[str, str], Case] = {}

    def get(name: str, exporter: str = "torchscript") -> Case:
        if name not in models:
            build, shape, scale = MODELS[name]
            torch.manual_seed(0)
            model = build().eval()
            x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * scale
            models[name] = (model, x)
        if (name, exporter) not in exported:
            model, x = models[name]
            path = folder / f"{name}-{exporter}.onnx"
            proto = export_torch(model, x, path, dynamo=EXPORTERS[exporter])
            exported[name, exporter] = Case(model, x, onnxsal.Explainer(proto, providers="cpu"), proto, path)
        return exported[name, exporter]

    return get


# ---------------------------------------------------------------------------------------------------
# the PyTorch references


_DOUBLES: dict[int, nn.Module] = {}


def float64(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """A float64 copy of the model (made once) and of x: the references are computed in float64.

    torch's own float32 backward is not always the better reference: on vgg11 at 224x224 it is
    1.1% (of the largest entry) away from the float64 gradient, where onnxsal's float32 result
    is 5e-7 away."""
    if id(model) not in _DOUBLES:
        _DOUBLES[id(model)] = copy.deepcopy(model).double().eval()
    return _DOUBLES[id(model)], x.double()


def torch_gradient(model, x, target) -> np.ndarray:
    """d model(x)[i, target[i]] / d x[i] by torch.autograd, in float64."""
    model, x = float64(model, x)
    x = x.clone().requires_grad_(True)
    y = model(x)
    target = torch.as_tensor(np.broadcast_to(target, (x.shape[0],)).copy())
    y.gather(1, target[:, None]).sum().backward()
    return x.grad.numpy()


class _Rectifier(torch.autograd.Function):
    """clamp(x, lo, hi) with the backward of a gradient rule ("gradient", "guided", "deconvnet")."""

    @staticmethod
    def forward(ctx, x, lo, hi, rule):
        ctx.rule = rule
        ctx.inside = (x > lo) if hi is None else (x > lo) & (x < hi)
        return x.clamp(min=lo, max=hi)

    @staticmethod
    def backward(ctx, g):
        if ctx.rule == "gradient":
            grad = g * ctx.inside
        elif ctx.rule == "guided":
            grad = g.clamp(min=0) * ctx.inside
        elif ctx.rule == "deconvnet":
            grad = g.clamp(min=0)
        else:
            raise ValueError(ctx.rule)
        return grad, None, None, None


def _rectifier_call(name, args, kwargs):
    """(x, lo, hi, inplace) when the call is a rectifier (min 0), else None."""
    x, rest = args[0], list(args[1:])
    inplace_by_name = name.endswith("_")
    if name in ("relu", "relu_"):
        lo, hi = 0.0, None
        inplace = bool(rest[0]) if rest else bool(kwargs.get("inplace", False))
    elif name == "relu6":
        lo, hi = 0.0, 6.0
        inplace = bool(rest[0]) if rest else bool(kwargs.get("inplace", False))
    else:  # hardtanh(input, min_val=-1, max_val=1, inplace=False)
        names = ("min_val", "max_val", "inplace")
        given = dict(zip(names, rest)) | {k: v for k, v in kwargs.items() if k in names}
        lo, hi = float(given.get("min_val", -1.0)), float(given.get("max_val", 1.0))
        inplace = bool(given.get("inplace", False))
        if lo != 0.0:
            return None
    return x, lo, hi, inplace or inplace_by_name


class RectifierRules(TorchFunctionMode):
    """Runs every rectifier torch code can write through `_Rectifier` with the given rule.

    A TorchFunctionMode sees functional calls (F.relu, torch.relu, Tensor.relu_, F.relu6,
    F.hardtanh, ...) that module hooks never see. `calls` records (name, #elements above the
    upper clip) per rectifier, so a test can check that none was missed."""

    NAMES = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_"}

    def __init__(self, rule: str):
        super().__init__()
        self.rule = rule
        self.calls: list[tuple[str, int]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        call = _rectifier_call(name, args, kwargs) if name in self.NAMES and args else None
        if call is None:
            return func(*args, **kwargs)
        x, lo, hi, inplace = call
        self.calls.append((name, 0 if hi is None else int((x > hi).sum())))
        y = _Rectifier.apply(x, lo, hi, self.rule)
        if inplace:  # keep the in-place semantics: the caller may use x rather than the result
            x.copy_(y)
            return x
        return y


def reference_attribution(model, x, target, rule: str) -> tuple[np.ndarray, RectifierRules]:
    model, x = float64(model, x)
    mode = RectifierRules(rule)
    x = x.clone().requires_grad_(True)
    with mode:
        y = model(x)
    target = torch.as_tensor(np.broadcast_to(target, (x.shape[0],)).copy())
    y.gather(1, target[:, None]).sum().backward()
    return x.grad.numpy(), mode


def onnx_rectifiers(proto) -> int:
    """Relu nodes plus Clip nodes whose minimum is 0, as onnxsal's variants treat them."""
    consts = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = next(a.t for a in node.attribute if a.name == "value")
    count = 0
    for node in proto.graph.node:
        if node.op_type == "Relu":
            count += 1
        elif node.op_type == "Clip" and len(node.input) > 1 and node.input[1] in consts:
            count += float(numpy_helper.to_array(consts[node.input[1]])) == 0.0
    return count


RULES = {"guided_backprop": "guided", "deconvnet": "deconvnet"}


# ---------------------------------------------------------------------------------------------------
# the exporter wrapper


@pytest.mark.parametrize("exporter", list(EXPORTERS))
def test_export_torch_returns_a_model_onnxruntime_loads(cases, exporter):
    case = cases("mixed", exporter)
    proto = case.proto
    assert proto.ir_version <= 10
    assert all(i.version <= 26 for i in proto.opset_import if i.domain in ("", "ai.onnx"))
    assert not any(t.data_location == 1 for t in proto.graph.initializer)  # weights in memory
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == list(case.x.shape[1:])
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["output"]
    with torch.no_grad():
        expected = case.model(case.x).numpy()
    assert rel(case.explainer.predict(case.x_np), expected) <= TOL
    assert rel(case.explainer.predict(case.x_np[:1]), expected[:1]) <= TOL  # the batch axis is dynamic


@pytest.mark.parametrize("exporter", list(EXPORTERS))
def test_export_torch_writes_a_loadable_file(cases, exporter):
    case = cases("mixed", exporter)
    assert case.path.is_file()
    on_disk = onnxsal.Explainer(str(case.path), providers="cpu")
    assert rel(on_disk.predict(case.x_np), case.explainer.predict(case.x_np)) <= 1e-6


def test_export_torch_exports_in_eval_mode_and_restores_the_mode():
    torch.manual_seed(0)
    model = _softmax_net()
    model[1] = nn.Dropout(0.9)  # train-mode dropout would make the export random
    x = torch.randn(2, 3, 16, 16)
    proto = export_torch(model.train(), x)
    assert model.training
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    assert rel(onnxsal.Explainer(proto, providers="cpu").predict(x.numpy()), expected) <= TOL


# ---------------------------------------------------------------------------------------------------
# vanilla gradients


TARGETS = {"argmax": None, "int": 7, "per_sample": [2, 5]}


@pytest.mark.parametrize("target", list(TARGETS), ids=list(TARGETS))
@pytest.mark.parametrize(("name", "exporter"), CASES, ids=CASE_IDS)
def test_gradient_matches_autograd(cases, name, exporter, target):
    case = cases(name, exporter)
    t = TARGETS[target]
    if isinstance(t, list):
        t = t[: len(case.x)]
    ours = case.explainer.attribute(case.x_np, target=t, method="gradient")
    ref = case.gradient(t)
    assert np.abs(ref).max() > 0
    assert rel(ours, ref) <= TOL, f"{name}/{exporter}/{target}: rel {rel(ours, ref):.3g}"


# ---------------------------------------------------------------------------------------------------
# guided backprop and deconvnet against the TorchFunctionMode reference


def test_reference_vanilla_rule_is_autograd(cases):
    """The reference harness itself: with the vanilla rule it must reproduce plain autograd, and
    on the mixed model it must meet every rectifier form, both clips of the ReLU6 ones active."""
    case = cases("mixed")
    target = case.argmax()
    ours, mode = reference_attribution(case.model, case.x, target, "gradient")
    assert rel(ours, case.gradient()) <= 1e-6
    names = [n for n, _ in mode.calls]
    assert names == ["relu", "relu", "relu", "relu_", "hardtanh", "relu6", "hardtanh", "relu_"]
    assert all(above > 0 for n, above in mode.calls if n in ("hardtanh", "relu6"))


@pytest.mark.parametrize("method", list(RULES))
@pytest.mark.parametrize(("name", "exporter"), CASES, ids=CASE_IDS)
def test_modified_rules_match_reference(cases, name, exporter, method):
    case = cases(name, exporter)
    ours = case.explainer.attribute(case.x_np, target=None, method=method)
    ref, mode = reference_attribution(case.model, case.x, case.argmax(), RULES[method])
    # the reference changed as many rectifiers as the exported graph has
    assert len(mode.calls) == onnx_rectifiers(case.proto)
    assert rel(ours, ref) <= TOL, f"{name}/{exporter}/{method}: rel {rel(ours, ref):.3g}"
    # and the rule matters here: the modified attribution is not the vanilla gradient
    assert rel(case.gradient(), ref) > 1e-2


# ---------------------------------------------------------------------------------------------------
# Captum


def _captum(method: str, model, x, target) -> np.ndarray:
    attr = pytest.importorskip("captum.attr")
    model, x = float64(model, x)
    model = copy.deepcopy(model)
    for module in model.modules():  # Captum's backward hooks refuse in-place outputs
        if isinstance(module, nn.ReLU):
            module.inplace = False
    cls = attr.GuidedBackprop if method == "guided_backprop" else attr.Deconvolution
    return cls(model).attribute(x.clone(), target=torch.as_tensor(target)).detach().numpy()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method", list(RULES))
@pytest.mark.parametrize("name", ["vgg11", "resnet18"])
def test_captum_agrees_where_it_hooks_every_relu(cases, name, method):
    case = cases(name)
    target = case.argmax()
    theirs = _captum(method, case.model, case.x, target)
    ours = case.explainer.attribute(case.x_np, target=None, method=method)
    assert rel(ours, theirs) <= TOL, f"{name}/{method}: rel {rel(ours, theirs):.3g}"


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method", list(RULES))
def test_module_hooks_miss_functional_relus(cases, method):
    """Captum hooks nn.ReLU modules only; on the mixed model it silently leaves F.relu, torch.relu,
    relu_ and the ReLU6 forms with the vanilla backward. onnxsal changes them all."""
    case = cases("mixed")
    target = case.argmax()
    ref, _ = reference_attribution(case.model, case.x, target, RULES[method])
    theirs = _captum(method, case.model, case.x, target)
    ours = case.explainer.attribute(case.x_np, target=None, method=method)
    assert rel(theirs, ref) > 0.1, "Captum unexpectedly matched the full reference"
    assert rel(ours, ref) <= TOL


# ---------------------------------------------------------------------------------------------------
# softmax


@pytest.mark.parametrize("target", ["argmax", "per_sample"])
@pytest.mark.parametrize("softmax", ["identity", "keep"])
def test_softmax_policy(cases, softmax, target):
    case = cases("softmax")
    t = TARGETS[target]
    tt = case.argmax() if t is None else t
    model, x = case.model, case.x
    logits = torch_gradient(model[:-1], x, tt)  # differentiate from the softmax input
    probs = torch_gradient(model, x, tt)
    assert rel(probs, logits) > 0.5  # the two policies really differ on this model
    ours = case.explainer.attribute(case.x_np, target=t, softmax=softmax)
    ref = logits if softmax == "identity" else probs
    assert rel(ours, ref) <= TOL, f"softmax={softmax}/{target}: rel {rel(ours, ref):.3g}"
