"""What a model looks like to onnxsal: inputs, ops, what can be differentiated, what variants change."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field

from .autodiff import DEFAULT_RULES, GRADIENT, differentiable_path, output_heads
from .autodiff.driver import CONTROL_FLOW
from .autodiff.rules.activations import is_rectifier_node
from .errors import OnnxsalError
from .explainer import Explainer
from .layers import feature_maps, guess_layout, resolve_layer


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
    missing_rules: dict[str, list[str]] = field(default_factory=dict)
    rectifiers: list[dict] = field(default_factory=list)
    softmax_at_output: str | None = None
    gradcam_layers: list[dict] = field(default_factory=list)
    gradcam_default: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def inspect_model(model, output: str | None = None, wrt: str | None = None) -> Report:
    """Analyse a model (path, bytes or ModelProto) for attribution; never raises for an unsupported
    graph, it reports it (a file that is not a valid model still raises ModelLoadError)."""
    ex = Explainer(model, providers="cpu", output=output)
    view = ex.view
    spec = lambda s: {"name": s.name, "dtype": s.dtype.name, "shape": [d if isinstance(d, int) else (d or "?") for d in (s.shape or [])]}  # noqa: E731
    floats = [s.name for s in ex.inputs if s.dtype.kind == "f"]
    x = wrt or (floats[0] if floats else None)
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
    )
    if x is None:
        report.problem = "the model has no float input to explain."
        return report
    try:
        nodes = differentiable_path(view, GRADIENT, [x], ex.output, check_rules=False)
    except OnnxsalError as exc:
        report.problem = str(exc)
        return report
    report.path_nodes = len(nodes)
    for n in nodes:
        if n.op_type in CONTROL_FLOW or n.domain not in ("", "ai.onnx") or n.op_type not in DEFAULT_RULES:
            report.missing_rules.setdefault(n.op_type, []).append(n.name)
    report.differentiable = not report.missing_rules
    if report.missing_rules:
        first = next(iter(report.missing_rules))
        report.problem = f"no gradient rule for {', '.join(report.missing_rules)} (first at node '{report.missing_rules[first][0]}')."
    report.rectifiers = [{"node": n.name, "op": n.op_type} for n in nodes if is_rectifier_node(view, n)]
    heads = output_heads(view, ex.output)
    report.softmax_at_output = next((n.name for n in view.nodes if n.name in heads), None)
    maps = feature_maps(view, [n.name for n in nodes])
    report.gradcam_layers = [
        {"value": m.value, "node": m.node, "op": m.op_type, "shape": [d if isinstance(d, int) else "?" for d in m.shape], "layout": m.layout}
        for m in maps
    ]
    report.gradcam_default = resolve_layer(view, maps, None).value if maps else None
    return report


def format_report(r: Report, max_rows: int = 8) -> str:
    """The report as text for a terminal."""
    lines = [f"model: {r.path}  (IR {r.ir_version}, opset {r.opset}{', ' + r.producer if r.producer else ''})"]
    for title, specs in (("inputs", r.inputs), ("outputs", r.outputs)):
        lines.append(f"{title}:")
        lines += [f"  {s['name']}: {s['dtype']} {s['shape']}" for s in specs]
    lines.append(f"explains: d {r.explained_output} / d {r.explained_input}" + (f"  (layout {r.layout})" if r.layout else ""))
    ops = ", ".join(f"{k} {v}" for k, v in r.op_histogram.items())
    lines.append(f"ops ({sum(r.op_histogram.values())} nodes): {ops}")
    if r.problem:
        lines.append(f"differentiable: no: {r.problem}")
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
    return "\n".join(lines)
