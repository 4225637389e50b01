"""Matrix products: Gemm, MatMul (batched, broadcast, 1-D operands) and Einsum."""

from __future__ import annotations

import string
from collections import Counter
from dataclasses import dataclass

from ..registry import RuleContext, rule


def _swap_last(ctx: RuleContext, x: str, rank: int) -> str:
    perm = list(range(rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    return ctx.emitter.transpose(x, perm)


@rule("Gemm")
def gemm(ctx: RuleContext, g):
    # Y = alpha * A' B' + beta * C, with A' = A^T if transA and B' = B^T if transB.
    a, b = ctx.input(0), ctx.input(1)
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    ta, tb = ctx.attr("transA", 0), ctx.attr("transB", 0)
    ga_ = gb_ = gc = None
    ga = g if alpha == 1.0 else ctx.op("Mul", [g, ctx.scalar(alpha)])
    if ctx.wants[0]:  # dA' = g B'^T ; dA = (dA')^T = B' g^T when transA
        ga_ = _product(ctx, b, ga, tb, 1) if ta else _product(ctx, ga, b, 0, 0 if tb else 1)
    if ctx.wants[1]:  # dB' = A'^T g ; dB = (dB')^T = g^T A' when transB
        gb_ = _product(ctx, ga, a, 1, ta) if tb else _product(ctx, a, ga, 0 if ta else 1, 0)
    if len(ctx.node.input) > 2 and ctx.wants[2]:
        gcb = g if beta == 1.0 else ctx.op("Mul", [g, ctx.scalar(beta)])
        gc = _unbroadcast_2d(ctx, gcb, ctx.input(2))
    return [ga_, gb_, gc]


def _product(ctx: RuleContext, a: str, b: str, ta: int, tb: int) -> str:
    """op(a) @ op(b) as a Gemm; before opset 11 Gemm needs a C, so it gets a zero."""
    c = [ctx.scalar(0.0)] if ctx.opset < 11 else []
    return ctx.op("Gemm", [a, b] + c, transA=ta, transB=tb)


def _unbroadcast_2d(ctx: RuleContext, g: str, c: str) -> str:
    """Sum the (M, N) gradient down to C's shape: (M, N), (M, 1), (1, N), (N,), (1,) or a scalar."""
    shape = ctx.shape(c)
    if shape is None:
        ctx.needs_shapes(f"the rank of the bias '{c}' is unknown")
    rank = len(shape)
    out = g
    if rank < 2:  # C lines up with the last axis: sum the rows, and the columns too if C has one entry
        axes = [0] if rank == 1 and shape[0] != 1 else [0, 1]
        return ctx.emitter.reshape_like(ctx.emitter.reduce("ReduceSum", g, axes, keepdims=1), c)
    axes = [i for i in range(2) if shape[i] == 1]
    if axes:
        out = ctx.emitter.reduce("ReduceSum", g, axes, keepdims=1)
    return out


@rule("MatMul")
def matmul(ctx: RuleContext, g):
    a, b = ctx.node.input
    ra, rb = ctx.rank(a), ctx.rank(b)
    ry = ctx.rank(ctx.y)
    e = ctx.emitter
    # Promote 1-D operands as numpy does: a vector a is (1, K), a vector b is (K, 1).
    a2 = e.unsqueeze(a, [0]) if ra == 1 else a
    b2 = e.unsqueeze(b, [1]) if rb == 1 else b
    if ra == 1 and rb == 1:
        g2 = e.unsqueeze(g, [0, 1])  # y is a scalar; as a (1, 1) product
    elif ra == 1:
        g2 = e.unsqueeze(g, [ry - 1])  # restore the M axis of size 1
    elif rb == 1:
        g2 = e.unsqueeze(g, [ry])  # restore the N axis of size 1
    else:
        g2 = g
    ga = gb = None
    if ctx.wants[0]:
        ga = ctx.op("MatMul", [g2, _swap_last(ctx, b2, max(rb, 2))])
        ga = _restore(ctx, ga, a, ra, rb, 0)
    if ctx.wants[1]:
        gb = ctx.op("MatMul", [_swap_last(ctx, a2, max(ra, 2)), g2])
        gb = _restore(ctx, gb, b, rb, ra, 1)
    return [ga, gb]


def _restore(ctx: RuleContext, grad: str, x: str, rx: int, r_other: int, which: int) -> str:
    """Sum a product gradient over broadcast batch axes and drop the axes a 1-D operand gained."""
    e = ctx.emitter
    rg = max(rx if rx > 1 else 2, r_other if r_other > 1 else 2)
    if rx == 1:
        # grad is (..., 1, K) for a or (..., K, 1) for b: sum every batch axis, then flatten.
        axes = list(range(rg - 2)) + [rg - 2 if which == 0 else rg - 1]
        return e.reduce("ReduceSum", grad, axes, keepdims=0)
    lead = rg - rx
    xs = ctx.shape(x)
    axes = list(range(lead))
    # batch axes where x has size 1 and the other operand does not.
    gshape = ctx.shape(ctx.y)
    for i in range(rx - 2):
        d = xs[i] if xs is not None else None
        if d == 1 and (gshape is None or gshape[lead + i] != 1):
            axes.append(lead + i)
    if axes:
        grad = e.reduce("ReduceSum", grad, axes, keepdims=1)
    return e.squeeze(grad, list(range(lead))) if lead else grad


@dataclass(frozen=True)
class EinsumSpec:
    """An Einsum equation with every '...' written out as letters of its own (aligned from the
    right, as broadcasting aligns), and the output made explicit."""

    terms: list[str]
    output: str


def parse_einsum(equation: str, ranks: list[int]) -> EinsumSpec:
    eq = equation.replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    terms = lhs.split(",")
    used = {c for c in eq if c.isalpha()}
    fresh = iter(c for c in string.ascii_letters if c not in used)
    widths = [rank - (len(t) - 3) for t, rank in zip(terms, ranks) if "..." in t]
    ellipsis = "".join(next(fresh) for _ in range(max(widths, default=0)))
    expanded = []
    for t, rank in zip(terms, ranks):
        if "..." in t:
            width = rank - (len(t) - 3)
            t = t.replace("...", ellipsis[len(ellipsis) - width:] if width else "")
        expanded.append(t)
    if arrow:
        output = out.replace("...", ellipsis)
    else:  # implicit: the ellipsis axes, then the labels used once, in alphabetical (ASCII) order
        counts = Counter(c for t in terms for c in t if c.isalpha())
        output = ellipsis + "".join(sorted(c for c, n in counts.items() if n == 1))
    return EinsumSpec(expanded, output)


@rule("Einsum")
def einsum(ctx: RuleContext, g):
    """Each operand's gradient is an Einsum of g with the other operands, onto that operand's labels.
    Labels the operand alone sums over are broadcast back (Unsqueeze + Expand); axes where it
    broadcast (size 1 against a larger size) are summed back down. A label repeated within one
    operand (a diagonal or trace) is refused."""
    operands = list(ctx.node.input)
    equation = ctx.attr("equation")
    equation = equation.decode() if isinstance(equation, bytes) else equation
    spec = parse_einsum(equation, [ctx.rank(x) for x in operands])
    for t, x in zip(spec.terms, operands):
        if len(set(t)) != len(t):
            ctx.unsupported(f"operand '{x}' repeats an index ('{t}': a diagonal or trace), whose gradient onnxsal does not "
                            "build; write the diagonal with explicit ops (e.g. Mul by an EyeLike mask, then ReduceSum)")
    return [_einsum_operand_grad(ctx, g, spec, k) if ctx.wants[k] else None for k in range(len(operands))]


def _einsum_operand_grad(ctx: RuleContext, g: str, spec: EinsumSpec, k: int) -> str:
    e = ctx.emitter
    operands = list(ctx.node.input)
    target = spec.terms[k]
    others = [j for j in range(len(operands)) if j != k]
    available = set(spec.output).union(*(spec.terms[j] for j in others))
    present = "".join(c for c in target if c in available)
    if others:
        equation = ",".join([spec.output] + [spec.terms[j] for j in others]) + "->" + present
        grad = ctx.op("Einsum", [g] + [operands[j] for j in others], equation=equation)
    else:  # one operand: the output is a permutation of the labels it keeps
        grad = e.transpose(g, [spec.output.index(c) for c in present])
    missing = [i for i, c in enumerate(target) if c not in available]
    if missing:
        grad = ctx.op("Expand", [e.unsqueeze(grad, missing), ctx.op("Shape", [operands[k]])])
    return _sum_broadcast_axes(ctx, grad, operands[k], target, spec)


def _sum_broadcast_axes(ctx: RuleContext, grad: str, x: str, target: str, spec: EinsumSpec) -> str:
    """Sum grad down to x's shape along the axes x broadcast (size 1 against a larger size in
    another operand: Einsum broadcasts labelled and ellipsis axes alike)."""
    e = ctx.emitter
    shared = {c for c in target if sum(c in t for t in spec.terms) > 1}
    if not shared:
        return grad
    shape = ctx.shape(x)
    if all(isinstance(shape[i], int) for i, c in enumerate(target) if c in shared):
        axes = [i for i, c in enumerate(target) if c in shared and shape[i] == 1]
        return e.reduce("ReduceSum", grad, axes, keepdims=1) if axes else grad
    if ctx.opset < 13:
        ctx.needs_shapes(f"the axes of '{x}' that it shares with other operands have run-time sizes (one may broadcast)")
    one = e.ints([1], name="one")
    broadcast = ctx.op("And", [ctx.op("Equal", [ctx.op("Shape", [x]), one]),
                               ctx.op("Not", [ctx.op("Equal", [ctx.op("Shape", [grad]), one])])])
    axes_rt = ctx.op("Reshape", [ctx.op("NonZero", [broadcast]), e.ints([-1], name="flat")])
    return e.reduce("ReduceSum", grad, axes_rt, keepdims=1)
