"""Determinism and numerical guard rails: same seed, same bits; NaN and large IG gaps are reported."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import onnxsal
from tests.tiny import F, make_model, mlp, mlp_reference


@pytest.fixture(scope="module")
def ex():
    return onnxsal.Explainer(mlp(seed=5), providers="cpu")


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(9).normal(size=(4, 6)).astype(np.float32)


@pytest.mark.parametrize("method, options", [
    ("smoothgrad", {"n_samples": 7, "seed": 3}),
    ("smoothgrad", {"n_samples": 5, "aggregation": "variance", "base": "guided_backprop", "seed": 1}),
    ("integrated_gradients", {"n_steps": 9}),
])
def test_same_seed_gives_identical_bits(ex, x, method, options):
    a = ex.attribute(x, method=method, **options)
    b = onnxsal.Explainer(mlp(seed=5), providers="cpu").attribute(x, method=method, **options)
    assert np.array_equal(a, b)
    assert np.array_equal(a, ex.attribute(x, method=method, **options))


def test_different_seeds_differ(ex, x):
    a = ex.attribute(x, method="smoothgrad", n_samples=4, seed=0)
    assert not np.array_equal(a, ex.attribute(x, method="smoothgrad", n_samples=4, seed=1))


def test_nan_attribution_is_reported():
    # y = log(x): its gradient 1/x is infinite at x = 0
    model = make_model([helper.make_node("Log", ["x"], ["y"], name="log")], [("x", F, ["N", 3])], [("y", F, ["N", 3])])
    with pytest.warns(RuntimeWarning, match="NaN or infinite"):
        onnxsal.Explainer(model, providers="cpu").attribute(np.array([[0.0, 1.0, 2.0]], np.float32), target=0)


def test_large_completeness_gap_is_reported(ex, x):
    with pytest.warns(RuntimeWarning, match="completeness gap"):
        ex.attribute(x, method="integrated_gradients", n_steps=1, integration="riemann_left")


def test_completeness_gap_shrinks_with_steps(ex, x):
    """The gap is Σ attribution − (F(x) − F(0)), and the quadrature error falls as steps grow."""
    attr, delta = ex.attribute(x, target=1, method="integrated_gradients", n_steps=400, integration="riemann_middle",
                               return_convergence_delta=True)
    _, coarse = ex.attribute(x, target=1, method="integrated_gradients", n_steps=4, integration="riemann_middle",
                             return_convergence_delta=True)
    assert np.abs(delta).max() < np.abs(coarse).max() / 10
    _, logits, _ = mlp_reference(mlp(seed=5), x)
    _, at_zero, _ = mlp_reference(mlp(seed=5), np.zeros_like(x))
    np.testing.assert_allclose(delta, attr.sum(axis=1) - (logits[:, 1] - at_zero[:, 1]), rtol=1e-4, atol=1e-5)
