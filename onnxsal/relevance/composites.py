"""Composites: which LRP rule each node of a graph gets.

As in Zennit, a composite maps kinds of layers to rules, with a special map for the first layer
and a map by node name; unlike Zennit's module hooks, the assignment is made on the graph, so a
functional `F.relu`, a `+` written inline, an activation module called twice or a Keras Lambda are
seen like any other node. Priority: node-name globs, then the first layer on the path, then the
layer map, then the vanilla gradient (routing ops: MaxPool, reshapes, slices, concatenations).

Kinds of nodes (a node's kind depends on which of its inputs lie on the path):
  convolution  Conv/ConvTranspose with constant weights       dense    Gemm/MatMul with a constant side
  activation   an elementwise op of one input on the path     sum      Add/Sum/Sub
  avgpool      AveragePool/GlobalAveragePool/ReduceMean/Sum   scaling  Mul/Div by a constant, Resize, Neg
  product      a product of two values on the path            batchnorm  BatchNormalization
  gate, normaliser, centring  what AttnLRP tells apart (`transformer.TransformerComposite`): an
               elementwise function of one value written as a product; an activation times or over
               a statistic; x − mean(x)
"linear" selects convolution and dense; an ONNX op type ("Conv", "Gemm") selects that op only.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace

import onnx

from ..autodiff.graph import GraphView
from ..errors import InvalidInputError
from .rules import RULES, AlphaBeta, Epsilon, Flat, Gamma, LrpRule, Norm, Pass, Uniform, ZBox, ZPlus, DEFAULT_STABILIZER

ACTIVATIONS = {
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish",
    "Softplus", "Softsign", "Mish", "Swish", "Clip", "ThresholdedRelu", "Shrink", "Erf", "Exp", "Log", "Sqrt",
    "Abs", "Reciprocal", "Softmax", "LogSoftmax", "Sin", "Cos", "Tan", "Atan", "Sinh", "Cosh", "Asinh", "Pow",
}
AVGPOOL = {"AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum", "LpPool"}
KINDS = ("convolution", "dense", "activation", "sum", "avgpool", "scaling", "product", "batchnorm", "gate",
         "normaliser", "centring", "other")


def node_kind(node: onnx.NodeProto, live: set[str]) -> str:
    """The kind of a node on the path, from its op type and which inputs lie on the path."""
    op = node.op_type
    on = [bool(x) and x in live for x in node.input]
    n_on = sum(on)
    if op in ("Conv", "ConvTranspose"):
        return "convolution" if on[0] and not any(on[1:]) else "product"
    if op in ("Gemm", "MatMul"):
        return "dense" if sum(on[:2]) == 1 and not any(on[2:]) else "product"
    if op in ("Mul", "Div", "Einsum"):
        return "product" if n_on > 1 else "scaling"
    if op in ("Add", "Sum", "Sub"):
        return "sum"
    if op in ACTIVATIONS and n_on == 1:
        return "activation"
    if op in ("PRelu", "Pow") and on[0]:
        return "activation"
    if op in AVGPOOL:
        return "avgpool"
    if op in ("Resize", "Upsample", "Neg"):
        return "scaling"
    if op == "BatchNormalization":
        return "batchnorm"
    return "other"


def _selects(selector: str, node: onnx.NodeProto, kind: str) -> bool:
    if selector == "linear":
        return kind in ("convolution", "dense")
    if selector in KINDS:
        return selector == kind
    return selector == node.op_type


Entry = tuple[str, LrpRule]


@dataclass(frozen=True)
class Composite:
    """Rules by kind or op type (`layer_map`), for the first layers on the path (`first_map`) and
    by node-name glob (`name_map`); earlier entries win within each map."""

    name: str
    layer_map: tuple[Entry, ...]
    first_map: tuple[Entry, ...] = ()
    name_map: tuple[Entry, ...] = ()

    def with_rules(self, mapping: dict) -> Composite:
        """This composite with a user's mapping in front (see `parse_mapping`)."""
        extra = parse_mapping(mapping)
        return replace(self, name=f"{self.name}+custom", layer_map=extra.layer_map + self.layer_map,
                       first_map=extra.first_map + self.first_map, name_map=extra.name_map + self.name_map)

    def kinds(self, view: GraphView, nodes: list[onnx.NodeProto], live: set[str]) -> dict[str, str]:
        """The kind of each node on the path (a composite may tell more kinds apart)."""
        return {n.name: node_kind(n, live) for n in nodes}

    def assign(self, view: GraphView, nodes: list[onnx.NodeProto], live: set[str]) -> dict[str, tuple[LrpRule, str]]:
        """{node name: (rule, why)} for the path's nodes that get an LRP rule (others: the gradient)."""
        kinds = self.kinds(view, nodes, live)
        first = {sel: _first_layers(nodes, live, kinds, sel) for sel, _ in self.first_map}
        out: dict[str, tuple[LrpRule, str]] = {}
        for n in nodes:
            kind = kinds[n.name]
            hit = next(((r, f"name {g!r}") for g, r in self.name_map if fnmatch.fnmatchcase(n.name, g)), None)
            hit = hit or next(((r, f"first {sel}") for sel, r in self.first_map if n.name in first[sel]), None)
            hit = hit or next(((r, kind if sel in KINDS or sel == "linear" else sel)
                               for sel, r in self.layer_map if _selects(sel, n, kind)), None)
            if hit is not None:
                out[n.name] = hit
        return out


def _first_layers(nodes: list[onnx.NodeProto], live: set[str], kinds: dict[str, str], selector: str) -> set[str]:
    """Nodes the selector picks that no other node it picks precedes on the path."""
    passed: set[str] = set()  # values downstream of a picked node
    first: set[str] = set()
    for n in nodes:
        picked = _selects(selector, n, kinds[n.name])
        after = any(x in passed for x in n.input if x in live)
        if picked and not after:
            first.add(n.name)
        if picked or after:
            passed.update(o for o in n.output if o)
    return first


def layer_map_base(stabilizer: float = DEFAULT_STABILIZER) -> tuple[Entry, ...]:
    """What every composite shares (Zennit's base map, plus scaling and products)."""
    return (("activation", Pass()), ("sum", Norm(stabilizer)), ("avgpool", Norm(stabilizer)),
            ("batchnorm", Pass()), ("scaling", Norm(stabilizer)), ("product", Uniform()))


def epsilon_plus(epsilon=1e-6, stabilizer=DEFAULT_STABILIZER, **_) -> Composite:
    return Composite("EpsilonPlus", layer_map_base(stabilizer) + (("convolution", ZPlus(stabilizer)), ("dense", Epsilon(epsilon))))


def epsilon_plus_flat(epsilon=1e-6, stabilizer=DEFAULT_STABILIZER, **_) -> Composite:
    return replace(epsilon_plus(epsilon, stabilizer), name="EpsilonPlusFlat", first_map=(("linear", Flat(stabilizer)),))


def epsilon_alpha2_beta1(epsilon=1e-6, stabilizer=DEFAULT_STABILIZER, **_) -> Composite:
    return Composite("EpsilonAlpha2Beta1", layer_map_base(stabilizer) + (("convolution", AlphaBeta(2.0, 1.0, stabilizer)),
                                                                        ("dense", Epsilon(epsilon))))


def epsilon_alpha2_beta1_flat(epsilon=1e-6, stabilizer=DEFAULT_STABILIZER, **_) -> Composite:
    return replace(epsilon_alpha2_beta1(epsilon, stabilizer), name="EpsilonAlpha2Beta1Flat",
                   first_map=(("linear", Flat(stabilizer)),))


def epsilon_gamma_box(low=None, high=None, epsilon=1e-6, gamma=0.25, stabilizer=DEFAULT_STABILIZER, **_) -> Composite:
    if low is None or high is None:
        raise InvalidInputError("composite EpsilonGammaBox needs the input's bounds: low= and high= (scalars or one "
                                "value per channel, in the units the first convolution sees).")
    return Composite("EpsilonGammaBox", layer_map_base(stabilizer) + (("convolution", Gamma(gamma, stabilizer)),
                                                                     ("dense", Epsilon(epsilon))),
                     first_map=(("convolution", ZBox(_hashable(low), _hashable(high), stabilizer)),))


def epsilon(epsilon=1e-6, stabilizer=DEFAULT_STABILIZER, **_) -> Composite:
    """LRP-ε on every linear layer (LRP-0 with epsilon=0)."""
    return Composite("Epsilon", layer_map_base(stabilizer) + (("linear", Epsilon(epsilon)),))


def attn_lrp(**options) -> Composite:
    """AttnLRP (Achtibat et al. 2024) for transformers: see `transformer.py`."""
    from .transformer import attn_lrp as build

    return build(**options)


COMPOSITES = {
    "EpsilonPlus": epsilon_plus, "EpsilonPlusFlat": epsilon_plus_flat, "EpsilonAlpha2Beta1": epsilon_alpha2_beta1,
    "EpsilonAlpha2Beta1Flat": epsilon_alpha2_beta1_flat, "EpsilonGammaBox": epsilon_gamma_box, "Epsilon": epsilon,
    "AttnLRP": attn_lrp,
}


def _hashable(v):
    import numpy as np

    a = np.asarray(v, dtype=np.float64)
    return float(a) if a.ndim == 0 else tuple(float(x) for x in a.ravel())


def make_rule(spec) -> LrpRule:
    """A rule from an LrpRule, a name ("epsilon", "zplus", ...) or (name, {parameters})."""
    if isinstance(spec, LrpRule):
        return spec
    from . import transformer  # noqa: F401  (registers AttnLRP's rules: "softmaxdtd", "gate", ...)

    name, params = (spec, {}) if isinstance(spec, str) else (spec[0], dict(spec[1]))
    cls = RULES.get(str(name).lower())
    if cls is None:
        raise InvalidInputError(f"unknown LRP rule {name!r}; rules: {sorted(set(c.__name__.lower() for c in RULES.values()))}.")
    if cls is ZBox:
        params = {k: _hashable(v) if k in ("low", "high") else v for k, v in params.items()}
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"LRP rule {name!r}: {exc}.") from None


def parse_mapping(mapping: dict) -> Composite:
    """A user's mapping: keys are kinds ("convolution", "dense", "linear", ...), op types ("Conv"),
    "first" / "first:<kind>" (the first such layers on the path), or node-name globs."""
    layer, first, names = [], [], []
    for key, spec in mapping.items():
        rule = make_rule(spec)
        key = str(key)
        if key == "first" or key.startswith("first:"):
            first.append((key.partition(":")[2] or "linear", rule))
        elif key in KINDS or key == "linear" or _is_op_type(key):
            layer.append((key, rule))
        else:
            names.append((key, rule))
    return Composite("custom", tuple(layer), tuple(first), tuple(names))


def _is_op_type(key: str) -> bool:
    from ..autodiff import DEFAULT_RULES

    return key in DEFAULT_RULES or key in ("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization")


def resolve(composite, **options) -> Composite:
    """A Composite from a name (options: epsilon, stabilizer, gamma, low, high), a Composite, or a
    mapping (applied over the shared base map)."""
    if isinstance(composite, Composite):
        return composite
    if isinstance(composite, dict):  # options left unset arrive as None (build_lrp passes them all)
        stabilizer = options.get("stabilizer")
        base = Composite("custom", layer_map_base(DEFAULT_STABILIZER if stabilizer is None else stabilizer))
        return base.with_rules(composite)
    if isinstance(composite, str) and composite in COMPOSITES:
        return COMPOSITES[composite](**{k: v for k, v in options.items() if v is not None})
    lower = {k.lower(): k for k in COMPOSITES}
    if isinstance(composite, str) and composite.lower() in lower:
        return resolve(lower[composite.lower()], **options)
    raise InvalidInputError(f"unknown composite {composite!r}; choose one of {sorted(COMPOSITES)} or pass a mapping.")
