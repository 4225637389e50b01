"""Bad models, bad inputs and bad options: one clear sentence, one specific exception type."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxsal
from onnxsal import InvalidInputError, ModelLoadError, ProviderError, UnsupportedModelError
from tests.tiny import F, make_model, mlp


def one_line(exc: Exception) -> str:
    text = str(exc)
    assert "\n" not in text and text.endswith((".", ")")), text
    return text


def test_unsupported_op_on_path_names_op_and_node():
    nodes = [helper.make_node("Det", ["x"], ["s"], name="wave"), helper.make_node("Relu", ["s"], ["y"], name="r")]
    model = make_model(nodes, [("x", F, ["N", 3, 2, 2])], [("y", F, ["N", 3])])
    with pytest.raises(UnsupportedModelError) as info:
        onnxsal.Explainer(model, providers="cpu").attribute(np.ones((1, 3, 2, 2), np.float32))
    text = one_line(info.value)
    assert "Det" in text and "'wave'" in text and "path" in text


def test_unsupported_op_off_path_does_not_matter():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="r"), helper.make_node("Sin", ["x"], ["side"], name="wave")]
    model = make_model(nodes, [("x", F, ["N", 3])], [("y", F, ["N", 3]), ("side", F, ["N", 3])])
    g = onnxsal.Explainer(model, providers="cpu").attribute(np.array([[1, -1, 2]], np.float32), target=0)
    np.testing.assert_array_equal(g, [[1, 0, 0]])


def test_custom_domain_op_on_path():
    nodes = [helper.make_node("Mystery", ["x"], ["y"], name="m", domain="com.example")]
    model = make_model(nodes, [("x", F, ["N", 3])], [("y", F, ["N", 3])], domains=["com.example"])
    with pytest.raises((UnsupportedModelError, ModelLoadError)) as info:
        onnxsal.compile(model)
    assert "Mystery" in one_line(info.value)


def test_quantized_path_is_refused():
    inits = {"scale": np.array(0.1, np.float32), "zp": np.array(0, np.uint8)}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"], name="quant"),
        helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["d"], name="dequant"),
        helper.make_node("Relu", ["d"], ["y"], name="r"),
    ]
    model = make_model(nodes, [("x", F, ["N", 3])], [("y", F, ["N", 3])], inits)
    with pytest.raises(UnsupportedModelError) as info:
        onnxsal.compile(model)
    text = one_line(info.value)
    assert "QuantizeLinear" in text and "quant" in text and "quantized" in text


def test_integer_cast_on_path_is_refused():
    nodes = [
        helper.make_node("Cast", ["x"], ["i"], name="to_int", to=TensorProto.INT64),
        helper.make_node("Cast", ["i"], ["f"], name="to_float", to=TensorProto.FLOAT),
        helper.make_node("Relu", ["f"], ["y"], name="r"),
    ]
    model = make_model(nodes, [("x", F, ["N", 3])], [("y", F, ["N", 3])])
    with pytest.raises(UnsupportedModelError, match="integers"):
        onnxsal.compile(model)


def test_control_flow_that_cannot_be_unrolled_is_refused():
    """A Loop whose trip count is fed at run time cannot be unrolled: one sentence naming the node."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Relu", ["v_in"], ["v_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", F, ["N", 3])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("v_out", F, ["N", 3])])
    nodes = [helper.make_node("Loop", ["trips", "", "x"], ["y"], name="repeat", body=body)]
    model = make_model(nodes, [("x", F, ["N", 3]), ("trips", TensorProto.INT64, [])], [("y", F, ["N", 3])])
    with pytest.raises(UnsupportedModelError) as info:
        onnxsal.compile(model)
    text = one_line(info.value)
    assert "Loop" in text and "'repeat'" in text


def test_output_not_depending_on_input():
    nodes = [helper.make_node("Relu", ["c"], ["y"], name="r")]
    model = make_model(nodes, [("x", F, ["N", 3])], [("y", F, [2])], {"c": np.ones(2, np.float32)})
    with pytest.raises(UnsupportedModelError, match="does not depend"):
        onnxsal.compile(model, target="tensor")


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.ones((2, 5), np.float32), r"expects shape \[N, 6\]"),
        (np.ones((2, 6, 1), np.float32), "rank 2"),
        (np.ones((2, 6), np.int64), "integers"),
        (np.array([["a"] * 6]), "expects float32"),
        (np.full((2, 6), np.nan, np.float32), "NaN"),
        (np.ones((0, 6), np.float32), "at least one sample"),
    ],
)
def test_bad_inputs(bad, match):
    ex = onnxsal.Explainer(mlp(), providers="cpu")
    with pytest.raises(InvalidInputError, match=match) as info:
        ex.attribute(bad)
    one_line(info.value)


@pytest.mark.parametrize(
    "target, match",
    [(4, "out of range"), (-1, "out of range"), ([0, 1, 2], "one class index per sample"), ("cat", "target must be")],
)
def test_bad_targets(target, match):
    ex = onnxsal.Explainer(mlp(), providers="cpu")
    with pytest.raises(InvalidInputError, match=match) as info:
        ex.attribute(np.ones((2, 6), np.float32), target=target)
    one_line(info.value)


def test_unknown_method_and_options():
    ex = onnxsal.Explainer(mlp(), providers="cpu")
    x = np.ones((1, 6), np.float32)
    with pytest.raises(InvalidInputError, match="unknown method"):
        ex.attribute(x, method="magic")
    with pytest.raises(InvalidInputError, match="no output named"):
        onnxsal.Explainer(mlp(), providers="cpu", output="nope")
    with pytest.raises(UnsupportedModelError, match="no input or inner value"):
        ex.attribute(x, wrt=["nope"])


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        onnxsal.Explainer(tmp_path / "missing.onnx")


def test_random_bytes_are_not_a_model(tmp_path):
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(ModelLoadError, match="not an ONNX model") as info:
        onnxsal.Explainer(path)
    one_line(info.value)


def test_ir_version_and_opset_too_new():
    model = mlp()
    model.ir_version = 14
    with pytest.raises(ModelLoadError, match="IR version 14"):
        onnxsal.Explainer(model)
    model = mlp()
    model.opset_import[0].version = 27
    with pytest.raises(ModelLoadError, match="opset 27"):
        onnxsal.Explainer(model)


def test_external_data_outside_the_folder_is_refused(tmp_path):
    model = mlp()
    w = model.graph.initializer[0]
    w.data_location = onnx.TensorProto.EXTERNAL
    del w.external_data[:]
    entry = w.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    w.ClearField("float_data")
    w.ClearField("raw_data")
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        onnxsal.Explainer(path)


def test_cuda_requested_without_cuda():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA; the error path is for machines without it")
    with pytest.raises(ProviderError, match="CUDA was requested"):
        onnxsal.Explainer(mlp(), providers="cuda")
    assert onnxsal.Explainer(mlp(), providers="auto").session_providers == ["CPUExecutionProvider"]
