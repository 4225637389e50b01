"""`onnxsal inspect` says, for a model that will not differentiate, what would make it work.

One small model per reason: a rule that needs static shapes, an op the opset cannot express, an
op with no rule, a quantized path, an integer path, a Loop with a run-time trip count. Each is
checked through the Python report and the command line (text and --json).
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, version_converter

from onnxsal.cli import main
from onnxsal.inspection import format_report, inspect_model
from tests.tiny import make_model

F, I64 = TensorProto.FLOAT, TensorProto.INT64
RNG = np.random.default_rng(0)


def _dynamic_pooling() -> onnx.ModelProto:
    """AveragePool on dynamic spatial sizes: its gradient needs them static."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("AveragePool", ["c"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["y"], name="flatten"),
    ]
    return make_model(nodes, [("x", F, ["N", 3, "height", "width"])], [("y", F, ["N", 4])],
                      {"w": RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)}, opset=17)


def _old_opset() -> onnx.ModelProto:
    """ReduceMax's gradient picks the first maximum with GatherElements, which opset 10 lacks."""
    nodes = [helper.make_node("ReduceMax", ["x"], ["y"], name="peak", axes=[1], keepdims=1)]
    return make_model(nodes, [("x", F, [2, 4])], [("y", F, [2, 1])], {}, opset=10, ir_version=7)


def _no_rule() -> onnx.ModelProto:
    """Det has no gradient rule (nor lowering)."""
    nodes = [helper.make_node("Mul", ["x", "s"], ["m"], name="scale"), helper.make_node("Det", ["m"], ["d"], name="det"),
             helper.make_node("Unsqueeze", ["d", "axes"], ["y"], name="unsqueeze")]
    return make_model(nodes, [("x", F, ["N", 3, 3])], [("y", F, ["N", 1])],
                      {"s": np.float32(2.0), "axes": np.array([1], np.int64)}, opset=17)


def _quantized() -> onnx.ModelProto:
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"], name="quant"),
        helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["dq"], name="dequant"),
        helper.make_node("Relu", ["dq"], ["y"], name="relu"),
    ]
    return make_model(nodes, [("x", F, ["N", 4])], [("y", F, ["N", 4])],
                      {"scale": np.float32(0.1), "zp": np.uint8(128)}, opset=17)


def _integer_path() -> onnx.ModelProto:
    nodes = [helper.make_node("Cast", ["x"], ["i"], name="to_int", to=I64),
             helper.make_node("Cast", ["i"], ["f"], name="to_float", to=F),
             helper.make_node("Relu", ["f"], ["y"], name="relu")]
    return make_model(nodes, [("x", F, ["N", 4])], [("y", F, ["N", 4])], opset=17)


def _dynamic_loop() -> onnx.ModelProto:
    """v <- 2·v, `steps` times, where `steps` is an input."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep"),
         helper.make_node("Mul", ["v_in", "two"], ["v_out"], name="double")],
        "body",
        [helper.make_tensor_value_info("i", I64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", F, ["N", 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("v_out", F, ["N", 4])],
        [onnx.numpy_helper.from_array(np.float32(2.0), "two")],
    )
    nodes = [helper.make_node("Loop", ["steps", "", "x"], ["y"], name="repeat", body=body)]
    return make_model(nodes, [("x", F, ["N", 4]), ("steps", I64, [])], [("y", F, ["N", 4])], opset=17)


# model, the words the hint must hold, the hint's text for the record
CASES = {
    "needs_shapes": (_dynamic_pooling, ["fix the input shape: --input-shape 1,3,H,W", "'x'"]),
    "old_opset": (_old_opset, ["convert to opset 11 with onnx.version_converter"]),
    "no_rule": (_no_rule, ["Det", "'det'", "not supported"]),
    "quantized": (_quantized, ["export the float model", "quantiz"]),
    "integer_path": (_integer_path, ["export the float model", "'to_int'"]),
    "dynamic_loop": (_dynamic_loop, ["Loop node 'repeat'", "trip count", "constant"]),
}


def _cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("case", list(CASES))
def test_report_says_what_would_make_it_work(case, tmp_path):
    build, words = CASES[case]
    model = build()
    report = inspect_model(model)
    assert not report.differentiable and report.problem
    assert report.hint and "\n" not in report.hint
    for w in words:
        assert w in report.hint, (w, report.hint)
    assert f"to make it work: {report.hint}" in format_report(report).splitlines()

    path = tmp_path / f"{case}.onnx"
    onnx.save(model, path)
    rc, out, err = _cli("inspect", path)
    assert rc == 0, err
    assert f"to make it work: {report.hint}" in out.splitlines()
    rc, out, err = _cli("inspect", path, "--json")
    assert rc == 0, err
    assert json.loads(out)["hint"] == report.hint


def test_differentiable_model_has_no_hint():
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc"), helper.make_node("Relu", ["h"], ["y"], name="relu")]
    model = make_model(nodes, [("x", F, ["N", 4])], [("y", F, ["N", 3])],
                       {"w": RNG.normal(size=(4, 3)).astype(np.float32), "b": np.zeros(3, np.float32)}, opset=17)
    report = inspect_model(model)
    assert report.differentiable and report.hint is None and report.problem is None
    assert "to make it work" not in format_report(report)


def test_following_the_opset_hint_makes_the_model_differentiable():
    model = _old_opset()
    assert not inspect_model(model).differentiable
    converted = version_converter.convert_version(model, 11)
    report = inspect_model(converted)
    assert report.differentiable, report.problem


def test_following_the_shape_hint_makes_the_model_differentiable(tmp_path):
    model = _dynamic_pooling()
    assert inspect_model(model, input_shapes=(1, 3, 8, 8)).differentiable
    path = tmp_path / "pool.onnx"
    onnx.save(model, path)
    rc, out, err = _cli("inspect", path, "--input-shape", "1,3,8,8", "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert report["differentiable"] and report["hint"] is None


def test_shape_hint_keeps_known_dims_and_names_the_layout():
    """NHWC: H and W are axes 1 and 2, the known channel count stays."""
    model = _dynamic_pooling()
    nodes = [helper.make_node("Transpose", ["x_nhwc"], ["x"], name="to_nchw", perm=[0, 3, 1, 2])] + list(model.graph.node)
    nhwc = make_model(nodes, [("x_nhwc", F, ["N", "height", "width", 3])], [("y", F, ["N", 4])],
                      {"w": RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)}, opset=17)
    report = inspect_model(nhwc)
    assert report.hint and report.hint.startswith("fix the input shape: --input-shape 1,H,W,3 "), report.hint
    assert "'x_nhwc'" in report.hint


def test_output_without_class_axis_is_differentiable_from_a_seed():
    """A 1-D output (regression) has no class to take the argmax of; a seed tensor explains it."""
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc"),
             helper.make_node("Flatten", ["h"], ["f"], name="flatten", axis=0),
             helper.make_node("Squeeze", ["f", "axes"], ["y"], name="squeeze")]
    model = make_model(nodes, [("x", F, [1, 4])], [("y", F, [1])],
                       {"w": RNG.normal(size=(4, 1)).astype(np.float32), "b": np.zeros(1, np.float32),
                        "axes": np.array([0], np.int64)}, opset=17)
    report = inspect_model(model)
    assert report.differentiable and report.hint is None, report.problem
