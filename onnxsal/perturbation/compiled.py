"""Perturbation methods compiled into one graph: the model runs once on [x ; P perturbed copies].

The copies are built inside the graph from constants (occlusion windows, RISE's seeded grids) and
stacked along the batch axis with the model's other inputs tiled to match (`expand.Stacked`, as a
compiled SmoothGrad does). The graph's outputs are the model's outputs for the clean copy plus the
attribution; the target is the top class of the clean copy, or an int64 input `target` [N], or a
seed of the output's shape; each copy's score is read as `runner.Problem.pick` reads it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..autodiff.seeds import class_one_hot
from ..errors import InvalidInputError
from ..methods.expand import Stacked
from ..methods.graphs import AttributionGraph
from ..methods.integrated_gradients import score_value


class Perturbed:
    """A copy of the model fed [x ; copies] for input `x`, and the nodes that score the copies."""

    def __init__(self, explainer, x: str, n_copies: int, prefix: str, softmax: str):
        if softmax not in ("identity", "keep"):
            raise InvalidInputError(f"softmax must be 'identity' or 'keep', not {softmax!r}.")
        self.explainer, self.x, self.copies, self.softmax = explainer, x, n_copies, softmax
        self.st = Stacked(explainer, (x,), n_copies, prefix)
        self.e = self.st.e
        self.dtype = next(s.dtype for s in explainer.inputs if s.name == x)
        self.new_inputs: list[onnx.ValueInfoProto] = []
        self.target_input = self.seed_input = None

    def baseline(self, baselines) -> str:
        """The baseline as a constant broadcasting to x: a scalar or one array of the sample's shape."""
        b = np.zeros((), self.dtype) if baselines is None else np.asarray(baselines, dtype=self.dtype)
        sample = tuple(self.explainer.view.shape(self.x)[1:])
        if b.ndim and b.shape != sample and b.shape != (1,) + sample:
            raise InvalidInputError(f"a compiled graph takes a baseline that is a scalar or of the sample's shape {sample}, "
                                    f"not {b.shape} (per-sample baselines need Explainer.attribute).")
        return self.e.const(b, name="baseline")

    def run(self, copies: str, target_kind: str) -> str:
        """Feed [x ; copies] (copies [P, N, *sample]); the scores [P + 1, N] of the clean copy and each copy."""
        e, st = self.e, self.st
        st.stack(self.x, copies)
        for name, stacked in st.outputs.items():
            e.op("Identity", [e.block(stacked, self.copies + 1, 0)], out=name)
        name = score_value(self.explainer, self.softmax)
        value = st.outputs.get(name, name)
        blocks = e.block(value, self.copies + 1, 0, self.copies + 1)  # [P + 1, N, ...]
        spec = next(o for o in self.explainer.outputs if o.name == self.explainer.output)
        if target_kind == "tensor":
            seed = e.fresh(f"{self.explainer.output}_seed")
            rank = len(spec.shape) if spec.shape is not None else None
            if rank is None:
                raise InvalidInputError("a compiled seed target needs the output's rank, which the file does not declare.")
            self.new_inputs.append(helper.make_tensor_value_info(seed, spec.elem_type, list(spec.shape)))
            self.seed_input = seed
            shaped = e.op("Reshape", [blocks, e.op("Concat", [e.ints([self.copies + 1], name="copies"), e.op("Shape", [seed])], axis=0)])
            return e.reduce("ReduceSum", e.op("Mul", [shaped, e.unsqueeze(seed, [0])]), list(range(2, rank + 1)), keepdims=0)
        rank = self.explainer.view.rank(name) or (len(spec.shape) if spec.shape else 2)
        per_class = e.reduce("ReduceSum", blocks, list(range(3, rank + 1)), keepdims=0) if rank > 2 else blocks  # [P+1, N, K]
        if target_kind == "target":
            index = e.fresh("target")
            self.new_inputs.append(helper.make_tensor_value_info(index, onnx.TensorProto.INT64, [spec.shape[0] if spec.shape else "N"]))
            self.target_input = index
        elif target_kind == "argmax":
            y = self.explainer.output
            out_rank = len(spec.shape) if spec.shape else 2
            top = e.reduce("ReduceSum", y, list(range(2, out_rank)), keepdims=0) if out_rank > 2 else y
            index = e.op("ArgMax", [top], axis=1, keepdims=0)
        else:
            raise InvalidInputError(f"target must be 'argmax', 'target' or 'tensor', not {target_kind!r}.")
        clean = e.squeeze(e.slice(per_class, [0], [1], [0]), [0])  # [N, K]
        dtype = helper.tensor_dtype_to_np_dtype(self.explainer.view.elem_type(name) or onnx.TensorProto.FLOAT)
        one_hot = class_one_hot(e, index, clean, None, dtype)  # [N, K]
        return e.reduce("ReduceSum", e.op("Mul", [per_class, e.unsqueeze(one_hot, [0])]), [2], keepdims=0)

    def finish(self, out: str, shape: list) -> AttributionGraph:
        model = self.st.ed.finish([(out, self.explainer.view.elem_type(self.x), [d if isinstance(d, int) else None for d in shape])])
        model.graph.input.extend(self.new_inputs)
        return AttributionGraph(model, {self.x: out}, self.target_input, self.seed_input)
