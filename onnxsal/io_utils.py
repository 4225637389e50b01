"""Writing results so that a failure never leaves half a file: temp file, then rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def write_bytes_atomic(data: bytes, path) -> Path:
    """Write `data` to `path` through a temporary file in the same folder, renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private (0600); give it a new file's usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_model_atomic(model, path) -> Path:
    """Save a model (single file, weights inline) atomically."""
    return write_bytes_atomic(model.SerializeToString(), path)
