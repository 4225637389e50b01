"""Give onnx's "light" zoo files realistic weights: `python -m benchmarks.wild.reweight SRC.onnx DST.onnx`.

onnx ships, under onnx/backend/test/data/light/, the Caffe2-era zoo architectures at opset 9 and IR 3
with every weight a ConstantOfShape of 0.02: their activations grow to 1e16-1e27 and every class
logit is equal, so float32 central differences cannot judge a gradient there. This writes a copy whose
ConstantOfShape weights are initializers drawn at He scale (sqrt(2 / fan_in)) for Conv/Gemm weights,
uniform [0.5, 1.5] for BatchNormalization scales and variances, and N(0, 0.1) otherwise; the graph,
opset and IR version stay as they were.
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper


def reweight(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    shapes = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    positive = {n.input[i] for n in model.graph.node if n.op_type == "BatchNormalization" for i in (1, 4) if len(n.input) > i}
    kept = []
    for n in model.graph.node:
        if n.op_type != "ConstantOfShape" or n.input[0] not in shapes:
            kept.append(n)
            continue
        shape = tuple(int(s) for s in shapes[n.input[0]])
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 0
        if fan_in:
            value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif n.output[0] in positive:
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0.0, 0.1, shape)
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), n.output[0]))
        if model.ir_version < 4:  # IR 3 lists every initializer among the inputs
            model.graph.input.append(helper.make_tensor_value_info(n.output[0], onnx.TensorProto.FLOAT, list(shape)))
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


if __name__ == "__main__":
    src, dst = sys.argv[1:3]
    onnx.save(reweight(onnx.load(src)), dst)
