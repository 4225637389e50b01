"""Dataset attribution on a local Ray cluster (2 CPUs, started here, loopback only) over real photos.

The local folder explainer (`explain_images`) is the reference: the Ray run must write the same
PNG and .npy files and Parquet rows with the same class, score and attribution; a worker that dies
in the middle of the run must cost nothing (Ray restarts the actor and retries its batch); and a
rerun with resume must redo only the items whose outputs are missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import onnxsal
from onnxsal.batch import explain_images

ROOT = Path(__file__).resolve().parents[1]
MODEL = str(ROOT / "onnxsal" / "data" / "mnist_cnn.onnx")  # 28x28 grayscale: fast, and it decodes real photos
METHOD = "guided_backprop"
PHOTOS = ("astronaut", "chelsea", "coffee", "camera", "rocket", "coins", "moon")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """skimage's photos as PNG and JPEG, one repeated name in a subfolder, and one file that is no image."""
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    for i, name in enumerate(PHOTOS):
        Image.fromarray(getattr(data, name)()).save(root / f"{name}.{'png' if i % 2 == 0 else 'jpg'}")
    (root / "more").mkdir()
    Image.fromarray(data.chelsea()[::2, ::2]).save(root / "more" / "chelsea.png")  # stems: photos__chelsea, more__chelsea
    (root / "broken.png").write_bytes(b"this is not an image")
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("graph-cache"))


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=150 << 20, logging_level="warning")
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def local(photos, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    results = explain_images(MODEL, photos, out, method=METHOD, batch_size=3, cache=cache)
    return out, {str(r.image.resolve()): r for r in results}


def _crash_once_worker(marker: str):
    """A DatasetWorker whose process dies (os._exit, no cleanup) at its first batch, once per marker file.
    Defined in a function so that Ray ships the class by value to the worker processes."""
    from onnxsal.dataset import DatasetWorker

    class CrashOnce(DatasetWorker):
        def __call__(self, batch):
            if not os.path.exists(marker):
                with open(marker, "w") as f:
                    f.write(" ".join(str(p) for p in batch["path"]))
                os._exit(17)
            return super().__call__(batch)

    return CrashOnce


@pytest.fixture(scope="module")
def ray_run(cluster, photos, cache, tmp_path_factory):
    """A run on 2 actors, one of which dies (os._exit) at the first batch it is given."""
    out = tmp_path_factory.mktemp("ray")
    marker = out.parent / f"{out.name}-crashed"
    results = onnxsal.explain_dataset(MODEL, photos, out, method=METHOD, batch_size=3, cache=cache, actors=2,
                                      worker_class=_crash_once_worker(str(marker)), max_retries=2)
    return out, results, marker


def _rows(out):
    from onnxsal.dataset import attribution_arrays, read_results

    table = read_results(out, METHOD)
    maps = attribution_arrays(table)
    rows = {}
    for i, row in enumerate(table.drop_columns(["attribution"]).to_pylist()):
        key = str(Path(row["source"]).resolve())
        assert key not in rows, f"{key} has two rows"
        assert (maps[i] is None) == (row["error"] is not None)
        rows[key] = dict(row, attribution=maps[i])
    return rows


def _assert_same_as_local(out, local):
    """Every image: the same files (byte for byte) and Parquet rows with the local numbers."""
    local_out, expected = local
    rows = _rows(out)
    assert set(rows) == set(expected)
    for source, ref in expected.items():
        row = rows[source]
        if ref.error:
            assert row["error"] == ref.error and row["predicted"] is None and row["attribution"] is None
            continue
        assert row["error"] is None
        assert row["predicted"] == ref.predicted and row["score"] == ref.score
        png, npy = (Path(p) for p in ref.written)
        assert row["png"] == png.name and row["npy"] == npy.name  # relative to the output folder
        want = np.load(npy)
        assert row["attribution"].shape == want.shape and np.array_equal(row["attribution"], want)
        assert np.array_equal(np.load(Path(out) / npy.name), want)
        assert (Path(out) / png.name).read_bytes() == png.read_bytes()
    names = sorted(p.name for p in Path(out).iterdir() if p.is_file())
    assert names == sorted(p.name for p in Path(local_out).iterdir() if p.is_file())  # the same layout


def test_ray_rows_equal_the_local_path(ray_run, local):
    out, results, _ = ray_run
    _assert_same_as_local(out, local)
    by_name = {r.image.name: r for r in results}
    assert "UnidentifiedImageError" in by_name["broken.png"].error  # reported, with its reason
    assert sum(r.error is None for r in results) == len(PHOTOS) + 1
    assert f"more__chelsea.{METHOD}.png" in {Path(r.written[0]).name for r in results if r.written}  # local's naming
    assert all(not r.skipped for r in results)


def test_a_killed_worker_loses_nothing(ray_run, local):
    """The run above lost a worker process in its first batch: Ray restarted the actor and retried it."""
    out, results, marker = ray_run
    assert marker.exists()  # a worker process did die, holding a batch
    lost = marker.read_text().split()
    assert 1 <= len(lost) <= 3
    done = {str(r.image.resolve()): r for r in results}
    for source in lost:  # the dead worker's batch: explained all the same (or, for broken.png, reported)
        r = done[str(Path(source).resolve())]
        assert r.error is None and r.written or r.image.name == "broken.png"
    assert [r.image.name for r in results if r.error] == ["broken.png"]


def test_rerun_resumes_only_what_is_missing(ray_run, local, cluster, photos, cache, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(ray_run[0], out)  # copy2: the files keep their times
    (out / f"coffee.{METHOD}.png").unlink()
    (out / f"camera.{METHOD}.npy").unlink()
    before = {p: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    results = onnxsal.explain_dataset(MODEL, photos, out, method=METHOD, batch_size=3, cache=cache, actors=1, resume=True)
    redone = sorted(r.image.name for r in results if not r.skipped)
    assert redone == ["broken.png", "camera.jpg", "coffee.png"]  # the failed item is tried again too
    for p, t in before.items():  # the other images' files were left alone; a redone image gets both files anew
        if p.name.startswith(("camera.", "coffee.")):
            assert p.stat().st_mtime_ns > t, f"{p.name} was not rewritten"
        else:
            assert p.stat().st_mtime_ns == t, f"{p.name} was rewritten"
    assert (out / f"coffee.{METHOD}.png").exists() and (out / f"camera.{METHOD}.npy").exists()
    _assert_same_as_local(out, local)  # one row per image still, with the same numbers


def test_parquet_source_through_the_cli(cluster, photos, cache, local, tmp_path):
    """A Parquet file of encoded images (`path`, `image`) as SOURCE of `onnxsal explain --engine ray`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from onnxsal.cli import main

    files = sorted(p for p in photos.rglob("*") if p.is_file())
    table = pa.table({"path": [str(p.resolve()) for p in files], "image": [p.read_bytes() for p in files]})
    pq.write_table(table, tmp_path / "photos.parquet")
    out = tmp_path / "out"
    rc = main(["explain", MODEL, str(tmp_path / "photos.parquet"), "-m", METHOD, "-b", "3", "--engine", "ray",
               "--actors", "1", "--cache-dir", cache, "-o", str(out)])
    assert rc == 1  # broken.png fails, and is reported
    _assert_same_as_local(out, local)
    (out / f"astronaut.{METHOD}.png").unlink()
    before = {p: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    rc = main(["explain", MODEL, str(tmp_path / "photos.parquet"), "-m", METHOD, "-b", "3", "--engine", "ray",
               "--actors", "1", "--cache-dir", cache, "--resume", "-o", str(out)])
    assert rc == 1
    for p, t in before.items():  # a resumed Parquet source: the done rows are read but not redone
        assert (p.stat().st_mtime_ns > t) == p.name.startswith("astronaut."), p.name
    _assert_same_as_local(out, local)


def _unstartable_worker():
    from onnxsal.dataset import DatasetWorker
    from onnxsal.errors import ModelLoadError

    class Unstartable(DatasetWorker):
        def __init__(self, *args, **kwargs):
            raise ModelLoadError("model file '/elsewhere/model.onnx' does not exist on this node.")

    return Unstartable


def test_an_actor_that_cannot_start_is_one_sentence(cluster, photos, tmp_path):
    """A worker whose model is not where it looks (a node without the shared file system): the run stops
    with the worker's own error class and sentence, not a Ray traceback."""
    from onnxsal.errors import ModelLoadError

    with pytest.raises(ModelLoadError) as info:
        onnxsal.explain_dataset(MODEL, photos, tmp_path, method=METHOD, batch_size=3, actors=1,
                                worker_class=_unstartable_worker())
    assert str(info.value) == ("a Ray worker could not start or run: model file '/elsewhere/model.onnx' "
                               "does not exist on this node.")


def test_without_ray_one_sentence_and_the_local_path_still_works(photos, tmp_path):
    code = f"""
import sys
sys.modules["ray"] = None  # as if Ray were not installed
import onnxsal
from onnxsal.cli import main
from onnxsal.dataset import EngineUnavailableError
try:
    onnxsal.explain_dataset({MODEL!r}, {str(photos)!r}, {str(tmp_path / 'a')!r})
except EngineUnavailableError as exc:
    print("ERROR:", exc)
rc_ray = main(["explain", {MODEL!r}, {str(photos / 'coffee.png')!r}, "--engine", "ray", "-o", {str(tmp_path / 'b')!r}])
rc_local = main(["explain", {MODEL!r}, {str(photos / 'coffee.png')!r}, "-o", {str(tmp_path / 'c')!r}])
print("RC", rc_ray, rc_local)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "ERROR: engine 'ray' needs Ray Data" in run.stdout and "onnxsal[ray]" in run.stdout
    assert "RC 2 0" in run.stdout
    errors = [line for line in run.stderr.splitlines() if line.strip()]
    assert errors == ["onnxsal: error: engine 'ray' needs Ray Data, which is not installed: "
                      "pip install 'onnxsal[ray]' (on every node of the cluster)."]
    assert "Traceback" not in run.stderr
    assert (tmp_path / "c" / f"coffee.{METHOD}.png").exists() and not (tmp_path / "b").exists()


def test_glob_source_on_the_local_engine(photos, cache, local, tmp_path):
    """engine="local" runs the same worker in this process (no Ray); a glob picks the files it matches."""
    pytest.importorskip("pyarrow")
    from onnxsal.dataset import read_results

    out = tmp_path / "out"
    results = onnxsal.explain_dataset(MODEL, str(photos / "*.png"), out, method=METHOD, batch_size=3, cache=cache,
                                      engine="local")
    assert sorted(r.image.name for r in results) == ["astronaut.png", "broken.png", "coffee.png", "moon.png", "rocket.png"]
    assert read_results(out, METHOD).num_rows == 5
    _, expected = local
    for r in results:
        ref = expected[str(r.image.resolve())]
        assert (r.predicted, r.score, r.error) == (ref.predicted, ref.score, ref.error)
        if not r.error:
            assert np.array_equal(np.load(r.written[1]), np.load(ref.written[1]))


def test_bad_sources_are_one_sentence(photos, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from onnxsal.dataset import resolve_sources
    from onnxsal.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="no files match"):
        resolve_sources(str(photos / "*.tiff"))
    pq.write_table(pa.table({"file": ["a.png"]}), tmp_path / "nopath.parquet")
    with pytest.raises(InvalidInputError, match="needs a 'path' column"):
        resolve_sources(tmp_path / "nopath.parquet")
    with pytest.raises(InvalidInputError, match="either Parquet sources or image files"):
        resolve_sources([tmp_path / "nopath.parquet", photos])
    with pytest.raises(InvalidInputError, match="engine must be one of"):
        onnxsal.explain_dataset(MODEL, photos, tmp_path / "x", engine="spark")
    assert not (tmp_path / "x").exists()
