"""onnxsal.visualize: reductions, normalisation, colour maps, overlays, grids and atomic PNG writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnxsal import visualize as vis


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# -- reduce_channels --------------------------------------------------------------------------------------
def test_reductions_nchw_match_their_definitions(rng):
    a = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    np.testing.assert_allclose(vis.reduce_channels(a, "max_abs"), np.abs(a).max(axis=1))
    np.testing.assert_allclose(vis.reduce_channels(a, "sum_abs"), np.abs(a).sum(axis=1), rtol=1e-6)
    s = a.sum(axis=1)
    np.testing.assert_allclose(vis.reduce_channels(a, "positive"), np.maximum(s, 0), rtol=1e-6)
    np.testing.assert_allclose(vis.reduce_channels(a, "negative"), np.maximum(-s, 0), rtol=1e-6)
    np.testing.assert_allclose(vis.reduce_channels(a, "sum"), s, rtol=1e-6)
    assert vis.reduce_channels(a, "max_abs").shape == (2, 5, 7)


def test_positive_and_negative_parts_rebuild_the_signed_sum(rng):
    a = rng.standard_normal((3, 3, 4, 4))
    pos, neg = vis.reduce_channels(a, "positive"), vis.reduce_channels(a, "negative")
    assert (pos >= 0).all() and (neg >= 0).all()
    assert not ((pos > 0) & (neg > 0)).any()
    np.testing.assert_allclose(pos - neg, a.sum(axis=1), rtol=1e-5, atol=1e-6)


def test_layouts_nhwc_and_auto_agree_with_nchw(rng):
    a = rng.standard_normal((2, 3, 8, 9)).astype(np.float32)
    nhwc = np.transpose(a, (0, 2, 3, 1))
    ref = vis.reduce_channels(a, "max_abs", layout="NCHW")
    np.testing.assert_array_equal(vis.reduce_channels(nhwc, "max_abs", layout="NHWC"), ref)
    np.testing.assert_array_equal(vis.reduce_channels(nhwc, "max_abs", layout="auto"), ref)
    np.testing.assert_array_equal(vis.reduce_channels(a, "max_abs", layout="auto"), ref)
    # the explicit layout wins over the guess: read as NHWC, the channel axis is the last (9)
    assert vis.reduce_channels(a, "max_abs", layout="NHWC").shape == (2, 3, 8)


def test_auto_layout_of_inner_feature_maps(rng):
    a = rng.standard_normal((2, 64, 12, 12))  # no small axis: the square spatial pair decides
    assert vis.reduce_channels(a).shape == (2, 12, 12)
    assert vis.reduce_channels(np.transpose(a, (0, 2, 3, 1))).shape == (2, 12, 12)
    np.testing.assert_allclose(vis.reduce_channels(np.transpose(a, (0, 2, 3, 1)), "sum"), a.sum(axis=1), rtol=1e-6)


def test_single_images_and_maps(rng):
    chw = rng.standard_normal((3, 6, 6))
    assert vis.reduce_channels(chw).shape == (6, 6)
    assert vis.reduce_channels(np.moveaxis(chw, 0, -1)).shape == (6, 6)
    m = rng.standard_normal((6, 6))
    np.testing.assert_allclose(vis.reduce_channels(m, "max_abs"), np.abs(m), rtol=1e-6)
    np.testing.assert_allclose(vis.reduce_channels(m, "negative"), np.maximum(-m, 0), rtol=1e-6)


def test_none_keeps_channels_last(rng):
    a = rng.standard_normal((2, 3, 4, 5))
    out = vis.reduce_channels(a, "none", layout="NCHW")
    assert out.shape == (2, 4, 5, 3)
    np.testing.assert_allclose(out, np.transpose(a, (0, 2, 3, 1)), rtol=1e-6)


@pytest.mark.parametrize("bad", [dict(how="mean"), dict(layout="CHWN")])
def test_reduce_rejects_unknown_options(bad, rng):
    with pytest.raises(ValueError):
        vis.reduce_channels(rng.standard_normal((1, 3, 4, 4)), **bad)


def test_reduce_rejects_wrong_rank():
    with pytest.raises(ValueError, match="dimensions"):
        vis.reduce_channels(np.zeros((1, 1, 1, 4, 4)))


# -- normalize --------------------------------------------------------------------------------------------
def test_minmax_is_per_sample(rng):
    m = np.stack([rng.random((5, 5)) * 10 + 3, rng.random((5, 5)) * 0.01 - 4])
    out = vis.normalize(m)
    assert out.dtype == np.float32 and out.shape == m.shape
    for k in range(2):
        assert out[k].min() == pytest.approx(0.0) and out[k].max() == pytest.approx(1.0)
        ref = (m[k] - m[k].min()) / (m[k].max() - m[k].min())
        np.testing.assert_allclose(out[k], ref, rtol=1e-5, atol=1e-6)


def test_constant_maps_become_zeros_not_nan():
    m = np.stack([np.full((4, 4), 7.0), np.zeros((4, 4)), np.arange(16.0).reshape(4, 4)])
    for how in ("minmax", "percentile"):
        out = vis.normalize(m, how=how)
        assert np.isfinite(out).all()
        np.testing.assert_array_equal(out[0], 0)
        np.testing.assert_array_equal(out[1], 0)
        assert out[2].max() == pytest.approx(1.0)
    np.testing.assert_array_equal(vis.normalize(np.full((3, 3), -2.5)), 0)  # a single 2-D map
    np.testing.assert_array_equal(vis.normalize_signed(np.zeros((2, 3, 3))), 0)


@pytest.mark.parametrize("n", [1, 2, 3, 8, 101, 224 * 224])
@pytest.mark.parametrize("q", [0.5, 50, 99, 99.9, 100])
def test_percentile_is_numpys(n, q):
    """The partition-based per-row percentile equals np.percentile's default (linear) method."""
    x = np.random.default_rng(n).normal(size=(3, n)).astype(np.float32)
    np.testing.assert_allclose(vis._row_percentile(x, q), np.percentile(x, q, axis=1), rtol=1e-6, atol=1e-7)
    top = vis.normalize_signed(x.reshape(3, 1, n), percentile=q)
    np.testing.assert_allclose(top, np.clip(x.reshape(3, 1, n) / np.percentile(np.abs(x), q, axis=1)[:, None, None], -1, 1),
                               rtol=1e-5, atol=1e-6)


def test_percentile_clips_hot_pixels(rng):
    m = rng.random((1, 20, 20)).astype(np.float32)
    m[0, 0, 0] = 1000.0
    plain = vis.normalize(m)
    clipped = vis.normalize(m, how="percentile", percentile=99)
    assert plain[0].mean() < 0.01  # the hot pixel squashes the rest toward 0
    assert clipped[0].mean() > 0.3
    assert clipped.min() >= 0 and clipped.max() == pytest.approx(1.0)
    assert clipped[0, 0, 0] == pytest.approx(1.0)
    np.testing.assert_allclose(vis.normalize(m, how="percentile", percentile=100), plain, atol=1e-6)


def test_normalize_signed_keeps_zero_and_sign():
    m = np.array([[[-2.0, 0.0], [1.0, 4.0]]])
    out = vis.normalize_signed(m)
    np.testing.assert_allclose(out, [[[-0.5, 0.0], [0.25, 1.0]]])
    out = vis.normalize_signed(np.array([[-8.0, 1.0], [2.0, 0.0]]))
    np.testing.assert_allclose(out, [[-1.0, 0.125], [0.25, 0.0]])


@pytest.mark.parametrize("bad", [np.array([[np.nan, 1.0]]), np.array([[np.inf, 1.0]])])
def test_normalize_refuses_non_finite(bad):
    with pytest.raises(ValueError, match="NaN or infinite"):
        vis.normalize(bad)


def test_normalize_rejects_bad_options():
    with pytest.raises(ValueError):
        vis.normalize(np.ones((2, 2)), how="zscore")
    with pytest.raises(ValueError):
        vis.normalize(np.ones((2, 2)), how="percentile", percentile=0)
    with pytest.raises(ValueError):
        vis.normalize(np.ones(3))


# -- colour maps --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["jet", "viridis", "gray", "hot", "bwr"])
def test_lookup_tables(name):
    t = vis.colormap(name)
    assert t.shape == (256, 3) and t.dtype == np.uint8
    assert not t.flags.writeable
    assert len(np.unique(t, axis=0)) > 100  # a real ramp, not a handful of colours


def test_colour_map_endpoints():
    assert vis.colormap("gray")[0].tolist() == [0, 0, 0] and vis.colormap("gray")[-1].tolist() == [255, 255, 255]
    jet = vis.colormap("jet")
    assert jet[0].tolist() == [0, 0, 128] and jet[-1].tolist() == [128, 0, 0]  # dark blue to dark red
    assert jet[128][1] == 255  # green in the middle
    vir = vis.colormap("viridis")
    assert vir[0].tolist() == [0x44, 0x01, 0x54] and vir[-1].tolist() == [0xFD, 0xE7, 0x25]
    bwr = vis.colormap("bwr")
    assert bwr[0].tolist() == [0, 0, 255] and bwr[-1].tolist() == [255, 0, 0]
    assert bwr[127].min() >= 250 and bwr[128].min() >= 250  # white at zero


def test_viridis_is_perceptually_ordered():
    # luminance rises monotonically along viridis (its defining property; jet's does not)
    lum = vis.colormap("viridis").astype(float) @ [0.2126, 0.7152, 0.0722]
    assert (np.diff(lum) >= -0.5).all()
    jet_lum = vis.colormap("jet").astype(float) @ [0.2126, 0.7152, 0.0722]
    assert (np.diff(jet_lum) < -0.5).any()


def test_viridis_close_to_matplotlib():
    mpl = pytest.importorskip("matplotlib")
    ref = mpl.colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255
    err = np.abs(ref - vis.colormap("viridis"))
    assert np.sqrt((err**2).mean()) < 4 and err.max() < 20


def test_apply_cmap_shapes_dtype_and_clipping():
    m = np.linspace(-0.5, 1.5, 2 * 3 * 4).reshape(2, 3, 4)
    out = vis.apply_cmap(m, "gray")
    assert out.shape == (2, 3, 4, 3) and out.dtype == np.uint8
    assert out[0, 0, 0].tolist() == [0, 0, 0] and out[-1, -1, -1].tolist() == [255, 255, 255]
    half = vis.apply_cmap(np.array([[0.5]]), "gray")
    assert abs(int(half[0, 0, 0]) - 128) <= 1
    signed = vis.apply_cmap(np.array([-1.0, 0.0, 1.0]), "bwr")
    assert signed[0].tolist() == [0, 0, 255] and signed[2].tolist() == [255, 0, 0]
    assert signed[1].min() >= 250
    with pytest.raises(ValueError, match="unknown colour map"):
        vis.apply_cmap(m, "rainbow-ish")
    with pytest.raises(ValueError):
        vis.apply_cmap(np.array([np.nan]), "jet")


# -- images and overlays ------------------------------------------------------------------------------------
def test_to_uint8_image_ranges_and_layouts(rng):
    gray01 = rng.random((1, 6, 5)).astype(np.float32)
    out = vis.to_uint8_image(gray01)
    assert out.shape == (6, 5, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], np.round(gray01[0] * 255))
    np.testing.assert_array_equal(out[..., 0], out[..., 2])

    rgb255 = rng.integers(0, 256, (6, 5, 3)).astype(np.float64)
    np.testing.assert_array_equal(vis.to_uint8_image(rgb255), rgb255.astype(np.uint8))
    np.testing.assert_array_equal(vis.to_uint8_image(np.moveaxis(rgb255, -1, 0)), rgb255.astype(np.uint8))

    centred = rng.standard_normal((3, 6, 5)) * 40  # e.g. mean-subtracted caffe inputs
    out = vis.to_uint8_image(centred)
    assert out.min() == 0 and out.max() == 255

    assert vis.to_uint8_image(np.zeros((1, 1, 4, 4), np.uint8)).shape == (4, 4, 3)  # batch of one
    assert vis.to_uint8_image(np.full((4, 4), 3.0)).max() == 3  # inside [0, 255]: kept
    assert vis.to_uint8_image(np.full((4, 4), -3.0)).max() == 0  # constant, out of range: black, no NaN
    with pytest.raises(ValueError):
        vis.to_uint8_image(np.zeros((2, 5, 6, 6)))


def test_overlay_blends_and_resizes():
    img = np.zeros((1, 8, 8), np.float32)
    heat = np.ones((4, 4), np.float32)  # smaller: resized to the image
    out = vis.overlay(img, heat, alpha=0.5, cmap="gray")
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert abs(int(out.min()) - 128) <= 1 and abs(int(out.max()) - 128) <= 1
    np.testing.assert_array_equal(vis.overlay(img, heat, alpha=0.0), vis.to_uint8_image(img))
    np.testing.assert_array_equal(vis.overlay(img, heat, alpha=1.0, cmap="jet")[0, 0], vis.colormap("jet")[-1])
    with pytest.raises(ValueError):
        vis.overlay(img, heat, alpha=1.5)
    with pytest.raises(ValueError):
        vis.overlay(img, np.ones((2, 4, 4)))


# -- grid ----------------------------------------------------------------------------------------------------------
def test_grid_places_cells_and_draws_titles():
    red = np.zeros((10, 10, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((10, 10, 3), np.uint8)
    blue[..., 2] = 255
    plain = vis.grid([[red, blue], [blue, red]], cell=20, pad=4)
    assert plain.mode == "RGB" and plain.size == (4 + 2 * 24, 4 + 2 * 24)
    a = np.asarray(plain)
    assert a[4 + 10, 4 + 10].tolist() == [255, 0, 0]  # top-left cell, scaled to 20 x 20
    assert a[4 + 10, 4 + 24 + 10].tolist() == [0, 0, 255]
    assert a[2, 2].tolist() == [255, 255, 255]  # padding is background

    titled = vis.grid([[red, blue], [blue, red]], titles=["left", "right"], row_titles=["a", "bb"],
                      title="figure", cell=20, pad=4)
    assert titled.size[0] > plain.size[0] and titled.size[1] > plain.size[1]
    t = np.asarray(titled)
    dark = (t.sum(axis=2) < 200) & (np.abs(t[..., 0].astype(int) - t[..., 2]) < 30)
    assert dark.sum() > 30  # black text was drawn


def test_grid_accepts_mixed_inputs_and_gaps():
    img = vis.grid([[np.ones((5, 5)), Image.new("RGB", (7, 3), (0, 255, 0))], [None, np.zeros((1, 5, 5))]],
                   titles=[["a", "b"], ["", "d"]], cell=(16, 12))
    assert img.mode == "RGB"
    with pytest.raises(ValueError):
        vis.grid([])
    with pytest.raises(ValueError):
        vis.grid([[np.ones((4, 4))]], titles=["a", "b"])
    with pytest.raises(ValueError):
        vis.grid([[np.ones((4, 4))]], row_titles=["a", "b"])


def test_grid_cuts_titles_that_do_not_fit():
    img = vis.grid([[np.ones((4, 4))]], titles=["a very long title that cannot fit in thirty pixels"], cell=30)
    assert img.size[0] == 30 + 2 * 6  # the title never widens the figure


# -- save_png ---------------------------------------------------------------------------------------------------
def test_save_png_round_trips_and_leaves_no_temp_files(tmp_path):
    a = (np.arange(4 * 6 * 3) % 256).astype(np.uint8).reshape(4, 6, 3)
    path = vis.save_png(a, tmp_path / "sub" / "x.png")
    assert path == tmp_path / "sub" / "x.png"
    with Image.open(path) as im:
        assert im.format == "PNG"
        np.testing.assert_array_equal(np.asarray(im), a)
    vis.save_png(Image.new("RGB", (3, 2), (1, 2, 3)), path)  # replaces in place
    with Image.open(path) as im:
        assert im.size == (3, 2)
    assert os.listdir(tmp_path / "sub") == ["x.png"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_save_png_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "keep.png"
    vis.save_png(np.zeros((2, 2, 3), np.uint8), path)
    before = path.read_bytes()

    def broken(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        vis.save_png(np.ones((2, 2, 3), np.uint8), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["keep.png"]


def test_runtime_module_needs_no_heavy_libraries():
    import subprocess
    import sys

    code = ("import sys, onnxsal.visualize, onnxsal.demo, onnxsal.data; "
            "bad = [m for m in ('torch', 'tensorflow', 'matplotlib') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
