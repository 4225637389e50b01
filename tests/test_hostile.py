"""Hostile and malformed model files, built here, through the library and the command line.

Each case must end in one of onnxsal's own error types (the library) or a non-zero exit with one line
and no traceback (the CLI), and nothing may be written for it. The cases are those of the reliability
issue that the other suites do not already hold one by one: truncated files, a protobuf that is not a
model, a model the ONNX checker refuses, a graph cycle, a missing initialiser, external data that
escapes through a symlink, NaN/Inf inputs, and Grad-CAM layers that do not exist or have no extent.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxsal
from onnxsal.errors import InvalidInputError, ModelLoadError
from tests.test_cli import cli, one_line_error, tiny_cnn
from tests.tiny import F, make_model


def _tiny_bytes() -> bytes:
    return tiny_cnn().SerializeToString()


def truncated(tmp_path):
    data = _tiny_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 3])
    return path, "not an ONNX model|fails the ONNX checker|no graph"


def tensor_not_model(tmp_path):
    """A valid protobuf message of another type (a TensorProto) where a model is expected."""
    path = tmp_path / "tensor.onnx"
    path.write_bytes(numpy_helper.from_array(np.arange(64, dtype=np.float32), "w").SerializeToString())
    return path, "not an ONNX model"


def fails_checker(tmp_path):
    """A Conv with an attribute of the wrong type: parses, then the checker refuses it."""
    model = tiny_cnn()
    conv = model.graph.node[0]
    del conv.attribute[:]
    conv.attribute.append(helper.make_attribute("pads", "one"))
    path = tmp_path / "badattr.onnx"
    path.write_bytes(model.SerializeToString())
    return path, "fails the ONNX checker"


def cycle(tmp_path):
    """a = Add(x, b); b = Relu(a): a graph that is not a DAG."""
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="add"), helper.make_node("Relu", ["a"], ["b"], name="relu")]
    path = tmp_path / "cycle.onnx"
    path.write_bytes(make_model(nodes, [("x", F, ["N", 4])], [("b", F, ["N", 4])]).SerializeToString())
    return path, "fails the ONNX checker"


def missing_initializer(tmp_path):
    """The Gemm's weight `w` is neither an input, an initialiser nor a node output."""
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")]
    path = tmp_path / "noweight.onnx"
    path.write_bytes(make_model(nodes, [("x", F, ["N", 4])], [("y", F, ["N", 2])]).SerializeToString())
    return path, "fails the ONNX checker"


def symlink_out(tmp_path):
    """External data whose location is a symlink inside the folder pointing outside it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.bin"
    secret.write_bytes(np.zeros(8, np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    os.symlink(secret, folder / "weights.bin")
    model = make_model([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")], [("x", F, ["N", 4])], [("y", F, ["N", 2])],
                       {"w": np.zeros((4, 2), np.float32)})
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "weights.bin"), ("offset", "0"), ("length", "32")):
        w.external_data.add(key=k, value=v)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path, "outside the model's folder"


CASES = [truncated, tensor_not_model, fails_checker, cycle, missing_initializer, symlink_out]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_hostile_files_are_refused_by_the_library(case, tmp_path):
    path, match = case(tmp_path)
    with pytest.raises(ModelLoadError, match=match):
        onnxsal.Explainer(str(path), providers="cpu")
    with pytest.raises(ModelLoadError, match=match):
        onnxsal.compile(str(path))


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_hostile_files_are_one_line_errors_in_the_cli(case, tmp_path):
    path, _ = case(tmp_path)
    out = tmp_path / "explain.onnx"
    one_line_error(cli("inspect", path))
    one_line_error(cli("compile", path, "-o", out))
    assert not out.exists()


@pytest.fixture(scope="module")
def cnn():
    return onnxsal.Explainer(tiny_cnn(), providers="cpu")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_inputs_are_refused(cnn, bad):
    x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    x[1, 2, 3, 4] = bad
    for method in ("gradient", "smoothgrad", "integrated_gradients", "gradcam"):
        with pytest.raises(InvalidInputError, match="NaN or infinite"):
            cnn.attribute(x, method=method)


def test_gradcam_layer_that_does_not_exist(cnn):
    x = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    with pytest.raises(InvalidInputError, match="no layer named 'conv9'.*candidates"):
        cnn.attribute(x, method="gradcam", layer="conv9")


@pytest.mark.parametrize("layer", ["g", "gap", "logits", "fc"])
def test_gradcam_layer_without_spatial_extent(cnn, layer):
    """The pooled [N,6,1,1] map, the logits: values of the model, but no height and width."""
    x = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    with pytest.raises(InvalidInputError, match="no spatial extent"):
        cnn.attribute(x, method="gradcam", layer=layer)


def test_gradcam_layer_errors_in_the_cli(tmp_path):
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_cnn(), str(model))
    out = tmp_path / "cam.onnx"
    one_line_error(cli("compile", model, "--method", "gradcam", "--option", "layer=gap", "-o", out), "spatial extent")
    one_line_error(cli("compile", model, "--method", "gradcam", "--option", "layer=nowhere", "-o", out), "nowhere")
    assert not out.exists()
