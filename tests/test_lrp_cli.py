"""LRP from the shell: `inspect --composite` lists each node's rule, `explain -m lrp` and
`compile --method lrp` take the composite as an option, and a bad composite is one sentence."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tests.test_cli import cli


def _cnn(path):
    """conv -> BN -> relu -> conv -> relu -> GAP -> flatten -> matmul + add (a Keras-style dense)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in {
        "w1": rng.normal(size=(4, 3, 3, 3)), "b1": rng.normal(size=4),
        "s": rng.uniform(0.5, 1.5, 4), "t": rng.normal(size=4), "mu": rng.normal(size=4), "var": rng.uniform(0.5, 2, 4),
        "w2": rng.normal(size=(6, 4, 3, 3)), "wd": rng.normal(size=(6, 5)), "bd": rng.normal(size=5)}.items()]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "s", "t", "mu", "var"], ["n1"], name="bn"),
             helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="block/conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "wd"], ["m"], name="dense"),
             helper.make_node("Add", ["m", "bd"], ["y"], name="dense_bias")]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def test_inspect_lists_the_rule_of_every_node(tmp_path):
    model = _cnn(tmp_path / "cnn.onnx")
    r = cli("inspect", model, "--composite", "EpsilonPlusFlat", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    rules = {row["node"]: row["rule"] for row in report["lrp_rules"]}
    assert rules["stem"].startswith("flat") and rules["block/conv"].startswith("zplus")
    assert rules["relu1"] == "pass" and rules["gap"].startswith("norm") and rules["flat"] == "gradient"
    assert rules["dense"].startswith("epsilon")  # the MatMul + Add bias became one Gemm layer
    assert "bn" not in rules and "dense_bias" not in rules
    assert any("folded" in note for note in report["canonized"]) and any("Gemm" in note for note in report["canonized"])
    text = cli("inspect", model, "--composite", "EpsilonPlusFlat").stdout
    assert "LRP rules of EpsilonPlusFlat" in text and "stem  Conv (convolution): flat" in text


def test_compile_and_explain_with_a_composite(tmp_path):
    model = _cnn(tmp_path / "cnn.onnx")
    out = tmp_path / "lrp.onnx"
    r = cli("compile", model, "--method", "lrp", "--option", "composite=EpsilonAlpha2Beta1", "-o", out)
    assert r.returncode == 0, r.stderr
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y, rel = sess.run(None, {"x": x})
    assert rel.shape == x.shape and np.all(np.isfinite(rel))
    import onnxsal

    ours = onnxsal.Explainer(str(model), providers="cpu").attribute(x, method="lrp", composite="EpsilonAlpha2Beta1")
    np.testing.assert_allclose(rel, ours, rtol=1e-5, atol=1e-6)
    bad = cli("compile", model, "--method", "lrp", "--option", "composite=NoSuchComposite", "-o", tmp_path / "x.onnx")
    assert bad.returncode != 0 and "unknown composite" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.onnx").exists()
