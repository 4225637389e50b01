"""The bundled MNIST model, its digits, and `onnxsal.demo` (figures written, readable, and right)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

import onnxsal
from onnxsal import demo
from onnxsal.data import mnist_metadata, mnist_model, mnist_model_path, mnist_samples

DATA = Path(onnxsal.__file__).parent / "data"


@pytest.fixture(scope="module")
def explainer():
    return onnxsal.Explainer(mnist_model(), providers="cpu")


@pytest.fixture(scope="module")
def digits():
    return mnist_samples()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, demo.run_demo(out, providers="cpu", verbose=False)


# -- the bundled files -----------------------------------------------------------------------------------
def test_bundled_model_is_small_and_well_formed():
    path = mnist_model_path()
    assert path.stat().st_size < 5_000_000
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert 8 <= model.ir_version <= 10
    assert [(i.domain, i.version) for i in model.opset_import] == [("", 17)]
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "image" and out.name == "probabilities"
    dims = [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [1, 28, 28]  # dynamic batch
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Relu") == 3 and ops[-1] == "Softmax"
    meta = mnist_metadata()
    assert meta["layout"] == "NCHW" and meta["input_range"] == "0..1"
    assert meta["classes"] == ",".join(map(str, range(10)))
    assert float(meta["test_accuracy"]) >= 0.95
    assert "scripts/train_demo_model.py" in meta["source"]


def test_bundled_samples_load_without_pickle(digits):
    images, labels = digits
    assert images.shape == (10, 1, 28, 28) and images.dtype == np.float32
    assert labels.dtype == np.int64 and sorted(labels.tolist()) == list(range(10))
    assert images.min() >= 0 and images.max() <= 1 and images.max() > 0.9
    with np.load(DATA / "mnist_samples.npz", allow_pickle=False) as f:
        assert sorted(f.files) == ["images", "labels"]
    assert (DATA / "mnist_samples.npz").stat().st_size < 100_000


def test_bundled_model_reads_the_bundled_digits(explainer, digits):
    images, labels = digits
    probs = explainer.predict(images)
    assert probs.shape == (10, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    assert (probs.argmax(axis=1) == labels).sum() >= 9


# -- the attributions behind the figures ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def maps(explainer, digits):
    return demo.explain_digits(explainer, *digits)


def _first_relu_input(model: onnx.ModelProto) -> str:
    return next(n.input[0] for n in model.graph.node if n.op_type == "Relu")


def test_guided_is_rectified_where_design_says(explainer, digits, maps):
    images, labels = digits
    # at a rectifier's input, guided = 1[x>0]·max(g, 0) >= 0 exactly; the plain gradient has both signs
    wrt = _first_relu_input(explainer.model)
    guided = explainer.attribute(images, target=labels, method="guided_backprop", wrt=wrt)
    vanilla = explainer.attribute(images, target=labels, method="gradient", wrt=wrt)
    assert guided.shape == vanilla.shape == (10, 32, 26, 26)
    assert guided.min() >= 0 and guided.max() > 0
    assert vanilla.min() < 0
    # at the input (after a Conv with mixed-sign weights) guided is only mostly positive: on the
    # strokes it is (almost) all positive, more so than the plain gradient, and it sits more on them
    stroke = images.reshape(10, -1) > 0.5
    share, on_mass = {}, {}
    for name in ("vanilla", "guided"):
        a = maps[name].reshape(10, -1)
        on = [a[i][stroke[i]] for i in range(10)]
        share[name] = np.array([np.maximum(o, 0).sum() / np.abs(o).sum() for o in on])
        on_mass[name] = np.array([np.abs(on[i]).sum() / np.abs(a[i]).sum() for i in range(10)])
    assert (share["guided"] >= 0.95).all(), share["guided"]
    assert (share["guided"] > share["vanilla"]).all()
    assert on_mass["guided"].mean() > on_mass["vanilla"].mean() + 0.05


def test_methods_give_different_maps(maps):
    flat = {k: v.reshape(10, -1) for k, v in maps.items()}
    for k, v in flat.items():
        assert v.shape == (10, 784) and np.isfinite(v).all() and np.abs(v).max(axis=1).min() > 0, k
    for a, b in [("vanilla", "guided"), ("vanilla", "deconvnet"), ("guided", "deconvnet"), ("guided", "negate")]:
        for i in range(10):
            x, y = np.abs(flat[a][i]), np.abs(flat[b][i])
            assert np.corrcoef(x, y)[0, 1] < 0.98, (a, b, i)


def test_negate_is_keras_vis_negate_of_guided_saliency(explainer, digits, maps):
    """keras-vis grad_modifier='negate' negates the finished gradient; the column shows its positive
    part, the pixels whose increase lowers the class score."""
    images, labels = digits
    guided = explainer.attribute(images, target=labels, method="guided_backprop")
    np.testing.assert_array_equal(maps["negate"], np.maximum(-guided, 0))
    assert (maps["negate"] >= 0).all() and (maps["negate"].reshape(10, -1).max(axis=1) > 0).all()


def test_kept_softmax_is_the_chain_rule_through_softmax(explainer, digits):
    # vanilla: d p_c / dx = p_c (d z_c/dx - sum_j p_j d z_j/dx), from the logit gradients of every class
    images, labels = digits
    probs = explainer.predict(images)
    per_class = np.stack([explainer.attribute(images, target=k, method="gradient") for k in range(10)], axis=1)
    p_c = probs[np.arange(10), labels]
    mixed = (probs[:, :, None, None, None] * per_class).sum(axis=1)
    expected = p_c[:, None, None, None] * (per_class[np.arange(10), labels] - mixed)
    kept = explainer.attribute(images, target=labels, method="gradient", softmax="keep")
    np.testing.assert_allclose(kept, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


def test_kept_softmax_shrinks_confident_maps(maps, explainer, digits):
    images, labels = digits
    p = explainer.predict(images)[np.arange(10), labels]
    peak = {k: np.abs(maps[k]).reshape(10, -1).max(axis=1) for k in ("guided", "guided_softmax_kept")}
    confident = p > 0.95
    assert confident.any()
    assert (peak["guided_softmax_kept"][confident] < 0.2 * peak["guided"][confident]).all()


# -- the figures ----------------------------------------------------------------------------------------------------
def test_run_demo_writes_both_figures(written):
    out, paths = written
    assert [Path(p).name for p in paths] == [demo.SALIENCY_PNG, demo.PARTS_PNG]
    assert sorted(q.name for q in Path(out).iterdir()) == sorted([demo.SALIENCY_PNG, demo.PARTS_PNG])


@pytest.mark.parametrize("name, rows, cols", [(demo.SALIENCY_PNG, 10, 6), (demo.PARTS_PNG, len(demo.PARTS_DIGITS), 7)])
def test_figures_have_the_expected_size_and_content(written, name, rows, cols):
    out, _ = written
    with Image.open(Path(out) / name) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        w, h = im.size
        a = np.asarray(im).astype(np.float32)
    cell = demo.CELL
    # cells of 112 px with 6 px padding, plus a row-title column and title/caption lines
    assert cols * (cell + 6) < w < cols * (cell + 6) + 160
    assert rows * (cell + 6) < h < rows * (cell + 6 + 24) + 120
    assert a.std() > 40  # not blank
    # a good share of the picture is colour (heat maps), not just white paper and gray digits
    colourful = (a.max(axis=2) - a.min(axis=2)) > 60
    assert colourful.mean() > 0.3
    # the digit inputs are there: pure-white strokes on black cells
    white = (a.min(axis=2) > 250).mean()
    black = (a.max(axis=2) < 5).mean()
    assert black > 0.02 and white > 0.05


def test_demo_module_runs_from_the_command_line(tmp_path):
    out = tmp_path / "cli out"
    proc = subprocess.run([sys.executable, "-m", "onnxsal.demo", str(out), "--providers", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("digit ") and "predicted" in line for line in lines) == 10
    assert sum(line.startswith("wrote ") for line in lines) == 2
    assert (out / demo.SALIENCY_PNG).is_file() and (out / demo.PARTS_PNG).is_file()
