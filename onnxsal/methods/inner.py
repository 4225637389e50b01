"""Explaining an inner tensor with a method that changes what is explained (Integrated Gradients,
SmoothGrad), in the Explainer's loop and in a compiled graph.

A gradient method reads the gradient at an inner tensor off one graph run. Integrated Gradients
needs more: the tensor itself interpolated between a baseline and its actual value, with the rest
of the model run on top, which is what Captum's LayerIntegratedGradients does by replacing a
layer's output. Here the model is cut at the tensor: its producer's work is dropped and the
tensor becomes a graph input, fed with the value the full model computes (or a baseline). Inputs
the rest of the model still reads (an attention mask, the ids a position range is sized from) stay
inputs and are fed as they are; ids no longer read stay declared, so the same feeds serve.
A compiled graph is built on the cut model, and the nodes that compute the tensor are copied in
front of it (`build_on_cut`), so that it takes the model's own inputs again.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import InvalidInputError
from ..runtime import create_session, run
from .graphs import GraphEditor


def cut_model(model: onnx.ModelProto, names: tuple[str, ...], view) -> onnx.ModelProto:
    """`model` with each tensor of `names` a graph input (typed as the view infers it) and the nodes
    that only served to compute them removed."""
    cut = onnx.ModelProto.FromString(model.SerializeToString())
    g = cut.graph
    needed = {o.name for o in g.output}
    kept = []
    for node in reversed(list(view.nodes)):  # the view's nodes, topologically ordered and named
        if any(o in needed for o in node.output) and not all(o in names for o in node.output if o):
            kept.append(node)
            needed.update(_reads(node))
    kept.reverse()
    for node in kept:  # a kept node with several outputs (Split) no longer defines the ones now fed
        for i, o in enumerate(node.output):
            if o in names:
                node.output[i] = f"{o}/computed"
    del g.node[:]
    g.node.extend(kept)
    for name in names:
        shape = view.shape(name)
        # named dims are left unnamed: inference names an inner tensor's batch unlike the inputs' ('unk__0'),
        # and a free leading dim lets the inputs that share the batch (a mask) be split with it
        dims = None if shape is None else [d if isinstance(d, int) else None for d in shape]
        g.input.append(onnx.helper.make_tensor_value_info(name, view.elem_type(name) or onnx.TensorProto.FLOAT, dims))
    drop = [vi for vi in g.value_info if vi.name in names]
    for vi in drop:
        g.value_info.remove(vi)
    used = needed | {i.name for i in g.input}
    initializers = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(initializers)
    return cut


def _reads(node: onnx.NodeProto) -> set[str]:
    from ..autodiff.graph import node_inputs

    return set(node_inputs(node))


def cut_explainer(explainer, names: tuple[str, ...]):
    """The Explainer of the model cut at `names` (cached on `explainer`)."""
    from ..explainer import Explainer

    key = ("cut", names)
    if key not in explainer._children:
        child = object.__new__(Explainer)
        child._setup(cut_model(explainer.model, names, explainer.view), explainer.providers, explainer._strict_cuda,
                     explainer._options, explainer.output, explainer.specialised_on)
        explainer._children[key] = child
    return explainer._children[key]


def on_cut(explainer, feeds: dict[str, np.ndarray], wrt: tuple[str, ...]):
    """(the Explainer of the model cut at the inner tensors of `wrt`, the feeds plus their values):
    a sampling method run there perturbs the inner tensors as it perturbs inputs."""
    inner = tuple(name for name in wrt if name not in feeds)
    return cut_explainer(explainer, inner), {**feeds, **inner_values(explainer, feeds, inner)}


def inner_values(explainer, feeds: dict[str, np.ndarray], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The values the model computes at `names` for `feeds` (a forward run with them as outputs)."""
    key = ("inner_values", names)
    if key not in explainer._sessions:
        ed = GraphEditor(explainer.model)
        outs = [(n, explainer.view.elem_type(n) or onnx.TensorProto.FLOAT, None) for n in names
                if n not in explainer.view.output_names]
        explainer._sessions[key] = (None, create_session(ed.finish(outs), explainer.providers, explainer._options))
    return dict(zip(names, run(explainer._sessions[key][1], list(names), feeds)))


def inner_baselines(explainer, feeds: dict[str, np.ndarray], names: tuple[str, ...], values: dict[str, np.ndarray],
                    baselines) -> dict[str, np.ndarray]:
    """The baseline of each explained inner tensor.

    - None or a number: that constant (zeros by default), as for an input;
    - a float array of the tensor's shape (or its shape without the batch): given;
    - integer ids (an int array, or a dict naming model inputs such as {"input_ids": pad_ids}): the
      value the model computes at the tensor when fed those inputs (the others as they are), as
      LayerIntegratedGradients computes a layer's baseline from baseline ids;
    - a dict by tensor name of any of the above."""
    from .integrated_gradients import baseline_for

    inputs = {s.name: s for s in explainer.inputs}
    if isinstance(baselines, str):
        raise InvalidInputError(f"baselines={baselines!r} names no baseline here: pass the baseline token ids as an "
                                f"array (onnxsal.text.reference_ids), a float array or a number ('ids' is for compile).")
    if isinstance(baselines, dict):
        unknown = [k for k in baselines if k not in inputs and k not in names]
        if unknown:
            raise InvalidInputError(f"baselines names {unknown[0]!r}, which is neither a model input nor an explained "
                                    f"tensor ({list(inputs)} / {list(names)}).")
        fed = {k: v for k, v in baselines.items() if k in inputs}
        given = {k: v for k, v in baselines.items() if k in names}
    elif baselines is not None and np.asarray(baselines).dtype.kind in "iu" and np.asarray(baselines).ndim > 0:
        from ..text.embeddings import token_ids_input

        ids = token_ids_input(explainer.view)
        if ids is None:
            raise InvalidInputError("integer baselines are token ids, but the model has no embedding lookup to feed them "
                                    "to; pass a float baseline of the explained tensor's shape, or a dict by input name.")
        fed, given = {ids: baselines}, {}
    else:
        fed, given = {}, {name: baselines for name in names}
    out = {name: baseline_for(name, values[name], given.get(name)) for name in names}
    if fed:
        base_feeds = dict(feeds)
        for name, value in fed.items():
            arr = np.asarray(value)
            want = feeds[name]
            if arr.dtype.kind != want.dtype.kind and not (arr.dtype.kind in "iu" and want.dtype.kind in "iu"):
                raise InvalidInputError(f"the baseline for input {name!r} must hold {want.dtype} values like the input, "
                                        f"not {arr.dtype}.")
            if arr.shape == want.shape[1:]:
                arr = np.broadcast_to(arr, want.shape)
            if arr.shape != want.shape:
                raise InvalidInputError(f"the baseline for input {name!r} must have shape {want.shape} (or "
                                        f"{want.shape[1:]}), got {arr.shape}.")
            base_feeds[name] = np.ascontiguousarray(arr, dtype=want.dtype)
        computed = inner_values(explainer, base_feeds, names)
        out.update({name: computed[name].astype(values[name].dtype) for name in names if name not in given})
    return out


def _producers(view, names: tuple[str, ...]) -> list[onnx.NodeProto]:
    """The nodes that compute `names` from the graph inputs and constants, in graph order."""
    needed, closure = set(names), set()
    for node in reversed(view.nodes):
        if any(o in needed for o in node.output):
            closure.add(node.name)
            needed.update(_reads(node))
    return [n for n in view.nodes if n.name in closure]


def _copy(nodes: list[onnx.NodeProto], prefix: str, finals: dict[str, str], inputs: dict[str, str]) -> list[onnx.NodeProto]:
    """Copies of `nodes` whose values are renamed `prefix`+name (the final ones as `finals` says),
    reading graph inputs renamed by `inputs`."""
    rename = dict(inputs)
    out = []
    for node in nodes:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            from ..errors import UnsupportedModelError

            raise UnsupportedModelError(f"node {node.name!r} ({node.op_type}) computes the explained tensor inside a "
                                        f"subgraph; a compiled graph cannot copy it (Explainer.attribute can explain it).")
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = prefix + node.name
        for i, x in enumerate(copy.input):
            copy.input[i] = rename.get(x, x)
        for i, o in enumerate(copy.output):
            if o:
                rename[o] = finals.get(o, prefix + o)
                copy.output[i] = rename[o]
        out.append(copy)
    return out


def build_inner_integrated_gradients(explainer, target_kind, softmax, wrt, baselines, n_steps, integration, base):
    """Compiled Integrated Gradients of inner tensors (see `build_on_cut`). `baselines`: zeros
    (None), a scalar or an array of the tensor's sample shape, or "ids": the graph then takes the
    baseline token ids as an input of its own (`baseline_<ids input>`), run through a copy of the
    same embedding nodes (the other inputs as they are), as the Explainer does with baseline ids."""
    from ..text.embeddings import token_ids_input
    from .expand import ValueName, build_integrated_gradients

    inner = tuple(w for w in wrt if w not in {s.name for s in explainer.inputs})
    by_ids = isinstance(baselines, str)
    if by_ids and baselines != "ids":
        raise InvalidInputError(f"a compiled Integrated Gradients of an inner tensor takes baselines None, a number, "
                                f"an array of the tensor's sample shape or 'ids', not {baselines!r}.")
    ids = token_ids_input(explainer.view) if by_ids else None
    if by_ids and ids is None:
        raise InvalidInputError("baselines='ids' needs a model that reads token ids through an embedding lookup.")
    child_baselines = {w: ValueName(f"{w}/baseline") for w in inner} if by_ids else baselines
    return build_on_cut(explainer, wrt, lambda child: build_integrated_gradients(
        child, target_kind, softmax, wrt, child_baselines, n_steps, integration, base), baseline_ids=ids)


def build_on_cut(explainer, wrt, build, baseline_ids: str | None = None):
    """A compiled sampling graph (samples stacked inside) of inner tensors: `build` run on the model cut
    at them, with the nodes that compute them from the inputs copied in front; with `baseline_ids`
    (the ids input), a second copy reads `baseline_<ids>`, a new input, and computes `<tensor>/baseline`."""
    from ..autodiff.graph import topological_order
    from .graphs import AttributionGraph

    inner = tuple(w for w in wrt if w not in {s.name for s in explainer.inputs})
    graph = build(cut_explainer(explainer, inner))
    model = graph.model
    g = model.graph
    nodes = _producers(explainer.view, inner)
    front = _copy(nodes, "embed/", {w: w for w in inner}, {})
    new_inputs = []
    if baseline_ids is not None:
        name = f"baseline_{baseline_ids}"
        front += _copy(nodes, "baseline/", {w: f"{w}/baseline" for w in inner}, {baseline_ids: name})
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(next(i for i in explainer.model.graph.input if i.name == baseline_ids))
        vi.name = name
        new_inputs.append(vi)
    kept_inputs = [i for i in g.input if i.name not in inner]
    del g.input[:]
    g.input.extend(kept_inputs + new_inputs)
    have = {t.name for t in g.initializer}
    reads = {x for n in front for x in _reads(n)}
    g.initializer.extend(t for t in explainer.model.graph.initializer if t.name in reads and t.name not in have)
    available = {i.name for i in g.input} | {t.name for t in g.initializer}
    ordered = topological_order(front + list(g.node), available)
    del g.node[:]
    g.node.extend(ordered)
    return AttributionGraph(model, graph.attributions, graph.target_input, graph.seed_input, graph.extras)
