"""Token models explained from their embeddings, against Captum, and the text CLI.

Models: BERT and DistilBERT sequence classifiers built from tiny `transformers` configs (hidden 32,
2 layers, 2 heads, vocabulary 100) with random weights (initializer_range 0.2, so that attention
and GELU work away from their linear regime), exported once per module with torch's TorchScript
exporter (opset 17, batch and sequence dynamic), and a sentence-embedding model (BERT, masked
mean pooling, L2 normalisation). Inputs: two sentences encoded by a WordPiece tokenizer built in
memory and saved as tokenizer.json; the second is shorter, so it is padded and its attention
mask holds zeros.

1. Embedding detection: word, token-type and position lookups; their sum; the block's output.
2. Agreement with Captum, rel = max|ours - captum| / max|captum| <= 1e-4:
   LayerIntegratedGradients (Gauss-Legendre, same n_steps) on the word embeddings and on the whole
   embedding block (`model.bert.embeddings`, summed + LayerNormed), with the padding-token baseline
   ([CLS] and [SEP] kept, as the Captum tutorial builds it); IntegratedGradients on inputs_embeds
   with zero and given baselines; LayerGradientXActivation with and without multiplying by the
   activation (gradient, input x gradient); a sentence-embedding dimension as the target; GPT-2's
   next-token logit as a seed tensor; SmoothGrad's noise added to the embeddings (autograd).
3. Token scores: they sum to F(x) - F(baseline) for Integrated Gradients; padding scores 0.
4. The CLI: `onnxsal explain MODEL --text ... --tokenizer tokenizer.json -o DIR` writes the HTML
   page, the PNG and the scores, which are the library's; bad tokenizer files and missing
   options are one sentence and exit 2, with nothing written.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # torch before anything that may import TensorFlow
tr = pytest.importorskip("transformers")
captum_attr = pytest.importorskip("captum.attr")
tokenizers = pytest.importorskip("tokenizers")

import onnxsal  # noqa: E402
from onnxsal.cli import main  # noqa: E402
from onnxsal.errors import InvalidInputError  # noqa: E402
from onnxsal.text import (embedding_output, embedding_sum, encode, explain_text, find_embeddings, load_tokenizer,  # noqa: E402
                          logit_seed, reference_ids, similarity_seed, token_scores, tokens_html, word_embeddings,
                          TokenRow)
from tests.tiny import rel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4
N_STEPS = 16
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ("the a movie film was is not very good bad great boring plot acting story and but i it this loved hated "
         "really quite funny dull actors music ending long short best worst").split()
PIECES = ["##s", "##ed", "##ing", "##ly"]
SENTENCES = ["the movie was not very good but the acting was great", "i loved this film"]


def vocabulary() -> dict[str, int]:
    tokens = SPECIALS + WORDS + PIECES
    tokens += [f"tok{i}" for i in range(100 - len(tokens))]
    return {t: i for i, t in enumerate(tokens)}


def build_tokenizer():
    """A BERT-style WordPiece tokenizer: lower-casing, [CLS] ... [SEP], [PAD] = 0."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    vocab = vocabulary()
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return tok


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("text")


@pytest.fixture(scope="module")
def tokenizer_file(folder) -> Path:
    path = folder / "tokenizer.json"
    build_tokenizer().save(str(path))
    return path


@pytest.fixture(scope="module")
def encoded(tokenizer_file):
    enc = encode(load_tokenizer(tokenizer_file), SENTENCES)
    assert enc.mask[1].sum() < enc.mask.shape[1], "the second sentence must be padded"
    return enc


def export(module, args, names, path: Path) -> Path:
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["out"] = {0: "batch"}
    torch.onnx.export(module, args, str(path), input_names=list(names), output_names=["out"], dynamic_axes=axes,
                      opset_version=17, dynamo=False, do_constant_folding=True)
    return path


class Bert(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


class Distil(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits


class SentenceEmbedding(torch.nn.Module):
    """A sentence-transformers style encoder: masked mean of BERT's last hidden states, L2-normalised."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * m).sum(1) / m.sum(1)
        return torch.nn.functional.normalize(mean, dim=-1)


class Case:
    """One exported model: the torch module (for Captum), its ONNX file, an Explainer, the feeds."""

    def __init__(self, name, torch_model, wrapper, names, encoded, folder, layers):
        self.name, self.model, self.names, self.layers = name, torch_model, names, layers
        self.feeds = {"input_ids": encoded.ids, "attention_mask": encoded.mask,
                      "token_type_ids": np.zeros_like(encoded.ids)}
        self.feeds = {k: self.feeds[k] for k in names}
        self.torch_args = tuple(torch.from_numpy(self.feeds[k]) for k in names)
        self.path = export(wrapper.eval(), self.torch_args, names, folder / f"{name}.onnx")
        wrapper.eval()
        self.forward = wrapper
        self.ex = onnxsal.Explainer(self.path, providers="cpu")
        self.special = encoded.special
        self.baseline_ids = np.where(encoded.special, encoded.ids, 0)  # [CLS]/[SEP]/padding kept, the rest [PAD]

    def extra(self):
        return self.torch_args[1:]


def tiny_bert_config(**kw):
    return tr.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=32, initializer_range=0.2, attn_implementation="eager", **kw)


@pytest.fixture(scope="module")
def bert(encoded, folder) -> Case:
    torch.manual_seed(0)
    model = tr.BertForSequenceClassification(tiny_bert_config(num_labels=3)).eval()
    emb = model.bert.embeddings
    return Case("bert", model, Bert(model), ["input_ids", "attention_mask", "token_type_ids"], encoded, folder,
                {"embeddings": emb.word_embeddings, "embeddings:output": emb})


@pytest.fixture(scope="module")
def distilbert(encoded, folder) -> Case:
    torch.manual_seed(1)
    cfg = tr.DistilBertConfig(vocab_size=100, max_position_embeddings=32, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                              num_labels=3, initializer_range=0.2, attn_implementation="eager")
    model = tr.DistilBertForSequenceClassification(cfg).eval()
    emb = model.distilbert.embeddings
    return Case("distilbert", model, Distil(model), ["input_ids", "attention_mask"], encoded, folder,
                {"embeddings": emb.word_embeddings, "embeddings:output": emb})


@pytest.fixture(scope="module")
def sentence(encoded, folder) -> Case:
    torch.manual_seed(2)
    bert = tr.BertModel(tiny_bert_config(), add_pooling_layer=False).eval()
    wrapper = SentenceEmbedding(bert)
    return Case("sentence", bert, wrapper, ["input_ids", "attention_mask", "token_type_ids"], encoded, folder,
                {"embeddings": bert.embeddings.word_embeddings, "embeddings:output": bert.embeddings})


@pytest.fixture(params=["bert", "distilbert"])
def case(request) -> Case:
    return request.getfixturevalue(request.param)


TARGET = np.array([1, 2])


# ---------------------------------------------------------------------------------------- detection


def test_embeddings_found_in_bert(bert):
    found = {e.output: e for e in find_embeddings(bert.ex.model)}
    by_table = {e.table.split(".")[-2]: e for e in found.values()}
    assert set(by_table) == {"word_embeddings", "token_type_embeddings", "position_embeddings"}
    assert by_table["word_embeddings"].ids == "input_ids" and by_table["word_embeddings"].vocab == 100
    assert by_table["token_type_embeddings"].ids == "token_type_ids"
    assert by_table["position_embeddings"].ids is None  # computed inside the graph
    assert word_embeddings(bert.ex.model) == by_table["word_embeddings"]
    view = bert.ex.view
    ln = view.producer[embedding_output(bert.ex.model)]
    assert ln.op_type == "LayerNormalization" and ln.input[0] == embedding_sum(bert.ex.model)
    assert view.producer[embedding_sum(bert.ex.model)].op_type == "Add"


def test_embeddings_found_in_distilbert(distilbert):
    found = find_embeddings(distilbert.ex.model)
    assert sorted(e.table.split(".")[-2] for e in found) == ["position_embeddings", "word_embeddings"]
    assert distilbert.ex.view.producer[embedding_output(distilbert.ex.model)].op_type == "LayerNormalization"


def test_inspect_lists_the_embeddings_and_explains_from_them(bert):
    from onnxsal.inspection import format_report, inspect_model

    report = inspect_model(bert.path)
    assert report.differentiable and report.explained_input == word_embeddings(bert.ex.model).output
    assert {e["ids"] for e in report.embeddings} == {"input_ids", "token_type_ids", None}
    assert "embedding lookups" in format_report(report)
    assert inspect_model(bert.path, wrt="embeddings:output").explained_input == embedding_output(bert.ex.model)


def test_token_model_is_explained_from_its_embeddings_by_default(bert):
    """No float input: Explainer.attribute explains the word embeddings, batch on the token ids."""
    default = bert.ex.attribute(bert.feeds, target=TARGET)
    named = bert.ex.attribute(bert.feeds, target=TARGET, wrt="embeddings")
    inner = bert.ex.attribute(bert.feeds, target=TARGET, wrt=word_embeddings(bert.ex.model).output)
    assert default.shape == bert.feeds["input_ids"].shape + (32,)
    np.testing.assert_array_equal(default, named)
    np.testing.assert_array_equal(default, inner)
    one = bert.ex.attribute({k: v[1:] for k, v in bert.feeds.items()}, target=TARGET[1:])
    np.testing.assert_allclose(one, default[1:], rtol=1e-5, atol=1e-7)  # the batch axis is the ids'


def test_gradient_at_the_sum_is_the_gradient_at_the_word_embeddings(case):
    """word + position (+ token type) = sum: d F / d sum = d F / d word embeddings."""
    at_sum = case.ex.attribute(case.feeds, target=TARGET, wrt="embeddings:sum")
    at_word = case.ex.attribute(case.feeds, target=TARGET, wrt="embeddings")
    np.testing.assert_allclose(at_sum, at_word, rtol=1e-5, atol=1e-6 * np.abs(at_word).max())
    assert case.ex.view.producer[embedding_sum(case.ex.model)].op_type == "Add"


def test_integrated_gradients_of_an_inner_tensor_from_a_multi_output_node():
    """The cut keeps a Split whose other output is still read; IG of sum(a^2) from 0 is a^2."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2),
             helper.make_node("Mul", ["a", "a"], ["aa"]), helper.make_node("Concat", ["aa", "b"], ["c"], axis=1),
             helper.make_node("ReduceSum", ["c", "axes"], ["y"], keepdims=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
                              [helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    ex = onnxsal.Explainer(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), providers="cpu")
    x = np.array([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.0, 0.0]], np.float32)
    attr, delta = ex.attribute(x, target=0, method="integrated_gradients", wrt="a", n_steps=8, return_convergence_delta=True)
    np.testing.assert_allclose(attr, x[:, :2] ** 2, rtol=1e-6)
    np.testing.assert_allclose(delta, 0, atol=1e-6)


def test_integer_model_without_embeddings_is_one_sentence():
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Cast", ["ids"], ["y"], to=TensorProto.FLOAT)], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    ex = onnxsal.Explainer(model, providers="cpu")
    with pytest.raises(InvalidInputError, match="no float input and no embedding lookup"):
        ex.attribute(np.zeros((1, 4), dtype=np.int64))
    with pytest.raises(onnxsal.UnsupportedModelError, match="no embedding lookup"):
        ex.attribute(np.zeros((1, 4), dtype=np.int64), wrt="embeddings")


# ---------------------------------------------------------------------------------------- against Captum


def captum_target():
    return torch.from_numpy(TARGET)


@pytest.mark.parametrize("wrt", ["embeddings", "embeddings:output"])
def test_integrated_gradients_pad_baseline_match_layer_integrated_gradients(case, wrt):
    """LayerIntegratedGradients on the word embeddings / the embedding block, baseline: the ids
    with every non-special token replaced by [PAD], run through the same embeddings."""
    ours, delta = case.ex.attribute(case.feeds, target=TARGET, method="integrated_gradients", wrt=wrt, n_steps=N_STEPS,
                                    baselines={"input_ids": case.baseline_ids}, return_convergence_delta=True)
    lig = captum_attr.LayerIntegratedGradients(case.forward, case.layers[wrt])
    theirs, their_delta = lig.attribute(case.torch_args[0], baselines=torch.from_numpy(case.baseline_ids),
                                        additional_forward_args=case.extra(), target=captum_target(), n_steps=N_STEPS,
                                        method="gausslegendre", return_convergence_delta=True)
    r = rel(ours, theirs.detach())
    print(f"\n{case.name} IG wrt {wrt} (pad baseline, {N_STEPS} Gauss-Legendre steps): rel {r:.2e}")
    assert r <= TOL
    np.testing.assert_allclose(delta, their_delta.detach().numpy(), atol=1e-4)
    # a plain integer array is taken as baseline ids too
    again = case.ex.attribute(case.feeds, target=TARGET, method="integrated_gradients", wrt=wrt, n_steps=N_STEPS,
                              baselines=case.baseline_ids)
    np.testing.assert_array_equal(again, ours)


@pytest.mark.parametrize("baseline", ["zeros", "given"])
def test_integrated_gradients_embedding_baselines_match_captum(case, baseline):
    """Zero and given embedding baselines: Captum's IntegratedGradients on inputs_embeds."""
    n, t = case.feeds["input_ids"].shape
    given = None if baseline == "zeros" else np.random.default_rng(3).normal(0, 0.2, (n, t, 32)).astype(np.float32)
    ours = case.ex.attribute(case.feeds, target=TARGET, method="integrated_gradients", n_steps=N_STEPS, baselines=given)
    word = case.layers["embeddings"]
    embeds = word(case.torch_args[0]).detach()

    def forward(e, *rest):
        kw = dict(zip(case.names[1:], rest))
        return case.model(inputs_embeds=e, **kw).logits

    ig = captum_attr.IntegratedGradients(forward)
    theirs = ig.attribute(embeds, baselines=None if given is None else torch.from_numpy(given), target=captum_target(),
                          additional_forward_args=case.extra(), n_steps=N_STEPS, method="gausslegendre")
    r = rel(ours, theirs.detach())
    print(f"\n{case.name} IG ({baseline} embedding baseline): rel {r:.2e}")
    assert r <= TOL


@pytest.mark.parametrize("wrt", ["embeddings", "embeddings:output"])
@pytest.mark.parametrize("method", ["gradient", "input_x_gradient"])
def test_gradient_and_input_x_gradient_match_layer_gradient_x_activation(case, wrt, method):
    ours = case.ex.attribute(case.feeds, target=TARGET, method=method, wrt=wrt)
    layer = captum_attr.LayerGradientXActivation(case.forward, case.layers[wrt],
                                                 multiply_by_inputs=method == "input_x_gradient")
    theirs = layer.attribute(case.torch_args[0], additional_forward_args=case.extra(), target=captum_target())
    r = rel(ours, theirs.detach())
    print(f"\n{case.name} {method} wrt {wrt}: rel {r:.2e}")
    assert r <= TOL


def test_sentence_embedding_dimension_as_target(sentence):
    """A sentence-embedding model [N, 32]: a dimension of the normalised embedding is the target."""
    dims = np.array([5, 17])
    ours = sentence.ex.attribute(sentence.feeds, target=dims, method="integrated_gradients", n_steps=N_STEPS,
                                 baselines=sentence.baseline_ids)
    lig = captum_attr.LayerIntegratedGradients(sentence.forward, sentence.layers["embeddings"])
    theirs = lig.attribute(sentence.torch_args[0], baselines=torch.from_numpy(sentence.baseline_ids),
                           additional_forward_args=sentence.extra(), target=torch.from_numpy(dims), n_steps=N_STEPS,
                           method="gausslegendre")
    r = rel(ours, theirs.detach())
    print(f"\nsentence embedding, dims {dims.tolist()}: IG rel {r:.2e}")
    assert r <= TOL


def test_dynamo_export_is_explained_the_same(bert, folder):
    """torch's newer exporter (torch.export, opset 20) names and orders the graph differently; the
    embeddings are found there too and Integrated Gradients still matches LayerIntegratedGradients."""
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=32)
    axes = {name: {0: batch, 1: seq} for name in bert.names}
    program = torch.onnx.export(bert.forward, bert.torch_args, dynamo=True, dynamic_shapes=axes, input_names=bert.names,
                                output_names=["out"], verbose=False)
    program.save(str(folder / "bert_dynamo.onnx"))
    bert.forward.eval()
    ex = onnxsal.Explainer(folder / "bert_dynamo.onnx", providers="cpu")
    assert word_embeddings(ex.model).table == "inner.bert.embeddings.word_embeddings.weight"
    for wrt in ("embeddings", "embeddings:output"):
        ours = ex.attribute(bert.feeds, target=TARGET, method="integrated_gradients", wrt=wrt, n_steps=N_STEPS,
                            baselines=bert.baseline_ids)
        lig = captum_attr.LayerIntegratedGradients(bert.forward, bert.layers[wrt])
        theirs = lig.attribute(bert.torch_args[0], baselines=torch.from_numpy(bert.baseline_ids),
                               additional_forward_args=bert.extra(), target=captum_target(), n_steps=N_STEPS)
        r = rel(ours, theirs.detach())
        print(f"\nbert (dynamo export) IG wrt {wrt}: rel {r:.2e}")
        assert r <= TOL


@pytest.mark.parametrize("wrt", ["embeddings", "embeddings:output"])
def test_compiled_integrated_gradients_over_the_embeddings(case, wrt):
    """`onnxsal.compile(..., wrt="embeddings", baselines="ids")`: one ONNX graph taking the token ids,
    the mask and the baseline ids, with the IG steps stacked inside; it gives the Explainer's numbers."""
    import onnx
    import onnxruntime as ort

    graph = onnxsal.compile(case.path, method="integrated_gradients", wrt=wrt, target="target", baselines="ids",
                            n_steps=N_STEPS)
    assert {n.domain for n in graph.graph.node} <= {"", "ai.onnx"}
    onnx.checker.check_model(graph)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == case.names + ["target", "baseline_input_ids"]
    outs = session.run(None, dict(case.feeds, target=TARGET, baseline_input_ids=case.baseline_ids))
    ours = case.ex.attribute(case.feeds, target=TARGET, method="integrated_gradients", wrt=wrt, n_steps=N_STEPS,
                             baselines=case.baseline_ids)
    np.testing.assert_allclose(outs[0], case.ex.predict(case.feeds), rtol=1e-5, atol=1e-6)  # the model's logits first
    r = rel(outs[-1], ours)
    print(f"\n{case.name} compiled IG wrt {wrt} vs Explainer: rel {r:.2e}")
    assert r <= 1e-5
    zeros = onnxsal.compile(case.path, method="integrated_gradients", wrt=wrt, target="target", n_steps=N_STEPS)
    out = ort.InferenceSession(zeros.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, dict(case.feeds, target=TARGET))[-1]
    assert rel(out, case.ex.attribute(case.feeds, target=TARGET, method="integrated_gradients", wrt=wrt,
                                      n_steps=N_STEPS)) <= 1e-5


def test_compiled_smoothgrad_over_the_embeddings(bert):
    import onnxruntime as ort

    shapes = {name: [None, bert.feeds[name].shape[1]] for name in bert.names}  # the noise needs the sample shape
    graph = onnxsal.compile(bert.path, method="smoothgrad", wrt="embeddings", target="target", n_samples=4,
                            input_shapes=shapes)
    out = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, dict(bert.feeds, target=TARGET))[-1]
    assert rel(out, bert.ex.attribute(bert.feeds, target=TARGET, method="smoothgrad", n_samples=4)) <= 1e-5


class LanguageModel(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits


def test_generated_token_logit_as_target(folder):
    """GPT-2 (a language model, output [N, T, vocab]): the logit of a next token at the last position,
    given as a seed tensor (`logit_seed`), against LayerIntegratedGradients on `wte` explaining
    logits[:, -1, token]."""
    torch.manual_seed(3)
    cfg = tr.GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=2, initializer_range=0.2,
                        attn_implementation="eager")
    model = tr.GPT2LMHeadModel(cfg).eval()
    ids = torch.from_numpy(np.random.default_rng(4).integers(5, 100, (2, 6)))
    mask = torch.ones_like(ids)
    path = export(LanguageModel(model).eval(), (ids, mask), ["input_ids", "attention_mask"], folder / "gpt2.onnx")
    model.eval()
    ex = onnxsal.Explainer(path, providers="cpu")
    assert {e.table.split(".")[-2] for e in find_embeddings(ex.model)} == {"wte", "wpe"}
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    tokens = np.array([7, 42])
    seed = logit_seed(ex.predict(feeds).shape, position=-1, token=tokens)
    ours = ex.attribute(feeds, target=seed, method="integrated_gradients", n_steps=N_STEPS, baselines=np.zeros_like(ids))
    lig = captum_attr.LayerIntegratedGradients(lambda i, m: model(input_ids=i, attention_mask=m).logits[:, -1, :],
                                               model.transformer.wte)
    theirs = lig.attribute(ids, baselines=torch.zeros_like(ids), additional_forward_args=(mask,),
                           target=torch.from_numpy(tokens), n_steps=N_STEPS, method="gausslegendre")
    r = rel(ours, theirs.detach())
    print(f"\ngpt2 next-token logit (seed tensor), IG from ids 0: rel {r:.2e}")
    assert r <= TOL


def test_smoothgrad_perturbs_the_embeddings(bert):
    """SmoothGrad with respect to the embeddings: the noise is added to the embedding tensor (the model
    cut there); with given noise it is the mean of autograd's gradients at the noisy embeddings."""
    n, t = bert.feeds["input_ids"].shape
    noise = np.random.default_rng(5).normal(0, 0.1, (3, n, t, 32)).astype(np.float32)
    ours = bert.ex.attribute(bert.feeds, target=TARGET, method="smoothgrad", n_samples=3, noise=noise)
    embeds = bert.layers["embeddings"](bert.torch_args[0]).detach()
    grads = []
    for k in range(3):
        e = (embeds + torch.from_numpy(noise[k])).requires_grad_(True)
        logits = bert.model(inputs_embeds=e, attention_mask=bert.torch_args[1], token_type_ids=bert.torch_args[2]).logits
        logits[torch.arange(n), torch.from_numpy(TARGET)].sum().backward()
        grads.append(e.grad.numpy())
    r = rel(ours, np.mean(grads, axis=0))
    print(f"\nbert SmoothGrad on the embeddings (given noise): rel {r:.2e}")
    assert r <= TOL
    quiet = bert.ex.attribute(bert.feeds, target=TARGET, method="smoothgrad", n_samples=2, stdev=0.0)
    assert rel(quiet, bert.ex.attribute(bert.feeds, target=TARGET)) <= 1e-6


def test_cosine_similarity_between_two_sentences(sentence):
    """The similarity of sentence 0 to sentence 1 (the model L2-normalises, so the explained score
    Σ seed·e with seed = e1 is cos(e0, e1)), against LayerIntegratedGradients on a forward that
    returns that cosine."""
    emb = sentence.ex.predict(sentence.feeds)
    first = {k: v[:1] for k, v in sentence.feeds.items()}
    seed = similarity_seed(emb[1])[None]
    ours = sentence.ex.attribute(first, target=seed, method="integrated_gradients", n_steps=N_STEPS,
                                 baselines=sentence.baseline_ids[:1])
    reference = torch.from_numpy(emb[1:2])

    def cosine(*args):
        return torch.nn.functional.cosine_similarity(sentence.forward(*args), reference, dim=-1)

    lig = captum_attr.LayerIntegratedGradients(cosine, sentence.layers["embeddings"])
    args = tuple(a[:1] for a in sentence.torch_args)
    theirs = lig.attribute(args[0], baselines=torch.from_numpy(sentence.baseline_ids[:1]), additional_forward_args=args[1:],
                           n_steps=N_STEPS, method="gausslegendre")
    r = rel(ours, theirs.detach())
    print(f"\nsentence similarity (cosine to another sentence): IG rel {r:.2e}")
    assert r <= TOL
    with pytest.raises(InvalidInputError, match="all zeros"):
        similarity_seed(np.zeros(4))


def test_bad_baselines_are_one_sentence(bert):
    ids = bert.feeds["input_ids"]
    cases = [("ids", "is for compile"), ({"nope": ids}, "neither a model input"),
             (ids[:, :3], "must have shape"), (np.zeros(ids.shape + (7,), np.float32), "must be a scalar or have shape"),
             ({"input_ids": ids.astype(np.float32)}, "must hold int64")]
    for baselines, words in cases:
        with pytest.raises(InvalidInputError, match=words):
            bert.ex.attribute(bert.feeds, target=TARGET, method="integrated_gradients", baselines=baselines, n_steps=2)


# ---------------------------------------------------------------------------------------- token scores


def test_token_scores_complete_and_zero_on_padding(bert, encoded):
    attr, delta = bert.ex.attribute(bert.feeds, target=TARGET, method="integrated_gradients", n_steps=32,
                                    baselines=bert.baseline_ids, return_convergence_delta=True)
    scores = token_scores(attr, mask=encoded.mask)
    assert scores.shape == encoded.ids.shape
    with torch.no_grad():
        f = bert.forward(*bert.torch_args).numpy()[np.arange(2), TARGET]
        b = bert.forward(torch.from_numpy(bert.baseline_ids), *bert.extra()).numpy()[np.arange(2), TARGET]
    np.testing.assert_allclose(scores.sum(axis=1), f - b, rtol=1e-3, atol=1e-4)  # completeness, per sentence
    assert np.all(scores[encoded.mask == 0] == 0) and np.all(attr[encoded.mask == 0] == 0)
    norms = token_scores(attr, "norm")
    assert np.all(norms >= 0)
    np.testing.assert_allclose(norms, np.linalg.norm(attr.astype(np.float64), axis=-1))
    unit = token_scores(attr, normalise=True)
    np.testing.assert_allclose(np.abs(unit).max(axis=1), 1.0)
    with pytest.raises(InvalidInputError, match="reduce must be"):
        token_scores(attr, "mean")


def test_logit_seed_and_reference_ids():
    seed = logit_seed((2, 5, 10), position=-1, token=[3, 7])
    assert seed.shape == (2, 5, 10) and seed.sum() == 2 and seed[0, 4, 3] == 1 and seed[1, 4, 7] == 1
    with pytest.raises(InvalidInputError, match="vocabulary"):
        logit_seed((1, 5, 10), 0, 10)
    ids = np.array([[2, 17, 18, 3, 0]])
    np.testing.assert_array_equal(reference_ids(ids, 0, keep=(2, 3)), [[2, 0, 0, 3, 0]])


def test_html_page_colours_tokens_by_sign():
    page = tokens_html(TokenRow(["[CLS]", "good", "##ness", "<b>"], [0.0, 2.0, -1.0, 0.5], "class 1", 1.5))
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert "&lt;b&gt;" in page and "<b>Legend" in page  # tokens are escaped
    marks = page.split("Token importance")[1]
    good = marks.split(">good<")[0].rsplit("background-color:", 1)[1]
    ness = marks.split(">ness<")[0].rsplit("background-color:", 1)[1]
    r, g, b = (int(v) for v in good.split("rgb(")[1].split(")")[0].split(","))
    assert g > r and g > b  # green: for
    r, g, b = (int(v) for v in ness.split("rgb(")[1].split(")")[0].split(","))
    assert r > g and r > b  # red: against
    assert "</mark><mark" in marks  # '##ness' attached to 'good'


# ---------------------------------------------------------------------------------------- the CLI


def cli(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def test_cli_text_writes_html_png_and_the_librarys_scores(bert, tokenizer_file, tmp_path):
    out = tmp_path / "out"
    rc, stdout, stderr = cli("explain", bert.path, "--text", SENTENCES[0], "--text", SENTENCES[1], "--tokenizer",
                             tokenizer_file, "-t", 1, "--option", f"n_steps={N_STEPS}", "-o", out)
    assert rc == 0, stderr
    assert "strongest token" in stdout
    page = (out / "tokens.html").read_text()
    assert page.count("<tr>") == 3 and "acting" in page and "loved" in page
    from PIL import Image

    with Image.open(out / "tokens.png") as img:
        assert img.size[0] == 900 and img.size[1] > 80
        colours = set(img.convert("RGB").getdata())
    assert any(g > r + 30 for r, g, b in colours) and any(r > g + 30 for r, g, b in colours)  # green and red tokens
    record = json.loads((out / "tokens.json").read_text())
    lib = explain_text(None, SENTENCES, tokenizer_file, target=1, n_steps=N_STEPS, explainer=bert.ex)
    assert [r["tokens"] for r in record] == [list(r.tokens) for r in lib.rows]
    for r, row in zip(record, lib.rows):
        np.testing.assert_allclose(r["scores"], row.scores, rtol=1e-6, atol=1e-9)
    assert record[0]["tokens"][0] == "[CLS]" and record[0]["tokens"][-1] == "[SEP]"


def test_cli_bad_tokenizer_is_one_sentence_and_writes_nothing(bert, tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"version": "1.0", "model": {"type": "NoSuchModel"}}')
    out = tmp_path / "out"
    rc, stdout, stderr = cli("explain", bert.path, "--text", "a good movie", "--tokenizer", bad, "-o", out)
    assert rc == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxsal: error: ") and "not a Hugging Face tokenizer.json" in lines[0]
    assert "Traceback" not in stderr and not out.exists()
    rc, _, stderr = cli("explain", bert.path, "--text", "a good movie", "--tokenizer", tmp_path / "missing.json", "-o", out)
    assert rc == 2 and "does not exist" in stderr and len(stderr.strip().splitlines()) == 1 and not out.exists()
    rc, _, stderr = cli("explain", bert.path, "--text", "a good movie", "-o", out)
    assert rc == 2 and "--text and --tokenizer go together" in stderr and not out.exists()


def test_cli_text_bad_target_and_token_free_model_are_one_sentence(bert, tokenizer_file, tmp_path):
    out = tmp_path / "out"
    rc, _, stderr = cli("explain", bert.path, "--text", "a good movie", "--tokenizer", tokenizer_file, "-t", 7, "-o", out)
    assert rc == 2 and "out of range" in stderr and len(stderr.strip().splitlines()) == 1 and not out.exists()
    image_model = ROOT / "onnxsal" / "data" / "mnist_cnn.onnx"
    rc, _, stderr = cli("explain", image_model, "--text", "a good movie", "--tokenizer", tokenizer_file, "-o", out)
    assert rc == 2 and "does not read token ids" in stderr and len(stderr.strip().splitlines()) == 1 and not out.exists()


def test_text_package_imports_neither_torch_nor_tokenizers():
    code = ("import sys, onnxsal.text, onnxsal.cli; "
            "bad = [m for m in ('torch', 'tokenizers', 'tensorflow', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_missing_tokenizers_package_is_one_sentence(monkeypatch, tokenizer_file):
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(InvalidInputError, match="needs the 'tokenizers' package"):
        load_tokenizer(tokenizer_file)


def test_token_page_in_headless_chromium(tmp_path):
    """The coloured-token page as a real browser draws it: headless Chromium (Playwright, the system
    browser) opens the file, every token is a highlighted <mark> whose computed background is the
    colour of its score (green for, red against, white at 0), '##' pieces attach to the word before
    them, and a screenshot is written for a person to look at (out/test_text/tokens.png)."""
    import importlib.util
    import os
    import re

    from onnxsal.text.render import TokenRow, save_tokens_html, token_colour

    chromium = os.environ.get("ONNXSAL_CHROMIUM", "/usr/bin/chromium")
    if not os.path.isfile(chromium) or importlib.util.find_spec("playwright") is None:
        pytest.fail(f"this test needs Chromium ({chromium}) and Playwright: run `make web-deps`", pytrace=False)
    from playwright.sync_api import sync_playwright

    rows = [TokenRow(["[CLS]", "not", "good", "at", "all", "[SEP]"], [0.0, -2.0, 1.0, 0.1, -0.5, 0.0], "class 1"),
            TokenRow(["[CLS]", "a", "charm", "##ing", "film", "[SEP]"], [0.0, 0.2, 0.9, 1.8, 0.3, 0.0], "class 1")]
    page_file = save_tokens_html(rows, tmp_path / "tokens.html")
    shots = Path(__file__).resolve().parents[1] / "out" / "test_text"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 400})
            page.goto(page_file.resolve().as_uri())
            marks = page.eval_on_selector_all("table mark", "ms => ms.map(m => [m.textContent, getComputedStyle(m).backgroundColor])")
            cells = page.eval_on_selector_all("table tr td:last-child", "cs => cs.map(c => c.innerText)")
            page.screenshot(path=str(shots / "tokens.png"), full_page=True)
        finally:
            browser.close()
    assert [t for t, _ in marks] == ["[CLS]", "not", "good", "at", "all", "[SEP]", "[CLS]", "a", "charm", "ing", "film", "[SEP]"]
    expected = []
    for row in rows:
        top = max(abs(s) for s in row.scores)
        expected += [token_colour(s / top) for s in row.scores]
    seen = [tuple(int(v) for v in re.findall(r"\d+", colour)[:3]) for _, colour in marks]
    assert seen == expected
    assert seen[1][0] > seen[1][1] and seen[2][1] > seen[2][0] and seen[0] == (255, 255, 255)  # red, green, white
    assert "charming" in cells[1]  # the ## piece drawn attached
    assert (shots / "tokens.png").stat().st_size > 1000
