"""AttnLRP (Achtibat et al. 2024): LRP rules for transformers, as the LXT library computes them.

A transformer's path holds four things the CNN rules treat badly: products of two activations
(q·kᵀ, attention·v, gates), a Softmax (with -inf or very negative additive masks), normalisation
layers whose statistics depend on the data (LayerNorm, RMSNorm), and elementwise nonlinearities
that exporters write as small graphs (GELU as x·½(1 + erf(x/√2)), SiLU as x·sigmoid(x)). AttnLRP's
rules for them, with z the node's output and stabilise(z) = z + ε·sign(z):

- UniformEpsilon (products of k activations, Prop. 3.3): each factor gets R/k, distributed by its
  epsilon-LRP contribution: R_a = a ⊙ J_aᵀ (R / (k·stabilise(z))). On a MatMul a_ik b_kj that is
  R_a = a ⊙ (S bᵀ), R_b = b ⊙ (aᵀ S) with S = R / (2·stabilise(a b)); on an elementwise product
  it is R/k to each factor (LXT: `matmul` and `mul2`, or `divide_gradient` in Gradient×Input).
- SoftmaxDTD (Prop. 3.1, Deep Taylor at x with bias): R_in = x ⊙ (R − s ⊙ Σ R), the sum over the
  softmax axis; the rest is absorbed by the softmax's implicit bias. Where s = 0 (a masked position:
  x = -inf, or so negative that exp underflows) x counts as 0, so masked positions get zero
  relevance and -inf·0 never forms NaN (LXT replaces -inf by 0; for finite x the two agree, since
  every rule here gives zero relevance to a zero probability).
- LayerNormIdentity (Prop. 3.4, LXT's `layer_norm`): a LayerNormalization node with its standard
  deviation held constant; the rest is linear (centring, scale, bias), so the epsilon rule on
  y = w ⊙ (x − mean x)/std + b: R_in = x ⊙ (u − mean u), u = w ⊙ R / (std · stabilise(y)).
- Normaliser (the same for a decomposed LayerNorm/RMSNorm/L2 normalisation): a Div or Mul of an
  activation by a *statistic* (a value computed from a reduction: mean, sum, norm) gives all of R to
  the activation and none to the statistic: the division by std is a constant (identity rule).
- Centre (a decomposed LayerNorm's x − ReduceMean(x)): the epsilon rule on that one linear map,
  R_in = x ⊙ (v − mean v), v = R / stabilise(y); what Norm on the Sub and on the ReduceMean give
  with ε -> 0, without dividing by a mean that may be near 0.
- Gate (identity rule, Eq. 9, on an elementwise nonlinearity written as a product): a Mul whose two
  factors are elementwise functions of one value (x·sigmoid(x), x·½(1 + erf(x/√2)), GPT-2's tanh
  GELU) gives all of R to the factor that is affine in that value (x, or ½x), none to the other.
- Elementwise activations (Tanh, Sigmoid, Erf, Gelu, ...) pass R unchanged (`Pass`), linear layers
  get Epsilon, residual and bias Adds the z-rule (`Norm`), as in every composite.

LXT implements the same rules either explicitly (relevance functions) or, in its efficient mode, as
Gradient×Input with modified gradients (std detached, gradients halved after products, identity
on activations); with ε -> 0 both equal these.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from ..autodiff.graph import GraphView
from ..autodiff.registry import RuleContext
from ..autodiff.rules.activations import softmax_axes
from ..autodiff.rules.reduce import reduced_axes
from .composites import Composite, Entry, layer_map_base
from .rules import DEFAULT_STABILIZER, RULES, Epsilon, LrpRule, stabilise

# ops that compute each output element from the same element of their inputs (and constants)
ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Erf", "Tanh", "Sigmoid",
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "Softplus", "Softsign", "Mish", "HardSigmoid", "HardSwish",
    "Clip", "Identity", "Cast", "Sin", "Cos", "Max", "Min",
}
AFFINE = {"Add", "Sub", "Mul", "Div", "Neg", "Identity", "Cast"}  # with one non-constant input
REDUCTIONS = {"ReduceMean", "ReduceSum", "ReduceL2", "ReduceL1", "ReduceSumSquare", "ReduceMax", "ReduceLogSumExp",
              "GlobalAveragePool"}
DEPTH = 16


def _varying(view: GraphView, node: onnx.NodeProto) -> list[str]:
    """The inputs of a node that are not constants."""
    return [i for i in node.input if i and view.const(i) is None]


def is_statistic(view: GraphView, v: str, depth: int = DEPTH, memo: dict | None = None) -> bool:
    """Whether v is computed from a reduction through elementwise ops, broadcasts and constants:
    a normalisation statistic (mean, variance, RMS, norm, a softmax's sum)."""
    memo = {} if memo is None else memo
    if v not in memo:
        node = view.producer.get(v)
        if node is None or depth == 0:
            memo[v] = False
        elif node.op_type in REDUCTIONS:
            memo[v] = True
        elif node.op_type in ELEMENTWISE or node.op_type in ("Expand", "Unsqueeze"):
            ins = _varying(view, node)
            ins = ins[:1] if node.op_type in ("Expand", "Unsqueeze") else ins
            memo[v] = bool(ins) and all(is_statistic(view, i, depth - 1, memo) for i in ins)
        else:
            memo[v] = False
    return memo[v]


def root(view: GraphView, v: str, depth: int = DEPTH, memo: dict | None = None) -> str:
    """The value v is an elementwise function of: followed up through elementwise ops while all
    their non-constant inputs lead to one value (x + 0.044715·x³ leads to x; a residual a + b, of
    two values, is its own root)."""
    memo = {} if memo is None else memo
    if v not in memo:
        node = view.producer.get(v)
        if node is None or node.op_type not in ELEMENTWISE or depth == 0:
            memo[v] = v
        else:
            roots = {root(view, i, depth - 1, memo) for i in _varying(view, node)}
            memo[v] = roots.pop() if len(roots) == 1 else v
    return memo[v]


def is_affine_in(view: GraphView, v: str, r: str, depth: int = DEPTH) -> bool:
    """Whether v = a·r + b elementwise (constants a, b): r itself, or r through scalings and shifts."""
    for _ in range(depth):
        if v == r:
            return True
        node = view.producer.get(v)
        if node is None or node.op_type not in AFFINE:
            return False
        ins = _varying(view, node)
        if len(ins) != 1 or (node.op_type == "Div" and node.input[0] != ins[0]):
            return False
        v = ins[0]
    return False


def is_centring(view: GraphView, node: onnx.NodeProto) -> bool:
    """Whether the node is x − ReduceMean(x) (keepdims): a LayerNorm's centring, written out."""
    mean = view.producer.get(node.input[1]) if node.op_type == "Sub" and len(node.input) == 2 else None
    return (mean is not None and mean.op_type == "ReduceMean" and mean.input[0] == node.input[0]
            and not any(a.name == "keepdims" and a.i == 0 for a in mean.attribute))


def product_kind(view: GraphView, node: onnx.NodeProto, live: set[str]) -> str:
    """"normaliser" (an activation times or over a statistic), "gate" (an elementwise function of one
    value written as a product), or "product" (of two activations: attention, gating by another value)."""
    ins = [i for i in node.input if i and i in live]
    if len(ins) != 2 or node.op_type not in ("Mul", "Div"):
        return "product"
    stats = [is_statistic(view, i) for i in ins]
    if (node.op_type == "Div" and stats[1] and node.input[1] == ins[1]) or (node.op_type == "Mul" and any(stats)):
        return "normaliser" if not all(stats) else "product"
    if node.op_type == "Mul" and root(view, ins[0]) == root(view, ins[1]):
        return "gate"
    return "product"


# ---------------------------------------------------------------------------------------------------
# the rules


def _others_zero(ctx: RuleContext, r: str, keep: list[int]) -> list:
    """R split equally over the inputs `keep`; zero relevance (of the output's shape: the driver sums
    it down to the input's) for the other inputs on the path."""
    share = r if len(keep) == 1 else ctx.op("Mul", [r, ctx.scalar(1.0 / len(keep))])
    zero = ctx.zeros_like(ctx.y) if len(keep) < sum(ctx.wants) else None
    return [(share if i in keep else zero) if w else None for i, w in enumerate(ctx.wants)]


@dataclass(frozen=True)
class UniformEpsilon(LrpRule):
    """R/k to each of the k factors of a product of activations, each share distributed by the
    factor's epsilon-LRP contribution: R_a = a ⊙ J_aᵀ(R / (k·stabilise(z)))."""

    stabilizer: float = DEFAULT_STABILIZER

    def applies(self, ctx):
        return sum(ctx.wants) >= 2

    def backward(self, ctx, r):
        k = sum(ctx.wants)
        s = ctx.op("Div", [r, ctx.op("Mul", [stabilise(ctx, ctx.y, self.stabilizer), ctx.scalar(float(k))])])
        grads = ctx.base(s)
        return [ctx.op("Mul", [x, g]) if w and g is not None else None
                for x, g, w in zip(ctx.node.input, grads, ctx.wants)]


@dataclass(frozen=True)
class SoftmaxDTD(LrpRule):
    """R_in = x ⊙ (R − s ⊙ Σ R) over the softmax axis, x counted as 0 where s = 0 (masked)."""

    def applies(self, ctx):
        return ctx.wants == [True]

    def backward(self, ctx, r):
        s = ctx.y
        total = ctx.emitter.reduce("ReduceSum", r, softmax_axes(ctx), keepdims=1)
        masked = ctx.op("Equal", [s, ctx.scalar(0.0)])
        x = ctx.op("Where", [masked, ctx.scalar(0.0), ctx.x])
        return [ctx.op("Mul", [x, ctx.op("Sub", [r, ctx.op("Mul", [s, total])])])]


@dataclass(frozen=True)
class LayerNormIdentity(LrpRule):
    """The epsilon rule on LayerNormalization with its standard deviation held constant:
    R_in = x ⊙ (u − mean u), u = w ⊙ R / (std · stabilise(y)), means over the normalised axes."""

    stabilizer: float = DEFAULT_STABILIZER

    def applies(self, ctx):
        return ctx.wants[0] and not any(ctx.wants[1:])

    def backward(self, ctx, r):
        e = ctx.emitter
        rank = ctx.rank(ctx.x)
        axes = list(range(ctx.attr("axis", -1) % rank, rank))

        def mean(v):
            return e.reduce("ReduceMean", v, axes, keepdims=1)

        centred = ctx.op("Sub", [ctx.x, mean(ctx.x)])
        variance = mean(ctx.op("Mul", [centred, centred]))
        std = ctx.op("Sqrt", [ctx.op("Add", [variance, ctx.scalar(ctx.attr("epsilon", 1e-5))])])
        ratio = ctx.op("Div", [r, stabilise(ctx, ctx.y, self.stabilizer)])
        u = ctx.op("Div", [ctx.op("Mul", [ratio, ctx.input(1)]), std])
        return [ctx.op("Mul", [ctx.x, ctx.op("Sub", [u, mean(u)])])] + [None] * (len(ctx.node.input) - 1)


@dataclass(frozen=True)
class Centre(LrpRule):
    """x − mean(x) as the one linear map it is, under the epsilon rule:
    R_in = x ⊙ (v − mean v), v = R / stabilise(y) (LXT's `layer_norm`: the centring is linear);
    the mean's own branch gets none. The same as `Norm` on the Sub and the ReduceMean with ε -> 0,
    without dividing by a mean near 0."""

    stabilizer: float = DEFAULT_STABILIZER

    def applies(self, ctx):
        return ctx.wants == [True, True]

    def backward(self, ctx, r):
        mean_node = ctx.view.producer[ctx.node.input[1]]
        axes = reduced_axes(RuleContext(mean_node, ctx.view, ctx.emitter, [None], [True]))
        v = ctx.op("Div", [r, stabilise(ctx, ctx.y, self.stabilizer)])
        centred = ctx.op("Sub", [v, ctx.emitter.reduce("ReduceMean", v, axes, keepdims=1)])
        return [ctx.op("Mul", [ctx.x, centred]), ctx.zeros_like(ctx.y)]


@dataclass(frozen=True)
class Normaliser(LrpRule):
    """An activation times or over a statistic: all of R to the activation, none to the statistic
    (the normalisation's scale is a constant: AttnLRP's identity rule on the normaliser)."""

    def backward(self, ctx, r):
        keep = [i for i, (x, w) in enumerate(zip(ctx.node.input, ctx.wants))
                if w and not (is_statistic(ctx.view, x) and (ctx.node.op_type == "Mul" or i == 1))]
        return _others_zero(ctx, r, keep or [i for i, w in enumerate(ctx.wants) if w])


@dataclass(frozen=True)
class Gate(LrpRule):
    """An elementwise function of one value written as a product (x·sigmoid(x), GELU's
    x·½(1 + erf(x/√2))): the identity rule, all of R to the factor affine in that value."""

    def backward(self, ctx, r):
        wanted = [i for i, w in enumerate(ctx.wants) if w]
        base = root(ctx.view, ctx.node.input[wanted[0]])
        keep = [i for i in wanted if is_affine_in(ctx.view, ctx.node.input[i], base)]
        return _others_zero(ctx, r, keep or wanted)


# named in mappings like the other rules (`composites.make_rule` imports this module)
RULES.update({cls.__name__.lower(): cls for cls in (UniformEpsilon, SoftmaxDTD, LayerNormIdentity, Centre, Normaliser,
                                                     Gate)})
RULES.update({"uniform_epsilon": UniformEpsilon, "softmax_dtd": SoftmaxDTD, "layer_norm_identity": LayerNormIdentity})


# ---------------------------------------------------------------------------------------------------
# the composite


@dataclass(frozen=True)
class TransformerComposite(Composite):
    """A composite that also tells products apart ("normaliser" and "gate" besides "product") and
    finds a written-out LayerNorm's centring x − mean(x) ("centring", a kind of sum)."""

    def kinds(self, view: GraphView, nodes: list[onnx.NodeProto], live: set[str]) -> dict[str, str]:
        kinds = super().kinds(view, nodes, live)
        for n in nodes:
            if kinds[n.name] == "product":
                kinds[n.name] = product_kind(view, n, live)
            elif kinds[n.name] == "sum" and is_centring(view, n):
                kinds[n.name] = "centring"
        return kinds


def attn_lrp(epsilon=1e-6, stabilizer=DEFAULT_STABILIZER, **_) -> Composite:
    """AttnLRP: Softmax DTD, LayerNorm with std constant, normalisers and gates as identities,
    products uniform-epsilon, linear layers epsilon, over the shared base map (activations pass,
    sums z-rule)."""
    rules: tuple[Entry, ...] = (
        ("Softmax", SoftmaxDTD()), ("LayerNormalization", LayerNormIdentity(stabilizer)),
        ("normaliser", Normaliser()), ("centring", Centre(stabilizer)), ("gate", Gate()), ("product", UniformEpsilon(stabilizer)),
        ("linear", Epsilon(epsilon)),
    )
    return TransformerComposite("AttnLRP", rules + layer_map_base(stabilizer))
