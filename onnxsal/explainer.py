"""`Explainer`: one model, its gradient graphs and sessions, and `attribute(...)` on top.

Graphs are built on the model as the file gives it (dynamic shapes) wherever every gradient rule
allows it. When a rule needs a shape the file leaves dynamic (`NeedsShapesError`), `attribute`
builds instead on a child Explainer whose model is specialised on the call's concrete input shapes
(`onnxsal.prepare.specialise`): first with the explained input's batch axis left free, so that one
graph serves every batch size and a smaller last chunk, and with the batch fixed too only when a
rule needs that as well. Children are cached per input signature: a folder of same-sized images
builds once, another size once more. The methods see a child as they see any Explainer.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager

import numpy as np
import onnx

from . import methods as _methods
from .autodiff import GradientGraph, SeedSpec, differentiate, rule_set
from .autodiff.graph import GraphView
from .errors import InvalidInputError, NeedsShapesError, UnsupportedModelError
from .methods import modifiers as _modifiers
from .methods.graphs import AttributionGraph
from .inputs import (Target, TensorSpec, batch_axes, check_feeds, check_target, model_inputs, normalise_input_shapes,
                     specs, take)
from .model_io import load_model
from .prepare import lower
from .runtime import create_session, resolve_providers, run

Shapes = dict[str, list[int | None]]
SMALL_VALUE_ELEMENTS = 64  # integer inputs up to this size are written into a specialised graph


class Explainer:
    """Explains one ONNX model.

    `model` is a path, bytes or an `onnx.ModelProto`; `providers` is "auto" (CUDA when
    onnxruntime-gpu can use a GPU, else CPU), "cpu", "cuda" or an onnxruntime provider list.
    `output` names the output to explain (default: the first).
    """

    def __init__(self, model, providers="auto", output: str | None = None, session_options=None):
        strict = isinstance(providers, str) and providers.lower() == "cuda"
        self._setup(load_model(model), resolve_providers(providers), strict, session_options, output)

    def _setup(self, model: onnx.ModelProto, providers, strict: bool, options, output: str | None,
               specialised_on: Shapes | None = None) -> None:
        self.model = model
        self.providers = providers
        self._strict_cuda = strict
        self._options = options
        self.inputs: list[TensorSpec] = model_inputs(self.model)
        self.outputs: list[TensorSpec] = specs(self.model.graph.output)
        names = [o.name for o in self.outputs]
        if output is not None and output not in names:
            raise InvalidInputError(f"the model has no output named {output!r}; its outputs are {names}.")
        self.output = output or names[0]
        self.specialised_on = specialised_on  # the input dims this model was specialised on (None: the file's own)
        self._graphs: dict[tuple, GradientGraph] = {}
        self._sessions: dict[tuple, tuple[AttributionGraph, object]] = {}
        self._forward = None
        self._view: GraphView | None = None
        self._children: dict[tuple, Explainer] = {}  # specialised Explainers by input signature
        self._needs_shapes: dict[tuple, NeedsShapesError] = {}  # method graphs the file's own shapes cannot build
        self._fixed_batch: set[tuple] = set()  # ... nor the free-batch specialisation
        self._layouts: dict[tuple, tuple] = {}  # real output shape and batch axis, by input signature
        self._call: tuple | None = None  # (feeds, batch axes, batch size) of the attribute call in progress

    # -- specialisation -------------------------------------------------------------------------------
    def specialised(self, input_shapes, input_values: dict[str, np.ndarray] | None = None) -> Explainer:
        """This model specialised on `input_shapes` (a dict of input name -> dims, or one sequence of
        dims for a single-input model; an int fixes a dim, None leaves it dynamic) and on the values of
        `input_values` (small integer inputs, such as a sample rate, written in as constants so that
        what they decide folds away), as an Explainer of its own, cached per signature: its graphs
        are built on the specialised model."""
        from .prepare.specialise import specialise

        shapes = normalise_input_shapes(input_shapes, self.inputs)
        values = dict(input_values or {})
        key = (tuple(sorted((name, tuple(dims)) for name, dims in shapes.items())),
               tuple(sorted((name, v.dtype.str, v.shape, v.tobytes()) for name, v in values.items())))
        if key not in self._children:
            child = object.__new__(Explainer)
            child._setup(specialise(self.model, shapes, values), self.providers, self._strict_cuda, self._options,
                         self.output, shapes)
            self._children[key] = child
        return self._children[key]

    def _values_of(self, feeds: dict[str, np.ndarray], axes: dict[str, int | None]) -> dict[str, np.ndarray]:
        """The fed values a specialisation writes in: small integer and boolean inputs fed whole to
        every chunk (a sample rate, a mode flag), which may decide an If that has no gradient rule."""
        return {name: a for name, a in feeds.items()
                if axes.get(name) is None and a.dtype.kind in "iub" and a.size <= SMALL_VALUE_ELEMENTS}

    def _shapes_of(self, feeds: dict[str, np.ndarray], axes: dict[str, int | None], fix_batch: bool) -> Shapes:
        """The signature of fed arrays: every dim fixed, the batch axes too only with `fix_batch`."""
        return {name: [None if (axes.get(name) == i and not fix_batch) else int(d) for i, d in enumerate(a.shape)]
                for name, a in feeds.items() if name in {s.name for s in self.inputs}}

    @contextmanager
    def _calling(self, feeds: dict[str, np.ndarray], axes: dict[str, int | None], batch_size: int | None):
        """Within an attribute call: graphs the file's shapes cannot build are built for these feeds."""
        previous, self._call = self._call, (feeds, axes, batch_size or None)
        try:
            yield
        finally:
            self._call = previous

    def _specialised_graph(self, key: tuple, build: Callable[[Explainer], tuple]):
        """(graph, session) of `build` on the child specialised on the call's shapes, batch axis free
        when that suffices; else a session that builds per batch size (`_PerBatch`)."""
        feeds, axes, _ = self._call
        if key not in self._fixed_batch:
            try:
                return build(self.specialised(self._shapes_of(feeds, axes, fix_batch=False), self._values_of(feeds, axes)))
            except NeedsShapesError:
                self._fixed_batch.add(key)
        rows = slice(0, self._call[2])  # the first chunk's shapes: a graph for a batch size that runs
        first = {name: take(a, axes.get(name), rows) for name, a in feeds.items()}
        graph, session = build(self.specialised(self._shapes_of(first, axes, fix_batch=True), self._values_of(first, axes)))
        return graph, _PerBatch(self, build, graph, session, axes)

    def _fix_dims_hint(self, exc: NeedsShapesError) -> str:
        """The refusal of a graph that needs shapes, with the dims to fix and how."""
        why = str(exc).split("; fix the input shape")[0].rstrip(".")
        free = [s for s in self.inputs if s.shape is None or not all(isinstance(d, int) and d > 0 for d in s.shape)]
        if not free:
            return str(exc)
        example = {s.name: tuple(1 if i == 0 else (d if isinstance(d, int) and d > 0 else (d or "?"))
                                 for i, d in enumerate(s.shape or ("?",))) for s in free}
        text = ", ".join(f"{s.name} {s.describe()}" for s in free)
        flags = " ".join("--input-shape " + ("" if len(self.inputs) == 1 else f"{name}=") + ",".join(map(str, d))
                         for name, d in example.items())
        return (f"{why}; the dynamic dims of {text} must be fixed: pass input_shapes={example} with your sizes "
                f"(CLI: {flags}).")

    # -- graphs and sessions ------------------------------------------------------------------------
    def _wrt(self, wrt) -> tuple[str, ...]:
        """The values explained: the names given ("embeddings", "embeddings:sum", "embeddings:output"
        name a token model's embeddings: `onnxsal.text.embeddings`), else the first float input, else
        (a token model) its word embeddings."""
        from .text.embeddings import ALIASES, resolve, token_ids_input

        if wrt is None:
            floats = [s.name for s in self.inputs if s.dtype.kind == "f"]
            if floats:
                return (floats[0],)
            if token_ids_input(self.view) is None:
                raise InvalidInputError("the model has no float input and no embedding lookup to explain; name the value with wrt=.")
            wrt = "embeddings"
        names = (wrt,) if isinstance(wrt, str) else tuple(wrt)
        return tuple(resolve(self.view, w) if w in ALIASES else w for w in names)

    def _batch_input(self, wrt=None) -> str:
        """The input whose leading axis is the batch: the first explained model input, else the
        first float input (when an inner value is explained), else the first input."""
        names = [s.name for s in self.inputs]
        floats = [s.name for s in self.inputs if s.dtype.kind == "f"]
        explained = [w for w in self._wrt(wrt) if w in names] if wrt is not None or floats else []
        if not explained and not floats:  # a token model explained from its embeddings: the batch is the ids'
            from .text.embeddings import token_ids_input

            explained = [name for name in [token_ids_input(self.view)] if name in names]
        return (explained or floats or names)[0]

    def batch_axes(self, feeds: dict[str, np.ndarray], wrt=None) -> dict[str, int | None]:
        """Where each fed input holds the explained input's batch (None: fed whole to every chunk)."""
        return batch_axes(feeds, self.inputs, self._batch_input(wrt))

    def gradient_graph(
        self, rules: str = "gradient", softmax: str = "identity", seed: str = "argmax", wrt=None, extra_outputs: Sequence[str] = ()
    ) -> GradientGraph:
        """The (cached) gradient graph for a rule set, softmax policy, seed kind and wrt values, on this
        Explainer's model as it is (NeedsShapesError when a rule needs shapes it leaves dynamic: see
        `specialised`)."""
        key = ("gradient_graph", rules, softmax, seed, self._wrt(wrt), tuple(extra_outputs))
        if key not in self._graphs:
            rs = rule_set(rules, softmax)
            for w in key[4]:
                if w not in self.view.producer and w not in self.view.input_names:
                    raise UnsupportedModelError(f"the model has no input or inner value named {w!r}.")
            model = lower(self.model, rs.supports, list(key[4]), self.output)
            self._graphs[key] = differentiate(model, rs, wrt=list(key[4]), output=self.output,
                                              seed=SeedSpec(seed), extra_outputs=list(extra_outputs))
        return self._graphs[key]

    def method_graph(self, method: str, target_kind: str = "argmax", softmax: str = "identity", wrt=None, **options):
        """The (cached) attribution graph of a graph method, and its session.

        Inside `attribute`, a graph that the model's own shapes cannot build is built on the model
        specialised on the call's input shapes."""
        m = _methods.get(method)
        if m.build is None:
            raise InvalidInputError(f"method {method!r} is not one graph run; graph methods: {_methods.compilable()}.")
        key = ("method", method, target_kind, softmax, self._wrt(wrt), freeze(options))
        if key in self._needs_shapes:
            if self._call is None:
                raise self._needs_shapes[key]
            return self._specialised_graph(key, lambda child: child.method_graph(method, target_kind, softmax, wrt, **options))
        if key not in self._sessions:
            try:
                graph = m.build(self, target_kind, softmax, self._wrt(wrt), **options)
            except NeedsShapesError as exc:
                if self._call is None:
                    raise
                self._needs_shapes[key] = exc
                return self.method_graph(method, target_kind, softmax, wrt, **options)
            self._sessions[key] = (graph, self._session(graph.model))
        return self._sessions[key]

    def run_graph(self, graph: AttributionGraph, session, feeds: dict[str, np.ndarray], target: Target,
                  batch_size: int | None = None, names: Sequence[str] | None = None,
                  axes: dict[str, int | None] | None = None) -> dict[str, np.ndarray]:
        """Run an attribution graph over checked feeds in chunks of `batch_size` samples.

        Inputs without the batch (`axes[name]` None) are fed whole to every chunk. Returns the
        attributions by explained value (and any `names` asked for, by name).
        """
        axes = self.batch_axes(feeds) if axes is None else axes
        wanted = list(graph.attributions.values()) + list(names or [])
        n = _count(feeds, axes)
        step = n if not batch_size or batch_size >= n else int(batch_size)
        # class indices are checked against the classes the model returns, which a file may declare wrongly
        outputs = {o.name for o in graph.model.graph.output}
        scores = [self.output] if target.kind == "target" and self.output in outputs and self.output not in wanted else []
        parts: list[list[np.ndarray]] = [[] for _ in wanted]
        for lo in range(0, n, step):
            rows = slice(lo, lo + step)
            chunk = {k: take(v, axes.get(k), rows) for k, v in feeds.items()}
            if target.kind == "target":
                chunk[graph.target_input] = target.take(rows)
            elif target.kind == "tensor":
                chunk[graph.seed_input] = target.take(rows)
            outs = run(session, wanted + scores, chunk)
            if scores:
                _check_classes(self.output, outs.pop(), chunk[graph.target_input])
            for i, out in enumerate(outs):
                parts[i].append(out)
        joined = [np.concatenate(p, axis=0) if len(p) > 1 else p[0] for p in parts]
        result = dict(zip(graph.attributions.keys(), joined))
        result.update(zip(names or [], joined[len(graph.attributions):]))
        return result

    def graph_session(self, model: onnx.ModelProto, save_optimised=None):
        """A session for a built (or compiled) graph on this Explainer's providers; with
        `save_optimised` (a path), ONNX Runtime also writes the graph it optimised there."""
        if save_optimised is None:
            return self._session(model)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.optimized_model_filepath = str(save_optimised)
        return self._session(model, options)

    def _session(self, model: onnx.ModelProto, options=None):
        """A session for a built graph, loaded with the forward outputs' declared sizes left out:
        onnxruntime folds Shape(y) from a declared size, and files declare sizes their models do
        not return. The model itself is left as it was."""
        forward = {o.name for o in self.outputs}
        saved = []
        for vi in model.graph.output:
            if vi.name in forward and vi.type.tensor_type.HasField("shape"):
                saved.append((vi, onnx.TypeProto.FromString(vi.type.SerializeToString())))
                for d in vi.type.tensor_type.shape.dim:
                    if d.HasField("dim_value"):
                        d.Clear()
        try:
            return create_session(model, self.providers, options or self._options, strict=self._strict_cuda)
        finally:
            for vi, declared in saved:
                vi.type.CopyFrom(declared)

    @property
    def view(self) -> GraphView:
        """The analysed forward graph (shapes, producers, layouts), computed once."""
        if self._view is None:
            self._view = GraphView(self.model)
        return self._view

    @property
    def forward_session(self):
        if self._forward is None:
            self._forward = create_session(self.model, self.providers, self._options, strict=self._strict_cuda)
        return self._forward

    @property
    def session_providers(self) -> list[str]:
        """The providers onnxruntime actually runs this model with."""
        return self.forward_session.get_providers()

    # -- running --------------------------------------------------------------------------------------
    def feeds(self, inputs) -> dict[str, np.ndarray]:
        return check_feeds(inputs, self.inputs)

    def predict(self, inputs) -> np.ndarray:
        """The explained output for `inputs` (the forward pass alone)."""
        feeds = self.feeds(inputs)
        return run(self.forward_session, [self.output], feeds)[0]

    def n_classes(self) -> int | None:
        """The class count the file declares (axis 1 of the explained output), None when it does not."""
        spec = next(o for o in self.outputs if o.name == self.output)
        if spec.shape is not None and len(spec.shape) >= 2 and isinstance(spec.shape[1], int) and spec.shape[1] > 0:
            return spec.shape[1]
        return None

    def output_layout(self, feeds: dict[str, np.ndarray], axes: dict[str, int | None] | None = None) -> tuple[tuple, int | None]:
        """(shape, batch axis) of the explained output as the model really returns it for these feeds,
        from a forward run on two samples (all of them where the file fixes the batch; cached per input
        signature; the batch dim of the shape is None). The batch axis is the one the file names like the input's batch, else axis 0
        when it has the samples' count, else the only axis that has it; None when none can be told."""
        axes = self.batch_axes(feeds) if axes is None else axes
        key = (tuple(sorted((k, tuple(d)) for k, d in self._shapes_of(feeds, axes, fix_batch=False).items())),
               tuple(sorted((k, v.tobytes()) for k, v in self._values_of(feeds, axes).items())))
        if key not in self._layouts:
            n = _count(feeds, axes)
            k = n if self._file_fixes_batch(axes) else min(n, 2)
            few = {name: take(a, axes.get(name), slice(0, k)) for name, a in feeds.items()}
            shape = tuple(run(self.forward_session, [self.output], few)[0].shape)
            self._layouts[key] = (shape, _output_batch_axis(shape, k, self._declared_output(), self._batch_symbol()))
        shape, axis = self._layouts[key]
        return tuple(None if i == axis else d for i, d in enumerate(shape)), axis

    def _file_fixes_batch(self, axes: dict[str, int | None]) -> bool:
        """Whether the file declares a fixed size for a batch axis (it then runs on that many samples only)."""
        return any(s.shape is not None and isinstance(s.shape[axes[s.name]], int)
                   for s in self.inputs if axes.get(s.name) is not None)

    def _declared_output(self) -> tuple | None:
        return next(o for o in self.outputs if o.name == self.output).shape

    def _batch_symbol(self) -> str | None:
        spec = next((s for s in self.inputs if s.name == self._batch_input()), None)
        lead = spec.shape[0] if spec is not None and spec.shape else None
        return lead if isinstance(lead, str) else None

    def _declaration_settles(self, n: int) -> bool:
        """Whether the file's declared output shape clearly holds the batch on axis 0 (a named or
        free leading dim, or the batch's size, followed by fixed dims): then no forward run is needed."""
        declared = self._declared_output()
        if not declared:
            return False
        lead, rest = declared[0], declared[1:]
        return (not isinstance(lead, int) or lead == n) and all(isinstance(d, int) and d > 0 for d in rest)

    def target(self, target, feeds: dict[str, np.ndarray], axes: dict[str, int | None] | None = None) -> Target:
        """`target` checked against the explained output as the model returns it (declared shapes can be
        wrong): seeds against a forward run on a sample (cached per input signature), class indices
        against the declared class count when the file gives one and they fit it, else that run too."""
        axes = self.batch_axes(feeds) if axes is None else axes
        n = _count(feeds, axes)
        spec = next(o for o in self.outputs if o.name == self.output)
        settled = self._declaration_settles(n)
        if target is None and settled:
            return Target("argmax")
        k = self.n_classes()
        if settled and k is not None and np.asarray(target).dtype.kind in "iu":
            try:  # class indices are checked again against what each run returns (`run_graph`)
                return check_target(target, n, k, spec.shape, spec.dtype)
            except InvalidInputError:
                pass  # the declaration may be wrong: check against the real output below
        shape, axis = self.output_layout(feeds, axes)
        if axis != 0:
            _refuse_class_targets(self.output, target, shape, axis, n)
        k = shape[1] if axis == 0 and len(shape) >= 2 else None
        return check_target(target, n, k, shape, spec.dtype, batch_axis=axis)

    def top_classes(self, feeds: dict[str, np.ndarray]) -> Target:
        """Each sample's top class as an explicit target (sampling methods fix it on the clean input)."""
        scores = run(self.forward_session, [self.output], feeds)[0]
        if scores.ndim > 2:
            scores = scores.reshape(scores.shape[0], scores.shape[1], -1).sum(-1)
        return Target("target", scores.argmax(axis=1).astype(np.int64))

    def attribute(self, inputs, target=None, method: str = "gradient", *, softmax: str = "identity", wrt=None,
                  batch_size: int | None = None, return_convergence_delta: bool = False, modifier: str | None = None,
                  **options):
        """Attribution of the explained output to `inputs`, with the same shape and layout.

        `target`: None for each sample's top class, an int, one int per sample, or a float seed array
        of the output's shape. `method`: one of `onnxsal.methods.available()`. `softmax`:
        "identity" (start from the logits when the output is a softmax) or "keep". For several
        inputs pass a dict and name the one(s) to explain with `wrt`; a list of names returns a dict.
        Inputs without the batch axis (a recurrent state, a scalar) are fed as they are.
        Method options (n_samples, n_steps, layer, ...) are passed through. With
        return_convergence_delta=True (Integrated Gradients) returns (attribution, delta per sample).
        `modifier` (keras-vis' grad_modifier): "absolute", "negate", "positive" or "negative".
        """
        _modifiers.check(modifier)
        feeds = self.feeds(inputs)
        axes = self.batch_axes(feeds, wrt)
        checked = self.target(target, feeds, axes)
        m = _methods.get(method)
        _methods.check_options(m, options)
        info: dict = {}
        with self._calling(feeds, axes, batch_size):
            if m.attribute is not None:
                result = m.attribute(self, feeds, checked, softmax=softmax, wrt=wrt, batch_size=batch_size, **options)
                if isinstance(result, tuple):
                    result, info = result
                    if return_convergence_delta and callable(info.get("convergence_delta")):  # computed only when asked
                        info["convergence_delta"] = info["convergence_delta"]()
            else:
                graph, session = self.method_graph(method, checked.kind, softmax, wrt, **options)
                result = self.run_graph(graph, session, feeds, checked, batch_size, axes=axes)
        result = {name: _modifiers.apply(value, modifier) for name, value in result.items()}
        for name, value in result.items():
            if not np.all(np.isfinite(value)):
                warnings.warn(f"the {method} attribution of {name!r} holds NaN or infinite values "
                              f"(the model overflows or divides by zero on these inputs).", RuntimeWarning, stacklevel=2)
        if wrt is None or isinstance(wrt, str):
            result = next(iter(result.values()))
        if return_convergence_delta:
            if "convergence_delta" not in info:
                raise InvalidInputError(f"method {method!r} has no convergence delta; integrated_gradients has.")
            return result, info["convergence_delta"]
        return result

    def check(self, method: str = "gradient", target=None, **options) -> str | None:
        """Raise now what `attribute` would raise for every input: an unknown method or option, an op
        without a gradient rule on the path, a class index out of range.

        A model whose gradient needs the input shapes it leaves dynamic is not refused: the returned
        sentence says that each input size gets a graph of its own (None when nothing needs saying)."""
        from .autodiff import GRADIENT, differentiable_path

        m = _methods.get(method)
        _methods.check_options(m, options)
        base = _methods.get(options["base"]) if isinstance(options.get("base"), str) else m
        note = None
        if "layer" not in _methods.options(base) and not m.gradient_free:  # layer methods start at an inner tensor, checked when it is chosen
            differentiable_path(self.view, GRADIENT, list(self._wrt(None)), self.output)
            if any(s.shape is None or not all(isinstance(d, int) for d in s.shape[1:]) for s in self.inputs):
                try:
                    self.gradient_graph()
                except NeedsShapesError as exc:
                    why = str(exc).split("; fix the input shape")[0].rstrip(".")
                    note = f"{why}; attribute() specialises the graph on each input size it is given (built once per size)."
        if target is not None and self.n_classes() is not None:
            check_target(target, 1, self.n_classes(), None, np.dtype(np.float32))
        return note

    def compile(self, method: str = "gradient", target: str = "argmax", softmax: str = "identity", wrt=None,
                modifier: str | None = None, input_shapes=None, **options) -> onnx.ModelProto:
        """The standalone attribution graph (see `onnxsal.compile`); with `input_shapes`, built on the
        model specialised on them."""
        _modifiers.check(modifier)
        if target not in ("argmax", "target", "tensor"):
            raise InvalidInputError(f"target must be 'argmax', 'target' or 'tensor' for a compiled graph, not {target!r}.")
        m = _methods.get(method)
        if m.build is None:
            raise InvalidInputError(f"method {method!r} cannot be compiled to one graph; compilable: {_methods.compilable()}.")
        _methods.check_options(m, options, compiled=True)
        if input_shapes is not None:
            return self.specialised(input_shapes).compile(method, target, softmax, wrt, modifier, **options)
        try:
            graph = m.build(self, target, softmax, self._wrt(wrt), **options)
        except NeedsShapesError as exc:
            raise NeedsShapesError(self._fix_dims_hint(exc)) from None
        return _modifiers.append(graph.model, list(graph.attributions.values()), modifier)


class _PerBatch:
    """The session of a graph that builds only with the batch size fixed too: each run uses the graph
    of the child specialised on its own feeds (built once per batch size), its inputs and outputs
    renamed to those of the first graph, which the caller holds."""

    def __init__(self, explainer: Explainer, build: Callable, graph: AttributionGraph, session, axes):
        self.explainer, self.build, self.graph, self.session, self.axes = explainer, build, graph, session, axes

    def run(self, names, feeds):
        model_feeds = {k: v for k, v in feeds.items() if k in {s.name for s in self.explainer.inputs}}
        ex = self.explainer
        child = ex.specialised(ex._shapes_of(model_feeds, self.axes, fix_batch=True), ex._values_of(model_feeds, self.axes))
        graph, session = self.build(child)
        pairs = [(self.graph.target_input, graph.target_input), (self.graph.seed_input, graph.seed_input)]
        pairs += [(self.graph.attributions[k], v) for k, v in graph.attributions.items()]
        pairs += [(self.graph.extras[k], v) for k, v in graph.extras.items() if k in self.graph.extras]
        rename = {a: b for a, b in pairs if a is not None}
        return session.run([rename.get(n, n) for n in names], {rename.get(k, k): v for k, v in feeds.items()})

    def get_providers(self):
        return self.session.get_providers()


def freeze(value):
    """A hashable, value-equal stand-in for a method option (dicts, lists and arrays included), for cache keys."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return ("seq",) + tuple(freeze(v) for v in value)
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    try:
        hash(value)
    except TypeError:
        return ("object", id(value))
    return value


def _count(feeds: dict[str, np.ndarray], axes: dict[str, int | None]) -> int:
    """The number of samples: the size of the batch axis (every batched input has the same)."""
    return next(feeds[name].shape[axis] for name, axis in axes.items() if axis is not None)


def _check_classes(output: str, scores: np.ndarray, target: np.ndarray) -> None:
    """Class indices must lie on axis 1 of the output the model returned."""
    k = scores.shape[1] if scores.ndim >= 2 else 1
    if target.size and target.max() >= k:
        raise InvalidInputError(f"target class {int(target.max())} is out of range: output {output!r} returns "
                                f"{k} classes (0..{k - 1}), whatever the file declares.")


def _output_batch_axis(shape: tuple, k: int, declared: tuple | None, symbol: str | None) -> int | None:
    """The axis of an output of `shape` (from a run on k samples) that holds the samples."""
    if declared is not None and len(declared) == len(shape) and symbol is not None:
        named = [i for i, d in enumerate(declared) if d == symbol and shape[i] == k]
        if len(named) == 1:
            return named[0]
    if shape and shape[0] == k:
        return 0
    sized = [i for i, d in enumerate(shape) if d == k]
    return sized[0] if len(sized) == 1 else None


def _refuse_class_targets(output: str, target, shape: tuple, axis: int | None, n: int) -> None:
    """A class target needs the batch on axis 0; elsewhere only a seed tensor says what to explain."""
    if target is not None and np.asarray(target).dtype.kind == "f":
        if axis is None:
            raise InvalidInputError(f"output {output!r} has shape {shape} for {n} samples and no axis of that size "
                                    f"is its batch, so a seed tensor cannot be split into samples; pass all samples at once.")
        return
    dims = tuple(n if i == axis else d for i, d in enumerate(shape))
    where = f"on axis {axis}" if axis is not None else "on no axis onnxsal can tell"
    raise InvalidInputError(
        f"output {output!r} (shape {dims}) holds its batch {where}, so a class index cannot be placed on it; "
        f"pass as target a float seed tensor of that shape (what to explain at each position)."
    )


def compile(model, method: str = "gradient", target: str = "argmax", softmax: str = "identity", wrt=None,
            modifier: str | None = None, input_shapes=None, **options) -> onnx.ModelProto:
    """A standalone ONNX graph: the model's inputs (plus an int64 `target` [N] when target="target",
    or a seed when target="tensor") in; the model's outputs plus the attribution out.

    `input_shapes` (a dict of input name -> dims, or one tuple for a single-input model) builds the
    graph for those shapes; a model whose gradient needs the shapes it leaves dynamic requires it."""
    return Explainer(model, providers="cpu").compile(method, target=target, softmax=softmax, wrt=wrt,
                                                     modifier=modifier, input_shapes=input_shapes, **options)
