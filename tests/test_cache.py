"""The graph cache of `onnxsal explain`: a second process reuses the first one's graph (and imports
neither onnx nor the graph builder), gives the same numbers, and a changed model, a changed option, a
broken entry or two processes at once never give a wrong or half-written result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from onnxsal import cache as cache_mod
from onnxsal.batch import explain_images
from onnxsal.cache import GraphCache
from tests.test_cli import ROOT, cli, one_line_error, tiny_cnn


@pytest.fixture()
def setup(tmp_path):
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_cnn(), str(model))
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(images / f"{name}.png")
    return model, images, tmp_path / "cache"


def entries(root: Path) -> list[Path]:
    return sorted(p for p in (root / "graphs").iterdir() if not p.name.startswith(".")) if (root / "graphs").exists() else []


def maps(out: Path, method: str = "guided_backprop") -> dict[str, np.ndarray]:
    return {p.name: np.load(p) for p in sorted(out.glob(f"*.{method}.npy"))}


def explain(model, images, out, cache_dir, *extra, process=False):
    return cli("explain", model, images, "-o", out, "--cache-dir", cache_dir, "--providers", "cpu", *extra,
               process=process)


def test_second_run_reuses_the_graph_and_gives_the_same_numbers(setup, tmp_path):
    model, images, root = setup
    first = explain(model, images, tmp_path / "one", root)
    assert first.returncode == 0, first.stderr
    [entry] = entries(root)
    manifest = json.loads((entry / "entry.json").read_text())
    assert manifest["target_input"] is None and manifest["optimised"] is True and manifest["n_classes"] == 5
    built = (entry / "graph.onnx").stat().st_mtime_ns
    second = explain(model, images, tmp_path / "two", root)
    assert second.returncode == 0, second.stderr
    assert entries(root) == [entry] and (entry / "graph.onnx").stat().st_mtime_ns == built  # read, not rebuilt
    assert first.stdout.replace("one", "two") == second.stdout  # same classes and scores printed
    a, b = maps(tmp_path / "one"), maps(tmp_path / "two")
    assert a.keys() == b.keys() and len(a) == 3
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    fresh = cli("explain", model, images, "-o", tmp_path / "fresh", "--no-cache", "--providers", "cpu")
    assert fresh.returncode == 0, fresh.stderr
    c = maps(tmp_path / "fresh")
    for k in a:  # the cached graph (argmax inside) against the Explainer's path (forward, then the class)
        np.testing.assert_allclose(a[k], c[k], rtol=1e-5, atol=1e-6 * np.abs(c[k]).max())


def test_a_warm_process_imports_neither_onnx_nor_the_graph_builder(setup, tmp_path):
    model, images, root = setup
    assert explain(model, images, tmp_path / "one", root).returncode == 0
    code = ("import sys; from onnxsal.cli import main; rc = main(sys.argv[1:]); "
            "heavy = sorted(m for m in sys.modules if m == 'onnx' or m.startswith(('onnx.', 'onnxsal.explainer', "
            "'onnxsal.autodiff', 'onnxsal.methods'))); print('HEAVY', heavy); sys.exit(rc)")
    proc = cli("explain", model, images, "-o", tmp_path / "two", "--cache-dir", root, "--providers", "cpu", code=code)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout
    cold = cli("explain", model, images, "-o", tmp_path / "three", "--no-cache", "--providers", "cpu", code=code)
    assert "'onnx'" in cold.stdout  # the check can fail: a cold process does import onnx


def test_the_key_follows_the_model_and_the_configuration(setup, tmp_path):
    model, images, root = setup
    assert explain(model, images, tmp_path / "o1", root).returncode == 0
    assert explain(model, images, tmp_path / "o2", root, "--modifier", "absolute").returncode == 0
    assert explain(model, images, tmp_path / "o3", root, "-t", "2").returncode == 0
    assert explain(model, images, tmp_path / "o4", root, "-m", "gradient").returncode == 0
    assert len(entries(root)) == 4
    targeted = [json.loads((e / "entry.json").read_text()) for e in entries(root)]
    assert sum(m["target_input"] is not None for m in targeted) == 1
    np.testing.assert_allclose(maps(tmp_path / "o2")["a.guided_backprop.npy"], np.abs(maps(tmp_path / "o1")["a.guided_backprop.npy"]))
    # the same file rewritten with other weights: a new entry, and the new weights' numbers
    changed = tiny_cnn(seed=7)
    onnx.save(changed, str(model))
    assert explain(model, images, tmp_path / "o5", root).returncode == 0
    assert len(entries(root)) == 5
    fresh = cli("explain", model, images, "-o", tmp_path / "o6", "--no-cache", "--providers", "cpu")
    assert fresh.returncode == 0
    new, ref = maps(tmp_path / "o5"), maps(tmp_path / "o6")
    for k in ref:
        np.testing.assert_allclose(new[k], ref[k], rtol=1e-5, atol=1e-6 * np.abs(ref[k]).max())
    assert not np.allclose(new["a.guided_backprop.npy"], maps(tmp_path / "o1")["a.guided_backprop.npy"])


def test_a_target_out_of_range_is_refused_as_on_a_first_run(setup, tmp_path):
    model, images, root = setup
    assert explain(model, images, tmp_path / "o1", root, "-t", "1").returncode == 0
    one_line_error(explain(model, images, tmp_path / "o2", root, "-t", "9"), "9")
    assert not (tmp_path / "o2").exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage_graph", "garbage_manifest", "no_manifest"])
def test_a_broken_entry_is_rebuilt(setup, tmp_path, damage):
    model, images, root = setup
    assert explain(model, images, tmp_path / "one", root).returncode == 0
    [entry] = entries(root)
    graph, manifest = entry / "graph.onnx", entry / "entry.json"
    size = graph.stat().st_size
    if damage == "truncate":
        graph.write_bytes(graph.read_bytes()[: size // 2])
    elif damage == "garbage_graph":  # same size, so only onnxruntime's refusal tells
        graph.write_bytes(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    elif damage == "garbage_manifest":
        manifest.write_text("{not json")
    else:
        manifest.unlink()
    proc = explain(model, images, tmp_path / "two", root)
    assert proc.returncode == 0, proc.stderr
    for k, v in maps(tmp_path / "one").items():
        np.testing.assert_array_equal(v, maps(tmp_path / "two")[k])
    [rebuilt] = entries(root)
    assert rebuilt.name == entry.name
    assert json.loads((rebuilt / "entry.json").read_text())["graph_size"] == (rebuilt / "graph.onnx").stat().st_size
    assert not [p for p in (root / "graphs").iterdir() if p.name.startswith(".")]  # no staging or trash left


def test_concurrent_first_runs_leave_one_whole_entry(setup, tmp_path):
    model, images, root = setup
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-m", "onnxsal.cli", "explain", str(model), str(images), "-o",
                               str(tmp_path / f"out{i}"), "--cache-dir", str(root), "--providers", "cpu"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for i in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert len(entries(root)) == 1
    assert not [p for p in (root / "graphs").iterdir() if p.name.startswith(".")]
    ref = maps(tmp_path / "out0")
    for i in (1, 2):
        for k, v in maps(tmp_path / f"out{i}").items():
            np.testing.assert_array_equal(v, ref[k])


def test_commit_keeps_the_first_entry_of_a_key(tmp_path):
    cache = GraphCache(tmp_path)
    staged = []
    for content in (b"first", b"second"):
        folder = cache.staging()
        (folder / "graph.onnx").write_bytes(content)
        staged.append(folder)
    first = cache.commit("k", staged[0], {"x": 1})
    second = cache.commit("k", staged[1], {"x": 2})
    assert first is not None and second is not None
    assert (second.graph_path).read_bytes() == b"first" and second.manifest["x"] == 1
    assert not any(p.exists() for p in staged)


def test_the_digest_is_read_from_the_stat_index_until_the_file_changes(tmp_path, monkeypatch):
    f = tmp_path / "m.onnx"
    f.write_bytes(b"abc")
    cache = GraphCache(tmp_path / "c")
    calls = []
    real = cache_mod._sha256
    monkeypatch.setattr(cache_mod, "_sha256", lambda p: calls.append(p) or real(p))
    d1 = cache.digest(f)
    assert cache.digest(f) == d1 and len(calls) == 1
    f.write_bytes(b"abd")  # same size; mtime/ctime move
    os.utime(f, ns=(1, 1))
    d2 = cache.digest(f)
    assert d2 != d1 and len(calls) == 2


def test_external_data_is_part_of_the_entry(setup, tmp_path):
    _, images, root = setup
    model = tmp_path / "ext" / "tiny.onnx"
    model.parent.mkdir()
    proto = tiny_cnn()
    onnx.save(proto, str(model), save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0)
    assert explain(model, images, tmp_path / "one", root).returncode == 0
    [entry] = entries(root)
    manifest = json.loads((entry / "entry.json").read_text())
    assert [Path(s["path"]).name for s in manifest["sources"]] == ["weights.bin"]
    # new weights in the data file, the model file untouched: the entry is not used
    onnx.save(tiny_cnn(seed=3), str(tmp_path / "scratch.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    (model.parent / "weights.bin").write_bytes((tmp_path / "weights.bin").read_bytes())
    assert explain(model, images, tmp_path / "two", root).returncode == 0
    fresh = cli("explain", model, images, "-o", tmp_path / "three", "--no-cache", "--providers", "cpu")
    assert fresh.returncode == 0
    for k, v in maps(tmp_path / "three").items():
        np.testing.assert_allclose(maps(tmp_path / "two")[k], v, rtol=1e-5, atol=1e-6 * np.abs(v).max())
    assert not np.allclose(maps(tmp_path / "one")["a.guided_backprop.npy"], maps(tmp_path / "two")["a.guided_backprop.npy"])


def test_methods_that_are_not_one_graph_run_are_not_cached(setup, tmp_path):
    model, images, root = setup
    proc = explain(model, images, tmp_path / "one", root, "-m", "smoothgrad", "--option", "n_samples=4")
    assert proc.returncode == 0, proc.stderr
    assert entries(root) == [] and len(maps(tmp_path / "one", "smoothgrad")) == 3


def test_the_python_api_takes_a_cache_folder(setup, tmp_path):
    model, images, root = setup
    a = explain_images(model, images, tmp_path / "one", cache=root, providers="cpu")
    b = explain_images(model, images, tmp_path / "two", cache=root, providers="cpu")
    assert [r.predicted for r in a] == [r.predicted for r in b] and len(entries(root)) == 1
    assert explain_images(model, images, tmp_path / "three", providers="cpu")[0].predicted == a[0].predicted
    assert len(entries(root)) == 1  # no cache unless asked for

