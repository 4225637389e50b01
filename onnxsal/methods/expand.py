"""SmoothGrad and Integrated Gradients compiled into one graph, their samples batched inside it.

The compiled graph takes the model's inputs (plus a target) and stacks, along the batch axis,
the clean inputs and S perturbed copies of each sample: [x ; x_1 ; ... ; x_S]. The model runs
once on that stack; its outputs for the clean copy are the graph's outputs, the top class is taken
there, and the gradients of the S copies are reduced to the attribution inside the graph.
The noise (SmoothGrad) and the nodes and weights (IG) are the same constants the Explainer's
batched loop uses, so both paths give the same numbers.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..autodiff import SeedSpec, differentiate, rule_set
from ..errors import InvalidInputError
from .graphs import AttributionGraph, GraphEditor


def _rename_uses(graph: onnx.GraphProto, old: str, new: str, outputs_too: bool = False) -> None:
    for node in graph.node:
        for i, x in enumerate(node.input):
            if x == old:
                node.input[i] = new
        if outputs_too:
            for i, x in enumerate(node.output):
                if x == old:
                    node.output[i] = new


class Stacked:
    """A copy of the model whose inputs are stacked S+1 times (clean copy first) inside the graph."""

    def __init__(self, explainer, wrt: tuple[str, ...], n_copies: int, prefix: str):
        model = onnx.ModelProto.FromString(explainer.model.SerializeToString())
        g = model.graph
        inputs = [i.name for i in explainer.inputs]
        missing = [w for w in wrt if w not in inputs]
        if missing:
            raise InvalidInputError(f"a compiled {prefix} explains model inputs; {missing[0]!r} is not one.")
        self.stacked = {name: f"{name}/stacked" for name in inputs}
        for name, new in self.stacked.items():
            _rename_uses(g, name, new)
        self.outputs = {o.name: f"{o.name}/stacked" for o in g.output}
        for name, new in self.outputs.items():
            _rename_uses(g, name, new, outputs_too=True)
        self.ed = GraphEditor(model, prefix=f"{prefix}/")
        self.e = self.ed.e
        self.copies = n_copies
        self.explainer = explainer
        self.output = explainer.output
        e = self.e
        for name in inputs:
            if name not in wrt:
                rank = explainer.view.rank(name)
                e.op("Tile", [name, e.ints([n_copies + 1] + [1] * (rank - 1), name="repeats")], out=self.stacked[name])

    def stack(self, name: str, copies: str) -> None:
        """Feed [x ; copies] (copies: [S, N, ...]) to the model in place of input `name`."""
        e = self.e
        flat = e.op("Concat", [e.ints([-1]), e.slice(e.op("Shape", [name]), [1], [np.iinfo(np.int64).max], [0])], axis=0)
        e.op("Concat", [name, e.op("Reshape", [copies, flat])], axis=0, out=self.stacked[name])

    def seed(self, target_kind: str) -> tuple[str, list[onnx.ValueInfoProto]]:
        """The seed for the stacked output (class of the clean copy, repeated), and new inputs."""
        e = self.e
        y = self.outputs[self.output]
        spec = next(o for o in self.explainer.outputs if o.name == self.output)
        rank = len(spec.shape) if spec.shape is not None else 2
        repeats = e.ints([self.copies + 1], name="copies")
        new_inputs = []
        if target_kind == "tensor":
            name = e.fresh(f"{self.output}_seed")
            new_inputs.append(helper.make_tensor_value_info(name, spec.elem_type, list(spec.shape) if spec.shape else None))
            return e.op("Tile", [name, e.ints([self.copies + 1] + [1] * (rank - 1), name="repeats")]), new_inputs
        if target_kind == "target":
            index = e.fresh("target")
            new_inputs.append(helper.make_tensor_value_info(index, onnx.TensorProto.INT64, [spec.shape[0] if spec.shape else "N"]))
        else:
            clean = e.block(y, self.copies + 1, 0)
            scores = e.reduce("ReduceSum", clean, list(range(2, rank)), keepdims=0) if rank > 2 else clean
            index = e.op("ArgMax", [scores], axis=1, keepdims=0)
        depth = e.op("Gather", [e.op("Shape", [y]), e.ints([1], name="class_axis")], axis=0)
        off_on = e.const(np.array([0, 1], dtype=spec.dtype), name="off_on")
        seed = e.op("OneHot", [e.op("Tile", [index, repeats]), depth, off_on], axis=-1)
        if rank > 2:
            seed = e.op("Expand", [e.unsqueeze(seed, list(range(2, rank))), e.op("Shape", [y])])
        return seed, new_inputs

    def differentiate(self, rules: str, softmax: str, wrt: tuple[str, ...], target_kind: str):
        """Gradients of the stacked copies, as {wrt: [S, N, ...] value} (the clean copy dropped)."""
        seed, new_inputs = self.seed(target_kind)
        y = self.outputs[self.output]
        for name, stacked in self.outputs.items():  # the graph's outputs: the clean copy's
            self.e.op("Identity", [self.e.block(stacked, self.copies + 1, 0)], out=name)
        forward = self.ed.finish([])
        forward.graph.input.extend(new_inputs)
        forward.graph.value_info.extend(self._stacked_types(wrt))
        gg = differentiate(forward, rule_set(rules, softmax), wrt=[self.stacked[w] for w in wrt], output=y,
                           seed=SeedSpec("value", seed))
        self.ed = GraphEditor(gg.model, prefix=self.e.prefix)
        self.e = self.ed.e
        e = self.e
        out = {}
        for w in wrt:
            out[w] = e.block(gg.grads[self.stacked[w]], self.copies + 1, 1, self.copies + 1)
        self._drop = tuple(gg.grads.values())
        self.target_input = next((i.name for i in new_inputs if i.type.tensor_type.elem_type == onnx.TensorProto.INT64), None)
        self.seed_input = next((i.name for i in new_inputs if i.type.tensor_type.elem_type != onnx.TensorProto.INT64), None)
        return out

    def _stacked_types(self, wrt: tuple[str, ...]) -> list[onnx.ValueInfoProto]:
        """The types of the stacked inputs ([(S+1)·N, *sample shape]): their batch comes out of a
        Reshape whose shape is computed, and below opset 13 ONNX shape inference then loses even
        their rank, which the rules downstream need."""
        view = self.explainer.view
        types = []
        for w in wrt:
            shape = view.shape(w)
            if shape is None:
                continue
            dims = [f"{w}_stacked_batch"] + [d if isinstance(d, int) else None for d in shape[1:]]
            types.append(helper.make_tensor_value_info(self.stacked[w], view.elem_type(w), dims))
        return types

    def finish(self, attributions: dict[str, str]) -> AttributionGraph:
        model = self.ed.finish([(name, w) for w, name in attributions.items()], drop=self._drop)
        for w, name in attributions.items():
            vi = next(v for v in model.graph.output if v.name == name)
            vi.CopyFrom(helper.make_tensor_value_info(name, self.explainer.view.elem_type(w), list(self.explainer.view.shape(w) or [])))
        return AttributionGraph(model, attributions, self.target_input, self.seed_input)


def _per_sample(e, x: str, rank: int, reduce_op: str) -> str:
    return e.reduce(reduce_op, x, list(range(1, rank)), keepdims=1)


def build_smoothgrad(explainer, target_kind, softmax, wrt, base="gradient", n_samples=50, noise_level=0.15,
                     stdev=None, aggregation="mean", seed=0):
    from .smoothgrad import AGGREGATIONS, _check, standard_noise

    _check(n_samples, noise_level, aggregation)
    bases = {"gradient": "gradient", "saliency": "gradient", "guided_backprop": "guided_backprop",
             "deconvnet": "deconvnet", "input_x_gradient": "gradient"}
    if base not in bases:
        raise InvalidInputError(f"a compiled SmoothGrad runs over {sorted(bases)}, not {base!r}.")
    n_samples = int(n_samples)
    st = Stacked(explainer, wrt, n_samples, "smoothgrad")
    e = st.e
    noisy = {}
    for i, w in enumerate(wrt):
        spec = next(s for s in explainer.inputs if s.name == w)
        rank = len(spec.shape)
        sample_shape = tuple(explainer.view.shape(w)[1:])
        if not all(isinstance(d, int) for d in sample_shape):
            raise InvalidInputError(f"a compiled SmoothGrad needs the sample shape of {w!r} fixed, not {sample_shape}.")
        eps = e.const(standard_noise(seed + i, n_samples, sample_shape, spec.dtype)[:, None], name="noise")
        if stdev is not None:
            scale = e.const(np.asarray(stdev, spec.dtype), name="stdev")
        else:
            span = e.op("Sub", [_per_sample(e, w, rank, "ReduceMax"), _per_sample(e, w, rank, "ReduceMin")])
            scale = e.op("Mul", [span, e.const(np.asarray(noise_level, spec.dtype), name="noise_level")])
        noisy[w] = e.op("Add", [e.unsqueeze(w, [0]), e.op("Mul", [eps, e.unsqueeze(scale, [0])])])
        st.stack(w, noisy[w])
    grads = st.differentiate(bases[base], softmax, wrt, target_kind)
    e = st.e
    how = AGGREGATIONS[aggregation]
    out = {}
    for w in wrt:
        g = grads[w]
        if base == "input_x_gradient":
            g = e.op("Mul", [g, noisy[w]])
        mean = e.reduce("ReduceMean", g, [0], keepdims=0)
        name = e.fresh(f"{w}_smoothgrad")
        if how == "mean":
            e.op("Identity", [mean], out=name)
        else:
            squares = e.reduce("ReduceMean", e.op("Mul", [g, g]), [0], keepdims=0)
            if how == "square":
                e.op("Identity", [squares], out=name)
            else:
                e.op("Sub", [squares, e.op("Mul", [mean, mean])], out=name)
        out[w] = name
    return st.finish(out)


def build_integrated_gradients(explainer, target_kind, softmax, wrt, baselines=None, n_steps=50,
                               integration="gausslegendre", base="gradient"):
    from .integrated_gradients import quadrature

    if base not in ("gradient", "saliency", "guided_backprop", "deconvnet"):
        raise InvalidInputError(f"a compiled Integrated Gradients runs over gradient rule sets, not {base!r}.")
    alphas, weights = quadrature(integration, int(n_steps))
    st = Stacked(explainer, wrt, len(alphas), "integrated_gradients")
    e = st.e
    deltas = {}
    for w in wrt:
        spec = next(s for s in explainer.inputs if s.name == w)
        rank = len(spec.shape)
        b = baselines.get(w) if isinstance(baselines, dict) else baselines
        b = np.zeros((), spec.dtype) if b is None else np.asarray(b, spec.dtype)
        if b.ndim not in (0, rank - 1):
            raise InvalidInputError(f"a compiled Integrated Gradients takes a scalar baseline or one of the sample shape for {w!r}.")
        base_value = e.const(b, name="baseline")
        deltas[w] = e.op("Sub", [w, base_value])
        steps = e.const(alphas.astype(spec.dtype).reshape((-1,) + (1,) * rank), name="alphas")
        st.stack(w, e.op("Add", [base_value, e.op("Mul", [steps, e.unsqueeze(deltas[w], [0])])]))
    grads = st.differentiate("gradient" if base == "saliency" else base, softmax, wrt, target_kind)
    e = st.e
    out = {}
    for w in wrt:
        spec = next(s for s in explainer.inputs if s.name == w)
        wts = e.const(weights.astype(spec.dtype).reshape((-1,) + (1,) * len(spec.shape)), name="weights")
        total = e.reduce("ReduceSum", e.op("Mul", [grads[w], wts]), [0], keepdims=0)
        out[w] = e.op("Mul", [deltas[w], total], out=e.fresh(f"{w}_integrated_gradients"))
    return st.finish(out)

