"""Token attributions of a small BERT sentiment classifier, through `onnxsal explain --text`.

A tiny BERT (hidden 32, 2 layers, 2 heads) is built from a `transformers` config and trained for a
few seconds on generated movie reviews whose label is decided by sentiment words and negation
("not good" is negative); its tokenizer is a WordPiece vocabulary saved as tokenizer.json. The
model is exported to ONNX, and the command line explains sentences with Integrated Gradients from
the word embeddings (baseline: [PAD] for every token but [CLS]/[SEP], 50 steps):

    python examples/text_sentiment.py --out out/ [--small] [--figure docs/figures/text_tokens.png]

Writes to --out: model.onnx, tokenizer.json, tokens.html / tokens.png / tokens.json (what
`onnxsal explain model.onnx --text ... --tokenizer tokenizer.json -o out/` writes) and
text_sentiment.json (training accuracy, the sentences, each token's score).
"""

from __future__ import annotations

import json

import numpy as np

import _common as common

POSITIVE = "good great wonderful funny brilliant moving".split()
NEGATIVE = "bad boring awful dull terrible weak".split()
THINGS = "movie film plot acting story ending music".split()
FILLER = "the a this really quite was is and it".split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
SENTENCES = ["the acting was brilliant but the plot was dull",
             "this movie was not good",
             "a really funny film and the music is great"]


def tokenizer_for(words):
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(set(words)))}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return tok, vocab


def review(rng) -> tuple[str, int]:
    """A generated review: 'the <thing> was [not] <sentiment>' clauses joined by 'and'/'but'; the label
    is the sign of the summed clause polarities (negation flips a clause)."""
    clauses, total = [], 0
    for _ in range(rng.integers(1, 3)):
        positive = rng.random() < 0.5
        negated = rng.random() < 0.25
        word = rng.choice(POSITIVE if positive else NEGATIVE)
        filler = [str(rng.choice(FILLER)) for _ in range(rng.integers(0, 2))]
        clauses.append(" ".join(["the", str(rng.choice(THINGS)), "was", *filler, *(["not"] if negated else []), str(word)]))
        total += (1 if positive else -1) * (-1 if negated else 1) * (2 if len(clauses) == 2 else 1)  # the last clause weighs more
    return f" {rng.choice(['and', 'but'])} ".join(clauses), int(total > 0)


def train(tok, vocab, steps: int, seed: int = 0):
    import torch
    import transformers as tr

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = tr.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2, attn_implementation="eager")
    model = tr.BertForSequenceClassification(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    tok.enable_padding(pad_id=vocab["[PAD]"], pad_token="[PAD]")
    model.train()
    for _ in range(steps):
        texts, labels = zip(*(review(rng) for _ in range(32)))
        enc = tok.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in enc])
        mask = torch.tensor([e.attention_mask for e in enc])
        loss = model(input_ids=ids, attention_mask=mask, labels=torch.tensor(labels)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    texts, labels = zip(*(review(rng) for _ in range(500)))
    enc = tok.encode_batch(list(texts))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([e.ids for e in enc]), attention_mask=torch.tensor([e.attention_mask for e in enc])).logits
    tok.no_padding()
    return model, float((logits.argmax(1).numpy() == np.array(labels)).mean())


def export(model, path):
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    ids = torch.ones(1, 8, dtype=torch.long)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}}
    torch.onnx.export(Logits(model).eval(), (ids, torch.ones_like(ids)), str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["logits"], dynamic_axes=axes, opset_version=17, dynamo=False)


def options(ap) -> None:
    ap.add_argument("--figure", default=None,
                    help="also open tokens.html in headless Chromium and save its screenshot here (the README figure)")


def screenshot(page, path, width: int = 940) -> None:
    """tokens.html as a real browser draws it: headless Chromium's screenshot, cropped to the content."""
    import shutil
    import subprocess
    import tempfile

    from PIL import Image, ImageChops

    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        raise SystemExit("--figure needs Chromium (apt install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        shot = f"{tmp}/shot.png"
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--window-size={width},600", f"--screenshot={shot}", page.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
        img = Image.open(shot).convert("RGB")
    box = ImageChops.difference(img, Image.new("RGB", img.size, "white")).getbbox()
    left, top, right, bottom = box
    img.crop((max(0, left - 12), max(0, top - 12), min(img.width, right + 12), min(img.height, bottom + 12))).save(path)
    print(f"wrote {path}")


def main():
    args = common.parse_args(__doc__, options)
    timer = common.Timer()
    words = POSITIVE + NEGATIVE + THINGS + FILLER + ["not", "but", "and", "was"]
    tok, vocab = tokenizer_for(words)
    tok.save(str(args.out / "tokenizer.json"))
    with timer("train a tiny BERT on generated reviews"):
        model, accuracy = train(tok, vocab, steps=120 if args.small else 200)
    print(f"held-out accuracy {accuracy:.3f}")
    with timer("export to ONNX"):
        export(model, args.out / "model.onnx")
    from onnxsal.cli import main as cli

    argv = ["explain", str(args.out / "model.onnx"), "--tokenizer", str(args.out / "tokenizer.json"), "-t", "1",
            "-o", str(args.out), "--option", f"n_steps={20 if args.small else 50}", "--providers", args.providers]
    for s in SENTENCES:
        argv += ["--text", s]
    with timer("onnxsal explain --text"):
        rc = cli(argv)
    assert rc == 0, rc
    scores = json.loads((args.out / "tokens.json").read_text())
    (args.out / "text_sentiment.json").write_text(json.dumps({"accuracy": accuracy, "rows": scores, "timings": timer.steps}, indent=1))
    print(f"wrote {args.out / 'tokens.html'}, {args.out / 'tokens.png'}")
    if args.figure:
        screenshot(args.out / "tokens.html", args.figure)


if __name__ == "__main__":
    main()
