"""Open the page on a compiled graph and an image in headless Chromium, save a screenshot, and say
how far the browser's numbers are from Python onnxruntime's on the same input tensor.

    python examples/web/screenshot.py assets/mobilenet_v2_gradcam.onnx assets/chelsea.png out.png

MODEL and IMAGE are paths inside examples/web/ (the folder is served as it is, on 127.0.0.1 and a
free port). Needs Chromium (/usr/bin/chromium or $ONNXSAL_CHROMIUM), Playwright for Python and
examples/web/node_modules (`make web-deps`). This is how docs/figures/web_overlay.png was made.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import threading
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


class Handler(http.server.SimpleHTTPRequestHandler):
    """Static files with the MIME types module scripts and WebAssembly need."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm"}

    def log_message(self, *args):
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("model", help="compiled graph, relative to examples/web/")
    ap.add_argument("image", help="image, relative to examples/web/")
    ap.add_argument("out", type=Path, help="PNG to write")
    args = ap.parse_args()

    import onnxruntime as ort
    from playwright.sync_api import sync_playwright

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(HERE)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/index.html?model={args.model}&image={args.image}"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=os.environ.get("ONNXSAL_CHROMIUM", "/usr/bin/chromium"),
                                        headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1040, "height": 800}, device_scale_factor=1)
            page.goto(url)
            page.wait_for_function("['done', 'error'].includes(document.body.dataset.status)", timeout=120_000)
            if page.evaluate("document.body.dataset.status") != "done":
                raise SystemExit(page.inner_text("#status"))
            last = page.evaluate("window.onnxsal.last")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            top = page.locator("#summary").bounding_box()["y"] - 8  # the summary line and the three panels
            panels = page.locator(".panels").bounding_box()
            page.screenshot(path=str(args.out),
                            clip={"x": 0, "y": top, "width": 1040, "height": panels["y"] + panels["height"] + 8 - top})
            browser.close()
    finally:
        httpd.shutdown()

    x = np.asarray(last["input"]["data"], np.float32).reshape(last["input"]["dims"])
    session = ort.InferenceSession(str(HERE / args.model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    want = dict(zip(names, session.run(names, {last["inputName"]: x})))
    for name, ref in want.items():
        got = np.asarray(last["outputs"][name]["data"], np.float32).reshape(ref.shape)
        print(f"{name}: max |browser - Python onnxruntime| = {np.abs(got - ref).max():.3g}")
    print(f"predicted {last['label']} ({last['predicted']}) in {last['ms']:.0f} ms; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
