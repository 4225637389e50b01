"""ONNX Runtime sessions: provider choice (CUDA when it really runs, else CPU) and creation."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnxruntime as ort

from .errors import ModelLoadError, ModelRunError, OnnxsalError, ProviderError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def resolve_providers(providers="auto") -> list:
    """Turn "auto", "cpu", "cuda" or an explicit onnxruntime provider list into a provider list."""
    available = ort.get_available_providers()
    if isinstance(providers, (list, tuple)):
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        missing = [p for p in names if p not in available]
        if missing:
            raise ProviderError(f"execution provider(s) {missing} are not available here; available: {available}.")
        return list(providers)
    choice = str(providers).lower()
    if choice == "cpu":
        return [CPU]
    if choice == "cuda":
        if CUDA not in available:
            raise ProviderError(
                "CUDA was requested but this onnxruntime has no CUDAExecutionProvider; "
                "install onnxsal[gpu] (onnxruntime-gpu) on a machine with an NVIDIA GPU."
            )
        return [CUDA, CPU]
    if choice == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    raise ProviderError(f"providers must be 'auto', 'cpu', 'cuda' or a provider list, not {providers!r}.")


def create_session(
    model, providers: list, options: ort.SessionOptions | None = None, strict: bool = False
) -> ort.InferenceSession:
    """An InferenceSession for `model`; never falls back silently from CUDA to the CPU.

    When CUDA was asked for but the session came up without it: an error if `strict` (the user
    said "cuda"), else a loud warning ("auto" on a machine whose CUDA libraries are missing).
    """
    return _open(model.SerializeToString(), providers, options, strict)


def create_session_from_file(path: Path, providers: list, optimised: bool = False) -> ort.InferenceSession:
    """A session for an ONNX file that onnxruntime reads itself (no onnx import, no copy in Python);
    `optimised`: the file is a graph onnxruntime already optimised for this machine, so it is not
    optimised again."""
    options = ort.SessionOptions()
    if optimised:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return _open(str(path), providers, options, strict=False)


def _open(source, providers: list, options: ort.SessionOptions | None, strict: bool) -> ort.InferenceSession:
    """An InferenceSession from bytes or a path, with the CUDA check of `create_session`."""
    options = options or ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(source, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own types, with long messages
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"onnxruntime cannot run this model: {first}") from exc
    names = [p[0] if isinstance(p, tuple) else p for p in providers]
    if CUDA in names and CUDA not in session.get_providers():
        message = (
            "onnxruntime-gpu could not start CUDA (are the CUDA 13 and cuDNN libraries installed? "
            "try `pip install onnxsal[gpu]`); this session runs on the CPU."
        )
        if strict:
            raise ProviderError(message.replace("; this session runs on the CPU.", "."))
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    return session


def run(session: ort.InferenceSession, names: list[str], feeds: dict) -> list:
    """session.run, with onnxruntime's failures (shape mismatches inside the graph, bad kernels)
    turned into one clear ModelRunError."""
    try:
        return session.run(names, feeds)
    except OnnxsalError:  # a session that builds its graph per input shape (the Explainer's) refused
        raise
    except Exception as exc:
        text = str(exc).strip()
        detail = text.split("Status Message:")[-1].strip() if "Status Message:" in text else text.splitlines()[0] if text else type(exc).__name__
        raise ModelRunError(f"onnxruntime could not run the model on these inputs: {detail}") from exc
