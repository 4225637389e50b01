"""Writing results so that a failure never leaves half a file: temp file, then rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx


def write_bytes_atomic(data: bytes, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_model_atomic(model: onnx.ModelProto, path) -> Path:
    """Save a model (single file, weights inline) atomically."""
    return write_bytes_atomic(model.SerializeToString(), path)
