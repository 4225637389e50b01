"""onnxsal.evaluate: deletion/insertion and MoRF/LeRF curves against direct loops (one forward per step)
and against a linear model whose answer is known, infidelity and max-sensitivity against Captum's own
functions fed the same perturbations, the result object (table, JSON, PNG) and the `evaluate` command."""

from __future__ import annotations

import contextlib
import io
import json
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import onnxsal
from onnxsal.cli import main
from onnxsal.data import mnist_model, mnist_samples
from onnxsal.errors import InvalidInputError, OnnxsalError
from onnxsal.evaluate import curves, deletion, infidelity, insertion, pixel_flipping, sensitivity_max
from onnxsal.evaluate.robustness import uniform_perturbation


@pytest.fixture(scope="module")
def mnist():
    ex = onnxsal.Explainer(mnist_model(), providers="cpu")
    x, _ = mnist_samples()
    return ex, x[:4]


def trapezoid(f, s):
    return float(sum((s[i] + s[i + 1]) / 2 * (f[i + 1] - f[i]) for i in range(len(f) - 1)))


def naive_curve(ex, x, attr, target, steps, baseline, insert=False, patch=1, most_first=True):
    """The curve the slow way: rank pixels (|attribution|, summed per patch), then one forward per step.
    Returns the scores [N, steps + 1] and the fraction of units replaced at each step."""
    n, c, h, w = x.shape
    rel = np.abs(attr.astype(np.float64)).max(axis=1)  # [N,H,W]
    scores = np.zeros((n, steps + 1))
    fractions = np.zeros(steps + 1)
    for i in range(n):
        cells = {}
        for r in range(h):
            for q in range(w):
                cells.setdefault((r // patch, q // patch), []).append((r, q))
        keys = sorted(cells)  # unit ids row by row, as positions are numbered
        unit_rel = np.array([sum(rel[i, r, q] for r, q in cells[k]) for k in keys])
        order = np.argsort(-unit_rel if most_first else unit_rel, kind="stable")
        for k in range(steps + 1):
            m = int(np.round(k * len(keys) / steps))
            fractions[k] = m / len(keys)
            chosen = np.zeros((h, w), bool)
            for u in order[:m]:
                for r, q in cells[keys[u]]:
                    chosen[r, q] = True
            img = np.where(chosen, x[i], baseline[i]) if insert else np.where(chosen, baseline[i], x[i])
            scores[i, k] = ex.predict(img[None].astype(np.float32))[0, target[i]]
    return scores, fractions


def test_deletion_and_insertion_auc_match_a_direct_loop(mnist):
    ex, x = mnist
    attr = ex.attribute(x, method="gradient")
    target = ex.predict(x).argmax(1)
    steps = 12
    rng = np.random.default_rng(3)
    given = rng.random(x.shape).astype(np.float32)
    # per_eval 5 cuts chunks across images and steps
    d = deletion(ex, x, attr, steps=steps, per_eval=5)
    ref, frac = naive_curve(ex, x, attr, target, steps, np.zeros_like(x))
    np.testing.assert_allclose(d.scores, ref, atol=1e-6)
    np.testing.assert_allclose(d.fractions, frac, atol=1e-12)
    np.testing.assert_allclose(d.auc, [trapezoid(frac, r) for r in ref], atol=1e-6)
    ins = insertion(ex, x, attr, steps=steps, baseline=given, per_eval=7)
    ref, frac = naive_curve(ex, x, attr, target, steps, given, insert=True)
    np.testing.assert_allclose(ins.scores, ref, atol=1e-6)
    np.testing.assert_allclose(ins.auc, [trapezoid(frac, r) for r in ref], atol=1e-6)
    assert np.all(d.scores[:, 0] > d.scores[:, -1])  # deleting everything removes the evidence
    # MoRF / LeRF by 4 x 4 patches (7 x 7 units): the same against the loop
    morf = pixel_flipping(ex, x, attr, order="morf", patch=4, baseline=given, steps=7, per_eval=9)
    lerf = pixel_flipping(ex, x, attr, order="lerf", patch=4, baseline=given, steps=7, per_eval=9)
    np.testing.assert_allclose(morf.scores, naive_curve(ex, x, attr, target, 7, given, patch=4)[0], atol=1e-6)
    np.testing.assert_allclose(lerf.scores, naive_curve(ex, x, attr, target, 7, given, patch=4, most_first=False)[0],
                               atol=1e-6)
    np.testing.assert_allclose(morf.aopc, (morf.scores[:, :1] - morf.scores).mean(1))


def test_perturbed_copies_go_through_one_session_in_bounded_chunks(mnist, monkeypatch):
    ex, x = mnist
    attr = ex.attribute(x, method="gradient")
    calls = []
    import onnxsal.forward as fwd

    real = fwd.run

    def counted(session, names, feeds):
        calls.append((id(session), len(next(iter(feeds.values())))))
        return real(session, names, feeds)

    monkeypatch.setattr(fwd, "run", counted)
    deletion(ex, x, attr, steps=20, per_eval=32)  # 4 x 21 = 84 copies
    assert [n for _, n in calls] == [32, 32, 20]
    assert len({s for s, _ in calls}) == 1


def test_blur_baseline_is_a_gaussian_filter(mnist):
    from scipy import ndimage  # scikit-image, a test dependency, brings scipy

    x = np.random.default_rng(0).random((2, 3, 20, 24))
    ours = curves.gaussian_blur(x, 2.0, (2, 3))
    ref = ndimage.gaussian_filter(x, sigma=(0, 0, 2.0, 2.0), mode="reflect", truncate=3.0)
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    ex, digits = mnist  # RISE's insertion canvas: the curve starts at the blurred image's score
    c = insertion(ex, digits, ex.attribute(digits), baseline="blur", blur_sigma=1.5, steps=2)
    blurred = ndimage.gaussian_filter(digits, sigma=(0, 0, 1.5, 1.5), mode="reflect", truncate=3.0).astype(np.float32)
    target = ex.predict(digits).argmax(1)
    np.testing.assert_allclose(c.scores[:, 0], ex.predict(blurred)[np.arange(len(digits)), target], atol=1e-5)


def nhwc_mnist() -> onnx.ModelProto:
    """The bundled model behind a Transpose: it takes the same digits as [N,28,28,1]."""
    model = onnx.load_model_from_string(mnist_model())
    old = model.graph.input[0]
    new = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 28, 28, 1])
    model.graph.node.insert(0, helper.make_node("Transpose", ["pixels"], [old.name], perm=[0, 3, 1, 2]))
    model.graph.input.remove(old)
    model.graph.input.insert(0, new)
    return model


def test_nhwc_inputs_give_the_same_curves(mnist):
    ex, x = mnist
    attr = ex.attribute(x, method="guided_backprop")
    nhwc = onnxsal.Explainer(nhwc_mnist(), providers="cpu")
    xt, at = x.transpose(0, 2, 3, 1).copy(), attr.transpose(0, 2, 3, 1).copy()
    for kind, opts in (("deletion", {}), ("morf", {"patch": 4, "baseline": "mean"})):
        a = curves.perturbation_curve(ex, x, attr, kind=kind, steps=9, **opts)
        b = curves.perturbation_curve(nhwc, xt, at, kind=kind, steps=9, **opts)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


def linear_model(w: np.ndarray) -> onnx.ModelProto:
    """y = sum(w * x) for x [N,1,H,W]: the attribution x * dy/dx = w * x is exact."""
    h, wd = w.shape
    nodes = [helper.make_node("Flatten", ["x"], ["flat"]), helper.make_node("Gemm", ["flat", "W"], ["y"])]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, h, wd])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
                              [numpy_helper.from_array(w.reshape(-1, 1).astype(np.float32), "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_morf_falls_faster_than_lerf_on_a_linear_model():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(8, 8))
    ex = onnxsal.Explainer(linear_model(w), providers="cpu")
    x = rng.random((3, 1, 8, 8)).astype(np.float32)
    attr = ex.attribute(x, method="input_x_gradient")
    np.testing.assert_allclose(attr, w[None, None] * x, rtol=1e-5, atol=1e-6)
    opts = dict(steps=64, baseline="zeros", reduce="sum", score="raw", patch=1)
    morf = pixel_flipping(ex, x, attr, order="morf", **opts)
    lerf = pixel_flipping(ex, x, attr, order="lerf", **opts)
    random = pixel_flipping(ex, x, rng.normal(size=x.shape), order="morf", **opts)
    # zeroing pixel i removes exactly w_i x_i: MoRF removes the largest contributions first
    contrib = (w[None] * x[:, 0]).reshape(3, -1).astype(np.float64)
    expected = contrib.sum(1, keepdims=True) - np.concatenate([np.zeros((3, 1)), np.cumsum(-np.sort(-contrib, 1), 1)], 1)
    np.testing.assert_allclose(morf.scores, expected, rtol=1e-4, atol=1e-4)
    assert np.all(morf.scores <= random.scores + 1e-5) and np.all(random.scores <= lerf.scores + 1e-5)
    assert np.all(morf.scores[:, 1:-1] < lerf.scores[:, 1:-1])
    assert np.all(morf.aopc > lerf.aopc) and np.all(morf.auc < lerf.auc)
    # by 2 x 2 patches too
    pm = pixel_flipping(ex, x, attr, order="morf", **{**opts, "patch": 2, "steps": 16})
    pl = pixel_flipping(ex, x, attr, order="lerf", **{**opts, "patch": 2, "steps": 16})
    assert np.all(pm.scores[:, 1:-1] < pl.scores[:, 1:-1]) and np.all(pm.aopc > pl.aopc)


def ort_forward(ex):
    """Captum's forward function: the same ONNX model, so that only the metrics' arithmetic is compared."""
    import torch

    return lambda t: torch.from_numpy(ex.predict(t.detach().numpy().astype(np.float32)).astype(np.float64))


@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_matches_captum(mnist, normalize):
    import torch
    from captum.metrics import infidelity as captum_infidelity

    ex, x = mnist
    attr = ex.attribute(x, method="guided_backprop")
    target = ex.predict(x).argmax(1)

    def perturb(xs, rng):  # the same function and seed for both
        noise = rng.normal(0, 0.05, xs.shape)
        return noise, xs - noise

    ours = infidelity(ex, x, attr, target, perturb_func=perturb, n_perturb_samples=7, normalize=normalize, seed=5,
                      per_eval=10)  # groups of one image: the stream is drawn in pieces
    rng = np.random.default_rng(5)
    theirs = captum_infidelity(ort_forward(ex), lambda t: tuple(torch.from_numpy(a) for a in perturb(t.numpy(), rng)),
                               torch.from_numpy(x.astype(np.float64)), torch.from_numpy(attr.astype(np.float64)),
                               target=target.tolist(), n_perturb_samples=7, normalize=normalize).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    assert np.all(ours > 0)


def test_sensitivity_max_matches_captum(mnist):
    import torch
    from captum.metrics import sensitivity_max as captum_sensitivity

    ex, x = mnist
    target = ex.predict(x).argmax(1)
    perturb = uniform_perturbation(0.05)
    ours = sensitivity_max(ex, x, "gradient", target, perturb_func=perturb, n_perturb_samples=6, seed=2, per_eval=12)
    rng = np.random.default_rng(2)

    def explain(inputs, target):
        inputs = inputs[0] if isinstance(inputs, tuple) else inputs  # Captum passes the clean inputs as a tuple
        t = np.asarray(target.numpy() if hasattr(target, "numpy") else target)
        maps = ex.attribute(inputs.numpy().astype(np.float32), target=t, method="gradient")
        return (torch.from_numpy(maps.astype(np.float64)),)  # Captum iterates over what the clean call returns

    theirs = captum_sensitivity(explain, torch.from_numpy(x.astype(np.float64)),
                                perturb_func=lambda t: torch.from_numpy(perturb(t.numpy(), rng)),
                                n_perturb_samples=6, target=torch.from_numpy(target)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    assert np.all(ours > 0)
    # the seeded default is reproducible, and a larger ball moves the maps more
    a = sensitivity_max(ex, x, "gradient", perturb_radius=0.01, n_perturb_samples=4)
    np.testing.assert_array_equal(a, sensitivity_max(ex, x, "gradient", perturb_radius=0.01, n_perturb_samples=4))
    assert np.mean(sensitivity_max(ex, x, "gradient", perturb_radius=0.2, n_perturb_samples=4)) > np.mean(a)


def test_evaluate_table_json_and_plots(mnist, tmp_path):
    ex, x = mnist
    r = onnxsal.evaluate(ex, x[:3], methods=["gradient", "gradcam"], metrics=["deletion", "insertion", "infidelity"],
                         steps=10, metric_options={"infidelity": {"n_perturb_samples": 4}})
    assert set(r.values) == {"gradient", "gradcam"} and r.values["gradient"]["deletion"].shape == (3,)
    direct = deletion(ex, x[:3], ex.attribute(x[:3], method="gradcam"), steps=10)
    np.testing.assert_allclose(r.values["gradcam"]["deletion"], direct.auc, atol=1e-9)
    text, md = r.table(), r.table("markdown")
    assert "deletion AUC ↓" in text and "gradcam" in text and md.startswith("| method |")
    d = json.loads(r.to_json())
    assert d["methods"]["gradient"]["curves"]["insertion"]["scores"][0][-1] == pytest.approx(
        float(ex.predict(x[:1])[0].max()), abs=1e-6)  # everything inserted: the image itself
    written = r.save(tmp_path)
    assert {p.name for p in written} == {"evaluation.txt", "evaluation.md", "evaluation.json", "curves.png"}
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import onnxsal.evaluate.robustness as rb  # the package is callable and its modules import as usual

    assert rb.infidelity is infidelity and onnxsal.evaluate.evaluate.__module__ == "onnxsal.evaluate"
    with pytest.raises(InvalidInputError, match="unknown metric 'auc'"):
        onnxsal.evaluate(ex, x, metrics=["deletion", "auc"])
    with pytest.raises(InvalidInputError, match="unknown method"):
        onnxsal.evaluate(ex, x, methods="gradient,nope")


def test_plot_without_matplotlib_is_one_sentence(mnist, monkeypatch):
    ex, x = mnist
    r = onnxsal.evaluate(ex, x[:2], methods=["gradient"], metrics=["deletion"], steps=4)
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(OnnxsalError, match=r"^plotting needs matplotlib: pip install onnxsal\[plot\]$"):
        r.plot("never.png")


def run_cli(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def one_line_error(rc, err, *words):
    assert rc != 0
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("onnxsal: error: ")
    for w in words:
        assert w in err, err


def test_cli_writes_table_json_and_png(tmp_path):
    x, _ = mnist_samples()
    folder = tmp_path / "digits"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.round(x[i, 0] * 255).astype(np.uint8)).save(folder / f"d{i}.png")
    model = onnxsal.data.mnist_model_path()
    out = tmp_path / "out"
    rc, stdout, err = run_cli("evaluate", model, folder, "--methods", "gradient,guided_backprop",
                              "--metrics", "deletion,morf,sensitivity", "--steps", "8", "--sanity",
                              "--option", "sensitivity.n_perturb_samples=3", "-o", out)
    assert rc == 0, err
    assert "guided_backprop" in stdout and "randomised ssim" in stdout
    d = json.loads((out / "evaluation.json").read_text())
    assert d["images"] == ["d0", "d1", "d2"] and set(d["methods"]) == {"gradient", "guided_backprop"}
    assert len(d["methods"]["gradient"]["values"]["sensitivity"]) == 3
    assert "sanity" in d["methods"]["guided_backprop"]
    for name in ("curves.png", "sanity.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "| gradient |" in (out / "evaluation.md").read_text()

    rc, _, err = run_cli("evaluate", model, folder, "--metrics", "deletion,auc", "-o", tmp_path / "x")
    one_line_error(rc, err, "unknown metric 'auc'")
    rc, _, err = run_cli("evaluate", model, "-o", tmp_path / "x")
    one_line_error(rc, err, "no image files")
    (tmp_path / "empty").mkdir()
    rc, _, err = run_cli("evaluate", model, tmp_path / "empty", "-o", tmp_path / "x")
    one_line_error(rc, err, "no image files")
    assert not (tmp_path / "x").exists()
