"""What a model looks like to onnxsal: inputs, ops, what can be differentiated, what variants change."""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field

from .autodiff import DEFAULT_RULES, GRADIENT, differentiable_path, output_heads
from .autodiff.driver import CONTROL_FLOW, QUANTIZED
from .autodiff.emitter import NeedsOpsetError
from .autodiff.rules.activations import is_rectifier_node
from .errors import NeedsShapesError, OnnxsalError
from .explainer import Explainer
from .layers import feature_maps, guess_layout, resolve_layer
from .vit import token_layer
from .prepare import LOWERINGS
from .text.embeddings import ALIASES as EMBEDDING_ALIASES, find_embeddings, resolve as resolve_embeddings


@dataclass
class Report:
    path: str
    ir_version: int
    opset: int
    producer: str
    inputs: list[dict]
    outputs: list[dict]
    explained_input: str | None
    explained_output: str
    layout: str | None
    op_histogram: dict[str, int]
    path_nodes: int = 0
    differentiable: bool = False
    problem: str | None = None
    hint: str | None = None  # for a model that will not differentiate: what would make it work
    missing_rules: dict[str, list[str]] = field(default_factory=dict)
    rectifiers: list[dict] = field(default_factory=list)
    softmax_at_output: str | None = None
    gradcam_layers: list[dict] = field(default_factory=list)
    gradcam_default: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    composite: str | None = None  # with inspect_model(composite=...): the LRP rule of each node on the path
    lrp_rules: list[dict] = field(default_factory=list)
    canonized: list[str] = field(default_factory=list)
    embeddings: list[dict] = field(default_factory=list)  # a token model's lookups (wrt="embeddings", ...)

    def to_dict(self) -> dict:
        return asdict(self)


def inspect_model(model, output: str | None = None, wrt: str | None = None, input_shapes=None,
                  composite=None) -> Report:
    """Analyse a model (path, bytes or ModelProto) for attribution; never raises for an unsupported
    graph, it reports it (a file that is not a valid model still raises ModelLoadError). With
    `input_shapes` the model is analysed specialised on them (see `Explainer.specialised`); with
    `composite` (a name or mapping, see `onnxsal.relevance.composites`) the report lists the LRP
    rule each node on the path gets and what the canonizers rewrote."""
    ex = Explainer(model, providers="cpu", output=output)
    if input_shapes is not None:
        ex = ex.specialised(input_shapes)
    view = ex.view
    spec = lambda s: {"name": s.name, "dtype": s.dtype.name, "shape": [d if isinstance(d, int) else (d or "?") for d in (s.shape or [])]}  # noqa: E731
    floats = [s.name for s in ex.inputs if s.dtype.kind == "f"]
    lookups = find_embeddings(view)
    x = wrt or (floats[0] if floats else None) or ("embeddings" if any(e.ids for e in lookups) else None)
    embedding_problem = None
    if x in EMBEDDING_ALIASES:
        try:
            x = resolve_embeddings(view, x)
        except OnnxsalError as exc:
            x, embedding_problem = None, str(exc)
    report = Report(
        path=str(model) if isinstance(model, (str, os.PathLike)) else "<in memory>",
        ir_version=ex.model.ir_version,
        opset=view.opset,
        producer=f"{ex.model.producer_name} {ex.model.producer_version}".strip(),
        inputs=[spec(s) for s in ex.inputs],
        outputs=[spec(s) for s in ex.outputs],
        explained_input=x,
        explained_output=ex.output,
        layout=guess_layout(view.shape(x)) if x and view.rank(x) == 4 else None,
        op_histogram=dict(Counter(n.op_type for n in view.nodes).most_common()),
        metadata={p.key: p.value for p in ex.model.metadata_props},
        embeddings=[{"value": e.output, "table": e.table, "ids": e.ids, "vocab": e.vocab, "hidden": e.hidden} for e in lookups],
    )
    if x is None:
        report.problem = embedding_problem or "the model has no float input (nor embedding lookup) to explain."
        return report
    try:
        nodes = differentiable_path(view, GRADIENT, [x], ex.output, check_rules=False)
    except OnnxsalError as exc:
        report.problem = str(exc)
        report.hint = _path_hint(view, str(exc))
        return report
    report.path_nodes = len(nodes)
    for n in nodes:
        if n.domain not in ("", "ai.onnx") or (n.op_type not in DEFAULT_RULES and n.op_type not in LOWERINGS):
            report.missing_rules.setdefault(n.op_type, []).append(n.name)
    dynamic_flow = next((h for h in (_control_flow_hint(view, n) for n in nodes if n.op_type in CONTROL_FLOW) if h), None)
    if dynamic_flow:
        report.problem, report.hint = dynamic_flow
    elif report.missing_rules:
        first = next(iter(report.missing_rules))
        report.problem = f"no gradient rule for {', '.join(report.missing_rules)} (first at node '{report.missing_rules[first][0]}')."
        report.hint = _missing_rule_hint(first, report.missing_rules[first][0])
    else:
        try:
            rank = view.rank(ex.output)  # outputs without a class axis are explained from a seed tensor
            ex.gradient_graph("gradient", "identity", "argmax" if rank and rank >= 2 else "tensor", [x])
            report.differentiable = True
        except OnnxsalError as exc:
            report.problem = str(exc)
            report.hint = _build_hint(ex, x, exc)
        except Exception as exc:  # noqa: BLE001  (a report, not a traceback: the fault is ours, say so)
            report.problem = f"building the gradient graph failed inside onnxsal ({type(exc).__name__}: {exc}); please report it."
    report.rectifiers = [{"node": n.name, "op": n.op_type} for n in nodes if is_rectifier_node(view, n)]
    heads = output_heads(view, ex.output)
    report.softmax_at_output = next((n.name for n in view.nodes if n.name in heads), None)
    maps = feature_maps(view, [n.name for n in nodes])
    report.gradcam_layers = [
        {"value": m.value, "node": m.node, "op": m.op_type, "shape": [d if isinstance(d, int) else "?" for d in m.shape], "layout": m.layout}
        for m in maps
    ]
    report.gradcam_default = resolve_layer(view, maps, None).value if maps else None
    try:  # a vision transformer: Grad-CAM's default is the token map feeding the last attention block
        tokens = token_layer(view, [n.name for n in nodes], None)
    except OnnxsalError:  # the token count or grid needs the input's size
        tokens = None
    if tokens is not None:
        report.gradcam_default = tokens.value
    if composite is not None and report.differentiable:
        from .relevance.composites import resolve
        from .relevance.propagate import rule_table

        comp = resolve(composite)
        report.composite = comp.name
        report.lrp_rules, report.canonized = rule_table(ex.model, comp, [x], ex.output)
    return report


def shape_argument(ex: Explainer, name: str) -> str:
    """`--input-shape` for input `name`: its static dims kept, the batch set to 1 and the other
    dynamic dims left as H, W (image axes, by layout) or D<axis> for the user to fill in."""
    shape = ex.view.shape(name) or ()
    spatial = {}
    if len(shape) == 4:
        spatial = {2: "H", 3: "W"} if guess_layout(shape) == "NCHW" else {1: "H", 2: "W"}
    dims = [str(d) if isinstance(d, int) and d > 0 else "1" if axis == 0 else spatial.get(axis, f"D{axis}")
            for axis, d in enumerate(shape)]
    return ",".join(dims)


def _is_dynamic(shape) -> bool:
    return shape is None or not all(isinstance(d, int) and d > 0 for d in shape)


def _shape_hint(ex: Explainer, x: str) -> str:
    """`--input-shape` for the explained input (and any other input with dynamic dims), named when
    the model has several inputs, with the placeholders the user fills in."""
    names = [x] + [s.name for s in ex.inputs if s.name != x and _is_dynamic(ex.view.shape(s.name))]
    named = len(ex.inputs) > 1
    flags = " ".join(f"--input-shape {name + '=' if named else ''}{shape_argument(ex, name)}" for name in names)
    declared = [d if isinstance(d, int) else (d or "?") for d in (ex.view.shape(x) or [])]
    letters = sorted({t for name in names for t in shape_argument(ex, name).split(",") if not t.isdigit()})
    fill = f"; put your sizes for {', '.join(letters)}" if letters else ""
    return f"fix the input shape: {flags} (input '{x}' is declared {declared}{fill})."


def _build_hint(ex: Explainer, x: str, exc: OnnxsalError) -> str | None:
    """What would make the gradient graph build, from the error that stopped it."""
    if isinstance(exc, NeedsShapesError):
        return _shape_hint(ex, x)
    opset = exc.opset if isinstance(exc, NeedsOpsetError) else None
    if opset is None:
        found = re.search(r"opset (\d+) or newer", str(exc))
        opset = int(found.group(1)) if found else None
    if opset is not None:
        return f"convert to opset {opset} with onnx.version_converter (onnx.version_converter.convert_version(model, {opset}))."
    return None


def _missing_rule_hint(op_type: str, node: str) -> str:
    return (f"{op_type} (node '{node}') has no gradient rule: it is not supported; "
            f"explain a value past it (wrt=) or export the model without it.")


def _path_hint(view, message: str) -> str | None:
    """The hint for a path that is cut (integers, quantization) or missing altogether."""
    found = re.search(r"(\w+) node '([^']*)'", message)
    if "quantized" in message or (found and found.group(1) in QUANTIZED):
        where = f" ({found.group(1)} node '{found.group(2)}' is quantized)" if found else ""
        return f"export the float model, before quantization{where}: attribution needs float values from input to output."
    if found:
        return (f"export the float model: {found.group(1)} node '{found.group(2)}' turns the path into integers, "
                f"which carry no gradient.")
    return None


def _control_flow_hint(view, node) -> tuple[str, str] | None:
    """(problem, hint) for control flow whose trip count, condition or length is only known at run time."""
    if node.op_type == "Loop":
        count = node.input[0] if node.input else ""
        if not count or view.const(count) is None:
            why = "has no trip count" if not count else f"has a trip count ('{count}') computed at run time"
            return (f"Loop node '{node.name}' lies on the path and {why}, so it cannot be unrolled.",
                    f"make the trip count of Loop node '{node.name}' a constant: export with a fixed sequence length "
                    f"or number of steps.")
    if node.op_type == "If" and view.const(node.input[0]) is None:
        return (f"If node '{node.name}' lies on the path and branches on '{node.input[0]}', computed at run time.",
                f"make the condition of If node '{node.name}' a constant (export for one fixed input shape, or "
                f"with the branch taken).")
    return None


def format_report(r: Report, max_rows: int = 8) -> str:
    """The report as text for a terminal."""
    lines = [f"model: {r.path}  (IR {r.ir_version}, opset {r.opset}{', ' + r.producer if r.producer else ''})"]
    for title, specs in (("inputs", r.inputs), ("outputs", r.outputs)):
        lines.append(f"{title}:")
        lines += [f"  {s['name']}: {s['dtype']} {s['shape']}" for s in specs]
    lines.append(f"explains: d {r.explained_output} / d {r.explained_input}" + (f"  (layout {r.layout})" if r.layout else ""))
    if any(e["ids"] for e in r.embeddings):
        lines.append("embedding lookups (wrt='embeddings' is the word embeddings; also 'embeddings:sum', 'embeddings:output'):")
        lines += [f"  {e['value']}: {e['table']} [{e['vocab']}, {e['hidden']}] indexed by "
                  + (repr(e["ids"]) if e["ids"] else "ids computed in the graph") for e in r.embeddings]
    ops = ", ".join(f"{k} {v}" for k, v in r.op_histogram.items())
    lines.append(f"ops ({sum(r.op_histogram.values())} nodes): {ops}")
    if r.problem:
        lines.append(f"differentiable: no: {r.problem}")
        if r.hint:
            lines.append(f"to make it work: {r.hint}")
    else:
        lines.append(f"differentiable: yes ({r.path_nodes} nodes on the path, every op has a gradient rule)")
    for op, names in r.missing_rules.items():
        lines.append(f"  missing rule: {op} at {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}")
    kinds = Counter(x["op"] for x in r.rectifiers)
    lines.append(f"rectifiers changed by guided_backprop/deconvnet: {len(r.rectifiers)}"
                 + (f" ({', '.join(f'{v} {k}' for k, v in kinds.items())})" if kinds else ""))
    for x in r.rectifiers[:max_rows]:
        lines.append(f"  {x['op']}: {x['node']}")
    if len(r.rectifiers) > max_rows:
        lines.append(f"  ... and {len(r.rectifiers) - max_rows} more")
    lines.append(f"softmax at the output: {r.softmax_at_output or 'no'}"
                 + (" (taken as identity by default; --softmax keep to differentiate through it)" if r.softmax_at_output else ""))
    lines.append(f"Grad-CAM layers: {len(r.gradcam_layers)}" + (f" (default: {r.gradcam_default})" if r.gradcam_default else ""))
    for m in r.gradcam_layers[-max_rows:]:
        lines.append(f"  {m['value']}  {m['op']} {m['shape']} {m['layout']}")
    for k, v in r.metadata.items():
        lines.append(f"metadata {k}: {v}")
    if r.composite:
        counts = Counter(row["rule"] for row in r.lrp_rules)
        lines.append(f"LRP rules of {r.composite}: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
        lines += [f"  canonized: {note}" for note in r.canonized]
        lines += [f"  {row['node']}  {row['op_type']} ({row['kind']}): {row['rule']}  [{row['by']}]" for row in r.lrp_rules]
    return "\n".join(lines)
