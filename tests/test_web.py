"""Compiled graphs beyond Python: examples/web/ in headless Chromium (onnxruntime-web, WebAssembly)
and examples/web/node_run.mjs in onnxruntime-node give Python onnxruntime's numbers.

The graphs are the bundled MNIST CNN compiled as guided backprop and Grad-CAM (what `onnxsal
compile` writes, IR 8 / opset 17 like the model), plus Grad-CAM on the same model stamped with the
newest IR version and opset onnxsal accepts (IR 13, opset 26): onnxsal keeps the model's IR and
opset, so that case shows the JavaScript runtimes load everything onnxsal can write. The input is
one real MNIST digit (a 28 x 28 PNG and the same pixels / 255 as JSON).

Checked, each with a tolerance of 1e-4 on every output (probabilities and attribution):
- the page's `window.onnxsal.runFeeds` on the fixed input equals Python onnxruntime;
- the page's own path (`index.html?model=...&image=digit.png`): the input tensor it builds from the
  PNG equals Python's pixel / 255 exactly, its outputs equal Python's on that tensor, it predicts the
  digit's class, its [0, 1] map equals max|a| over channels + min-max computed in numpy, and the
  overlay it draws is red where the map is hottest and blue where it is coldest; a screenshot is
  written to out/test_web/ for a person to look at;
- the same through the form (file pickers, Run button);
- a graph compiled with an int64 target input explains the class given (page field, node feed);
- node_run.mjs on the fixed input equals Python onnxruntime;
- every compilable method (smoothgrad, integrated gradients, LRP, DeepLIFT, occlusion, RISE, ...,
  with small sample counts) gives Python's outputs in both runtimes.

The tests need Chromium (/usr/bin/chromium, or $ONNXSAL_CHROMIUM), node, examples/web/node_modules
and Playwright for Python; `make web-deps` installs them, and `make test` runs it first. When one is
missing they fail with that instruction instead of skipping, so CI cannot pass without running them.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from urllib.parse import quote

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "examples" / "web"
SHOTS = ROOT / "out" / "test_web"
CHROMIUM = os.environ.get("ONNXSAL_CHROMIUM", "/usr/bin/chromium")
TOL = 1e-4
DIGIT_SAMPLE = 3  # the bundled held-out "3"
GRAPHS = ["mnist_guided_backprop.onnx", "mnist_gradcam.onnx", "mnist_gradcam_newest_ir_opset.onnx"]


def _missing() -> list[str]:
    missing = []
    if not Path(CHROMIUM).is_file():
        missing.append(f"Chromium ({CHROMIUM})")
    if shutil.which("node") is None:
        missing.append("node")
    for pkg in ("onnxruntime-web", "onnxruntime-node"):
        if not (WEB / "node_modules" / pkg / "package.json").is_file():
            missing.append(f"examples/web/node_modules/{pkg}")
    if importlib.util.find_spec("playwright") is None:
        missing.append("playwright (Python)")
    return missing


@pytest.fixture(scope="module", autouse=True)
def web_deps():
    missing = _missing()
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run `make web-deps` (Debian chromium, npm ci in examples/web; "
                    f"playwright comes with the test extra: pip install -e '.[test]')", pytrace=False)


def _make_assets():
    spec = importlib.util.spec_from_file_location("web_make_assets", WEB / "make_assets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """The graphs, the digit and its fixed input in one folder, and Python onnxruntime's outputs."""
    from onnxsal import compile as compile_graph
    from onnxsal.data import mnist_model
    from onnxsal.model_io import MAX_IR_VERSION, MAX_OPSET

    assets = _make_assets()
    folder = tmp_path_factory.mktemp("web")
    assets.write_mnist(folder, sample=DIGIT_SAMPLE)
    newest = onnx.load_from_string(mnist_model())
    newest.ir_version = MAX_IR_VERSION
    newest.opset_import[0].version = MAX_OPSET
    graph = compile_graph(newest, method="gradcam")
    assert (graph.ir_version, graph.opset_import[0].version) == (MAX_IR_VERSION, MAX_OPSET)
    (folder / GRAPHS[2]).write_bytes(graph.SerializeToString())

    feeds_json = json.loads((folder / "digit.json").read_text())
    feeds = {k: np.asarray(v["data"], np.float32).reshape(v["dims"]) for k, v in feeds_json.items()}
    reference = {}
    for name in GRAPHS:
        session = ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        reference[name] = dict(zip(names, session.run(names, feeds)))
    return {"folder": folder, "feeds_json": feeds_json, "feeds": feeds, "reference": reference}


def _compare(got: dict, want: dict[str, np.ndarray], where: str) -> float:
    """Same output names, shapes, and values within TOL; returns the largest difference."""
    assert sorted(got) == sorted(want), f"{where}: outputs {sorted(got)} != Python's {sorted(want)}"
    worst = 0.0
    for name, ref in want.items():
        arr = np.asarray(got[name]["data"], np.float32).reshape(got[name]["dims"])
        assert arr.shape == ref.shape, f"{where}: {name} has shape {arr.shape}, Python {ref.shape}"
        diff = float(np.abs(arr.astype(np.float64) - ref).max())
        assert diff <= TOL, f"{where}: {name} differs from Python onnxruntime by {diff:.3g} (> {TOL})"
        worst = max(worst, diff)
    attribution = want[list(want)[-1]]
    assert np.abs(attribution).max() > 1e-3, f"{where}: the attribution is all zeros, nothing was compared"
    return worst


class _Handler(http.server.SimpleHTTPRequestHandler):
    """examples/web/ at /, the test's folder at /case/; module scripts and wasm with their MIME types
    (browsers refuse a module served as octet-stream)."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
                      ".onnx": "application/octet-stream", ".json": "application/json"}

    def __init__(self, *args, case_dir: Path, **kwargs):
        self.case_dir = case_dir
        super().__init__(*args, directory=str(WEB), **kwargs)

    def translate_path(self, path):
        if path.startswith("/case/"):
            return str(self.case_dir / Path(path.split("?")[0]).name)
        return super().translate_path(path)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(case):
    """A static server on a free loopback port (127.0.0.1 only), for the module's tests."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, case_dir=case["folder"]))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: CI and containers run as root, where Chromium's sandbox cannot start;
        # --disable-dev-shm-usage: a container's small /dev/shm would crash the renderer
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


def _open(browser, url: str):
    """A page at url whose module has loaded (status ready or beyond); console errors collected."""
    page = browser.new_page(viewport={"width": 1100, "height": 640})
    errors: list[str] = []
    # onnxruntime's own warnings come through console.error too (DeepLIFT's overridable baseline
    # initializer draws one by design): those are not the page's errors
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "[W:onnxruntime" not in m.text
            else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    try:
        page.wait_for_function("['ready', 'running', 'done', 'error'].includes(document.body.dataset.status)",
                               timeout=30_000)
    except Exception:
        pytest.fail(f"{url} did not load: {errors}")
    return page, errors


@pytest.mark.parametrize("graph", GRAPHS)
def test_browser_fixed_input_equals_python(browser, server, case, graph):
    page, errors = _open(browser, f"{server}/index.html")
    got = page.evaluate("([m, f]) => window.onnxsal.runFeeds(m, f)", [f"/case/{graph}", case["feeds_json"]])
    worst = _compare(got, case["reference"][graph], f"onnxruntime-web, {graph}")
    print(f"{graph}: browser vs Python max |diff| {worst:.3g}")
    assert not errors, errors
    page.close()


def test_browser_page_draws_overlay(browser, server, case):
    graph = "mnist_gradcam.onnx"
    url = f"{server}/index.html?model={quote('/case/' + graph)}&image={quote('/case/digit.png')}"
    page, errors = _open(browser, url)
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.status)", timeout=60_000)
    status = page.inner_text("#status")
    assert page.evaluate("document.body.dataset.status") == "done", status
    last = page.evaluate("window.onnxsal.last")

    # the page's preprocessing of the PNG is Python's pixel / 255, to the bit
    x = np.asarray(last["input"]["data"], np.float32).reshape(last["input"]["dims"])
    np.testing.assert_array_equal(x, case["feeds"]["image"])
    assert (last["irVersion"], last["opset"], last["preset"], last["layout"]) == (8, 17, "unit", "NCHW")

    session = ort.InferenceSession(str(case["folder"] / graph), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    want = dict(zip(names, session.run(names, {last["inputName"]: x})))
    worst = _compare(last["outputs"], want, "the page's own run")
    print(f"page path: browser vs Python max |diff| {worst:.3g}")
    assert last["attributionName"] == "gradcam" and last["scoresName"] == "probabilities"
    assert last["predicted"] == DIGIT_SAMPLE == int(np.argmax(want["probabilities"]))
    assert page.inner_text("#summary").startswith(f"predicted {DIGIT_SAMPLE}")

    # the map the page draws: max |a| over channels, min-max to [0, 1]
    a = np.abs(want["gradcam"][0]).max(axis=0).astype(np.float64)
    ref_map = (a - a.min()) / (a.max() - a.min())
    got_map = np.asarray(last["map"]["data"], np.float64).reshape(last["map"]["height"], last["map"]["width"])
    np.testing.assert_allclose(got_map, ref_map, atol=TOL)

    # the overlay canvas: jet over the digit, red where the map is hottest, blue where coldest
    w = page.evaluate("document.getElementById('overlay').width")
    scale = w / ref_map.shape[1]
    for pick, channel, other in ((np.argmax, 0, 2), (np.argmin, 2, 0)):
        r, c = np.unravel_index(pick(ref_map), ref_map.shape)
        px = np.asarray(page.evaluate(
            "([x, y]) => Array.from(document.getElementById('overlay').getContext('2d').getImageData(x, y, 1, 1).data)",
            [int((c + 0.5) * scale), int((r + 0.5) * scale)]), int)
        assert px[channel] > px[other] + 40, f"overlay pixel {px[:3]} at map cell {(r, c)} (map {ref_map[r, c]:.2f})"

    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / "mnist_gradcam_page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
    assert not errors, errors
    page.close()


def test_browser_file_pickers(browser, server, case):
    """The form path a person takes: pick the graph and the image as files, press Run."""
    graph = "mnist_guided_backprop.onnx"
    page, errors = _open(browser, f"{server}/index.html")
    page.set_input_files("#model-file", str(case["folder"] / graph))
    page.set_input_files("#image-file", str(case["folder"] / "digit.png"))
    page.click("#run")
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.status)", timeout=60_000)
    assert page.evaluate("document.body.dataset.status") == "done", page.inner_text("#status")
    last = page.evaluate("window.onnxsal.last")
    np.testing.assert_array_equal(np.asarray(last["input"]["data"], np.float32).reshape(last["input"]["dims"]),
                                  case["feeds"]["image"])
    _compare(last["outputs"], case["reference"][graph], "the page's file pickers")
    assert (last["attributionName"], last["predicted"]) == ("image_grad", DIGIT_SAMPLE)
    assert not errors, errors
    page.close()


def test_target_input_in_browser_and_node(browser, server, case, tmp_path):
    """A graph compiled with target="target" takes an int64 class: the page's target field and
    node_run's int64 feed explain that class (7, not the predicted 3), as Python does."""
    from onnxsal import compile as compile_graph
    from onnxsal.data import mnist_model

    graph = compile_graph(mnist_model(), method="guided_backprop", target="target")
    path = case["folder"] / "mnist_guided_target.onnx"
    path.write_bytes(graph.SerializeToString())
    target_name = [i.name for i in graph.graph.input][1]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    want = dict(zip(names, session.run(names, {**case["feeds"], target_name: np.array([7], np.int64)})))
    predicted = dict(zip(names, session.run(names, {**case["feeds"], target_name: np.array([DIGIT_SAMPLE], np.int64)})))
    assert np.abs(want["image_grad"] - predicted["image_grad"]).max() > 1e-3  # class 7's map is another map

    page, errors = _open(browser, f"{server}/index.html?model=/case/{path.name}&image=/case/digit.png&target=7")
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.status)", timeout=60_000)
    assert page.evaluate("document.body.dataset.status") == "done", page.inner_text("#status")
    _compare(page.evaluate("window.onnxsal.last")["outputs"], want, "the page, target 7")
    assert not errors, errors
    page.close()

    feeds = dict(case["feeds_json"], **{target_name: {"dims": [1], "type": "int64", "data": [7]}})
    (tmp_path / "in.json").write_text(json.dumps(feeds))
    proc = subprocess.run(["node", str(WEB / "node_run.mjs"), str(path), str(tmp_path / "in.json"), "--out",
                           str(tmp_path / "out.json")], cwd=WEB, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    _compare(json.loads((tmp_path / "out.json").read_text()), want, "onnxruntime-node, target 7")


# Every method `onnxsal compile` takes, with small sample counts to keep the run short.
SMALL = {"smoothgrad": {"n_samples": 4}, "integrated_gradients": {"n_steps": 4}, "rise": {"n_masks": 16},
         "occlusion": {"sliding_window_shapes": (1, 7, 7), "strides": 7}}


def test_every_compilable_method_in_browser_and_node(browser, server, case):
    """Not only guided backprop and Grad-CAM: every compilable method's graph runs in both
    JavaScript runtimes and gives Python onnxruntime's outputs."""
    from onnxsal import compile as compile_graph
    from onnxsal import methods as registry
    from onnxsal.data import mnist_model

    from onnxsal.errors import InvalidInputError

    page, errors = _open(browser, f"{server}/index.html")
    worst = {"browser": 0.0, "node": 0.0}
    ran, not_for_cnn = [], {}
    for method in registry.compilable():
        name = f"method_{method}.onnx"
        path = case["folder"] / name
        try:
            graph = compile_graph(mnist_model(), method=method, **SMALL.get(method, {}))
        except InvalidInputError as exc:  # a method for other models (attention rollout needs attention)
            not_for_cnn[method] = str(exc)
            continue
        path.write_bytes(graph.SerializeToString())
        ran.append(method)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        want = dict(zip(names, session.run(names, case["feeds"])))
        got = page.evaluate("([m, f]) => window.onnxsal.runFeeds(m, f)", [f"/case/{name}", case["feeds_json"]])
        worst["browser"] = max(worst["browser"], _compare(got, want, f"onnxruntime-web, {method}"))
        out = path.with_suffix(".json")
        proc = subprocess.run(["node", str(WEB / "node_run.mjs"), str(path), str(case["folder"] / "digit.json"),
                               "--out", str(out)], cwd=WEB, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{method}: {proc.stderr}"
        worst["node"] = max(worst["node"], _compare(json.loads(out.read_text()), want, f"onnxruntime-node, {method}"))
    must = {"gradient", "guided_backprop", "deconvnet", "input_x_gradient", "gradcam", "gradcam_plus_plus",
            "guided_gradcam", "smoothgrad", "integrated_gradients", "lrp", "deeplift", "occlusion", "rise"}
    assert must <= set(ran), f"not compiled for the MNIST CNN: {sorted(must - set(ran))}: {not_for_cnn}"
    print(f"{len(ran)} methods ({', '.join(ran)}): max |diff| browser {worst['browser']:.3g}, node {worst['node']:.3g};"
          f" not for a CNN: {sorted(not_for_cnn)}")
    assert not errors, errors
    page.close()


@pytest.mark.parametrize("graph", GRAPHS)
def test_node_fixed_input_equals_python(case, graph, tmp_path):
    out = tmp_path / "outputs.json"
    proc = subprocess.run(["node", str(WEB / "node_run.mjs"), str(case["folder"] / graph),
                           str(case["folder"] / "digit.json"), "--out", str(out)],
                          cwd=WEB, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"predicted class {DIGIT_SAMPLE}" in proc.stderr, proc.stderr
    worst = _compare(json.loads(out.read_text()), case["reference"][graph], f"onnxruntime-node, {graph}")
    print(f"{graph}: node vs Python max |diff| {worst:.3g}")
