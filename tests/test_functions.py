"""Ops without a gradient rule that ONNX defines by a function body are expanded into that body
(onnxsal.prepare.functions) and differentiated through it.

Each case forces the expansion (the op is taken out of the rule set, so a rule another module
registers does not hide the path under test) and checks, as tests/test_rules.py does: the expanded
graph computes what the op computes (float32, onnxruntime against onnxruntime's own kernel where it
has one, else the reference evaluator), the float64 dot-product test through onnx.reference, and
the float32 onnxruntime gradient against the float64 one.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxsal.autodiff import GRADIENT, SeedSpec, differentiate
from onnxsal.errors import UnsupportedModelError
from onnxsal.prepare import lower
from rule_cases import C, Case, I, W, away, rand
from test_rules import DOT_RTOL, ORT_RTOL, _rng, build, cast_feeds, feeds_for, ort_run, reference, wrt_names

# (case, op types taken out of the rule set besides the case's own)
FUNCTION_CASES = [
    (Case("Shrink", "body", [W(2, 3, 4, sample=away(-0.5, 0.5))], attrs={"lambd": 0.5, "bias": 0.2}, opset=18), ()),
    (Case("Softsign", "body", [W(2, 5, sample=away(0.0))], opset=22), ()),
    (Case("Swish", "body", [W(3, 4)], attrs={"alpha": 1.7}, opset=24), ()),
    # Mish's body calls Softplus, whose rule is taken away too: its own body is expanded in turn.
    (Case("Mish", "nested-softplus-body", [W(2, 6)], opset=22), ("Softplus",)),
    # No rule exists for these: their bodies hold only ops that have one.
    (Case("RMSNormalization", "last-axis", [W(2, 3, 4), C(rand(4))], attrs={"epsilon": 1e-3}, opset=23), ()),
    (Case("RMSNormalization", "dynamic", [W(2, 3, 4), C(rand(3, 4))], attrs={"axis": 1}, opset=23, dynamic=True), ()),
    (Case("CenterCropPad", "crop-and-pad", [W(2, 5, 4), I(3, 6)], attrs={"axes": [1, 2]}, opset=18), ()),
    (Case("AffineGrid", "2d", [W(2, 2, 3), I(2, 1, 3, 4)], opset=20), ()),
    (Case("AffineGrid", "2d-align-corners", [W(2, 2, 3), I(2, 3, 2, 5)], attrs={"align_corners": 1}, opset=20), ()),
    # A context-dependent body (built for the node's inputs), expanded in place of the rule.
    (Case("LayerNormalization", "body", [W(2, 3, 4), C(rand(4)), C(rand(4))], attrs={"epsilon": 1e-3}, opset=17), ()),
]


def _supports(case: Case, also: tuple[str, ...]):
    removed = {case.op, *also}
    return lambda op: op not in removed and GRADIENT.supports(op)


def _gradient_graph(model: onnx.ModelProto, case: Case, also: tuple[str, ...]):
    lowered = lower(model, _supports(case, also), wrt_names(case), "y0")
    left = {n.op_type for n in lowered.graph.node} & {case.op, *also}
    assert not left, f"{sorted(left)} not expanded"
    return lowered, differentiate(lowered, GRADIENT, wrt=wrt_names(case), output="y0", seed=SeedSpec("tensor"))


def _original_forward(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    """The op's own output: onnxruntime's kernel where it has one, else the reference's."""
    try:
        return ort_run(model, ["y0"], feeds)[0]
    except Exception:  # onnxruntime has no kernel for the op (at this opset)
        return reference(model).run(["y0"], feeds)[0]


@pytest.mark.parametrize("case, also", FUNCTION_CASES, ids=[c.id for c, _ in FUNCTION_CASES])
def test_function_body_is_differentiated(case: Case, also):
    rng = _rng(case)
    wrt = wrt_names(case)
    x64 = cast_feeds(case, feeds_for(case, rng), np.float64)
    y0 = reference(build(case, np.float64)).run(["y0"], x64)[0]
    shape = np.shape(y0)

    # float64: the dot-product test on the expanded graph's gradient. The central differences run
    # on the op itself, or on the expanded forward where the reference computes the op in float32
    # whatever its input (AffineGrid); that forward is held to the op's own kernel in float32 below.
    fwd64 = build(case, np.float64, (np.dtype(np.float64), shape))
    lowered64, gg64 = _gradient_graph(fwd64, case, also)
    u = {w: case.u_sample(rng, x64[w].shape) for w in wrt}
    v = rng.standard_normal(shape)
    f = reference(fwd64 if y0.dtype == np.float64 else lowered64)
    plus = {k: a + case.eps * u[k] if k in u else a for k, a in x64.items()}
    minus = {k: a - case.eps * u[k] if k in u else a for k, a in x64.items()}
    ju = (f.run(["y0"], plus)[0] - f.run(["y0"], minus)[0]) / (2 * case.eps)
    g64 = reference(gg64.model).run([gg64.grads[w] for w in wrt], {**x64, gg64.seed_input: v})
    lhs = float(np.sum(ju * v))
    rhs = float(sum(np.sum(u[w] * g) for w, g in zip(wrt, g64)))
    scale = max(sum(float(np.sum(np.abs(u[w] * g))) for w, g in zip(wrt, g64)), float(np.sum(np.abs(ju * v))), 1e-12)
    assert abs(lhs - rhs) <= DOT_RTOL * scale, f"dot-product test failed: {lhs!r} != {rhs!r}"
    assert float(np.max(np.abs(g64[0]))) > 0

    # float32 in onnxruntime: the expanded forward equals the op's own, the gradient the float64 one.
    x32 = cast_feeds(case, x64, np.float32)
    fwd32 = build(case, np.float32, (np.dtype(np.float32), shape))
    lowered32, gg32 = _gradient_graph(fwd32, case, also)
    expected = _original_forward(fwd32, x32)
    got = ort_run(lowered32, ["y0"], x32)[0]
    tol = ORT_RTOL * max(float(np.max(np.abs(expected))), 1e-3)
    np.testing.assert_allclose(got, expected, rtol=ORT_RTOL, atol=tol, err_msg="the expanded body computes another value")
    y32, *g32 = ort_run(gg32.model, ["y0"] + [gg32.grads[w] for w in wrt], {**x32, gg32.seed_input: v.astype(np.float32)})
    np.testing.assert_allclose(y32, expected, rtol=ORT_RTOL, atol=tol)
    for a, b in zip(g32, g64):
        np.testing.assert_allclose(a, b, rtol=ORT_RTOL, atol=ORT_RTOL * max(float(np.max(np.abs(b))), 1e-3))


def test_expanded_nodes_are_named_after_the_node():
    case, also = FUNCTION_CASES[4]
    lowered, _ = _gradient_graph(build(case, np.float32), case, also)
    assert all(n.name.startswith("rmsnormalization/") for n in lowered.graph.node)
    assert [o for n in lowered.graph.node for o in n.output if o == "y0"] == ["y0"]


def _one_node(op: str, opset: int, **attrs) -> onnx.ModelProto:
    node = helper.make_node(op, ["x"], ["y"], name="n", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def test_random_body_is_refused_by_name():
    model = _one_node("Bernoulli", 22)
    with pytest.raises(UnsupportedModelError, match="Bernoulli node 'n'.*random"):
        lower(model, GRADIENT.supports, ["x"], "y")


def test_op_without_a_body_at_the_models_opset_stays_refused():
    # Shrink's body is written for opset 18; an opset 13 model keeps the driver's missing-rule error.
    model = _one_node("Shrink", 13, lambd=0.5)
    supports = lambda op: op != "Shrink" and GRADIENT.supports(op)  # noqa: E731
    lowered = lower(model, supports, ["x"], "y")
    assert [n.op_type for n in lowered.graph.node] == ["Shrink"]
    rules = GRADIENT.override("no-shrink")
    rules.supports = supports
    with pytest.raises(UnsupportedModelError, match="no gradient rule for op type Shrink at node 'n'"):
        differentiate(lowered, rules, wrt=["x"], output="y")
