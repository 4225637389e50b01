"""Torch-only helper of guided_backprop_imagenet_keras.py, run as its own process (TensorFlow and
torch should not share one): dumps torchvision's MobileNetV2 ImageNet checkpoint to a plain .npz
(arrays only, readable with allow_pickle=False) and, with --image, torch's logits for that image.

    python examples/_mobilenet_npz.py OUT.npz [--image IMAGE.npy]   # IMAGE: float32 [N,224,224,3] in [0,1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import _common as common


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--image", type=Path, help="float32 [N,H,W,3] pixels in [0,1] (NHWC, as Keras takes them)")
    args = ap.parse_args()
    import torch

    model = common.torch_mobilenet_v2(normalize=True)
    arrays = {k: v.numpy() for k, v in model.inner.state_dict().items() if v.dtype.is_floating_point}
    if args.image is not None:
        x = np.load(args.image, allow_pickle=False).astype(np.float32)
        with torch.no_grad():
            arrays["__torch_logits__"] = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    np.savez(args.out, **arrays)
    print(f"wrote {args.out}: {len(arrays)} arrays")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
