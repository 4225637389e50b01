"""Writes the nodes and constants of the gradient graph, with readable unique names.

Rules and the driver call `Emitter.op(...)` and the few opset-aware helpers below (ops whose
axes moved from an attribute to an input across opsets), so no rule cares which opset it is in.
Each node is checked against the model's opset as it is emitted: an op that opset cannot express
is a clear error at build time, never a model that onnxruntime then refuses to load.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import checker, helper, numpy_helper

from ..errors import UnsupportedModelError


class Emitter:
    def __init__(self, taken: set[str], opset: int):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumed: set[str] = set()
        self._taken = set(taken)
        self.prefix = ""
        self._check = checker.C.CheckerContext()
        self._check.ir_version = onnx.IR_VERSION
        self._check.opset_imports = {"": opset}

    # -- names ---------------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        """A value or node name not used anywhere yet, `base` itself when possible."""
        name, i = base, 1
        while name in self._taken:
            name = f"{base}_{i}"
            i += 1
        self._taken.add(name)
        return name

    def rename_output(self, old: str, new: str) -> bool:
        """Give an emitted value its final name (`x_grad`); False when it is not ours to rename."""
        node = self.producer.get(old)
        if node is None or new in self._taken:
            return False
        node.output[list(node.output).index(old)] = new
        del self.producer[old]
        self.producer[new] = node
        self._taken.add(new)
        return True

    # -- nodes and constants -------------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, out: str | None = None, **attrs):
        """Emit one default-domain node; returns its output name (or list of names if n_out > 1)."""
        node_name = self.fresh(f"{self.prefix}{op_type}")
        if out is not None:
            outputs = [out]
            self._taken.add(out)
        else:
            outputs = [self.fresh(f"{node_name}_out{i}" if n_out > 1 else f"{node_name}_out") for i in range(n_out)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        if op_type == "ScatterElements" and self.opset < 11 and "reduction" not in attrs:
            op_type = "Scatter"  # its name in opsets 9 and 10
        node = helper.make_node(op_type, list(inputs), outputs, name=node_name, **attrs)
        self._check_node(node)
        self.nodes.append(node)
        self.consumed.update(inputs)
        for o in outputs:
            self.producer[o] = node
        return outputs[0] if n_out == 1 else outputs

    def _check_node(self, node: onnx.NodeProto) -> None:
        """A node the model's opset cannot express is a clear error now, not a broken model later."""
        try:
            checker.check_node(node, self._check)
        except checker.ValidationError as err:
            where = self.prefix.rstrip("/") or "the gradient"
            reason = str(err).strip().splitlines()[0]
            raise UnsupportedModelError(
                f"{where} needs a {node.op_type} node that opset {self.opset} cannot express ({reason}); "
                f"convert the model to a newer opset first (onnx.version_converter)."
            ) from None

    def const(self, value, dtype=None, name: str = "const") -> str:
        """A constant (initializer) holding `value`."""
        arr = np.asarray(value, dtype=dtype)
        full = self.fresh(f"{self.prefix}{name}")
        self.initializers.append(numpy_helper.from_array(arr, full))
        return full

    def ints(self, values: Sequence[int], name: str = "axes") -> str:
        return self.const(np.asarray(list(values), dtype=np.int64), name=name)

    # -- ops whose signature depends on the opset ----------------------------------------------
    def reduce(self, op_type: str, x: str, axes: Sequence[int] | str | None, keepdims: int = 1) -> str:
        """ReduceSum/Mean/Max over `axes` (static list, or a run-time int64 tensor name)."""
        input_axes_since = 13 if op_type == "ReduceSum" else 18
        if axes is not None and not isinstance(axes, str) and len(axes) == 0:
            return x
        if self.opset >= input_axes_since:
            ins = [x] if axes is None else [x, axes if isinstance(axes, str) else self.ints(axes)]
            extra = {"noop_with_empty_axes": 1} if isinstance(axes, str) else {}
            return self.op(op_type, ins, keepdims=keepdims, **extra)
        if isinstance(axes, str):
            raise ValueError(f"{op_type} with run-time axes needs opset >= {input_axes_since}")
        return self.op(op_type, [x], keepdims=keepdims, axes=None if axes is None else list(axes))

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        if not axes:
            return x
        if self.opset >= 13:
            return self.op("Unsqueeze", [x, self.ints(axes)])
        return self.op("Unsqueeze", [x], axes=list(axes))

    def squeeze(self, x: str, axes: Sequence[int]) -> str:
        if not axes:
            return x
        if self.opset >= 13:
            return self.op("Squeeze", [x, self.ints(axes)])
        return self.op("Squeeze", [x], axes=list(axes))

    def slice(self, x: str, starts: Sequence[int], ends: Sequence[int], axes: Sequence[int]) -> str:
        """Slice with static bounds and unit steps (inputs from opset 10, attributes before)."""
        if self.opset >= 10:
            return self.op("Slice", [x, self.ints(starts, name="starts"), self.ints(ends, name="ends"), self.ints(axes)])
        return self.op("Slice", [x], starts=list(starts), ends=list(ends), axes=list(axes))

    def pad(self, x: str, pads: Sequence[int]) -> str:
        """Zero padding by static `pads` (begins then ends; an input from opset 11, an attribute before)."""
        if self.opset >= 11:
            return self.op("Pad", [x, self.ints(pads, name="pads")], mode="constant")
        return self.op("Pad", [x], mode="constant", pads=list(pads))

    def reshape_like(self, x: str, like: str) -> str:
        return self.op("Reshape", [x, self.op("Shape", [like])])

    def zeros_like(self, like: str, dtype: np.dtype) -> str:
        """Zeros of `like`'s run-time shape (not x*0, which turns inf into NaN)."""
        proto = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        zero = helper.make_tensor("value", proto, [1], [0])
        return self.op("ConstantOfShape", [self.op("Shape", [like])], value=zero)

    def transpose(self, x: str, perm: Sequence[int]) -> str:
        if list(perm) == list(range(len(perm))):
            return x
        return self.op("Transpose", [x], perm=list(perm))
