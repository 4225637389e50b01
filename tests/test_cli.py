"""The `onnxsal` command through its real entry point (`python -m onnxsal.cli`, i.e. main()): every
subcommand on good input, and bad input answered by a non-zero exit and one line on stderr, no traceback."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper
from PIL import Image

from onnxsal.cli import main
from tests.tiny import F, make_model

ROOT = Path(__file__).resolve().parents[1]
HAS_TORCH = importlib.util.find_spec("torch") is not None
pytestmark = pytest.mark.filterwarnings("ignore:.*is deprecated:FutureWarning")  # torch.jit.* building a source


def cli(*args, timeout: float = 300, code: str | None = None, process: bool = False) -> subprocess.CompletedProcess:
    """Run the command line: main(ARGS) here (fast), or with `process`/`code` in a fresh interpreter
    (`python -m onnxsal.cli ARGS` or `python -c CODE ARGS`). Returns exit code, stdout and stderr."""
    argv = [str(a) for a in args]
    if not process and code is None:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)  # an exception main does not turn into a message fails the test, as it should
        return subprocess.CompletedProcess(["onnxsal", *argv], rc, out.getvalue(), err.getvalue())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               TF_CPP_MIN_LOG_LEVEL="2")
    head = ["-c", code] if code else ["-m", "onnxsal.cli"]
    return subprocess.run([sys.executable, *head, *argv], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=ROOT)


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """A user error: non-zero exit, exactly one line on stderr, no traceback."""
    assert proc.returncode != 0, proc.stdout
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    assert len(err.splitlines()) == 1, err
    assert err.startswith("onnxsal: error: "), err
    for w in words:
        assert w in err, err
    return err


def tiny_cnn(seed: int = 0) -> onnx.ModelProto:
    """x[N,3,16,16] -> Conv-Relu-MaxPool-Conv-Relu-GlobalAveragePool-Flatten-Gemm-Softmax -> y[N,5]."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "b1": rng.normal(0, 0.1, 4).astype(np.float32),
        "w2": rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32), "b2": rng.normal(0, 0.1, 6).astype(np.float32),
        "w3": rng.normal(0, 0.5, (6, 5)).astype(np.float32), "b3": rng.normal(0, 0.1, 5).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc"),
        helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=-1),
    ]
    model = make_model(nodes, [("x", F, ["N", 3, 16, 16])], [("y", F, ["N", 5])], inits)
    model.metadata_props.add(key="onnxsal.preprocess", value="unit")
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    onnx.save(tiny_cnn(), str(d / "tiny.onnx"))
    # Det (of each 16x16 channel) has no gradient rule, no lowering and no function body
    det = [helper.make_node("Det", ["x"], ["y"], name="wave")]
    onnx.save(make_model(det, [("x", F, ["N", 3, 16, 16])], [("y", F, ["N", 3])]), str(d / "det.onnx"))
    (d / "notes.onnx").write_text("this is not a model\n")
    images = d / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("cat", "dog", "owl"):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(images / f"{name}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return d


# ---------------------------------------------------------------------------------------------------
# methods, inspect


def test_the_real_entry_points_run(files, tmp_path):
    """`python -m onnxsal.cli` and the installed `onnxsal` script: a success, and a failure's one stderr line."""
    proc = cli("methods", process=True)
    assert proc.returncode == 0 and "guided_backprop" in proc.stdout, proc.stderr
    proc = cli("explain", files / "det.onnx", files / "images" / "cat.png", "-o", tmp_path / "out", process=True)
    one_line_error(proc, "Det")
    script = Path(sys.executable).with_name("onnxsal")
    if script.exists():
        proc = subprocess.run([str(script), "inspect", str(tmp_path / "missing.onnx")], capture_output=True, text=True)
        one_line_error(proc, "does not exist")
        proc = subprocess.run([str(script), "--version"], capture_output=True, text=True)
        assert proc.returncode == 0 and "0.1.0" in proc.stdout


def test_methods_lists_every_method():
    proc = cli("methods")
    assert proc.returncode == 0, proc.stderr
    names = [ln.split(" ")[0].rstrip(":") for ln in proc.stdout.splitlines() if not ln.startswith(" ")]
    for m in ("gradient", "guided_backprop", "deconvnet", "input_x_gradient", "smoothgrad",
              "integrated_gradients", "gradcam", "gradcam_plus_plus", "guided_gradcam"):
        assert m in names, proc.stdout
    assert "options:" in proc.stdout


def test_inspect_text_and_json(files):
    proc = cli("inspect", files / "tiny.onnx")
    assert proc.returncode == 0, proc.stderr
    assert "x: float32" in proc.stdout and "differentiable: yes" in proc.stdout
    assert "rectifiers" in proc.stdout and "softmax" in proc.stdout
    proc = cli("inspect", files / "tiny.onnx", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["explained_input"] == "x" and report["explained_output"] == "y" and report["differentiable"]
    assert {r["node"] for r in report["rectifiers"]} == {"relu1", "relu2"}
    assert report["layout"] == "NCHW" and report["metadata"]["onnxsal.preprocess"] == "unit"


def test_inspect_reports_an_unsupported_op_without_failing(files):
    proc = cli("inspect", files / "det.onnx", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert not report["differentiable"] and report["missing_rules"] == {"Det": ["wave"]}


@pytest.mark.parametrize("command", ["inspect", "explain", "compile"])
def test_missing_and_non_model_files_are_one_line_errors(files, tmp_path, command):
    extra = {"inspect": [], "explain": [files / "images" / "cat.png", "-o", tmp_path / "out"],
             "compile": ["-o", tmp_path / "out.onnx"]}[command]
    one_line_error(cli(command, tmp_path / "missing.onnx", *extra), "missing.onnx", "does not exist")
    one_line_error(cli(command, files / "notes.onnx", *extra), "notes.onnx", "not an ONNX model")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.onnx").exists()


# ---------------------------------------------------------------------------------------------------
# explain


def _outputs(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def test_explain_writes_maps_reports_broken_images_and_resumes(files, tmp_path):
    out = tmp_path / "out"
    proc = cli("explain", files / "tiny.onnx", files / "images", "-m", "gradient", "-o", out, "--providers", "cpu")
    assert proc.returncode == 1, proc.stderr  # one image failed
    assert "Traceback" not in proc.stderr
    assert "1 of 4 images failed" in proc.stderr and "broken.png" in proc.stderr
    good = ("cat", "dog", "owl")
    assert _outputs(out) == {f"{n}.gradient.{ext}" for n in good for ext in ("png", "npy")}  # nothing for broken
    for n in good:
        assert f"{n}.png: class" in proc.stdout
        m = np.load(out / f"{n}.gradient.npy", allow_pickle=False)
        assert m.shape == (3, 16, 16) and m.dtype == np.float32 and np.isfinite(m).all() and np.abs(m).max() > 0
        with Image.open(out / f"{n}.gradient.png") as im:
            assert im.size == (16, 16)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    proc = cli("explain", files / "tiny.onnx", *[files / "images" / f"{n}.png" for n in good], "-m", "gradient",
               "-o", out, "--resume", "--providers", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("skipped, outputs exist") == 3
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps  # nothing rewritten

    (out / "dog.gradient.png").unlink()  # an interrupted run: dog is done again, the others skipped
    proc = cli("explain", files / "tiny.onnx", files / "images", "-m", "gradient", "-o", out, "--resume",
               "--providers", "cpu")
    assert proc.returncode == 1 and proc.stdout.count("skipped, outputs exist") == 2
    assert "dog.png: class" in proc.stdout and (out / "dog.gradient.png").exists()


def test_explain_options_and_methods(files, tmp_path):
    out = tmp_path / "out"
    proc = cli("explain", files / "tiny.onnx", files / "images" / "cat.png", "-m", "smoothgrad", "-t", "3",
               "--option", "n_samples=4", "--option", "base=guided_backprop", "-o", out, "--providers", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "class 3" in proc.stdout and (out / "cat.smoothgrad.npy").exists()


def test_explain_model_errors_are_one_line(files, tmp_path):
    out = tmp_path / "out"
    one_line_error(cli("explain", files / "det.onnx", files / "images" / "cat.png", "-o", out), "Det", "'wave'")
    one_line_error(cli("explain", files / "tiny.onnx", tmp_path / "nowhere.png", "-o", out), "nowhere.png", "does not exist")
    one_line_error(cli("explain", files / "tiny.onnx", files / "images" / "cat.png", "-o", out, "-m", "nosuch"), "nosuch")
    one_line_error(cli("explain", files / "tiny.onnx", files / "images" / "cat.png", "-o", out, "-t", "7"), "7")
    assert not out.exists()


def test_bad_options_exit_non_zero_without_traceback(files, tmp_path):
    proc = cli("explain", files / "tiny.onnx", files / "images", "-o", tmp_path / "out", "--batch-size", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--batch-size" in proc.stderr
    proc = cli("nosuchcommand")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------------
# compile


def test_compile_writes_a_graph_onnxruntime_runs(files, tmp_path):
    out = tmp_path / "explain.onnx"
    proc = cli("compile", files / "tiny.onnx", "--method", "guided_backprop", "--target", "target", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {out}")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x", "target"]
    x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    y, attribution = sess.run(None, {"x": x, "target": np.array([1, 4], np.int64)})[:2]
    assert y.shape == (2, 5) and attribution.shape == x.shape and np.abs(attribution).max() > 0


def test_compile_with_method_options_and_a_modifier(files, tmp_path):
    """--option and --modifier reach the compiled graph: IG with 4 steps, negated, equals the library's."""
    import onnxsal

    out = tmp_path / "ig.onnx"
    proc = cli("compile", files / "tiny.onnx", "--method", "integrated_gradients", "--option", "n_steps=4",
               "--modifier", "negate", "-o", out)
    assert proc.returncode == 0, proc.stderr
    x = np.random.default_rng(1).random((2, 3, 16, 16), dtype=np.float32)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    attribution = sess.run(None, {"x": x})[1]
    ex = onnxsal.Explainer(str(files / "tiny.onnx"), providers="cpu")
    expected = ex.attribute(x, method="integrated_gradients", n_steps=4)
    np.testing.assert_allclose(attribution, -expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def test_explain_with_a_modifier(files, tmp_path):
    out = tmp_path / "out"
    proc = cli("explain", files / "tiny.onnx", files / "images" / "cat.png", "-m", "gradient", "--modifier",
               "positive", "-o", out, "--providers", "cpu")
    assert proc.returncode == 0, proc.stderr
    m = np.load(out / "cat.gradient.npy", allow_pickle=False)
    assert m.min() >= 0 and m.max() > 0


def test_compile_errors_are_one_line_and_write_nothing(files, tmp_path):
    out = tmp_path / "explain.onnx"
    one_line_error(cli("compile", files / "det.onnx", "-o", out), "Det")
    one_line_error(cli("compile", files / "tiny.onnx", "--method", "integrated_gradientsx", "-o", out))
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------
# demo


def test_every_command_that_writes_takes_dash_o_and_out():
    """One dialect: each command with an output path spells it -o/--out (compile/convert keep --output too)."""
    from onnxsal.cli import cli as group

    writers = {}
    for name, command in group.commands.items():
        for param in command.params:
            if param.name in ("out", "out_dir"):
                writers[name] = param.opts
    assert set(writers) == {"demo", "explain", "evaluate", "compile", "convert"}
    for name, opts in writers.items():
        assert "-o" in opts and "--out" in opts, (name, opts)


def test_demo_takes_dash_o(tmp_path):
    out = tmp_path / "figs"
    proc = cli("demo", "-o", out, "--providers", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert (out / "mnist_saliency.png").is_file()


def test_demo_writes_its_figures(tmp_path):
    out = tmp_path / "demo out"
    proc = cli("demo", "--out", out, "--providers", "cpu")
    assert proc.returncode == 0, proc.stderr
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["mnist_saliency.png", "mnist_saliency_parts.png"]
    for p in out.glob("*.png"):
        with Image.open(p) as im:
            assert im.size[0] > 100 and im.size[1] > 100
        assert f"wrote {p}" in proc.stdout


# ---------------------------------------------------------------------------------------------------
# convert


class Trap:
    def __init__(self, marker):
        self.marker = Path(marker)

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def torchscript(tmp_path_factory):
    if not HAS_TORCH:
        pytest.skip("needs torch")
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.ReLU6(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(6, 5),
    ).eval()
    path = tmp_path_factory.mktemp("torchscript") / "net.pt"
    torch.jit.save(torch.jit.trace(net, torch.randn(1, 3, 16, 16)), str(path))
    return path


def test_convert_torchscript_then_explain_without_flags(files, torchscript, tmp_path):
    out = tmp_path / "net.onnx"
    proc = cli("convert", torchscript, "-o", out, "--input-shape", "1,3,16,16", "--preprocess", "imagenet")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert len(line.splitlines()) == 1 and not proc.stderr.strip(), (proc.stdout, proc.stderr)
    assert line.startswith(f"converted PyTorch TorchScript net.pt -> {out}")
    assert "input input [batch,3,16,16] (NCHW, preprocess imagenet)" in line and "output output [batch,5]" in line
    diff = float(line.split("self-check max |diff| ")[1].split(" ")[0])
    assert 0 <= diff < 1e-4
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["onnxsal.preprocess"] == "imagenet" and meta["onnxsal.input_size"] == "16x16"

    maps = tmp_path / "maps"  # no --size, no -p: the converted model's metadata says it all
    proc = cli("explain", out, files / "images" / "owl.png", "-o", maps, "--providers", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert np.load(maps / "owl.guided_backprop.npy").shape == (3, 16, 16)


def test_convert_refuses_pickles_without_running_them(tmp_path):
    marker = tmp_path / "pickle_ran"
    src = tmp_path / "weights.pth"
    src.write_bytes(pickle.dumps(Trap(marker), protocol=2))
    out = tmp_path / "out.onnx"
    err = one_line_error(cli("convert", src, "-o", out), "pickled", "never unpickles", "torch.jit.save",
                         "torch.export.save", "torch.onnx.export")
    assert "weights.pth" in err
    assert not marker.exists() and not out.exists()


def test_convert_bad_input_is_one_line(files, torchscript, tmp_path):
    out = tmp_path / "out.onnx"
    one_line_error(cli("convert", tmp_path / "missing.keras", "-o", out), "does not exist")
    one_line_error(cli("convert", files / "images" / "cat.png", "-o", out), "not a model file onnxsal can convert")
    one_line_error(cli("convert", files / "tiny.onnx", "-o", out), "already an ONNX model")
    one_line_error(cli("convert", torchscript, "-o", out), "--input-shape")
    one_line_error(cli("convert", torchscript, "-o", out, "--input-shape", "1,x,16"), "1,x,16")
    one_line_error(cli("convert", torchscript, "-o", out, "--input-shape", "1,3,16"), "net.pt", "Expected 4-dim")
    proc = cli("convert", torchscript, "-o", out, "--opset", "99")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--opset" in proc.stderr
    assert not out.exists()


def test_convert_names_the_extra_to_install(torchscript, tmp_path):
    """Without torch, converting a PyTorch file says which extra to install, in one line."""
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # as if torch were not installed
        from onnxsal.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    proc = cli("convert", torchscript, "-o", tmp_path / "out.onnx", "--input-shape", "1,3,16,16", code=code)
    one_line_error(proc, "needs torch", "pip install 'onnxsal[torch]'")
    assert not (tmp_path / "out.onnx").exists()
