"""converters.convert: every source format to a checked, stamped ONNX file that onnxsal explains.

PyTorch sources (nn.Module, TorchScript, torch.export .pt2) are built and converted in this process.
TensorFlow never loads here (TensorFlow and torch in one process can crash): one subprocess builds the
Keras/TensorFlow sources (.keras Sequential, .h5 functional, a SavedModel folder, a Lambda model, a
free-size model, MobileNetV2) and converts most of them in-process there; it starts with the module,
so it runs while the PyTorch tests do. From here the Keras path is used as callers with torch loaded
use it: converters.convert runs the conversion in a child process (`python -m converters.keras_convert`).

Pickled PyTorch files are refused without being unpickled: the tests arm pickles whose loading would
create a marker file, and check that no marker appears.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxsal
from converters import detect, summary
from converters.convert import convert

convert_mod = importlib.import_module("converters.convert")  # the package's `convert` attribute is the function
from onnxsal import ConversionError

ROOT = Path(__file__).resolve().parents[1]
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_TF = importlib.util.find_spec("tensorflow") is not None and importlib.util.find_spec("tf2onnx") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs torch (the 'torch' extra)")
needs_tf = pytest.mark.skipif(not HAS_TF, reason="needs tensorflow and tf2onnx (the 'tensorflow' extra)")
pytestmark = pytest.mark.filterwarnings("ignore:.*is deprecated:FutureWarning")  # torch.jit.* building the sources


def meta(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def dims(vi) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text, text
    return text


def check_small(proto: onnx.ModelProto) -> dict:
    """The recorded self-check passed with a small difference."""
    check = json.loads(meta(proto)["onnxsal.self_check"])
    assert 0 <= check["max_abs_diff"] <= 1e-4 * max(check["scale"], 1e-6), check
    assert check["seed"] == 0 and check["batch"] >= 1
    return check


# ---------------------------------------------------------------------------------------------------
# pickles that would leave a trace if anyone unpickled them


class Trap:
    """Unpickling this creates `marker` (Path.touch): proof that something ran a pickle."""

    def __init__(self, marker):
        self.marker = Path(marker)

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_the_trap_is_armed(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Trap(marker), protocol=4))
    assert marker.exists()


# ---------------------------------------------------------------------------------------------------
# the Keras / TensorFlow sources: one subprocess, started with the module

KERAS_BUILD = textwrap.dedent(r'''
    import json, os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import keras
    from converters.convert import convert, summary
    from onnxsal.errors import OnnxsalError

    out = sys.argv[1]
    keras.utils.set_random_seed(0)
    P = lambda name: os.path.join(out, name)

    seq = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
                            keras.layers.MaxPooling2D(), keras.layers.Flatten(),
                            keras.layers.Dense(5, activation="softmax")], name="seqnet")
    seq.save(P("seq.keras"))
    inp = keras.Input((16, 16, 3), name="img")
    x = keras.layers.Conv2D(4, 3)(inp)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    fn = keras.Model(inp, keras.layers.Dense(3, name="logits")(x), name="funcnet")
    fn.save(P("fn.h5"))
    fn.export(P("saved_model"), verbose=False)
    lam = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3),
                            keras.layers.Lambda(lambda t: (t + abs(t)) / 2), keras.layers.Flatten(),
                            keras.layers.Dense(2)], name="lambdanet")
    lam.save(P("lambda.keras"))
    fin = keras.Input((None, None, 3))
    y = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu")(fin))
    keras.Model(fin, keras.layers.Dense(2)(y), name="anysize").save(P("free.keras"))
    keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=4).save(P("mnv2.keras"))

    sample = np.random.default_rng(7).standard_normal((3, 16, 16, 3)).astype(np.float32)
    np.savez(P("keras_outputs.npz"), x=sample, fn=np.asarray(fn(sample, training=False)))

    results = {}
    def run(name, source, **kw):
        target = P(name + ".onnx")
        try:
            proto = convert(P(source), target, **kw)
            results[name] = {"ok": True, "onnx": target, "summary": summary(proto, target)}
        except OnnxsalError as exc:
            results[name] = {"ok": False, "error": type(exc).__name__, "message": str(exc),
                             "written": os.path.exists(target)}

    run("fn", "fn.h5")
    run("saved_model", "saved_model")
    run("mnv2", "mnv2.keras")
    run("lambda_refused", "lambda.keras")
    run("lambda_allowed", "lambda.keras", allow_lambda=True)
    run("free_sized", "free.keras", input_shape="1,24,20,3")
    run("free_unsized", "free.keras")
    run("free_mismatch", "fn.h5", input_shape="1,3,16,16")
    run("fn_caffe", "fn.h5", preprocess="caffe")
    results["tensorflow_loaded"] = "tensorflow" in sys.modules

    import contextlib, io
    from onnxsal.cli import main
    for name, argv in [("cli_seq", ["convert", P("seq.keras"), "-o", P("cli_seq.onnx")]),
                       ("cli_lambda", ["convert", P("lambda.keras"), "-o", P("cli_lambda.onnx")])]:
        sout, serr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(sout), contextlib.redirect_stderr(serr):
            rc = main(argv)
        results[name] = {"rc": rc, "stdout": sout.getvalue(), "stderr": serr.getvalue(), "onnx": argv[-1],
                         "written": os.path.exists(argv[-1])}
    with open(P("results.json"), "w") as f:
        json.dump(results, f)
''')


class KerasBuild:
    TIMEOUT_S = 900

    def __init__(self, folder: Path):
        self.folder = folder
        self.log = folder / "build.log"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", KERAS_BUILD, str(folder)], cwd=ROOT, env=env,
                                         stdout=log, stderr=subprocess.STDOUT)
        self._results = None

    def results(self) -> dict:
        if self._results is None:
            try:
                self.proc.wait(self.TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                pytest.fail(f"the Keras build did not finish in {self.TIMEOUT_S} s")
            path = self.folder / "results.json"
            if self.proc.returncode != 0 or not path.exists():
                pytest.fail(f"the Keras build failed:\n{self.log.read_text(errors='replace')[-6000:]}", pytrace=False)
            self._results = json.loads(path.read_text())
        return self._results

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module", autouse=True)
def keras_build(tmp_path_factory):
    """Starts the Keras build at the module's first test; the Keras tests wait for it."""
    if not HAS_TF:
        yield None
        return
    build = KerasBuild(tmp_path_factory.mktemp("keras_sources"))
    yield build
    build.close()


@pytest.fixture()
def keras_results(keras_build):
    if keras_build is None:
        pytest.skip("needs tensorflow and tf2onnx")
    return keras_build.results()


# ---------------------------------------------------------------------------------------------------
# PyTorch sources


if HAS_TORCH:
    import torch

    class Net(torch.nn.Module):
        """Conv-ReLU-MaxPool-Conv-ReLU6-MaxPool-Linear, NCHW 3x16x16 -> 5 logits (module level: torch.save
        of a whole module needs an importable class)."""

        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 6, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(6, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8 * 4 * 4, 5)

        def forward(self, x):
            x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
            x = torch.nn.functional.max_pool2d(torch.nn.functional.relu6(self.conv2(x)), 2)
            return self.fc(x.flatten(1))


def _torch_net():
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture(scope="module")
def torch_sources(tmp_path_factory):
    if not HAS_TORCH:
        pytest.skip("needs torch")
    import torch

    folder = tmp_path_factory.mktemp("torch_sources")
    net = _torch_net()
    x = torch.randn(1, 3, 16, 16)
    torch.jit.save(torch.jit.script(net), str(folder / "scripted.pt"))
    torch.jit.save(torch.jit.trace(net, x), str(folder / "traced.pth"))
    torch.export.save(torch.export.export(net, (x,)), str(folder / "static.pt2"))
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(net, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch},)),
                      str(folder / "dynamic.pt2"))
    torch.save(net.state_dict(), folder / "state_dict.pt")
    torch.save(net, folder / "whole.pth")
    torch.save(net.state_dict(), folder / "legacy.pt", _use_new_zipfile_serialization=False)
    return folder, net


def _torch_grad(net, x: np.ndarray, target: int) -> np.ndarray:
    import torch

    t = torch.from_numpy(x).requires_grad_(True)
    net(t)[:, target].sum().backward()
    return t.grad.numpy()


@needs_torch
def test_nn_module_converts_checks_and_explains(tmp_path):
    net = _torch_net()
    out = tmp_path / "net.onnx"
    proto = convert(net, out, input_shape=(1, 3, 16, 16))
    assert out.is_file()
    saved = onnx.load(str(out))
    m = meta(saved)
    assert m["onnxsal.layout"] == "NCHW" and m["onnxsal.input_size"] == "16x16"
    assert m["onnxsal.source"] == "PyTorch nn.Module Net"
    assert m["onnxsal.converted_by"].startswith("onnxsal ") and "torch" in m["onnxsal.converted_by"]
    assert "onnxsal.preprocess" not in m  # unknown model: no guess
    check_small(saved)
    assert dims(saved.graph.input[0]) == ["batch", 3, 16, 16]  # dynamic batch, the rest fixed
    assert meta(proto) == m
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    ex = onnxsal.Explainer(str(out), providers="cpu")
    grad = ex.attribute(x, target=2, method="gradient")
    ref = _torch_grad(net, x, 2)
    assert np.abs(grad - ref).max() <= 1e-4 * np.abs(ref).max()
    assert ex.attribute(x, method="guided_backprop").shape == x.shape


@needs_torch
def test_torchscript_archives_convert(torch_sources, tmp_path):
    folder, net = torch_sources
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    for name in ("scripted.pt", "traced.pth"):
        assert detect(folder / name) == "torchscript"
        out = tmp_path / f"{name}.onnx"
        proto = convert(folder / name, out, input_shape="1,3,16,16")
        m = meta(proto)
        assert m["onnxsal.source"] == f"PyTorch TorchScript {name}" and m["onnxsal.input_size"] == "16x16"
        check_small(proto)
        grad = onnxsal.Explainer(str(out), providers="cpu").attribute(x, target=1, method="gradient")
        ref = _torch_grad(net, x, 1)
        assert np.abs(grad - ref).max() <= 1e-4 * np.abs(ref).max()


@needs_torch
def test_torchscript_without_input_shape_says_what_to_pass(torch_sources, tmp_path):
    folder, _ = torch_sources
    with pytest.raises(ConversionError, match="input shape") as info:
        convert(folder / "scripted.pt", tmp_path / "x.onnx")
    assert "--input-shape" in one_line(info.value)
    assert not (tmp_path / "x.onnx").exists()


@needs_torch
def test_pt2_programs_convert_without_unpickling(torch_sources, tmp_path, monkeypatch):
    import torch

    folder, net = torch_sources

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    x1 = np.random.default_rng(3).standard_normal((1, 3, 16, 16)).astype(np.float32)
    x3 = np.random.default_rng(3).standard_normal((3, 3, 16, 16)).astype(np.float32)

    static = convert(folder / "static.pt2", tmp_path / "static.onnx")  # shapes come from the program
    assert dims(static.graph.input[0]) == [1, 3, 16, 16]  # exported for batch 1: kept
    assert meta(static)["onnxsal.source"] == "PyTorch torch.export static.pt2"
    check_small(static)
    g = onnxsal.Explainer(str(tmp_path / "static.onnx"), providers="cpu").attribute(x1, target=0)
    assert np.abs(g - _torch_grad(net, x1, 0)).max() <= 1e-4 * np.abs(g).max()

    dynamic = convert(folder / "dynamic.pt2", tmp_path / "dynamic.onnx")
    assert dims(dynamic.graph.input[0]) == ["batch", 3, 16, 16]
    assert meta(dynamic)["onnxsal.layout"] == "NCHW"
    check_small(dynamic)
    g = onnxsal.Explainer(str(tmp_path / "dynamic.onnx"), providers="cpu").attribute(x3, target=4)
    assert np.abs(g - _torch_grad(net, x3, 4)).max() <= 1e-4 * np.abs(g).max()


def _rewrite_pt2(src: Path, dst: Path, change) -> None:
    """Copy a .pt2 archive entry by entry with torch's own writer; change(name, data) -> data or None (drop)."""
    from torch.export.pt2_archive._package import PT2ArchiveReader, PT2ArchiveWriter

    with PT2ArchiveReader(str(src)) as reader, PT2ArchiveWriter(str(dst)) as writer:
        for name in reader.get_file_names():
            if name.startswith(".data/"):
                continue
            data = change(name, reader.read_bytes(name))
            if data is not None:
                writer.write_bytes(name, data)
        extra = change("<extra>", None)
        if extra:
            writer.write_bytes(*extra)


@needs_torch
def test_pt2_sample_inputs_are_never_unpickled(torch_sources, tmp_path):
    """torch.export.load would fall back to a full unpickle of sample inputs it cannot load safely."""
    import torch

    folder, _ = torch_sources
    marker = tmp_path / "sample_inputs_ran"
    buf = io.BytesIO()
    torch.save(((Trap(marker),), {}), buf)
    evil = tmp_path / "evil_samples.pt2"
    _rewrite_pt2(folder / "dynamic.pt2", evil,
                 lambda n, d: buf.getvalue() if n.startswith("data/sample_inputs/") else d)
    proto = convert(evil, tmp_path / "evil.onnx")
    check_small(proto)
    assert not marker.exists()


@needs_torch
def test_pt2_with_pickled_payloads_or_compiled_code_is_refused(torch_sources, tmp_path):
    folder, _ = torch_sources

    def pickled_weights(name, data):
        if name.endswith("_weights_config.json"):
            config = json.loads(data)
            for entry in config["config"].values():
                entry["use_pickle"] = True
            return json.dumps(config).encode()
        return data

    bad = tmp_path / "pickled.pt2"
    _rewrite_pt2(folder / "static.pt2", bad, pickled_weights)
    with pytest.raises(ConversionError, match="pickle") as info:
        convert(bad, tmp_path / "out.onnx")
    one_line(info.value)

    compiled = tmp_path / "compiled.pt2"
    _rewrite_pt2(folder / "static.pt2", compiled,
                 lambda n, d: ("data/aotinductor/model/model.so", b"\x7fELF") if n == "<extra>" else d)
    with pytest.raises(ConversionError, match="aotinductor"):
        convert(compiled, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


@needs_torch
@pytest.mark.parametrize("name", ["state_dict.pt", "whole.pth", "legacy.pt"])
def test_pickled_torch_files_are_refused(torch_sources, tmp_path, name):
    folder, _ = torch_sources
    with pytest.raises(ConversionError) as info:
        convert(folder / name, tmp_path / "out.onnx")
    text = one_line(info.value)
    assert "pickled" in text and "never unpickles" in text
    assert "torch.jit.save" in text and "torch.export.save" in text and "torch.onnx.export" in text
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("form", ["torch_zip", "plain_pickle", "pickle_as_pth"])
def test_a_pickle_that_would_run_code_is_not_run(tmp_path, form):
    marker = tmp_path / "pickle_ran"
    if form == "torch_zip":  # what torch.save writes: data.pkl inside a zip
        if not HAS_TORCH:
            pytest.skip("needs torch to write the zip")
        import torch

        src = tmp_path / "model.pt"
        torch.save(Trap(marker), src)
    else:
        src = tmp_path / ("model.pkl" if form == "plain_pickle" else "model.pth")
        src.write_bytes(pickle.dumps(Trap(marker), protocol=2 if form == "pickle_as_pth" else 4))
    with pytest.raises(ConversionError, match="pickled"):
        convert(src, tmp_path / "out.onnx")
    with pytest.raises(ConversionError, match="pickled"):
        detect(src)
    assert not marker.exists() and not (tmp_path / "out.onnx").exists()


@needs_torch
def test_a_pickle_dressed_as_torchscript_is_not_run(tmp_path):
    """A zip with TorchScript's entries but Python pickles inside: TorchScript's loader builds no Python objects."""
    marker = tmp_path / "pickle_ran"
    src = tmp_path / "fake.pt"
    with zipfile.ZipFile(src, "w") as zf:
        for name in ("data.pkl", "constants.pkl"):
            zf.writestr(f"fake/{name}", pickle.dumps(Trap(marker), protocol=2))
        zf.writestr("fake/code/__torch__.py", "")
        zf.writestr("fake/version", "3\n")
    assert detect(src) == "torchscript"
    with pytest.raises(ConversionError, match="not a loadable TorchScript archive") as info:
        convert(src, tmp_path / "out.onnx", input_shape="1,3,8,8")
    one_line(info.value)
    assert not marker.exists() and not (tmp_path / "out.onnx").exists()


def test_detection_reads_listings_only_and_imports_no_framework(tmp_path):
    """The refusals need neither torch nor TensorFlow: nothing of them loads to decide."""
    marker = tmp_path / "ran"
    zpath = tmp_path / "model.pt"
    with zipfile.ZipFile(zpath, "w") as zf:  # torch.save's layout, written by hand
        zf.writestr("model/data.pkl", pickle.dumps(Trap(marker), protocol=2))
        zf.writestr("model/version", "3\n")
        zf.writestr("model/data/0", b"\0" * 16)
    code = textwrap.dedent(f"""
        import sys
        from converters import convert, ConversionError
        try:
            convert({str(zpath)!r}, {str(tmp_path / 'out.onnx')!r})
        except ConversionError as exc:
            print(exc)
        print(sorted(m for m in ("torch", "tensorflow", "keras") if m in sys.modules))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "pickled" in lines[0] and lines[-1] == "[]"
    assert not marker.exists()


def test_files_that_are_not_models_are_refused(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"\x08\x07")
    other_zip = tmp_path / "photos.zip"
    with zipfile.ZipFile(other_zip, "w") as zf:
        zf.writestr("a.txt", "x")
    folder = tmp_path / "folder"
    folder.mkdir()
    cases = {
        text: "not a model file onnxsal can convert",
        onnx_file: "already an ONNX model",
        other_zip: "neither a Keras",
        folder: "not a TensorFlow SavedModel",
        tmp_path / "missing.keras": "does not exist",
    }
    for path, words in cases.items():
        with pytest.raises(ConversionError, match=words) as info:
            convert(path, tmp_path / "out.onnx")
        one_line(info.value)
    assert not (tmp_path / "out.onnx").exists()


def test_bad_options_are_refused(tmp_path):
    for shape in ("1,a,3", "1,0,4", "", (1, -2)):
        with pytest.raises(ConversionError, match="shape"):
            convert(tmp_path / "x.keras", tmp_path / "out.onnx", input_shape=shape)
    with pytest.raises(ConversionError, match="opset"):
        convert(tmp_path / "x.keras", tmp_path / "out.onnx", opset=30)
    with pytest.raises(ConversionError, match="unknown preprocessing"):
        convert(tmp_path / "x.keras", tmp_path / "out.onnx", preprocess="tf")
    with pytest.raises(ConversionError, match="cannot convert a list"):
        convert([1, 2], tmp_path / "out.onnx")


# ---------------------------------------------------------------------------------------------------
# the self-check, both ways


@needs_torch
def test_self_check_catches_a_changed_weight_and_writes_nothing(tmp_path, monkeypatch):
    from converters import torch_export

    original = torch_export.export_torch

    def broken(*args, **kwargs):
        proto = original(*args, **kwargs)
        for init in proto.graph.initializer:
            arr = onnx.numpy_helper.to_array(init)
            if arr.ndim == 4:  # the first conv's weights
                init.CopyFrom(onnx.numpy_helper.from_array(arr * 1.5, init.name))
                break
        return proto

    monkeypatch.setattr(torch_export, "export_torch", broken)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ConversionError) as info:
        convert(_torch_net(), out_dir / "net.onnx", input_shape="1,3,16,16")
    text = one_line(info.value)
    assert "differs from the PyTorch model's" in text and "nothing was written" in text
    assert list(out_dir.iterdir()) == []  # not even a temporary file

    proto = convert(_torch_net(), out_dir / "unchecked.onnx", input_shape="1,3,16,16", check=False)
    assert meta(proto)["onnxsal.self_check"] == "skipped" and (out_dir / "unchecked.onnx").exists()


@needs_torch
def test_self_check_catches_an_op_whose_export_differs(tmp_path):
    import torch

    class Double(torch.autograd.Function):
        """Doubles in PyTorch, but tells the ONNX exporter it is an Identity."""

        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def symbolic(g, x):
            return g.op("Identity", x)

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return Double.apply(self.conv(x)).mean((2, 3))

    with pytest.raises(ConversionError, match="differs") as info:
        convert(Odd(), tmp_path / "odd.onnx", input_shape="1,3,8,8")
    assert "by up to" in one_line(info.value)
    assert not (tmp_path / "odd.onnx").exists()


@needs_torch
def test_passing_check_is_reported_in_the_summary(tmp_path):
    proto = convert(_torch_net(), tmp_path / "net.onnx", input_shape="1,3,16,16", preprocess="imagenet")
    check = check_small(proto)
    line = summary(proto, tmp_path / "net.onnx")
    assert "\n" not in line and "PyTorch nn.Module Net" in line and "self-check max |diff|" in line
    assert "[batch,3,16,16]" in line and "[batch,5]" in line and "preprocess imagenet" in line
    assert check["batch"] == 2  # a free batch axis is checked at another size than exported


@needs_torch
def test_torchvision_models_record_imagenet_preprocessing(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    from converters.torch_convert import torchvision_preset

    assert torchvision_preset("__torch__.torchvision.models.resnet.ResNet") == "imagenet"
    assert torchvision_preset("torchvision.models.detection.faster_rcnn.FasterRCNN") is None
    assert torchvision_preset("mypackage.Net") is None
    net = torchvision.models.squeezenet1_1(num_classes=4).eval()
    proto = convert(net, tmp_path / "sq.onnx", input_shape="1,3,32,32")
    assert meta(proto)["onnxsal.preprocess"] == "imagenet"
    proto = convert(net, tmp_path / "sq.onnx", input_shape="1,3,32,32", preprocess="unit", check=False)
    assert meta(proto)["onnxsal.preprocess"] == "unit"  # what the caller says wins


# ---------------------------------------------------------------------------------------------------
# Keras and TensorFlow (converted in the build subprocess, or in a child process from here)


def _keras_ok(results: dict, name: str) -> onnx.ModelProto:
    r = results[name]
    assert r["ok"], r
    return onnx.load(r["onnx"])


@needs_tf
def test_keras_h5_functional_converts(keras_results, keras_build):
    proto = _keras_ok(keras_results, "fn")
    m = meta(proto)
    assert m["onnxsal.layout"] == "NHWC" and m["onnxsal.input_size"] == "16x16"
    assert m["onnxsal.source"] == "Keras HDF5 fn.h5" and "tf2onnx" in m["onnxsal.converted_by"]
    assert "onnxsal.preprocess" not in m
    check_small(proto)
    assert [i.name for i in proto.graph.input] == ["img"] and [o.name for o in proto.graph.output] == ["logits"]
    assert dims(proto.graph.input[0]) == ["batch", 16, 16, 3]
    ref = np.load(keras_build.folder / "keras_outputs.npz")
    ex = onnxsal.Explainer(proto, providers="cpu")
    out = ex.predict(ref["x"])
    assert np.abs(out - ref["fn"]).max() <= 1e-4 * np.abs(ref["fn"]).max()
    maps = ex.attribute(ref["x"], method="guided_backprop")
    assert maps.shape == ref["x"].shape and np.abs(maps).max() > 0
    assert "converted Keras HDF5 fn.h5" in keras_results["fn"]["summary"]
    assert keras_results["tensorflow_loaded"]  # the build really ran TensorFlow


@needs_tf
def test_saved_model_folder_converts(keras_results, keras_build):
    proto = _keras_ok(keras_results, "saved_model")
    m = meta(proto)
    assert m["onnxsal.source"] == "TensorFlow SavedModel saved_model" and m["onnxsal.layout"] == "NHWC"
    check_small(proto)
    assert dims(proto.graph.input[0]) == ["batch", 16, 16, 3]
    ref = np.load(keras_build.folder / "keras_outputs.npz")
    ex = onnxsal.Explainer(proto, providers="cpu")
    assert np.abs(ex.predict(ref["x"]) - ref["fn"]).max() <= 1e-4 * np.abs(ref["fn"]).max()
    assert ex.attribute(ref["x"], method="gradient", target=1).shape == ref["x"].shape


@needs_tf
def test_keras_application_preprocessing_is_inferred(keras_results):
    from converters.keras_convert import keras_preset

    proto = _keras_ok(keras_results, "mnv2")
    m = meta(proto)
    assert m["onnxsal.preprocess"] == "keras" and m["onnxsal.input_size"] == "32x32"
    check_small(proto)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Clip") + ops.count("Relu") >= 30  # every ReLU6 kept as a rectifier
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    assert onnxsal.Explainer(proto, providers="cpu").attribute(x, method="guided_backprop").shape == x.shape
    assert keras_preset("resnet50") == "caffe" and keras_preset("vgg16") == "caffe"
    assert keras_preset("resnet50v2") == "keras" and keras_preset("mobilenetv2_1.00_224") == "keras"
    assert keras_preset("densenet121") == "imagenet" and keras_preset("my_model") is None
    assert meta(_keras_ok(keras_results, "fn_caffe"))["onnxsal.preprocess"] == "caffe"  # given beats inferred


@needs_tf
def test_keras_lambda_is_refused_in_safe_mode(keras_results):
    r = keras_results["lambda_refused"]
    assert not r["ok"] and r["error"] == "ConversionError" and not r["written"]
    assert "Lambda" in r["message"] and "--allow-lambda" in r["message"] and "\n" not in r["message"]
    proto = _keras_ok(keras_results, "lambda_allowed")  # the caller trusts the file
    check_small(proto)


@needs_tf
def test_keras_free_input_size_needs_and_takes_input_shape(keras_results):
    proto = _keras_ok(keras_results, "free_sized")
    assert dims(proto.graph.input[0]) == ["batch", 24, 20, 3]
    assert meta(proto)["onnxsal.input_size"] == "24x20"
    r = keras_results["free_unsized"]
    assert not r["ok"] and "input shape" in r["message"] and not r["written"]
    r = keras_results["free_mismatch"]
    assert not r["ok"] and "does not match" in r["message"]


@needs_tf
def test_onnxsal_convert_on_a_keras_file(keras_results):
    """`onnxsal convert model.keras` (main(), in the build's TensorFlow process): one line out, or one line of error."""
    r = keras_results["cli_seq"]
    assert r["rc"] == 0 and r["stderr"] == "", r
    line = r["stdout"].strip()
    assert "\n" not in line and line.startswith("converted Keras .keras seq.keras -> ")
    assert "input input_layer [batch,16,16,3] (NHWC)" in line and "[batch,5]" in line and "self-check max |diff|" in line
    check_small(onnx.load(r["onnx"]))
    r = keras_results["cli_lambda"]
    assert r["rc"] == 2 and r["stdout"] == "" and not r["written"]
    assert r["stderr"].startswith("onnxsal: error: ") and len(r["stderr"].strip().splitlines()) == 1
    assert "--allow-lambda" in r["stderr"]


@needs_tf
def test_keras_conversion_runs_in_a_child_process_from_here(keras_build, keras_results, tmp_path):
    """With torch loaded here, TensorFlow must not be: convert() hands the work to a child process."""
    src = keras_build.folder / "seq.keras"
    out = tmp_path / "seq.onnx"
    proto = convert(src, out, isolate=True)
    assert "tensorflow" not in sys.modules
    assert out.is_file() and meta(onnx.load(str(out))) == meta(proto)
    m = meta(proto)
    assert m["onnxsal.source"] == "Keras .keras seq.keras" and m["onnxsal.layout"] == "NHWC"
    check_small(proto)
    assert [n.op_type for n in proto.graph.node][-1] == "Softmax"
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype(np.float32)
    assert onnxsal.Explainer(str(out), providers="cpu").attribute(x, method="guided_backprop").shape == x.shape


def test_child_process_errors_come_back_as_the_same_exception(tmp_path, monkeypatch):
    """The child reports an error in its JSON report; the parent raises it as the same class, one line."""
    src = tmp_path / "m.keras"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("metadata.json", "{}")
    seen = {}

    def fake_run(cmd, **kwargs):
        seen["cmd"] = cmd
        report = Path(cmd[cmd.index("--report") + 1])
        report.write_text(json.dumps({"ok": False, "error": "InvalidInputError", "message": "a bad thing."}))
        return subprocess.CompletedProcess(cmd, 2, "", "error: a bad thing.")

    monkeypatch.setattr(convert_mod.subprocess, "run", fake_run)
    monkeypatch.setattr(convert_mod.importlib_util, "find_spec", lambda name: object())
    with pytest.raises(onnxsal.InvalidInputError, match="a bad thing"):
        convert(src, tmp_path / "out.onnx", input_shape="1,8,8,3", isolate=True, allow_lambda=True)
    cmd = seen["cmd"]
    assert cmd[1:3] == ["-m", "converters.keras_convert"] and "--allow-lambda" in cmd
    assert cmd[cmd.index("--input-shape") + 1] == "1,8,8,3"

    def crash(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, -11, "", "Fatal Python error: Segmentation fault")

    monkeypatch.setattr(convert_mod.subprocess, "run", crash)
    with pytest.raises(ConversionError, match="exit code -11.*Segmentation fault"):
        convert(src, tmp_path / "out.onnx", isolate=True)
    assert not (tmp_path / "out.onnx").exists()


def test_isolation_default_follows_what_is_loaded(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", sys.modules.get("torch") or object())
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    assert convert_mod._isolate_default()
    monkeypatch.delitem(sys.modules, "torch")
    assert not convert_mod._isolate_default()
