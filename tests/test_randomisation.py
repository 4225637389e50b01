"""The model-parameter randomisation sanity check (Adebayo et al. 2018), onnxsal.evaluate.randomisation.

The paper's finding, on the bundled MNIST CNN (4 digits, seed 0): re-initialise the layers one
more at each step, top layer first; after the last step guided backprop's maps still look like the
original ones and the plain gradient's do not. Measured at the last step (all four layers
re-initialised), mean over the digits:

    metric          guided backprop   gradient
    spearman_abs    0.628             0.340      rank correlation of the magnitudes
    spearman        0.482             0.010      rank correlation of the signed maps
    ssim            0.415             0.051      SSIM of the min-max scaled magnitudes

`THRESHOLD` lies between the two in each metric (guided must be above, gradient below) and guided
must beat gradient by `MARGIN` (measured margins 0.29, 0.47, 0.36). Two controls show the test can
fail: with the re-initialisation made a no-op (each tensor "re-initialised" to its own values)
every similarity is exactly 1 for both methods and the finding's check fails; with a constant map
every correlation is undefined (NaN) and it fails too.

Then the mechanics: the same seed gives the same numbers; "cascading" step k is the model with
the top k + 1 layers randomised and "independent" step k the model with layer k alone randomised
(maps compared with attributions on models built by `randomise`); the permutation scheme keeps
each tensor's values (as a multiset); the steps are reported top layer first; Spearman and SSIM
agree with scipy.stats.spearmanr and skimage.metrics.structural_similarity (and SSIM with a NumPy
transcription of Wang et al.'s formula). About 10 s on 2 CPU cores.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

import onnxsal
from onnxsal.data import mnist_model, mnist_samples
from onnxsal.evaluate import randomisation
from onnxsal.evaluate.randomisation import compare, randomisable_layers, randomisation_cascade, randomise, spearman
from onnxsal.visualize import normalize

TOP_FIRST = ["/preds/Gemm", "/fc1/Gemm", "/conv2/Conv", "/conv1/Conv"]
THRESHOLD = {"spearman_abs": 0.5, "spearman": 0.25, "ssim": 0.25}
MARGIN = 0.2


@pytest.fixture(scope="module")
def mnist():
    ex = onnxsal.Explainer(mnist_model(), providers="cpu")
    x, _ = mnist_samples()
    return ex, x[:4]


def last_step(result) -> dict[str, float]:
    return {k: float(result.mean(k)[-1]) for k in THRESHOLD}


def finding_failures(guided, gradient) -> list[str]:
    """What of the paper's finding does not hold at the last step (written so that NaN fails)."""
    g, v = last_step(guided), last_step(gradient)
    failures = []
    for k, t in THRESHOLD.items():
        if not g[k] > t:
            failures.append(f"guided backprop {k} {g[k]:.3f} is not above {t}")
        if not v[k] < t:
            failures.append(f"gradient {k} {v[k]:.3f} is not below {t}")
        if not g[k] - v[k] > MARGIN:
            failures.append(f"guided backprop's {k} does not beat the gradient's by {MARGIN}: {g[k]:.3f} vs {v[k]:.3f}")
    return failures


def params(model) -> dict[str, np.ndarray]:
    """Every randomisable layer's parameter tensors by name."""
    proto = model.model if isinstance(model, onnxsal.Explainer) else model
    tensors = randomisation._Tensors(proto)
    return {name: tensors.get(name) for layer in randomisable_layers(proto) for name in layer.params}


# -- the paper's finding --------------------------------------------------------------------------------------
def test_guided_backprop_survives_randomisation_and_the_gradient_does_not(mnist):
    ex, x = mnist
    results = {m: randomisation_cascade(ex, x, m, seed=0) for m in ("guided_backprop", "gradient")}
    for m, r in results.items():
        assert r.steps == TOP_FIRST, r.steps
        # every step changed the model's output (the weights really went), and no map was constant
        assert (r.output_change > 1e-3).all(), (m, r.output_change)
        assert all(np.isfinite(v).all() for v in r.metrics.values()), (m, r.metrics)
    assert finding_failures(results["guided_backprop"], results["gradient"]) == []
    # the signed maps and SSIM keep the finding with other re-initialisations as well (measured, seeds 1
    # and 2: guided 0.48 / 0.50 signed, 0.46 / 0.42 SSIM; gradient -0.02 / 0.00 and 0.14 / 0.05)
    for seed in (1, 2):
        g = last_step(randomisation_cascade(ex, x, "guided_backprop", seed=seed))
        v = last_step(randomisation_cascade(ex, x, "gradient", seed=seed))
        for k in ("spearman", "ssim"):
            assert g[k] > THRESHOLD[k] > v[k] and g[k] - v[k] > MARGIN, (seed, k, g, v)


def test_control_randomisation_that_changes_nothing_gives_similarity_one(mnist, monkeypatch):
    """"Re-initialising" each tensor with its own values: the models are the original one, the maps
    too, and every similarity is 1 for both methods; so the finding's check fails, as it must."""
    ex, x = mnist
    monkeypatch.setattr(randomisation, "_random_like", lambda a, rng, scheme: a.copy())
    results = {m: randomisation_cascade(ex, x, m, seed=0) for m in ("guided_backprop", "gradient")}
    for m, r in results.items():
        assert r.steps == TOP_FIRST
        assert np.array_equal(r.output_change, np.zeros_like(r.output_change)), m
        for k, v in r.metrics.items():
            np.testing.assert_allclose(v, 1.0, atol=1e-9, err_msg=f"{m} {k}")
    failures = finding_failures(results["guided_backprop"], results["gradient"])
    assert any("gradient" in f and "not below" in f for f in failures), failures


def test_control_a_constant_map_fails_the_check(mnist, monkeypatch):
    """A method that draws the same flat map whatever the model: no rank correlation is defined (NaN,
    so every condition on them fails), and SSIM calls two flat maps identical (1), so the gradient's
    SSIM is not below its threshold either."""
    ex, x = mnist
    monkeypatch.setattr(randomisation, "_attribution", lambda e, inputs, *a: np.ones_like(np.asarray(inputs)))
    r = randomisation_cascade(ex, x, "gradient", seed=0)
    assert (r.output_change > 1e-3).all()  # the models changed; the maps could not
    for k in ("spearman_abs", "spearman"):
        assert np.isnan(r.metrics[k]).all(), k
    np.testing.assert_allclose(r.metrics["ssim"], 1.0)
    failures = finding_failures(r, r)
    assert len(failures) == 3 * 2 + 2, failures  # all six on the correlations, SSIM's "below" and margin
    assert "gradient ssim 1.000 is not below 0.25" in failures, failures


# -- the mechanics -------------------------------------------------------------------------------------------
def test_the_same_seed_gives_the_same_numbers(mnist):
    ex, x = mnist
    a, b = (randomisation_cascade(ex, x, "gradient", seed=3) for _ in range(2))
    c = randomisation_cascade(ex, x, "gradient", seed=4)
    for k in a.metrics:
        assert np.array_equal(a.metrics[k], b.metrics[k]), k
        assert not np.allclose(a.metrics[k], c.metrics[k]), k
    assert np.array_equal(a.output_change, b.output_change)
    p, q, other = params(randomise(ex, seed=3)), params(randomise(ex, seed=3)), params(randomise(ex, seed=4))
    assert all(np.array_equal(p[n], q[n]) and not np.array_equal(p[n], other[n]) for n in p)


def test_cascading_and_independent_modes_randomise_what_they_say(mnist):
    ex, x = mnist
    runs = {mode: randomisation_cascade(ex, x, "gradient", seed=0, mode=mode, keep_maps=True)
            for mode in ("cascading", "independent")}
    np.testing.assert_array_equal(runs["cascading"].maps[0], ex.attribute(x, method="gradient"))
    for k, name in enumerate(TOP_FIRST):
        cascaded = onnxsal.Explainer(randomise(ex, layers=k + 1, seed=0), providers="cpu")
        alone = onnxsal.Explainer(randomise(ex, layers=[name], seed=0), providers="cpu")
        target = runs["cascading"].target
        np.testing.assert_allclose(runs["cascading"].maps[k + 1], cascaded.attribute(x, target, "gradient"),
                                   rtol=1e-5, atol=1e-7, err_msg=f"cascading step {k}")
        np.testing.assert_allclose(runs["independent"].maps[k + 1], alone.attribute(x, target, "gradient"),
                                   rtol=1e-5, atol=1e-7, err_msg=f"independent step {k}")
        same = np.array_equal(runs["cascading"].maps[k + 1], runs["independent"].maps[k + 1])
        assert same == (k == 0), f"step {k}: the modes differ from the second step on, and only there"
    # randomise(layers=k) replaces exactly the top k layers' tensors, each with the values it gets alone
    original = params(ex)
    for k in range(1, len(TOP_FIRST) + 1):
        new = params(randomise(ex, layers=k, seed=0))
        top = {n for layer in randomisable_layers(ex)[:k] for n in layer.params}
        for n in original:
            assert np.array_equal(new[n], original[n]) != (n in top), (k, n)
    fc1_alone, fc1_with_preds = params(randomise(ex, layers=["/fc1/Gemm"])), params(randomise(ex, layers=2))
    assert np.array_equal(fc1_alone["fc1.weight"], fc1_with_preds["fc1.weight"])


def test_permute_keeps_each_tensors_values_and_normal_keeps_its_scale(mnist):
    ex, _ = mnist
    original = params(ex)
    permuted, drawn = params(randomise(ex, scheme="permute")), params(randomise(ex, scheme="normal"))
    for n, a in original.items():
        assert a.std() > 0, n
        assert permuted[n].shape == a.shape and permuted[n].dtype == a.dtype
        assert np.array_equal(np.sort(permuted[n], axis=None), np.sort(a, axis=None)), n
        assert not np.array_equal(permuted[n], a), n
        assert not np.array_equal(np.sort(drawn[n], axis=None), np.sort(a, axis=None)), n
    w, new = original["fc1.weight"], drawn["fc1.weight"]  # 1.2 M values: a zero-mean draw at the trained std
    assert abs(new.std() / w.std() - 1) < 0.01 and abs(new.mean()) < 0.01 * w.std()


def test_steps_are_reported_top_layer_first(mnist):
    ex, x = mnist
    layers = randomisable_layers(ex)
    assert [layer.name for layer in layers] == TOP_FIRST
    assert [layer.op_type for layer in layers] == ["Gemm", "Gemm", "Conv", "Conv"]
    position = {n.name: i for i, n in enumerate(ex.model.graph.node)}
    assert [position[name] for name in TOP_FIRST] == sorted((position[name] for name in TOP_FIRST), reverse=True)
    r = randomisation_cascade(ex, x[:2], "gradient", layers=["/conv1/Conv", "/preds/Gemm"], metrics=("ssim",))
    assert r.steps == ["/preds/Gemm", "/conv1/Conv"] and r.op_types == ["Gemm", "Conv"]
    assert r.metrics["ssim"].shape == (2, 2)
    assert randomisation_cascade(ex, x[:2], "gradient", layers=3, metrics=("spearman",)).steps == TOP_FIRST[:3]


# -- the metrics -------------------------------------------------------------------------------------------
def test_spearman_matches_scipy():
    rng = np.random.default_rng(0)
    for shape in ((50,), (28, 28), (3, 9, 11)):
        a = rng.standard_normal(shape)
        b = a + rng.standard_normal(shape)
        assert spearman(a, b) == pytest.approx(spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-12)
    ties_a, ties_b = rng.integers(0, 4, 200), rng.integers(0, 3, 200) + rng.integers(0, 2, 200)
    assert spearman(ties_a, ties_b) == pytest.approx(spearmanr(ties_a, ties_b).statistic, abs=1e-12)
    assert spearman(np.arange(10), -np.arange(10.0) ** 3) == pytest.approx(-1.0)
    assert np.isnan(spearman(np.ones(10), np.arange(10)))
    # compare(): magnitudes are max |.| over channels (NCHW here), the signed maps their channel sum
    maps0, maps1 = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((2, 3, 8, 8))
    got = compare(maps0, maps1, ("spearman_abs", "spearman"))
    for i in range(2):
        mag = spearmanr(np.abs(maps0[i]).max(0).ravel(), np.abs(maps1[i]).max(0).ravel()).statistic
        assert got["spearman_abs"][i] == pytest.approx(mag, abs=1e-12)
        signed = spearmanr(maps0[i].sum(0).ravel(), maps1[i].sum(0).ravel()).statistic
        assert got["spearman"][i] == pytest.approx(signed, abs=1e-12)


def numpy_ssim(a: np.ndarray, b: np.ndarray, win: int = 7, data_range: float = 1.0) -> float:
    """Wang et al.'s SSIM, mean over every win x win window inside the image, sample (co)variances
    (what skimage computes with its defaults K1 = 0.01, K2 = 0.03, uniform windows)."""
    wa, wb = sliding_window_view(a, (win, win)), sliding_window_view(b, (win, win))
    mu_a, mu_b = wa.mean(axis=(-1, -2)), wb.mean(axis=(-1, -2))
    n = win * win
    var_a = wa.var(axis=(-1, -2)) * n / (n - 1)
    var_b = wb.var(axis=(-1, -2)) * n / (n - 1)
    cov = ((wa - mu_a[..., None, None]) * (wb - mu_b[..., None, None])).sum(axis=(-1, -2)) / (n - 1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def test_ssim_matches_skimage_and_the_formula():
    rng = np.random.default_rng(1)
    maps0 = rng.standard_normal((3, 1, 28, 28))
    maps1 = 0.7 * maps0 + 0.5 * rng.standard_normal((3, 1, 28, 28))
    got = compare(maps0, maps1, ("ssim",))["ssim"]
    for i in range(3):
        a, b = normalize(np.abs(maps0[i, 0])), normalize(np.abs(maps1[i, 0]))
        ref = structural_similarity(a, b, data_range=1.0, win_size=7)
        assert got[i] == pytest.approx(ref, abs=1e-7)  # normalize works in float32
        assert got[i] == pytest.approx(numpy_ssim(a, b), abs=1e-7)
        assert 0.1 < got[i] < 0.9  # a partly similar pair: neither identical nor unrelated
    assert compare(maps0, maps0, ("ssim",))["ssim"] == pytest.approx(1.0)
    # magnitudes of a 3-channel NHWC batch: max |.| over the last axis
    rgb0, rgb1 = rng.standard_normal((2, 16, 16, 3)), rng.standard_normal((2, 16, 16, 3))
    got = compare(rgb0, rgb1, ("ssim",))["ssim"]
    for i in range(2):
        a, b = normalize(np.abs(rgb0[i]).max(-1)), normalize(np.abs(rgb1[i]).max(-1))
        assert got[i] == pytest.approx(numpy_ssim(a, b), abs=1e-7)
