"""A BERT sequence classifier written in Keras 3, loaded with the weights of a `transformers`
BertForSequenceClassification: the TensorFlow side of tests/test_text_frameworks.py (issue 16).

`transformers` 5 has no TensorFlow classes any more, so the TensorFlow twin of a PyTorch BERT is
written here from layers: word + position + token-type embeddings (keras.layers.Embedding: a
ResourceGather that tf2onnx writes as a Gather behind Keras' negative-index fix, a Where), summed
and LayerNormalized; encoder blocks of multi-head self-attention (Dense query/key/value, scores
q·kᵀ/√d plus the additive mask (1 − mask)·min(float32), softmax, Dense output, residual, LayerNorm)
and an exact (erf) GELU MLP (residual, LayerNorm), post-norm as BERT; the [CLS] token through the
pooler (Dense, tanh) and the classifier (Dense). Dropout is left out (inference).

Weights come from an .npz holding the PyTorch state dict under its own names (Linear weights are
(out, in), Keras kernels (in, out)). Run as a script, in its own process (TensorFlow and torch must
not share one):

    python tests/keras_bert.py WEIGHTS.npz INPUTS.npz OUT_DIR --heads 2

writes OUT_DIR/keras_bert.onnx (converters.keras_export.export_keras, inputs input_ids,
attention_mask, token_type_ids: int64 [batch, sequence]) and OUT_DIR/keras_bert_logits.npz (Keras'
logits for every array set in INPUTS.npz, under the same keys), and OUT_DIR/gelu.onnx,
OUT_DIR/gelu.npz (`gelu_check`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
PREFIX = "bert.encoder.layer"


def config_from(weights: dict, heads: int) -> dict:
    """The architecture that the state dict's shapes imply (the head count is not in them)."""
    vocab, hidden = weights["bert.embeddings.word_embeddings.weight"].shape
    layers = len({k.split(".")[3] for k in weights if k.startswith(PREFIX + ".")})
    return {"vocab": int(vocab), "hidden": int(hidden), "layers": layers, "heads": heads,
            "intermediate": int(weights[f"{PREFIX}.0.intermediate.dense.weight"].shape[0]),
            "positions": int(weights["bert.embeddings.position_embeddings.weight"].shape[0]),
            "types": int(weights["bert.embeddings.token_type_embeddings.weight"].shape[0]),
            "labels": int(weights["classifier.weight"].shape[0])}


def build(cfg: dict, eps: float = 1e-12):
    """The Keras functional model: (input_ids, attention_mask, token_type_ids) -> logits."""
    import keras
    from keras import layers as L
    from keras import ops

    hidden, heads = cfg["hidden"], cfg["heads"]
    size = hidden // heads

    class PositionEmbedding(L.Layer):
        """Position ids 0..T-1 looked up in a [positions, hidden] table (a Gather on a Range)."""

        def __init__(self, positions, hidden, **kw):
            super().__init__(**kw)
            self.lookup = L.Embedding(positions, hidden, name="lookup")

        def build(self, shape):
            self.lookup.build((None,))

        def call(self, ids):
            return self.lookup(ops.arange(ops.shape(ids)[1], dtype="int64"))[None]  # [1, T, hidden]

    class SelfAttention(L.Layer):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.query, self.key, self.value = (L.Dense(hidden, name=n) for n in ("query", "key", "value"))
            self.out = L.Dense(hidden, name="output")

        def build(self, shape):
            for dense in (self.query, self.key, self.value, self.out):
                dense.build((None, None, hidden))

        def call(self, x, bias):
            def split(h):  # [N, T, hidden] -> [N, heads, T, size]
                return ops.transpose(ops.reshape(h, (ops.shape(h)[0], -1, heads, size)), (0, 2, 1, 3))

            q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
            scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * (1.0 / float(np.sqrt(size))) + bias
            context = ops.transpose(ops.matmul(ops.softmax(scores, axis=-1), v), (0, 2, 1, 3))
            return self.out(ops.reshape(context, (ops.shape(x)[0], -1, hidden)))

    class MaskBias(L.Layer):
        """BERT's extended mask: [N, T] -> [N, 1, 1, T], 0 on tokens and the lowest float32 on padding."""

        def call(self, mask):
            keep = ops.expand_dims(ops.expand_dims(ops.cast(mask, "float32"), 1), 1)
            return (1.0 - keep) * float(np.finfo(np.float32).min)

    ids = keras.Input((None,), dtype="int64", name="input_ids")
    mask = keras.Input((None,), dtype="int64", name="attention_mask")
    types = keras.Input((None,), dtype="int64", name="token_type_ids")
    h = (L.Embedding(cfg["vocab"], hidden, name="word_embeddings")(ids)
         + PositionEmbedding(cfg["positions"], hidden, name="position_embeddings")(ids)
         + L.Embedding(cfg["types"], hidden, name="token_type_embeddings")(types))
    h = L.LayerNormalization(epsilon=eps, name="embeddings_norm")(h)
    bias = MaskBias(name="mask_bias")(mask)
    for i in range(cfg["layers"]):
        a = SelfAttention(name=f"layer{i}_attention")(h, bias)
        h = L.LayerNormalization(epsilon=eps, name=f"layer{i}_attention_norm")(h + a)
        m = L.Dense(cfg["intermediate"], activation="gelu", name=f"layer{i}_intermediate")(h)  # exact (erf) GELU
        h = L.LayerNormalization(epsilon=eps, name=f"layer{i}_output_norm")(h + L.Dense(hidden, name=f"layer{i}_output")(m))
    pooled = L.Dense(hidden, activation="tanh", name="pooler")(h[:, 0])
    logits = L.Dense(cfg["labels"], name="classifier")(pooled)
    return keras.Model([ids, mask, types], logits, name="keras_bert")


def load(model, weights: dict, cfg: dict) -> None:
    """Copy the PyTorch state dict into the Keras model (Linear (out, in) -> Dense kernel (in, out))."""
    def dense(layer, name):
        layer.set_weights([weights[name + ".weight"].T, weights[name + ".bias"]])

    def norm(layer, name):
        layer.set_weights([weights[name + ".weight"], weights[name + ".bias"]])

    get = model.get_layer
    get("word_embeddings").set_weights([weights["bert.embeddings.word_embeddings.weight"]])
    get("position_embeddings").lookup.set_weights([weights["bert.embeddings.position_embeddings.weight"]])
    get("token_type_embeddings").set_weights([weights["bert.embeddings.token_type_embeddings.weight"]])
    norm(get("embeddings_norm"), "bert.embeddings.LayerNorm")
    for i in range(cfg["layers"]):
        p = f"{PREFIX}.{i}"
        attention = get(f"layer{i}_attention")
        for part in ("query", "key", "value"):
            dense(getattr(attention, part), f"{p}.attention.self.{part}")
        dense(attention.out, f"{p}.attention.output.dense")
        norm(get(f"layer{i}_attention_norm"), f"{p}.attention.output.LayerNorm")
        dense(get(f"layer{i}_intermediate"), f"{p}.intermediate.dense")
        dense(get(f"layer{i}_output"), f"{p}.output.dense")
        norm(get(f"layer{i}_output_norm"), f"{p}.output.LayerNorm")
    dense(get("pooler"), "bert.pooler.dense")
    dense(get("classifier"), "classifier")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights")
    parser.add_argument("inputs", help="npz of input sets: <set>/input_ids, <set>/attention_mask, <set>/token_type_ids")
    parser.add_argument("out")
    parser.add_argument("--heads", type=int, required=True)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import keras

    from converters.keras_export import export_keras

    with np.load(args.weights) as data:
        weights = {k: data[k].astype(np.float32) for k in data.files}
    cfg = config_from(weights, args.heads)
    model = build(cfg)
    load(model, weights, cfg)
    out = Path(args.out)
    export_keras(model, out / "keras_bert.onnx")
    logits = {}
    with np.load(args.inputs) as data:
        for key in sorted({k.split("/")[0] for k in data.files}):
            feeds = [data[f"{key}/{name}"] for name in INPUTS]
            logits[key] = keras.ops.convert_to_numpy(model(feeds, training=False))
    np.savez(out / "keras_bert_logits.npz", **logits)
    gelu_check(out)
    return 0


def gelu_check(out: Path) -> None:
    """Keras' exact GELU (TensorFlow writes it with Erfc, which converters/tf2onnx_ops.py converts)
    alone, exported, with Keras' values on [-12, 12]: OUT_DIR/gelu.onnx, OUT_DIR/gelu.npz."""
    import keras

    from converters.keras_export import export_keras

    x = np.linspace(-12, 12, 97, dtype=np.float32)[None]
    inp = keras.Input((97,), name="x")
    model = keras.Model(inp, keras.layers.Activation("gelu", name="gelu")(inp))
    export_keras(model, out / "gelu.onnx")
    np.savez(out / "gelu.npz", x=x, y=keras.ops.convert_to_numpy(model(x)))


if __name__ == "__main__":
    sys.exit(main())
