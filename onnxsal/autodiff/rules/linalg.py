"""Matrix products: Gemm and MatMul (batched, broadcast, 1-D operands)."""

from __future__ import annotations

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
