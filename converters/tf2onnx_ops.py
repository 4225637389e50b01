"""TensorFlow ops that tf2onnx 1.17 does not convert, registered with its handler decorator.

Importing this module registers the handlers (tf2onnx's own mechanism: `tf2onnx.handler.tf_op`),
so it is imported by the Keras/TensorFlow converters right after tf2onnx, never at package import.

- Erfc: TensorFlow 2.21 writes the exact GELU (`tf.nn.gelu(approximate=False)`, Keras'
  `activation="gelu"` and `keras.activations.gelu`) as 0.5·x·erfc(−x/√2); tf2onnx 1.17 has no
  Erfc handler and leaves the node in the graph, which ONNX rejects ("No Op registered for Erfc").
  It becomes 1 − Erf(x). In float32 that subtraction loses erfc's relative precision where erfc
  is tiny (x ≳ 3); in GELU that is where 0.5·x·erfc(−x/√2) ≈ 0 for x ≲ −4, so the absolute error
  stays ~1e-7·|x|, the precision of PyTorch's own erf form x·(1 + erf(x/√2))/2.
"""

from __future__ import annotations

import numpy as np
from tf2onnx import utils
from tf2onnx.handler import tf_op

HANDLED = ("Erfc",)


@tf_op("Erfc")
class Erfc:
    @classmethod
    def version_9(cls, ctx, node, **kwargs):  # ONNX Erf exists from opset 9
        node.type = "Erf"
        dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
        one = ctx.make_const(utils.make_name(f"{node.name}/one"), np.array(1, dtype=dtype))
        out = node.output[0]
        sub = ctx.insert_new_node_on_output("Sub", out, inputs=[one.output[0], out], name=utils.make_name(node.name))
        ctx.copy_shape(out, sub.output[0])
