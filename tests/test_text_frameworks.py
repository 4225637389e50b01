"""Token scores from any framework (issue 16): a BERT exported from Keras (through tf2onnx) gets the
token scores of the same BERT exported from PyTorch.

`transformers` 5 has no TensorFlow classes, so the TensorFlow BERT is written in Keras
(tests/keras_bert.py) and loaded with the weights of a `transformers` BertForSequenceClassification
built from a tiny config (hidden 32, 2 layers, 2 heads, vocabulary 100, random weights with
initializer_range 0.2 and random LayerNorm scales and shifts, so every weight's mapping matters).

The two ONNX files compute the same function in different graphs: tf2onnx writes the embedding
lookups behind Keras' negative-index fix (tf.where(ids < 0, ids + vocab, ids) as Less/Not/Cast/Mul/
Add), each LayerNormalization decomposed (GlobalAveragePool for the moments, Sqrt, Reciprocal),
GELU as 1 − Erf (TensorFlow's Erfc, converters/tf2onnx_ops.py), Dense as MatMul + Add and `x[None]`
as Unsqueeze + a whole Slice; torch writes LayerNormalization, Gemm/MatMul and x·(1 + erf)/2.

1. The Keras model computes the torch model's logits (Keras itself and both ONNX files).
2. The embeddings are found automatically in both files (`wrt="embeddings"`: word, token-type and
   position lookups, their sum, the LayerNorm after it), and unit tests of the tf2onnx forms on
   hand-made graphs.
3. Agreement: Integrated Gradients (padding-token baseline ids, [CLS]/[SEP] kept, and a
   zero-embedding baseline; 16 Gauss-Legendre steps), gradient and input × gradient, from the word
   embeddings, their sum and the embedding block's LayerNorm output: the attributions
   [N, T, hidden] and the token scores (sums; norms) of the Keras export equal the torch export's,
   rel = max|keras − torch| / max|torch| <= TOL, on a batch whose second sentence is padded
   (attention mask zeros), with padding scores exactly 0 in both. Where a LayerNorm's invariance
   makes the per-token sums vanish (VANISHING_SUMS), both are checked to vanish instead.

TOL = 1e-4, as for Captum in tests/test_text.py: both files run in float32 in onnxruntime, so their
logits differ by float32 rounding of differently ordered sums (measured 7e-7); the gradient graph
of each file is built from its own forward graph, and a backward pass through 2 softmax attention
layers and 5 LayerNorms amplifies that rounding by the conditioning of the network, not by orders
of magnitude (measured: see the printed rel values, ~1e-6).

TensorFlow never enters this process (with torch's triton it can crash): one subprocess per module
runs tests/keras_bert.py while this process exports the torch model.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxsal
from onnxsal.text import embedding_output, embedding_sum, find_embeddings, token_scores, word_embeddings
from tests.test_text import Bert  # the logits of a BERT called on (ids, mask, token types)
from tests.tiny import rel

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4  # max|keras - torch| / max|torch|, attributions and token scores
LOGIT_TOL = 1e-5  # max|Δlogits|
N_STEPS = 16
HEADS = 2
TARGET = np.array([1, 2])
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
CLS, SEP, PAD = 2, 3, 0

needs_tf = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tf2onnx") is None
    or importlib.util.find_spec("keras") is None, reason="needs tensorflow, keras and tf2onnx (the 'tensorflow' extra)")


def token_batch() -> dict[str, np.ndarray]:
    """Two sequences of 12: a sentence pair (token types 0 then 1) and a single sentence padded
    after 7 tokens (attention mask 0 on the padding)."""
    ids = np.array([[CLS, 12, 40, 7, 33, 19, SEP, 25, 61, 9, 88, SEP],
                    [CLS, 54, 17, 70, 23, 45, SEP, PAD, PAD, PAD, PAD, PAD]], dtype=np.int64)
    mask = (ids != PAD).astype(np.int64)
    types = np.zeros_like(ids)
    types[0, 7:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def baseline_ids(ids) -> np.ndarray:
    """Every token replaced by [PAD] but [CLS] and [SEP] (Captum's tutorial baseline)."""
    return np.where(np.isin(ids, [CLS, SEP]), ids, PAD)


# ---------------------------------------------------------------------------------------------------
# the two exports, once per module


class Exports:
    def __init__(self, folder: Path, feeds, torch_logits, keras_logits):
        self.folder, self.feeds, self.torch_logits, self.keras_logits = folder, feeds, torch_logits, keras_logits
        self.torch = onnxsal.Explainer(str(folder / "torch_bert.onnx"), providers="cpu")
        self.keras = onnxsal.Explainer(str(folder / "keras_bert.onnx"), providers="cpu")
        self.baseline = baseline_ids(feeds["input_ids"])

    def both(self, **kw):
        return (self.keras.attribute(self.feeds, target=TARGET, **kw), self.torch.attribute(self.feeds, target=TARGET, **kw))


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Exports:
    """Builds the torch BERT, writes its weights, starts the Keras subprocess on them, exports the
    torch model meanwhile, and waits for the Keras export."""
    if needs_tf.args[0]:
        pytest.skip(needs_tf.kwargs["reason"])
    torch = pytest.importorskip("torch")
    tr = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("text_frameworks")
    start = time.perf_counter()
    torch.manual_seed(0)
    cfg = tr.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=HEADS,
                        intermediate_size=64, max_position_embeddings=32, initializer_range=0.2, num_labels=3,
                        attn_implementation="eager")
    model = tr.BertForSequenceClassification(cfg).eval()
    with torch.no_grad():  # LayerNorm scales and shifts away from 1 and 0, so their mapping is tested too
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.copy_(torch.rand_like(p) + 0.5 if name.endswith("weight") else 0.1 * torch.randn_like(p))
    np.savez(folder / "weights.npz", **{k: v.numpy() for k, v in model.state_dict().items()})
    feeds = token_batch()
    np.savez(folder / "inputs.npz", **{f"batch/{k}": v for k, v in feeds.items()})
    keras_side = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "keras_bert.py"), str(folder / "weights.npz"), str(folder / "inputs.npz"),
         str(folder), "--heads", str(HEADS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES=""))

    try:
        wrapper = Bert(model).eval()
        args = tuple(torch.from_numpy(feeds[k]) for k in INPUTS)
        axes = {n: {0: "batch", 1: "sequence"} for n in INPUTS}
        axes["logits"] = {0: "batch"}
        torch.onnx.export(wrapper, args, str(folder / "torch_bert.onnx"), input_names=list(INPUTS),
                          output_names=["logits"], dynamic_axes=axes, opset_version=17, dynamo=False,
                          do_constant_folding=True)
        with torch.no_grad():
            torch_logits = wrapper(*args).numpy()
        _, stderr = keras_side.communicate(timeout=600)
    finally:
        if keras_side.poll() is None:
            keras_side.kill()
            keras_side.wait()
    assert keras_side.returncode == 0, stderr[-3000:]
    with np.load(folder / "keras_bert_logits.npz") as data:
        keras_logits = data["batch"]
    print(f"\ntorch export + Keras subprocess: {time.perf_counter() - start:.1f} s")
    return Exports(folder, feeds, torch_logits, keras_logits)


# ---------------------------------------------------------------------------------------------------
# 1. the same network


@needs_tf
def test_keras_bert_computes_the_torch_logits(exports):
    keras_onnx = exports.keras.predict(exports.feeds)
    torch_onnx = exports.torch.predict(exports.feeds)
    d_keras = float(np.abs(exports.keras_logits - exports.torch_logits).max())
    d_onnx = float(np.abs(keras_onnx - torch_onnx).max())
    print(f"\nmax|Δlogits|: Keras vs torch {d_keras:.1e}; the two ONNX files {d_onnx:.1e} "
          f"(logits up to {np.abs(exports.torch_logits).max():.2f})")
    assert d_keras <= LOGIT_TOL and d_onnx <= LOGIT_TOL
    assert float(np.abs(keras_onnx - exports.keras_logits).max()) <= LOGIT_TOL  # the export is Keras' model
    # the padding matters: changing the padded ids would change nothing, unmasking them does
    unmasked = dict(exports.feeds, attention_mask=np.ones_like(exports.feeds["attention_mask"]))
    assert np.abs(exports.keras.predict(unmasked)[1] - keras_onnx[1]).max() > 1e-3


@needs_tf
def test_the_two_exports_differ_and_both_embeddings_are_found(exports):
    keras_ops = {n.op_type for n in exports.keras.model.graph.node}
    torch_ops = {n.op_type for n in exports.torch.model.graph.node}
    assert "LayerNormalization" in torch_ops and "LayerNormalization" not in keras_ops  # tf2onnx decomposes it
    assert {"Less", "Not"} <= keras_ops  # Keras' negative-index fix in front of each lookup
    for ex in (exports.keras, exports.torch):
        found = find_embeddings(ex.model)
        by_ids = {e.ids: e for e in found if e.ids is not None}
        assert set(by_ids) == {"input_ids", "token_type_ids"}, found
        assert (by_ids["input_ids"].vocab, by_ids["token_type_ids"].vocab) == (100, 2)
        assert [e.vocab for e in found if e.ids is None] == [32]  # positions, computed inside the graph
        assert word_embeddings(ex.model) == by_ids["input_ids"]
        view = ex.view
        total = view.producer[embedding_sum(ex.model)]
        assert total.op_type == "Add"  # word + position + token type
        # the block's output: torch's LayerNormalization; in the Keras file the last op of the LayerNorm
        # written out (x·inv + (beta − mean·inv)), whose ops all lie between the sum and it
        out = view.producer[embedding_output(ex.model)]
        assert out.op_type == ("Add" if ex is exports.keras else "LayerNormalization")
        # the gradient at the sum is the gradient at the word embeddings (the sum is found right)
        at_sum = ex.attribute(exports.feeds, target=TARGET, wrt="embeddings:sum")
        at_word = ex.attribute(exports.feeds, target=TARGET, wrt="embeddings")
        np.testing.assert_allclose(at_sum, at_word, rtol=1e-5, atol=1e-6 * np.abs(at_word).max())


# ---------------------------------------------------------------------------------------------------
# 2. the same token scores

CASES = [  # (method, IG baseline)
    ("integrated_gradients", "pad"),
    ("integrated_gradients", "zeros"),
    ("gradient", None),
    ("input_x_gradient", None),
]
# LayerNorm(x) does not change when x is shifted along the hidden axis, nor (eps 1e-12) when it is
# scaled, and the embedding sum x feeds one. So at x the per-token sums of some attributions vanish
# exactly: Σ_h ∂F/∂x_h = 0 (the gradient, also at the word embeddings, whose gradient is x's),
# Σ_h x_h ∂F/∂x_h = 0 (input × gradient at x), and IG at x from zeros integrates along α·x, where F
# is constant. There the signed token scores of either export are rounding noise: the test checks
# that they vanish in both (|Σ| <= SUM_NOISE × the largest token norm) and compares the norms.
VANISHING_SUMS = {("gradient", None, "embeddings"), ("gradient", None, "embeddings:sum"),
                  ("input_x_gradient", None, "embeddings:sum"), ("integrated_gradients", "zeros", "embeddings:sum")}
SUM_NOISE = 1e-5


@needs_tf
@pytest.mark.parametrize("wrt", ["embeddings", "embeddings:sum", "embeddings:output"])
@pytest.mark.parametrize("method,baseline", CASES, ids=[f"{m}-{b}" if b else m for m, b in CASES])
def test_keras_and_torch_exports_get_the_same_token_scores(exports, method, baseline, wrt):
    options = {}
    if method == "integrated_gradients":
        options = {"n_steps": N_STEPS, "return_convergence_delta": True,
                   "baselines": {"input_ids": exports.baseline} if baseline == "pad" else None}
    ours, theirs = exports.both(method=method, wrt=wrt, **options)
    if method == "integrated_gradients":
        (ours, keras_delta), (theirs, torch_delta) = ours, theirs
        np.testing.assert_allclose(keras_delta, torch_delta, atol=1e-4)
    assert ours.shape == exports.feeds["input_ids"].shape + (32,)
    mask = exports.feeds["attention_mask"]
    keras_scores, torch_scores = token_scores(ours, mask=mask), token_scores(theirs, mask=mask)
    keras_norms, torch_norms = token_scores(ours, "norm", mask=mask), token_scores(theirs, "norm", mask=mask)
    r_attr, r_norms = rel(ours, theirs), rel(keras_norms, torch_norms)
    sums = [float(np.abs(sc).max() / np.abs(nm).max()) for sc, nm in ((keras_scores, keras_norms), (torch_scores, torch_norms))]
    vanishing = (method, baseline, wrt) in VANISHING_SUMS
    r_scores = None if vanishing else rel(keras_scores, torch_scores)
    print(f"\n{method}{f' ({baseline} baseline)' if baseline else ''} wrt {wrt}: attribution rel {r_attr:.1e}, token "
          + (f"sums vanish (max|sum|/max norm: keras {sums[0]:.1e}, torch {sums[1]:.1e})" if vanishing
             else f"scores rel {r_scores:.1e}") + f", token norms rel {r_norms:.1e}")
    assert r_attr <= TOL and r_norms <= TOL
    if vanishing:
        assert max(sums) <= SUM_NOISE
    else:
        assert min(sums) > 1e-2 and r_scores <= TOL
    assert np.all(ours[mask == 0] == 0) and np.all(theirs[mask == 0] == 0)  # padding gets nothing in both
    moved = exports.feeds["input_ids"] != exports.baseline  # the tokens IG from the pad baseline can score
    assert np.count_nonzero(torch_norms) >= np.count_nonzero(moved) > 0


@needs_tf
def test_keras_exact_gelu_exports_through_the_erfc_handler(exports):
    """Keras' activation='gelu' (exact) is 0.5·x·erfc(−x/√2) in TensorFlow: without
    converters/tf2onnx_ops.py tf2onnx leaves an Erfc node ONNX rejects; with it, 1 − Erf."""
    import onnxruntime as ort

    model = onnx.load(str(exports.folder / "gelu.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "Erfc" not in ops and "Erf" in ops
    with np.load(exports.folder / "gelu.npz") as data:
        x, y = data["x"], data["y"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {model.graph.input[0].name: x})[0]
    assert float(np.abs(got - y).max()) <= 1e-5 * 12  # |x| <= 12
    from math import erf, sqrt

    exact = np.array([0.5 * v * (1 + erf(v / sqrt(2))) for v in x[0].astype(np.float64)])
    assert float(np.abs(got[0] - exact).max()) <= 1e-5 * 12


# ---------------------------------------------------------------------------------------------------
# 3. tf2onnx's embedding forms on hand-made graphs (no TensorFlow needed)


def _keras_like_graph(index_fix: bool = True, whole_slice: bool = True, mixed: bool = False, norm: str | None = None,
                      residual: bool = False) -> onnx.ModelProto:
    """ids -> [Keras' index fix] -> Gather(word table); positions Range -> Gather(position table) ->
    Unsqueeze -> [whole Slice]; sum -> [LayerNorm written out: `norm` "sqrt" as tf2onnx writes
    Keras', "pow" with Pow(·, 0.5)] -> [`residual`: + sum, as GPT-2's blocks] -> Relu -> summed per
    sample [N, 1]. `mixed`: the word ids are ids + other (two inputs), no token ids of one input."""
    v, h = 10, 4
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(v, h)).astype(np.float32), "word_table"),
             numpy_helper.from_array(rng.normal(size=(6, h)).astype(np.float32), "pos_table"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array(v, np.int64), "vocab"),
             numpy_helper.from_array(np.array(1, np.int64), "one"), numpy_helper.from_array(np.array([0], np.int64), "axis0"),
             numpy_helper.from_array(np.array([0], np.int32), "starts"),
             numpy_helper.from_array(np.array([1000000000], np.int32), "ends")]
    nodes = []
    ids = "ids"
    if mixed:
        nodes.append(helper.make_node("Add", ["ids", "other"], ["mixed"]))
        ids = "mixed"
    if index_fix:  # Cast(Less(ids, 0)) * (ids + vocab) + Cast(Not(Less(ids, 0))) * ids
        nodes += [helper.make_node("Less", [ids, "zero"], ["neg"]), helper.make_node("Not", ["neg"], ["nonneg"]),
                  helper.make_node("Cast", ["neg"], ["neg_i"], to=TensorProto.INT64),
                  helper.make_node("Cast", ["nonneg"], ["pos_i"], to=TensorProto.INT64),
                  helper.make_node("Add", [ids, "vocab"], ["wrapped"]),
                  helper.make_node("Mul", ["neg_i", "wrapped"], ["a"]), helper.make_node("Mul", ["pos_i", ids], ["b"]),
                  helper.make_node("Add", ["a", "b"], ["fixed"])]
        ids = "fixed"
    nodes += [helper.make_node("Gather", ["word_table", ids], ["word"]),
              helper.make_node("Shape", ["ids"], ["shape"]),
              helper.make_node("Gather", ["shape", "one"], ["length"], axis=0),
              helper.make_node("Range", ["zero", "length", "one"], ["positions"]),
              helper.make_node("Gather", ["pos_table", "positions"], ["pos"]),
              helper.make_node("Unsqueeze", ["pos", "axis0"], ["pos1"])]
    pos = "pos1"
    if whole_slice:
        nodes.append(helper.make_node("Slice", ["pos1", "starts", "ends", "starts"], ["pos_sliced"]))
        pos = "pos_sliced"
    nodes.append(helper.make_node("Add", ["word", pos], ["sum"]))
    last = "sum"
    if norm:  # mean, squared difference, variance, 1/sqrt(var + eps), scale, shift
        nodes += [helper.make_node("ReduceMean", ["sum"], ["mean"], axes=[-1]),
                  helper.make_node("Sub", ["sum", "mean"], ["centred"]),
                  helper.make_node("Mul", ["centred", "centred"], ["squared"]),
                  helper.make_node("ReduceMean", ["squared"], ["var"], axes=[-1]),
                  helper.make_node("Add", ["var", "eps"], ["var_eps"]),
                  helper.make_node("Sqrt", ["var_eps"], ["std"]) if norm == "sqrt"
                  else helper.make_node("Pow", ["var_eps", "half"], ["std"]),
                  helper.make_node("Reciprocal", ["std"], ["inv"]), helper.make_node("Mul", ["centred", "inv"], ["unit"]),
                  helper.make_node("Mul", ["unit", "gamma"], ["scaled"]),
                  helper.make_node("Add", ["scaled", "beta"], ["normed"])]
        inits += [numpy_helper.from_array(np.array(1e-12, np.float32), "eps"),
                  numpy_helper.from_array(np.array(0.5, np.float32), "half"),
                  numpy_helper.from_array(rng.uniform(0.5, 1.5, h).astype(np.float32), "gamma"),
                  numpy_helper.from_array(rng.normal(size=h).astype(np.float32), "beta")]
        last = "normed"
    if residual:
        nodes += [helper.make_node("MatMul", [last, "w"], ["mixed_h"]), helper.make_node("Add", ["sum", "mixed_h"], ["res"])]
        inits.append(numpy_helper.from_array(rng.normal(size=(h, h)).astype(np.float32), "w"))
        last = "res"
    nodes += [helper.make_node("Relu", [last], ["r"]),
              helper.make_node("ReduceSum", ["r", "axes12"], ["y"], keepdims=0),
              helper.make_node("Unsqueeze", ["y", "axis1"], ["out"])]
    inits += [numpy_helper.from_array(np.array([1, 2], np.int64), "axes12"),
              numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "T"])]
    if mixed:
        inputs.append(helper.make_tensor_value_info("other", TensorProto.INT64, ["N", "T"]))
    graph = helper.make_graph(nodes, "keras_like", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 1])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_lookup_behind_keras_negative_index_fix_is_found():
    model = _keras_like_graph()
    onnx.checker.check_model(model)
    word = word_embeddings(model)
    assert (word.output, word.table, word.ids, word.vocab) == ("word", "word_table", "ids", 10)
    assert [e.ids for e in find_embeddings(model) if e.table == "pos_table"] == [None]  # a Range is no token ids
    assert embedding_sum(model) == "sum"  # the position lookup reached through Unsqueeze + whole Slice


def test_whole_slice_only_is_a_carrier():
    assert embedding_sum(_keras_like_graph(whole_slice=False)) == "sum"
    model = _keras_like_graph()
    for init in model.graph.initializer:
        if init.name == "ends":  # a Slice that keeps only part of the position table is no lookup any more
            init.CopyFrom(numpy_helper.from_array(np.array([0], np.int32), "ends"))
    assert embedding_sum(model) == "word"


def test_layer_norm_written_out_is_the_embedding_output():
    """tf2onnx writes Keras' LayerNormalization in elementary ops: `embeddings:output` is its output."""
    assert embedding_output(_keras_like_graph()) == "sum"  # nothing normalises the sum
    for root in ("sqrt", "pow"):
        model = _keras_like_graph(norm=root)
        onnx.checker.check_model(model)
        assert embedding_output(model) == "normed" and embedding_sum(model) == "sum"
    # a residual branch around the normalisation (GPT-2's blocks): the block's output is the sum
    assert embedding_output(_keras_like_graph(norm="sqrt", residual=True)) == "sum"
    assert embedding_output(_keras_like_graph(residual=True)) == "sum"


def test_ids_mixed_from_two_inputs_are_not_token_ids():
    """Index arithmetic is followed only when a single integer input (and constants) feed it."""
    found = find_embeddings(_keras_like_graph(mixed=True))
    assert [e.ids for e in found if e.table == "word_table"] == [None]
    with pytest.raises(onnxsal.UnsupportedModelError, match="no embedding lookup"):
        word_embeddings(_keras_like_graph(mixed=True))
    assert word_embeddings(_keras_like_graph(index_fix=False)).ids == "ids"


def test_keras_like_graph_is_explained_from_its_embeddings():
    """The graph runs, and onnxsal explains it from the word embeddings found behind the index fix."""
    model = _keras_like_graph()
    ids = np.array([[1, 9, 3], [4, 0, 7]], dtype=np.int64)
    ex = onnxsal.Explainer(model, providers="cpu")
    grad = ex.attribute({"ids": ids}, target=0, method="gradient", wrt="embeddings")
    assert grad.shape == (2, 3, 4)
    tables = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    summed = tables["word_table"][ids] + tables["pos_table"][:3][None]
    np.testing.assert_array_equal(grad, (summed > 0).astype(np.float32))  # d sum(relu(s)) / d word = 1[s > 0]
