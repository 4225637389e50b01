"""Test-wide settings: the graph cache of `onnxsal explain` lives in a fresh folder per test session
(inherited by the command-line subprocesses), never in the user's ~/.cache."""

import os
import tempfile

os.environ["ONNXSAL_CACHE_DIR"] = tempfile.mkdtemp(prefix="onnxsal-test-cache-")
