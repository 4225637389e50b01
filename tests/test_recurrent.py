"""Recurrent ops (LSTM, GRU, RNN) and control flow (Loop, Scan, If), lowered and differentiated.

- The float64 references the rule table checks these ops against (tests/recurrent_reference.py)
  agree with onnxruntime's own kernels on every case of the table's recurrent/control-flow section.
- What cannot be unrolled is refused with one sentence: a dynamic sequence length (NeedsShapesError,
  which specialising on the input shapes cures), padded sequences, while loops, a run-time trip
  count, If branches of different shapes.
- Whole torch models exported by the TorchScript exporter: a 2-layer bidirectional batch-first LSTM
  and a GRU whose initial states are graph inputs, and scripted for-loops that export as Loop; the
  gradients through `lower` + `differentiate` match torch.autograd to 1e-4 relative.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsal.autodiff import SeedSpec, differentiate, rule_set
from onnxsal.errors import NeedsShapesError, UnsupportedModelError
from onnxsal.prepare import lower
from rule_cases import CASES, Case
from test_rules import build, cast_feeds, feeds_for, ort_run, reference

torch = pytest.importorskip("torch")
nn = torch.nn

pytestmark = [  # the TorchScript exporter (dynamo=False) on purpose, and its tracer's chatter
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Exporting a model to ONNX with a batch_size other than 1:UserWarning"),
]

RULES = rule_set("gradient", "keep")
SECTION = {"LSTM", "GRU", "RNN", "Loop", "Scan", "If"}
SECTION_CASES = [c for c in CASES if c.op in SECTION]


# -- the references against onnxruntime's kernels --------------------------------------------------
def _ort_forward(case: Case, feeds: dict, outs: list[str]) -> list[np.ndarray]:
    """The case's op run by onnxruntime itself. Its CPU kernels need hidden_size and refuse layout 1,
    so a layout-1 case runs as the layout-0 node on transposed inputs, its outputs transposed back."""
    model = build(case, np.float32)
    node = model.graph.node[0]
    model.graph.ClearField("output")
    model.graph.output.extend([onnx.ValueInfoProto(name=o) for o in outs])
    if case.op not in ("LSTM", "GRU", "RNN"):
        return ort_run(model, outs, feeds)
    attrs = {a.name: a for a in node.attribute}
    if "hidden_size" not in attrs:
        r = next(t for t in model.graph.initializer if t.name == node.input[2])
        node.attribute.append(helper.make_attribute("hidden_size", int(r.dims[-1])))
    if "layout" not in attrs or attrs["layout"].i == 0:
        return ort_run(model, outs, feeds)
    attrs["layout"].i = 0
    batch_major = {node.input[i] for i in (0, 5, 6) if i < len(node.input) and node.input[i]}
    for vi in model.graph.input:  # X [N, T, I] -> [T, N, I]; states [N, D, H] -> [D, N, H]
        if vi.name in batch_major:
            dims = vi.type.tensor_type.shape.dim
            dims[0].dim_value, dims[1].dim_value = dims[1].dim_value, dims[0].dim_value
    swapped = {k: np.ascontiguousarray(np.swapaxes(v, 0, 1)) if k in batch_major else v for k, v in feeds.items()}
    res = ort_run(model, outs, swapped)
    return [np.transpose(res[0], [2, 0, 1, 3])] + [np.swapaxes(v, 0, 1) for v in res[1:]]


@pytest.mark.parametrize("case", SECTION_CASES, ids=[c.id for c in SECTION_CASES])
def test_reference_agrees_with_onnxruntime(case: Case):
    feeds = cast_feeds(case, feeds_for(case, np.random.default_rng(7)), np.float32)
    outs = [f"y{k}" for k in range(case.n_out)]
    ours = reference(build(case, np.float32)).run(outs, feeds)
    theirs = _ort_forward(case, feeds, outs)
    for name, a, b in zip(outs, ours, theirs):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


def test_onnx_reference_alone_would_miss_the_attributes():
    """Why the table uses its own LSTM: onnx.reference ignores clip (and activations, input_forget)."""
    from onnx.reference import ReferenceEvaluator

    case = next(c for c in CASES if c.id == "LSTM-clip")
    feeds = cast_feeds(case, feeds_for(case, np.random.default_rng(7)), np.float32)
    model = build(case, np.float32)
    plain = ReferenceEvaluator(model).run(["y0"], feeds)[0]
    faithful = reference(model).run(["y0"], feeds)[0]
    assert np.max(np.abs(plain - faithful)) > 1e-3


# -- the lowering's own properties -------------------------------------------------------------------
def _lstm_model(seq="T", batch="N", lens=None, opset=14) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((1, 12, 2)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((1, 12, 3)).astype(np.float32), "R")]
    ins = ["x", "W", "R", "", ""]
    if lens is not None:
        inits.append(numpy_helper.from_array(np.asarray(lens, np.int32), "lens"))
        ins[4] = "lens"
    node = helper.make_node("LSTM", ins, ["y"], name="lstm", hidden_size=3)
    graph = helper.make_graph([node], "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, batch, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def test_dynamic_sequence_length_asks_for_input_shapes():
    with pytest.raises(NeedsShapesError, match="LSTM node 'lstm'.*sequence length of 'x' is dynamic.*--input-shape"):
        lower(_lstm_model(), RULES.supports, ["x"], "y")


def test_dynamic_batch_is_fine():
    x = np.random.default_rng(0).standard_normal((4, 3, 2)).astype(np.float32)
    seed = np.random.default_rng(1).standard_normal((4, 1, 3, 3)).astype(np.float32)
    grads = []
    for batch in ("N", 3):
        gg = differentiate(lower(_lstm_model(seq=4, batch=batch), RULES.supports, ["x"], "y"), RULES, wrt=["x"],
                           output="y", seed=SeedSpec("tensor"))
        grads.append(ort_run(gg.model, [gg.grads["x"]], {"x": x, gg.seed_input: seed})[0])
    np.testing.assert_array_equal(grads[0], grads[1])
    assert np.abs(grads[0]).max() > 0


@pytest.mark.parametrize("lens", [[4, 3, 4], [2, 2, 2]])
def test_padded_sequences_are_refused(lens):
    with pytest.raises(UnsupportedModelError, match="LSTM node 'lstm'.*sequence_lens.*not all the full length 4"):
        lower(_lstm_model(seq=4, batch=3, lens=lens), RULES.supports, ["x"], "y")


def test_sequence_lens_computed_from_static_shapes_is_folded():
    """tf2onnx writes sequence_lens as the time length broadcast over the batch, computed from Shape."""
    model = _lstm_model(seq=4, batch=3)
    g = model.graph
    g.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), "t_axis"),
                          numpy_helper.from_array(np.array([1], np.int64), "n_axis")])
    g.node.insert(0, helper.make_node("Shape", ["x"], ["xs"]))
    g.node.insert(1, helper.make_node("Gather", ["xs", "t_axis"], ["t"]))
    g.node.insert(2, helper.make_node("Gather", ["xs", "n_axis"], ["n"]))
    g.node.insert(3, helper.make_node("Expand", ["t", "n"], ["t_per_sample"]))
    g.node.insert(4, helper.make_node("Cast", ["t_per_sample"], ["lens"], to=TensorProto.INT32))
    g.node[5].input[4] = "lens"
    lowered = lower(model, RULES.supports, ["x"], "y")
    assert "LSTM" not in {n.op_type for n in lowered.graph.node}
    x = np.random.default_rng(0).standard_normal((4, 3, 2)).astype(np.float32)
    np.testing.assert_allclose(ort_run(lowered, ["y"], {"x": x})[0], ort_run(model, ["y"], {"x": x})[0], atol=1e-6)


def _loop_model(trip=None, cond_out="cond_in", trip_input=False) -> onnx.ModelProto:
    body = helper.make_graph(
        [helper.make_node("Sin", ["h_in"], ["h_out"]), helper.make_node("Identity", ["cond_in"], ["same"]),
         helper.make_node("Not", ["cond_in"], ["flip"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [2])])
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])]
    inits = [numpy_helper.from_array(np.array(True), "yes")]
    if trip_input:
        inputs.append(helper.make_tensor_value_info("M", TensorProto.INT64, []))
    elif trip is not None:
        inits.append(numpy_helper.from_array(np.array(trip, np.int64), "M"))
    node = helper.make_node("Loop", ["M" if trip is not None or trip_input else "", "yes", "x"], ["y"], name="loop",
                            body=body)
    graph = helper.make_graph([node], "loop", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("kw, why", [
    ({"trip": None}, "Loop node 'loop'.*no trip count"),
    ({"trip_input": True}, "Loop node 'loop'.*trip count 'M' is computed at run time"),
    ({"trip": 3, "cond_out": "flip"}, "Loop node 'loop'.*continuation condition at run time"),
    ({"trip": 10 ** 6}, "Loop node 'loop'.*above the 4096 iterations"),
])
def test_loops_that_cannot_be_unrolled_are_refused(kw, why):
    with pytest.raises(UnsupportedModelError, match=why):
        lower(_loop_model(**kw), RULES.supports, ["x"], "y")


def test_loop_body_passing_its_input_through_unrolls():
    """A body whose condition output is its condition input, unchanged (torch writes this)."""
    model = _loop_model(trip=3, cond_out="cond_in")
    gg = differentiate(lower(model, RULES.supports, ["x"], "y"), RULES, wrt=["x"], output="y", seed=SeedSpec("tensor"))
    x = np.float32([0.3, -1.2])
    y, g = ort_run(gg.model, ["y", gg.grads["x"]], {"x": x, gg.seed_input: np.ones(2, np.float32)})
    s1, s2 = np.sin(x), np.sin(np.sin(x))
    np.testing.assert_allclose(y, np.sin(s2), rtol=1e-6)
    np.testing.assert_allclose(g, np.cos(s2) * np.cos(s1) * np.cos(x), rtol=1e-5)


def _if_model(then_shape, else_shape, x_shape=(2, 3)) -> onnx.ModelProto:
    def branch(name, shape):
        nodes = [helper.make_node("Reshape", ["x", f"{name}_shape"], [f"{name}_out"])]
        init = [numpy_helper.from_array(np.asarray(shape, np.int64), f"{name}_shape")]
        return helper.make_graph(nodes, name, [], [onnx.ValueInfoProto(name=f"{name}_out")], init)

    node = helper.make_node("If", ["c"], ["y"], name="if", then_branch=branch("then", then_shape),
                            else_branch=branch("else", else_shape))
    graph = helper.make_graph([node], "if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape)),
                                             helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [onnx.ValueInfoProto(name="y")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    model.ir_version = 8
    return model


def test_if_with_branches_of_different_shapes_is_refused():
    with pytest.raises(UnsupportedModelError, match="If node 'if'.*branches give output 0.*shape \\[3, 2\\].*\\[6\\]"):
        lower(_if_model([3, 2], [6]), RULES.supports, ["x"], "y")


def test_if_with_branches_whose_symbolic_shapes_differ_asks_for_input_shapes():
    with pytest.raises(NeedsShapesError, match="If node 'if'.*branches give output 0.*--input-shape"):
        lower(_if_model([3, 2], [-1, 3], x_shape=("a", "b")), RULES.supports, ["x"], "y")


def test_if_with_branches_of_one_shape_sends_gradient_to_the_taken_one_only():
    model = lower(_if_model([3, 2], [3, 2]), RULES.supports, ["x"], "y")
    assert "If" not in {n.op_type for n in model.graph.node}
    gg = differentiate(model, RULES, wrt=["x"], output="y", seed=SeedSpec("tensor"))
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    seed = np.arange(6, dtype=np.float32).reshape(3, 2) + 1
    for c in (True, False):  # both branches are the same reshape: the gradient is the seed, reshaped
        g = ort_run(gg.model, [gg.grads["x"]], {"x": x, "c": np.array(c), gg.seed_input: seed})[0]
        np.testing.assert_array_equal(g, seed.reshape(2, 3))


# -- whole torch models ----------------------------------------------------------------------------------
TOL = 1e-4


def rel(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def _export(module, args, names, dynamic_axes, opset) -> onnx.ModelProto:
    buf = io.BytesIO()
    torch.onnx.export(module, args, buf, input_names=names, output_names=["y"], dynamic_axes=dynamic_axes,
                      opset_version=opset, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def _onnx_gradients(model, feeds: dict, wrt: list[str], seed: np.ndarray, input_shapes: dict | None = None):
    """d<y, seed>/d(wrt) through lower + differentiate, run by onnxruntime."""
    if input_shapes:  # the fixed sequence length, written into the file's symbolic dims
        for vi in model.graph.input:
            for k, d in enumerate(input_shapes.get(vi.name, [])):
                if d is not None:
                    vi.type.tensor_type.shape.dim[k].dim_value = d
    lowered = lower(model, RULES.supports, wrt, "y")
    ops = {n.op_type for n in lowered.graph.node}
    assert not ops & {"LSTM", "GRU", "RNN", "Loop", "Scan", "If"}, ops
    gg = differentiate(lowered, RULES, wrt=wrt, output="y", seed=SeedSpec("tensor"))
    y, *grads = ort_run(gg.model, ["y"] + [gg.grads[w] for w in wrt], {**feeds, gg.seed_input: seed})
    return y, grads


def _torch_gradients(module, tensors: dict, seed: np.ndarray):
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in tensors.items()}
    y = module(*leaves.values())
    grads = torch.autograd.grad(y, list(leaves.values()), torch.tensor(seed))
    return y.detach().numpy(), [g.numpy() for g in grads]


class LSTMNet(nn.Module):
    """2-layer bidirectional batch-first LSTM whose initial states are inputs; returns the sequence
    through a linear head plus the final states' sum (so all three outputs are on the path)."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 5, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(10, 3)

    def forward(self, x, h0, c0):
        out, (h, c) = self.lstm(x, (h0, c0))
        return self.head(out) + (h.sum(0) + c.sum(0)).mean(-1)[:, None, None]


class GRUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 6, num_layers=2)

    def forward(self, x, h0):
        out, h = self.gru(x, h0)
        return torch.tanh(out) * 2 + h[-1]


@pytest.mark.parametrize("opset", [14, 17])
def test_torch_lstm_with_state_inputs(opset):
    torch.manual_seed(0)
    net = LSTMNet().eval()
    rng = np.random.default_rng(0)
    t = {"x": rng.standard_normal((3, 6, 4)).astype(np.float32), "h0": rng.standard_normal((4, 3, 5)).astype(np.float32),
         "c0": rng.standard_normal((4, 3, 5)).astype(np.float32)}
    dyn = {"x": {0: "batch", 1: "time"}, "h0": {1: "batch"}, "c0": {1: "batch"}, "y": {0: "batch"}}
    model = _export(net, tuple(torch.tensor(v) for v in t.values()), list(t), dyn, opset)
    assert "LSTM" in {n.op_type for n in model.graph.node}
    seed = rng.standard_normal((3, 6, 3)).astype(np.float32)
    y_ref, g_ref = _torch_gradients(net, t, seed)
    with pytest.raises(NeedsShapesError, match="sequence length"):
        _onnx_gradients(model, t, ["x", "h0", "c0"], seed)
    y, grads = _onnx_gradients(model, t, ["x", "h0", "c0"], seed, input_shapes={"x": [None, 6, 4]})
    assert rel(y, y_ref) <= TOL
    for name, a, b in zip(t, grads, g_ref):
        assert rel(a, b) <= TOL, name


def test_torch_gru_with_state_input():
    torch.manual_seed(1)
    net = GRUNet().eval()
    rng = np.random.default_rng(1)
    t = {"x": rng.standard_normal((5, 2, 4)).astype(np.float32), "h0": rng.standard_normal((2, 2, 6)).astype(np.float32)}
    dyn = {"x": {1: "batch"}, "h0": {1: "batch"}, "y": {1: "batch"}}
    model = _export(net, tuple(torch.tensor(v) for v in t.values()), list(t), dyn, 15)
    assert "GRU" in {n.op_type for n in model.graph.node}
    seed = rng.standard_normal((5, 2, 6)).astype(np.float32)
    y_ref, g_ref = _torch_gradients(net, t, seed)
    y, grads = _onnx_gradients(model, t, ["x", "h0"], seed)
    assert rel(y, y_ref) <= TOL
    for name, a, b in zip(t, grads, g_ref):
        assert rel(a, b) <= TOL, name


class LoopNet(nn.Module):
    """A scripted for-loop over the time axis (its length read from x's shape) with a carried state,
    exported by the TorchScript exporter as Loop."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 4)
        self.rec = nn.Linear(4, 4)

    def forward(self, x):
        h = torch.zeros(x.shape[0], 4)
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
        return h * 2.0


class BranchingLoopNet(nn.Module):
    """A scripted loop whose body holds an If on a condition computed from the carried state (the
    exporter unrolls loops of constant length itself: only run-time-looking ones stay Loops)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 4)
        self.rec = nn.Linear(4, 4)

    def forward(self, x):
        h = torch.zeros(x.shape[0], 4)
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            if bool(h.sum() > 0):
                h = h * torch.sigmoid(h)
            else:
                h = torch.sin(h) - 0.5
        return h


@pytest.mark.parametrize("net_cls, shape, dyn", [
    (LoopNet, (2, 5, 3), {"x": {0: "batch"}}),
    (BranchingLoopNet, (3, 6, 3), {"x": {0: "batch"}}),
])
def test_torch_scripted_loop(net_cls, shape, dyn):
    torch.manual_seed(2)
    net = torch.jit.script(net_cls().eval())
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(np.float32)
    model = _export(net, (torch.tensor(x),), ["x"], dyn, 16)
    assert "Loop" in {n.op_type for n in model.graph.node}
    y_ref = net(torch.tensor(x)).detach().numpy()
    seed = rng.standard_normal(y_ref.shape).astype(np.float32)
    _, (g_ref,) = _torch_gradients(net, {"x": x}, seed)
    y, (g,) = _onnx_gradients(model, {"x": x}, ["x"], seed)
    assert rel(y, y_ref) <= TOL
    assert rel(g, g_ref) <= TOL
