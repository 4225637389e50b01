"""Image files in, model-ready arrays out: finding, decoding, resizing and preprocessing presets."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InvalidInputError

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)

PRESETS = {
    "imagenet": "torchvision: x/255, minus ImageNet mean, over ImageNet std (RGB)",
    "keras": "Keras MobileNet/Inception: x/127.5 - 1, in [-1, 1] (RGB)",
    "caffe": "Keras ResNet50/VGG: BGR, minus the ImageNet mean in 0..255",
    "unit": "x/255, in [0, 1]",
    "raw": "x as it is, in 0..255",
}


def preprocess(images: np.ndarray, preset: str) -> np.ndarray:
    """uint8 images [N,H,W,C] to float32 [N,H,W,C] by a named preset."""
    x = images.astype(np.float32)
    if preset == "unit":
        return x / 255.0
    if preset == "raw":
        return x
    if preset == "keras":
        return x / 127.5 - 1.0
    if x.shape[-1] != 3:
        raise InvalidInputError(f"the {preset!r} preset needs RGB images (3 channels), the model takes {x.shape[-1]}.")
    if preset == "imagenet":
        return (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    if preset == "caffe":
        return x[..., ::-1] - CAFFE_MEAN_BGR
    raise InvalidInputError(f"unknown preprocessing {preset!r}; choose one of {sorted(PRESETS)} or 'auto'.")


def preset_from_metadata(metadata: dict[str, str]) -> str:
    """The preset a converter recorded in the model ('onnxsal.preprocess'), else [0, 1] input."""
    preset = metadata.get("onnxsal.preprocess") or metadata.get("preprocess")
    if preset in PRESETS:
        return preset
    if metadata.get("input_range", "").replace(" ", "") in ("-1..1", "[-1,1]"):
        return "keras"
    return "unit"


def collect(paths) -> list[Path]:
    """Image files named directly, or found (recursively, sorted) in the folders named (one path or several)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES))
        elif p.exists():
            out.append(p)
        else:
            raise InvalidInputError(f"image path {str(p)!r} does not exist.")
    if not out:
        raise InvalidInputError("no image files were found in the paths given.")
    return out


def load(path: Path, size: tuple[int, int], channels: int) -> np.ndarray:
    """Decode and resize one image to uint8 [H,W,C] (C = 1 or 3); a clear error if it cannot be read."""
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidInputError(f"cannot read image {str(path)!r}: {type(exc).__name__}.") from exc
    return arr[..., None] if arr.ndim == 2 else arr


@dataclass(frozen=True)
class ImageInput:
    """What the model's image input expects: layout, size and channels."""

    name: str
    layout: str
    height: int
    width: int
    channels: int

    def to_model(self, batch_hwc: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(batch_hwc.transpose(0, 3, 1, 2)) if self.layout == "NCHW" else batch_hwc


def image_input(spec, size: tuple[int, int] | None = None) -> ImageInput:
    """Read layout/size/channels off an input spec [N,C,H,W] or [N,H,W,C]; `size` fills free H, W."""
    from .layers import guess_layout

    shape = spec.shape
    if shape is None or len(shape) != 4:
        raise InvalidInputError(f"input {spec.name!r} is not an image batch (rank 4), so it cannot take image files.")
    layout = guess_layout(shape)
    c, h, w = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
    if size is not None:
        h, w = size
    if not isinstance(h, int) or not isinstance(w, int) or h <= 0 or w <= 0:
        raise InvalidInputError(f"input {spec.name!r} has no fixed height and width ({shape}); pass --size HxW.")
    if c not in (1, 3):
        raise InvalidInputError(f"input {spec.name!r} takes {c} channels; image files give 1 or 3.")
    return ImageInput(spec.name, layout, h, w, c)
