"""Fuzzing: mutated model files and mutated inputs give a result or onnxsal's own error, nothing else."""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import onnxsal
from onnxsal.inspection import inspect_model
from tests.tiny import mlp

SEED_MODEL = mlp(seed=3).SerializeToString()
RUNS = {"cases": 0}


def mutate(data: bytes, edits) -> bytes:
    buf = bytearray(data)
    for kind, pos, value in edits:
        if not buf:
            break
        i = pos % len(buf)
        if kind == 0:
            buf[i] = value
        elif kind == 1:
            del buf[i:i + 1 + value % 8]
        elif kind == 2:
            buf[i:i] = bytes([value]) * (1 + value % 4)
        else:
            buf = buf[:i]
    return bytes(buf)


edits = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=edits)
def test_mutated_model_files(edits, tmp_path_factory):
    data = mutate(SEED_MODEL, edits)
    RUNS["cases"] += 1
    path = tmp_path_factory.mktemp("fuzz") / "m.onnx"
    path.write_bytes(data)
    x = np.random.default_rng(0).normal(size=(2, 6)).astype(np.float32)
    for action in (lambda: inspect_model(path), lambda: onnxsal.compile(path, method="guided_backprop"),
                   lambda: onnxsal.Explainer(path, providers="cpu").attribute(x)):
        try:
            action()
        except onnxsal.OnnxsalError:
            pass


OPS = ["Relu", "Sin", "Softmax", "Gemm", "MatMul", "Add", "Cast", "QuantizeLinear", "If", "Reshape", "Conv", "Mystery", ""]


def structural(model: onnx.ModelProto, change: int, which: int, value: int) -> onnx.ModelProto:
    """A parseable model with one semantic change: op type, input, initializer, attribute, shape, opset."""
    m = onnx.ModelProto.FromString(model.SerializeToString())
    g = m.graph
    node = g.node[which % len(g.node)]
    if change == 0:
        node.op_type = OPS[value % len(OPS)]
    elif change == 1:
        node.input[value % len(node.input)] = ["x", "w1", "h", "missing", ""][value % 5]
    elif change == 2 and len(g.initializer):
        del g.initializer[value % len(g.initializer)]
    elif change == 3:
        node.attribute.add().CopyFrom(onnx.helper.make_attribute(["axis", "transA", "alpha", "to"][value % 4], value - 3))
    elif change == 4:
        dims = g.input[0].type.tensor_type.shape.dim
        dims[value % len(dims)].dim_value = value % 9
    elif change == 5:
        m.opset_import[0].version = value % 30
    elif change == 6:
        m.ir_version = value % 16
    else:
        g.output[0].name = ["h", "a", "x", "nope"][value % 4]
    return m


@settings(max_examples=400, deadline=None)
@given(change=st.integers(0, 7), which=st.integers(0, 10), value=st.integers(0, 40))
def test_structurally_mutated_models(change, which, value):
    RUNS["cases"] += 1
    model = structural(mlp(seed=3), change, which, value)
    x = np.random.default_rng(0).normal(size=(2, 6)).astype(np.float32)
    for action in (lambda: inspect_model(model), lambda: onnxsal.compile(model, method="deconvnet"),
                   lambda: onnxsal.Explainer(model, providers="cpu").attribute(x, method="guided_backprop")):
        try:
            action()
        except onnxsal.OnnxsalError:
            pass


inputs = st.one_of(
    st.builds(lambda s, d: np.zeros(s, dtype=d), st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple),
              st.sampled_from([np.float32, np.float64, np.int64, np.bool_, np.float16, np.uint8])),
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=0, max_size=12).map(lambda v: np.array(v, np.float32)),
    st.lists(st.lists(st.floats(-1e6, 1e6, width=32), min_size=6, max_size=6), min_size=1, max_size=3).map(lambda v: np.array(v, np.float32)),
    st.just("not an array"), st.just(None), st.just({"x": 1}), st.just({"nope": np.zeros((1, 6))}),
)
targets = st.one_of(st.none(), st.integers(-5, 10), st.lists(st.integers(-2, 6), max_size=4), st.just("cat"), st.just(np.ones((1, 4), np.float32)))


@settings(max_examples=200, deadline=None)
@given(x=inputs, target=targets, method=st.sampled_from(["gradient", "guided_backprop", "smoothgrad", "integrated_gradients", "gradcam", "nope"]))
def test_mutated_inputs(x, target, method):
    RUNS["cases"] += 1
    ex = _explainer()
    try:
        out = ex.attribute(x, target=target, method=method, **({"n_samples": 2} if method == "smoothgrad" else {"n_steps": 2} if method == "integrated_gradients" else {}))
    except onnxsal.OnnxsalError:
        return
    assert out.shape == np.asarray(x).shape


_EX = {}


def _explainer():
    if "ex" not in _EX:
        _EX["ex"] = onnxsal.Explainer(mlp(seed=3), providers="cpu")
    return _EX["ex"]


def test_report_case_count():
    """Runs last in this file: says how many fuzz cases ran (pytest -s shows it)."""
    print(f"fuzz cases run: {RUNS['cases']}")
    assert RUNS["cases"] >= 900
