"""Writes the nodes and constants of the gradient graph, with readable unique names.

Rules and the driver call `Emitter.op(...)` and the few opset-aware helpers below (ops whose
axes moved from an attribute to an input across opsets), so no rule cares which opset it is in.
Each node is checked against the model's opset as it is emitted: an op that opset cannot express
is a clear error at build time (`NeedsOpsetError`, naming the oldest opset that can), never a model
that onnxruntime then refuses to load. The method graphs use the same helpers (`resize`, `block`,
`scalar`, ...), so Grad-CAM or a compiled SmoothGrad is written in the file's own opset, down to 9.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import checker, helper, numpy_helper

from ..errors import UnsupportedModelError


class NeedsOpsetError(UnsupportedModelError):
    """A node the model's opset cannot express; `opset` is the oldest opset that can (None: none
    onnx knows), so a caller can say which opset to convert the model to."""

    def __init__(self, message: str, opset: int | None = None):
        super().__init__(message)
        self.opset = opset


def oldest_opset_for(node: onnx.NodeProto, since: int) -> int | None:
    """The oldest opset after `since` in which `node` (with these inputs and attributes) is valid."""
    for version in range(since + 1, onnx.defs.onnx_opset_version() + 1):
        ctx = checker.C.CheckerContext()
        ctx.ir_version = onnx.IR_VERSION
        ctx.opset_imports = {"": version}
        try:
            checker.check_node(node, ctx)
            return version
        except checker.ValidationError:
            continue
    return None


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
            needed = oldest_opset_for(node, self.opset)
            target = f"opset {needed}" if needed else "a newer opset"
            raise NeedsOpsetError(
                f"{where} needs a {node.op_type} node that opset {self.opset} cannot express ({reason}); "
                f"convert the model to {target} first (onnx.version_converter).", needed
            ) from None

    def const(self, value, dtype=None, name: str = "const") -> str:
        """A constant (initializer) holding `value`."""
        arr = np.asarray(value, dtype=dtype)
        full = self.fresh(f"{self.prefix}{name}")
        self.initializers.append(numpy_helper.from_array(arr, full))
        return full

    def used_initializers(self, reads: Sequence[str] = ()) -> list[onnx.TensorProto]:
        """The constants some emitted node (or subgraph of one), or `reads`, reads. Rules may make a
        constant they end up not needing; onnxruntime refuses an unused initializer in IR 3 files."""
        from .graph import node_inputs

        used = set(reads) | {x for n in self.nodes for x in node_inputs(n)}
        return [t for t in self.initializers if t.name in used]

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

    def expand_like(self, x: str, like: str) -> str:
        """`x` broadcast to the run-time shape of `like` (same rank, 1s where it spreads): Expand from
        opset 8, Tile by Shape(like) / Shape(x) before."""
        if self.opset >= 8:
            return self.op("Expand", [x, self.op("Shape", [like])])
        return self.op("Tile", [x, self.op("Div", [self.op("Shape", [like]), self.op("Shape", [x])])])

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

    def scalar(self, value: float, dtype, name: str = "scalar") -> str:
        """A 0-d constant in `dtype` (the explained value's), so float16 graphs stay type-correct."""
        return self.const(np.asarray(value, dtype=dtype), name=name)

    def cast(self, x: str, dtype) -> str:
        return self.op("Cast", [x], to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))

    def arange(self, n: str) -> str:
        """int64 [0, 1, ..., n-1] for a run-time length `n` (a 1-element int64 tensor).

        Range exists from opset 11; before it, the indices of the n ones of ConstantOfShape([n]),
        which NonZero (opset 9) lists in order."""
        if self.opset >= 11:
            zero, one = self.const(np.asarray(0, np.int64), name="zero"), self.const(np.asarray(1, np.int64), name="one")
            return self.op("Range", [zero, self.squeeze(n, [0]), one])
        ones = self.op("ConstantOfShape", [n], value=helper.make_tensor("value", onnx.TensorProto.BOOL, [1], [True]))
        return self.squeeze(self.op("NonZero", [ones]), [0])

    def resize(self, x: str, sizes: str, mode: str, dtype) -> str:
        """`x` [N, C, h, w] resized to the run-time int64 `sizes` [N, C, H, W]: mode "linear" is
        bilinear with half-pixel centres, "nearest" takes the pixel at floor(i·h/H) (asymmetric).

        From opset 11 this is one Resize node. Resize-10 and Upsample-9 know neither half-pixel
        centres nor output sizes, so before opset 11 the same interpolation is written as two
        matrix products, H×h on the left and w×W on the right, with the matrices built in the graph
        from the run-time sizes (onnxruntime folds them when the sizes are static)."""
        if self.opset >= 11:
            if self.opset >= 13:
                ins = [x, "", "", sizes]
            else:
                empty = self.const(np.zeros(0, np.float32), name="empty")
                ins = [x, empty, empty, sizes]
            if mode == "linear":
                return self.op("Resize", ins, mode="linear", coordinate_transformation_mode="half_pixel")
            return self.op("Resize", ins, mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        in_shape = self.op("Shape", [x])
        rows = self._interpolation_matrix(self.slice(in_shape, [2], [3], [0]), self.slice(sizes, [2], [3], [0]), mode, dtype)
        cols = self._interpolation_matrix(self.slice(in_shape, [3], [4], [0]), self.slice(sizes, [3], [4], [0]), mode, dtype)
        return self.op("MatMul", [self.op("MatMul", [rows, x]), self.transpose(cols, [1, 0])])

    def _interpolation_matrix(self, n_in: str, n_out: str, mode: str, dtype) -> str:
        """The [n_out, n_in] matrix that interpolates one axis (see `resize`); lengths are 1-element int64."""
        out_idx = self.arange(n_out)
        in_idx = self.unsqueeze(self.arange(n_in), [0])  # [1, n_in]
        if mode == "nearest":
            src = self.op("Div", [self.op("Mul", [out_idx, n_in]), n_out])  # floor(i·h/H), exactly, in int64
            return self.cast(self.op("Equal", [self.unsqueeze(src, [1]), in_idx]), dtype)
        f32 = np.float32
        last = self.op("Sub", [self.cast(n_in, f32), self.scalar(1, f32, name="one")])
        ratio = self.op("Div", [self.cast(n_in, f32), self.cast(n_out, f32)])
        half = self.scalar(0.5, f32, name="half")
        src = self.op("Sub", [self.op("Mul", [self.op("Add", [self.cast(out_idx, f32), half]), ratio]), half])
        src = self.op("Max", [src, self.scalar(0, f32, name="zero")])  # half-pixel centres, clamped at the edges
        lo = self.op("Min", [self.op("Floor", [src]), last])
        hi = self.op("Min", [self.op("Add", [lo, self.scalar(1, f32, name="one")]), last])
        frac = self.unsqueeze(self.op("Sub", [src, lo]), [1])
        pick = lambda i: self.cast(self.op("Equal", [self.unsqueeze(self.cast(i, np.int64), [1]), in_idx]), f32)  # noqa: E731
        one_minus = self.op("Sub", [self.scalar(1, f32, name="one"), frac])
        weights = self.op("Add", [self.op("Mul", [pick(lo), one_minus]), self.op("Mul", [pick(hi), frac])])
        return weights if np.dtype(dtype) == np.float32 else self.cast(weights, dtype)

    def block(self, x: str, n_blocks: int, start: int, stop: int | None = None) -> str:
        """Blocks [start, stop) of `x` cut along axis 0 into `n_blocks` equal blocks.

        `stop` None takes block `start` alone, without its axis ([M, ...] -> [M/n, ...]); otherwise
        the result is [stop - start, M/n, ...]. Written as Reshape then a static Slice or Gather, so
        it needs no run-time Slice bounds (which opset 9 cannot express)."""
        rest = self.slice(self.op("Shape", [x]), [1], [np.iinfo(np.int64).max], [0])
        blocks = self.op("Reshape", [x, self.op("Concat", [self.ints([n_blocks, -1], name="blocks"), rest], axis=0)])
        if stop is None:
            return self.op("Gather", [blocks, self.const(np.asarray(start, np.int64), name="block")], axis=0)
        return self.slice(blocks, [start], [stop], [0])
