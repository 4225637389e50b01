"""SmoothGrad and Integrated Gradients compiled into one graph, their samples batched inside it.

The compiled graph takes the model's inputs (plus a target) and stacks, along the batch axis,
the clean inputs and S perturbed copies of each sample: [x ; x_1 ; ... ; x_S]. The model runs
once on that stack; its outputs for the clean copy are the graph's outputs, the top class is taken
there, and the gradients of the S copies are reduced to the attribution inside the graph.
The noise (SmoothGrad) and the nodes and weights (IG) are the same constants the Explainer's
batched loop uses, so both paths give the same numbers.

The other inputs are stacked as the Explainer batches them (`stacking_axes`, which asks the
Explainer's own rule, `batch_axes`): an input holding the batch on some axis is tiled S+1 times
along it (a recurrent state [layers, N, H] along axis 1), one without it (a scalar sample rate, a
mask shared by every sample) is fed as it is, and one whose leading dim is batched only when it has
the batch's size is tiled by a repeat count the graph computes from that size at run time.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..autodiff import SeedSpec, differentiate, rule_set
from ..autodiff.seeds import class_one_hot, spread_over_map
from ..errors import InvalidInputError, UnsupportedModelError
from ..prepare import lower
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
        self.axes = stacking_axes(explainer, wrt, prefix)
        stacked = [name for name in inputs if name in wrt or self.axes[name] is not None]
        self.stacked = {name: f"{name}/stacked" for name in stacked}
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
        self.batch_input = explainer._batch_input(wrt)
        for name in stacked:
            if name not in wrt:
                self._tile(name, self.axes[name])

    def _tile(self, name: str, axis) -> None:
        """Feed input `name` repeated S+1 times along its batch `axis` ("leading": along axis 0
        when its leading dim has the batch's size at run time, else once)."""
        e = self.e
        rank = self.explainer.view.rank(name)
        if axis == LEADING:
            same = e.op("Equal", [e.slice(e.op("Shape", [name]), [0], [1], [0]),
                                  e.slice(e.op("Shape", [self.batch_input]), [0], [1], [0])])
            lead = e.op("Add", [e.ints([1], name="one"), e.op("Mul", [e.cast(same, np.int64), e.ints([self.copies], name="more")])])
            repeats = e.op("Concat", [lead, e.ints([1] * (rank - 1), name="repeats")], axis=0) if rank > 1 else lead
        else:
            repeats = e.ints([self.copies + 1 if i == axis else 1 for i in range(rank)], name="repeats")
        e.op("Tile", [name, repeats], out=self.stacked[name])

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
        shape = self.explainer.view.shape(self.output) or spec.shape
        k = shape[1] if shape is not None and len(shape) > 1 and isinstance(shape[1], int) and shape[1] > 0 else None
        seed = class_one_hot(e, e.op("Tile", [index, repeats]), y, k, spec.dtype)
        return spread_over_map(e, seed, y, rank), new_inputs

    def differentiate(self, rules: str, softmax: str, wrt: tuple[str, ...], target_kind: str):
        """Gradients of the stacked copies, as {wrt: [S, N, ...] value} (the clean copy dropped)."""
        seed, new_inputs = self.seed(target_kind)
        y = self.outputs[self.output]
        for name, stacked in self.outputs.items():  # the graph's outputs: the clean copy's
            self.e.op("Identity", [self.e.block(stacked, self.copies + 1, 0)], out=name)
        forward = self.ed.finish([])
        forward.graph.input.extend(new_inputs)
        forward.graph.value_info.extend(self._stacked_types(wrt))
        rs = rule_set(rules, softmax)
        forward = lower(forward, rs.supports, [self.stacked[w] for w in wrt], y)  # as gradient_graph lowers (GRU, ...)
        gg = differentiate(forward, rs, wrt=[self.stacked[w] for w in wrt], output=y, seed=SeedSpec("value", seed))
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
        """The types of the stacked inputs ([(S+1)·N, *sample shape], the batch on the axis the input
        holds it): their batch comes out of a Reshape or Tile whose shape is computed, and below
        opset 13 ONNX shape inference then loses even their rank, which the rules downstream need."""
        view = self.explainer.view
        types = []
        for w in self.stacked:
            shape = view.shape(w)
            if shape is None:
                continue
            axis = 0 if w in wrt else self.axes[w]
            dims = [d if isinstance(d, int) else None for d in shape]
            if axis == LEADING:
                dims[0] = None  # tiled or not, as the run-time sizes decide
            else:
                dims[axis] = "stacked_batch"  # one name: every stacked batch is (S+1)·N, so rules see them equal
            types.append(helper.make_tensor_value_info(self.stacked[w], view.elem_type(w), dims))
        return types

    def finish(self, attributions: dict[str, str]) -> AttributionGraph:
        model = self.ed.finish([(name, w) for w, name in attributions.items()], drop=self._drop)
        for w, name in attributions.items():
            vi = next(v for v in model.graph.output if v.name == name)
            vi.CopyFrom(helper.make_tensor_value_info(name, self.explainer.view.elem_type(w), list(self.explainer.view.shape(w) or [])))
        return AttributionGraph(model, attributions, self.target_input, self.seed_input)


class ValueName(str):
    """A baseline given as the name of a value in the graph rather than as numbers."""


LEADING = "leading"  # batched on axis 0 exactly when its leading dim has the batch's size
_PROBE = 7919  # a batch size no file fixes a dim to, for asking `batch_axes` about declared shapes


def stacking_axes(explainer, wrt: tuple[str, ...], prefix: str) -> dict[str, int | str | None]:
    """For each input not explained, the axis the Explainer batches it on (None: fed whole), as the
    Explainer's own rule (`Explainer.batch_axes`) decides from the declared shapes.

    The rule looks at fed arrays, which a compiled graph does not have: it is asked twice, on
    shape-only arrays whose leading dim does and does not have the batch's size. Where the two
    answers differ, the graph decides at run time (`LEADING`)."""
    specs = {s.name: s for s in explainer.inputs}
    symbol = (specs[explainer._batch_input(wrt)].shape or (None,))[0]
    others = [name for name in specs if name not in wrt]
    for name in others:
        if specs[name].shape is None:
            raise UnsupportedModelError(
                f"a compiled {prefix} cannot tell whether input {name!r} holds the batch, as the file does not declare "
                f"its rank; declare its shape in the file, or use Explainer.attribute.")

    def probe(lead: int) -> dict[str, int | None]:
        feeds = {}
        for name, spec in specs.items():
            dims = spec.shape if spec.shape is not None else (None,)
            shape = [_PROBE if (i == 0 and name not in others) or (isinstance(symbol, str) and d == symbol)
                     else lead if i == 0 else (d if isinstance(d, int) and d > 0 else 1) for i, d in enumerate(dims)]
            feeds[name] = np.broadcast_to(np.zeros((), spec.dtype), shape)
        return explainer.batch_axes(feeds, wrt)

    same, other = probe(_PROBE), probe(_PROBE + 1)
    return {name: same[name] if same[name] == other[name] else LEADING for name in others}


def _per_sample(e, x: str, rank: int, reduce_op: str) -> str:
    return e.reduce(reduce_op, x, list(range(1, rank)), keepdims=1)


def build_smoothgrad(explainer, target_kind, softmax, wrt, base="gradient", n_samples=50, noise_level=0.15,
                     stdev=None, aggregation="mean", seed=0):
    from .smoothgrad import AGGREGATIONS, _check, standard_noise

    _check(n_samples, noise_level, aggregation)
    if any(w not in {s.name for s in explainer.inputs} for w in wrt):  # inner tensors: on the model cut there
        from .inner import build_on_cut

        return build_on_cut(explainer, wrt, lambda child: build_smoothgrad(
            child, target_kind, softmax, wrt, base, n_samples, noise_level, stdev, aggregation, seed))
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
    if any(w not in {s.name for s in explainer.inputs} for w in wrt):  # inner tensors: on the model cut there
        from .inner import build_inner_integrated_gradients

        return build_inner_integrated_gradients(explainer, target_kind, softmax, wrt, baselines, n_steps, integration, base)
    alphas, weights = quadrature(integration, int(n_steps))
    st = Stacked(explainer, wrt, len(alphas), "integrated_gradients")
    e = st.e
    deltas = {}
    for w in wrt:
        spec = next(s for s in explainer.inputs if s.name == w)
        rank = len(spec.shape)
        b = baselines.get(w) if isinstance(baselines, dict) else baselines
        if isinstance(b, ValueName):  # a value the finished graph will compute (an inner tensor's baseline)
            base_value = str(b)
        else:
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

