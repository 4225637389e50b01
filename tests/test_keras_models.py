"""Whole Keras models, exported with converters.keras_export, against tf.GradientTape (float32).

Models (untrained, seeded): the keras-vis MNIST model (Conv32 relu, Conv64 relu, MaxPool, Dropout,
Flatten, Dense128 relu, Dropout, Dense10 softmax 'preds'; a Sequential), MobileNetV2 at 96x96
(keras.layers.ReLU(6.0) -> Clip) and ResNet50 at 64x64 (Activation('relu')). Inputs stay NHWC.

All TensorFlow work happens in ONE subprocess, tests/keras_reference.py (TensorFlow and torch in
one process can crash, and TF's import is slow): it builds and exports the models and writes the
GradientTape references; this process only loads the .onnx/.npz files and runs onnxsal.

Checked, with rel = max|ours - tf| / max|tf|:
- rel <= 1e-4 for vanilla gradients (softmax as identity = gradient of the logits, as keras-vis
  swaps softmax for linear; and softmax kept), guided backprop and deconvnet (every rectifier's
  gradient swapped with tf.custom_gradient), for target=None, an int and one int per sample,
  against references evaluated at onnxruntime's forward state (see keras_reference.py "Masks": in
  float32 a deep ReLU net has units within rounding distance of 0 whose masks flip between two
  runtimes, which moves even TensorFlow's own float32 gradient ~2e-2 away from its float64 one);
- against the plain GradientTape gradients: rel <= 1e-4 wherever no mask can flip (MNIST, and
  deconvnet, whose rule ignores the rectifiers' inputs), per-sample cosine >= 0.99 elsewhere;
- the export: NHWC input, dynamic batch, loadable IR/opset, the Keras forward output reproduced;
- every rectifier caught: as many Relu/Clip(min 0) nodes as Keras rectifiers, and guided backprop
  and deconvnet really differ from the vanilla gradient.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxsal
from tests import keras_reference as kr  # numpy only at import; TensorFlow stays in the subprocess

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tf2onnx") is None,
    reason="needs tensorflow and tf2onnx (the 'tensorflow' extra)",
)

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4
TARGETS = {"argmax": None, "int": kr.INT_TARGET, "list": list(kr.LIST_TARGETS)}
# MobileNetV2: Conv1 + block 0 depthwise + 16 blocks x (expand, depthwise) + out_relu ReLU6;
# ResNet50: conv1 + 16 blocks x 3 ReLU
N_RECTIFIERS = {"mnist": 3, "mobilenetv2": 35, "resnet50": 49}
INPUT_SHAPES = {"mnist": (28, 28, 1), "mobilenetv2": (96, 96, 3), "resnet50": (64, 64, 3)}
CASES = [(name, method, softmax) for name in kr.MODELS for method, softmax in kr.CASES[name]]


def rel(ours, ref) -> float:
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---------------------------------------------------------------------------------------------------
# fixtures: one TensorFlow subprocess for the module, one Explainer per model


def _models_needed(session) -> list[str]:
    """The models the selected tests of this module use (so `-k mnist` builds only MNIST)."""
    here = Path(__file__).resolve()
    names = set()
    for item in session.items:
        path = getattr(item, "path", None) or Path(str(item.fspath))
        if Path(path).resolve() == here and hasattr(item, "callspec"):
            name = item.callspec.params.get("name")
            if name:
                names.add(name)
    return [m for m in kr.MODELS if m in names] or list(kr.MODELS)


class Loaded:
    """One model's ONNX file, references and Explainer, with every attribution the tests use."""

    def __init__(self, folder: Path, name: str):
        self.name = name
        self.path = folder / f"{name}.onnx"
        with np.load(folder / f"{name}.npz") as data:
            self.ref = {k: data[k] for k in data.files}
        self.meta = json.loads((folder / f"{name}.json").read_text())
        self.x = self.ref["x"]
        self.explainer = onnxsal.Explainer(str(self.path), providers="cpu")
        self.maps: dict[tuple, np.ndarray | Exception] = {}
        for method, softmax in kr.CASES[name]:
            for target, value in TARGETS.items():
                try:
                    self.maps[method, softmax, target] = self.explainer.attribute(
                        self.x, target=value, method=method, softmax=softmax
                    )
                except Exception as exc:  # raised again by the test that asks for it
                    self.maps[method, softmax, target] = exc
        self.probs = self.explainer.predict(self.x)

    def attribute(self, method: str, softmax: str, target: str) -> np.ndarray:
        result = self.maps[method, softmax, target]
        if isinstance(result, Exception):
            raise result
        return result


class References:
    """Runs tests/keras_reference.py in a subprocess and, in a thread, loads each model and computes
    its attributions as soon as the subprocess has written it: onnxsal's graph building for one model
    overlaps TensorFlow's conversion of the next."""

    TIMEOUT_S = 1200

    def __init__(self, folder: Path, models: list[str]):
        self.folder, self.models = folder, models
        self.log = folder / "keras_reference.log"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.cmd = [sys.executable, str(ROOT / "tests" / "keras_reference.py"), str(folder), "--models", ",".join(models)]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.done = {name: threading.Event() for name in models}
        self.results: dict[str, Loaded] = {}
        self.errors: dict[str, str] = {}
        self.thread = threading.Thread(target=self._work, name="keras-references", daemon=True)
        self.thread.start()

    def _wait_for(self, name: str, deadline: float) -> None:
        while not (self.folder / f"{name}.json").exists():
            if self.proc.poll() is not None and not (self.folder / f"{name}.json").exists():
                tail = self.log.read_text(errors="replace")[-8000:]
                raise RuntimeError(f"{' '.join(self.cmd)} exited with {self.proc.returncode} before writing {name}:\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no reference for {name} after {self.TIMEOUT_S} s")
            time.sleep(0.2)

    def _work(self) -> None:
        deadline = time.monotonic() + self.TIMEOUT_S
        for name in self.models:
            try:
                self._wait_for(name, deadline)
                self.results[name] = Loaded(self.folder, name)
            except Exception as exc:  # reported by the tests that need this model
                self.errors[name] = f"{type(exc).__name__}: {exc}"
            finally:
                self.done[name].set()

    def get(self, name: str) -> Loaded:
        if not self.done[name].wait(self.TIMEOUT_S + 60):
            pytest.fail(f"the {name} references are still not ready")
        if name in self.errors:
            pytest.fail(self.errors[name], pytrace=False)
        return self.results[name]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.thread.join(timeout=self.TIMEOUT_S)


@pytest.fixture(scope="module")
def loaded(request, tmp_path_factory):
    refs = References(tmp_path_factory.mktemp("keras_models"), _models_needed(request.session))
    yield refs.get
    refs.close()


# ---------------------------------------------------------------------------------------------------
# the export


@pytest.mark.parametrize("name", kr.MODELS)
def test_export_keeps_nhwc_dynamic_batch_and_forward(loaded, name):
    m = loaded(name)
    proto = onnx.load(str(m.path))
    assert proto.ir_version <= 10
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    (inp,) = proto.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value"), "the batch dimension must be dynamic"
    assert tuple(d.dim_value for d in dims[1:]) == INPUT_SHAPES[name], "the input must stay NHWC"
    assert [o.name for o in proto.graph.output] == [m.meta["output"]]

    probs = m.probs
    assert rel(probs, m.ref["probs"]) <= TOL
    np.testing.assert_array_equal(probs.argmax(axis=1), m.ref["targets/argmax"])
    # a batch of another size runs too (dynamic batch)
    assert m.explainer.predict(np.concatenate([m.x, m.x[:1]])).shape[0] == len(m.x) + 1


@pytest.mark.parametrize("name", kr.MODELS)
def test_every_rectifier_is_swapped(loaded, name):
    m = loaded(name)
    proto = onnx.load(str(m.path))
    assert len(kr.onnx_rectifiers(proto)) == N_RECTIFIERS[name]
    assert m.meta["n_rectifiers"] == {"guided_backprop": N_RECTIFIERS[name], "deconvnet": N_RECTIFIERS[name],
                                      "onnx": N_RECTIFIERS[name]}
    vanilla = m.attribute("gradient", "identity", "argmax")
    for method in ("guided_backprop", "deconvnet"):
        assert rel(m.attribute(method, "identity", "argmax"), vanilla) > 1e-2, f"{method} equals the vanilla gradient"


# ---------------------------------------------------------------------------------------------------
# attributions against tf.GradientTape


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("name,method,softmax", CASES)
def test_attribution_matches_gradient_tape(loaded, name, method, softmax, target):
    m = loaded(name)
    ours = m.attribute(method, softmax, target)
    assert ours.shape == m.x.shape, "the attribution must have the input's (NHWC) shape"
    assert ours.dtype == np.float32
    ref = m.ref[f"grad/{method}/{softmax}/{target}"]
    assert np.abs(ref).max() > 0
    err = rel(ours, ref)
    assert err <= TOL, (
        f"{name} {method} softmax={softmax} target={target}: rel {err:.2e} "
        f"(against TensorFlow's own masks: {rel(ours, m.ref[f'tf/{method}/{softmax}/{target}']):.2e})"
    )


@pytest.mark.parametrize("name,method,softmax", CASES)
def test_attribution_matches_plain_gradient_tape(loaded, name, method, softmax):
    """Against TensorFlow's own masks: exact where no rectifier mask can flip, close elsewhere."""
    m = loaded(name)
    for target in TARGETS:
        ours = m.attribute(method, softmax, target)
        ref = m.ref[f"tf/{method}/{softmax}/{target}"]
        if name == "mnist" or method == "deconvnet":
            assert rel(ours, ref) <= TOL, f"{name} {method} softmax={softmax} target={target}: rel {rel(ours, ref):.2e}"
        else:
            for i in range(len(ours)):
                assert cosine(ours[i], ref[i]) >= 0.99, f"{name} {method} softmax={softmax} target={target} sample {i}"
