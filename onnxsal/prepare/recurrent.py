"""Lowerings of the recurrent ops (LSTM, GRU, RNN) into their cell equations over a static sequence.

The sequence is unrolled: every time step becomes a handful of MatMul/Add/Mul/Slice nodes and the
cell's activations, all ops with gradient rules, so the gradient flows to X, to the initial states
(which may be graph inputs) and to the weights exactly as the cell equations say. The input
projection X·Wᵀ is one MatMul over the whole sequence; each step then adds H·Rᵀ. Values are kept
time-major and 3-D ([1, N, ·] per step), so the batch size may stay dynamic; only the sequence
length must be static (from X's shape), and `sequence_lens`, when given, must be a constant (or
follow from static shapes) equal to it everywhere (padding masks are not unrolled).

Conventions follow the ONNX specification and onnxruntime: gates iofc (LSTM), zrh (GRU); `clip`
bounds every activation's input (after bias and peepholes), not the cell state fed to h;
`input_forget` couples the gates as f = 1 - i; activation alphas and betas are consumed in order by
the activations that take them, with the ONNX operators' defaults once the lists run out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..errors import NeedsShapesError
from .control_flow import static_value
from .lower import LowerContext, lowering

# activation name -> (takes alpha, takes beta); and the defaults when the lists run out
_ACTIVATION_ARGS = {
    "relu": (0, 0), "tanh": (0, 0), "sigmoid": (0, 0), "affine": (1, 1), "leakyrelu": (1, 0),
    "thresholdedrelu": (1, 0), "scaledtanh": (1, 1), "hardsigmoid": (1, 1), "elu": (1, 0),
    "softsign": (0, 0), "softplus": (0, 0),
}
_ACTIVATION_DEFAULTS = {
    "leakyrelu": (0.01, 0.0), "thresholdedrelu": (1.0, 0.0), "hardsigmoid": (0.2, 0.5), "elu": (1.0, 0.0),
    "affine": (1.0, 0.0), "scaledtanh": (1.0, 1.0),
}
_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


@dataclass(frozen=True)
class Activation:
    name: str  # lower case
    alpha: float
    beta: float


class Cell:
    """The shared machinery of one recurrent node being lowered: attributes, weights per direction,
    the activations, and small emitting helpers in the node's dtype."""

    def __init__(self, ctx: LowerContext):
        self.ctx = ctx
        self.e = ctx.emitter
        op = ctx.node.op_type
        self.op_type = op
        x = ctx.input(0)
        self.dtype = np.dtype(helper.tensor_dtype_to_np_dtype(ctx.view.elem_type(x) or onnx.TensorProto.FLOAT))
        self.direction = _text(ctx.attr("direction", "forward"))
        self.dirs = 2 if self.direction == "bidirectional" else 1
        self.layout = int(ctx.attr("layout", 0))
        self.clip = ctx.attr("clip")
        self.steps = self._sequence_length()
        self.hidden = self._hidden_size()
        self.activations = self._activations()

    # -- what the node says ------------------------------------------------------------------------
    def _sequence_length(self) -> int:
        ctx = self.ctx
        x = ctx.input(0)
        shape = ctx.view.shape(x)
        axis = 1 if self.layout else 0
        if shape is None or len(shape) != 3 or not isinstance(shape[axis], int):
            n = ctx.node
            raise NeedsShapesError(
                f"{n.op_type} node '{n.name}' lies on the path being differentiated and cannot be unrolled: "
                f"the sequence length of '{x}' is dynamic; fix it with input_shapes= / --input-shape.")
        steps = int(shape[axis])
        if ctx.input(4):
            lens = static_value(ctx.view, ctx.input(4))  # tf2onnx computes it from the input's shape
            if lens is None:
                ctx.cannot(f"its sequence_lens '{ctx.input(4)}' is computed at run time, and only sequences "
                           f"that all run the full length {steps} can be unrolled (leave sequence_lens out)")
            if np.any(np.asarray(lens) != steps):
                ctx.cannot(f"its sequence_lens {np.asarray(lens).tolist()} are not all the full length {steps}; "
                           f"only unpadded sequences can be unrolled")
        if steps < 1:
            ctx.cannot("its sequence is empty")
        return steps

    def _hidden_size(self) -> int:
        ctx = self.ctx
        h = ctx.attr("hidden_size")
        if h is None:
            r = ctx.view.shape(ctx.input(2))
            h = r[-1] if r is not None and len(r) == 3 else None
        if not isinstance(h, int):
            ctx.cannot("its hidden size is unknown (no hidden_size attribute and R has no static shape)")
        return int(h)

    def _activations(self) -> list[list[Activation]]:
        """The activations of each direction, alphas and betas consumed in order."""
        ctx = self.ctx
        default = _DEFAULT_ACTIVATIONS[self.op_type]
        names = [_text(a) for a in ctx.attr("activations", [])] or default * self.dirs
        if len(names) == len(default) and self.dirs == 2:
            names = names * 2
        if len(names) != len(default) * self.dirs:
            ctx.cannot(f"it lists {len(names)} activations where {len(default) * self.dirs} are expected")
        alphas = list(ctx.attr("activation_alpha", []))
        betas = list(ctx.attr("activation_beta", []))
        acts = []
        for name in names:
            key = name.lower()
            if key not in _ACTIVATION_ARGS:
                ctx.cannot(f"its activation {name!r} is not one ONNX defines for recurrent ops")
            takes_alpha, takes_beta = _ACTIVATION_ARGS[key]
            alpha, beta = _ACTIVATION_DEFAULTS.get(key, (0.0, 0.0))
            if takes_alpha and alphas:
                alpha = alphas.pop(0)
            if takes_beta and betas:
                beta = betas.pop(0)
            acts.append(Activation(key, float(alpha), float(beta)))
        per = len(default)
        return [acts[d * per:(d + 1) * per] for d in range(self.dirs)]

    # -- emitting ----------------------------------------------------------------------------------
    def op(self, op_type: str, inputs, **kw) -> str:
        return self.ctx.op(op_type, inputs, **kw)

    def scalar(self, value: float) -> str:
        return self.e.const(np.asarray(value, dtype=self.dtype), name="scalar")

    def columns(self, x: str, lo: int, hi: int, axis: int = 2) -> str:
        """x[..., lo:hi] along the gates' axis: 2 for per-step values [1, N, ·], 1 for transposed
        weights, 0 for biases and peepholes (positive, which Slice before opset 10 needs)."""
        return self.e.slice(x, [lo], [hi], [axis])

    def gate(self, x: str, k: int, axis: int = 2) -> str:
        """The k-th block of hidden-size columns."""
        return self.columns(x, k * self.hidden, (k + 1) * self.hidden, axis)

    def direction_of(self, i: int, d: int) -> str:
        """Input i's slice for direction d, the leading axis kept ([1, ...])."""
        name = self.ctx.input(i)
        if self.dirs == 1:
            return name
        return self.e.slice(name, [d], [d + 1], [0])

    def transposed_weight(self, i: int, d: int) -> str:
        """W or R of direction d as [in, gates * hidden], ready for x @ Wᵀ."""
        w = self.e.squeeze(self.direction_of(i, d), [0])
        return self.op("Transpose", [w], perm=[1, 0])

    def initial_state(self, i: int, d: int, like: str) -> str:
        """initial_h / initial_c of direction d as [1, N, H] (zeros shaped like `like` when absent)."""
        if not self.ctx.input(i):
            return self.e.zeros_like(like, self.dtype)
        state = self.ctx.input(i)
        if self.layout:
            state = self.op("Transpose", [state], perm=[1, 0, 2])
        if self.dirs == 1:
            return state
        return self.e.slice(state, [d], [d + 1], [0])

    def clipped(self, x: str) -> str:
        if self.clip is None:
            return x
        lo, hi = -float(self.clip), float(self.clip)
        if self.ctx.opset >= 11:
            return self.op("Clip", [x, self.scalar(lo), self.scalar(hi)])
        return self.op("Clip", [x], min=lo, max=hi)

    def activate(self, act: Activation, x: str, clip: bool = True) -> str:
        """act(clip(x)) (act(x) without `clip`), written with ops that have gradient rules."""
        x = self.clipped(x) if clip else x
        name = act.name
        if name == "sigmoid":
            return self.op("Sigmoid", [x])
        if name == "tanh":
            return self.op("Tanh", [x])
        if name == "relu":
            return self.op("Relu", [x])
        if name == "affine":
            return self.op("Add", [self.op("Mul", [x, self.scalar(act.alpha)]), self.scalar(act.beta)])
        if name == "scaledtanh":
            return self.op("Mul", [self.op("Tanh", [self.op("Mul", [x, self.scalar(act.beta)])]), self.scalar(act.alpha)])
        if name == "leakyrelu":
            return self.op("LeakyRelu", [x], alpha=act.alpha)
        if name == "thresholdedrelu":
            return self.op("ThresholdedRelu", [x], alpha=act.alpha)
        if name == "hardsigmoid":
            return self.op("HardSigmoid", [x], alpha=act.alpha, beta=act.beta)
        if name == "elu":
            return self.op("Elu", [x], alpha=act.alpha)
        if name == "softsign":
            return self.op("Softsign", [x])
        return self.op("Softplus", [x])

    def time_major_x(self) -> str:
        x = self.ctx.input(0)
        return self.op("Transpose", [x], perm=[1, 0, 2]) if self.layout else x

    def order(self, d: int) -> list[int]:
        """Time steps in the order direction d visits them."""
        backward = self.direction == "reverse" or (self.dirs == 2 and d == 1)
        return list(range(self.steps - 1, -1, -1)) if backward else list(range(self.steps))

    def step_input(self, xw: str, t: int) -> str:
        return self.e.slice(xw, [t], [t + 1], [0])

    # -- outputs -------------------------------------------------------------------------------------
    def write_outputs(self, hs: list[list[str]], finals: list[list[str]]) -> None:
        """Y from every direction's per-step states hs[d][t] ([1, N, H] each), and Y_h (Y_c) from
        finals[d] = [last H (, last C)], in the ONNX shapes of the node's layout."""
        ctx = self.ctx
        if ctx.output(0):
            per_dir = [self.e.unsqueeze(_concat(ctx, hs[d], 0), [1]) for d in range(self.dirs)]
            if self.layout:
                self.op("Transpose", [_concat(ctx, per_dir, 1)], perm=[2, 0, 1, 3], out=ctx.output(0))
            else:
                _concat(ctx, per_dir, 1, out=ctx.output(0))
        for k in range(len(finals[0])):
            name = ctx.output(1 + k)
            if not name:
                continue
            parts = [finals[d][k] for d in range(self.dirs)]
            if self.layout:
                self.op("Transpose", [_concat(ctx, parts, 0)], perm=[1, 0, 2], out=name)
            else:
                _concat(ctx, parts, 0, out=name)


def _concat(ctx: LowerContext, parts: list[str], axis: int, out: str | None = None) -> str:
    if len(parts) == 1:
        return ctx.op("Identity", parts, out=out) if out else parts[0]
    return ctx.op("Concat", parts, axis=axis, out=out)


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _projection(cell: Cell, xs: str, d: int, bias_cols: str | None) -> str:
    """X·W_dᵀ (+ bias) for every time step at once: [T, N, gates * H]."""
    xw = cell.op("MatMul", [xs, cell.transposed_weight(1, d)])
    return cell.op("Add", [xw, bias_cols]) if bias_cols else xw


def _bias_halves(cell: Cell, d: int) -> tuple[str, str] | None:
    """(Wb, Rb) of direction d, each [gates * H]; None when B is absent."""
    if not cell.ctx.input(3):
        return None
    b = cell.e.squeeze(cell.direction_of(3, d), [0])
    size = _GATES[cell.op_type] * cell.hidden
    return cell.e.slice(b, [0], [size], [0]), cell.e.slice(b, [size], [2 * size], [0])


@lowering("RNN")
def lower_rnn(ctx: LowerContext) -> None:
    """H_t = f(X_t·Wᵀ + H_{t-1}·Rᵀ + Wb + Rb)."""
    cell = Cell(ctx)
    xs = cell.time_major_x()
    hs, finals = [], []
    for d in range(cell.dirs):
        (f,) = cell.activations[d]
        bias = _bias_halves(cell, d)
        xw = _projection(cell, xs, d, cell.op("Add", list(bias)) if bias else None)
        rt = cell.transposed_weight(2, d)
        h = None
        states = [""] * cell.steps
        for t in cell.order(d):
            x_t = cell.step_input(xw, t)
            h = h or cell.initial_state(5, d, x_t)
            h = cell.activate(f, cell.op("Add", [x_t, cell.op("MatMul", [h, rt])]))
            states[t] = h
        hs.append(states)
        finals.append([h])
    cell.write_outputs(hs, finals)


@lowering("GRU")
def lower_gru(ctx: LowerContext) -> None:
    """z = f(X·Wzᵀ + H·Rzᵀ + Wbz + Rbz), r likewise, h = g(X·Whᵀ + (r⊙H)·Rhᵀ + Rbh + Wbh), or with
    linear_before_reset h = g(X·Whᵀ + r⊙(H·Rhᵀ + Rbh) + Wbh); H_t = (1 - z)⊙h + z⊙H_{t-1}."""
    cell = Cell(ctx)
    hid = cell.hidden
    linear_before_reset = int(ctx.attr("linear_before_reset", 0))
    xs = cell.time_major_x()
    hs, finals = [], []
    for d in range(cell.dirs):
        f, g = cell.activations[d]
        bias = _bias_halves(cell, d)
        rbh = None
        bias_cols = None
        if bias:
            wb, rb = bias
            zr_bias = cell.columns(cell.op("Add", [wb, rb]), 0, 2 * hid, 0)
            rbh = cell.columns(rb, 2 * hid, 3 * hid, 0)
            bias_cols = cell.op("Concat", [zr_bias, cell.columns(wb, 2 * hid, 3 * hid, 0)], axis=0)
        xw = _projection(cell, xs, d, bias_cols)
        rt = cell.transposed_weight(2, d)
        r_zr, r_h = cell.columns(rt, 0, 2 * hid, 1), cell.columns(rt, 2 * hid, 3 * hid, 1)
        h = None
        states = [""] * cell.steps
        for t in cell.order(d):
            x_t = cell.step_input(xw, t)
            h = h or cell.initial_state(5, d, cell.gate(x_t, 0))
            zr = cell.op("Add", [cell.columns(x_t, 0, 2 * hid), cell.op("MatMul", [h, r_zr])])
            z = cell.activate(f, cell.gate(zr, 0))
            r = cell.activate(f, cell.gate(zr, 1))
            if linear_before_reset:
                hr = cell.op("MatMul", [h, r_h])
                hr = cell.op("Add", [hr, rbh]) if rbh else hr
                pre = cell.op("Mul", [r, hr])
            else:
                pre = cell.op("MatMul", [cell.op("Mul", [r, h]), r_h])
                pre = cell.op("Add", [pre, rbh]) if rbh else pre
            candidate = cell.activate(g, cell.op("Add", [cell.gate(x_t, 2), pre]))
            # (1 - z) h~ + z H = h~ + z (H - h~)
            h = cell.op("Add", [candidate, cell.op("Mul", [z, cell.op("Sub", [h, candidate])])])
            states[t] = h
        hs.append(states)
        finals.append([h])
    cell.write_outputs(hs, finals)


@lowering("LSTM")
def lower_lstm(ctx: LowerContext) -> None:
    """i = f(X·Wiᵀ + H·Riᵀ + Pi⊙C + Wbi + Rbi), f likewise with Pf (or 1 - i with input_forget),
    c = g(X·Wcᵀ + H·Rcᵀ + Wbc + Rbc), C_t = f⊙C_{t-1} + i⊙c, o = f(X·Woᵀ + H·Roᵀ + Po⊙C_t + ...),
    H_t = o⊙h(C_t)."""
    cell = Cell(ctx)
    input_forget = int(ctx.attr("input_forget", 0))
    xs = cell.time_major_x()
    hs, finals = [], []
    for d in range(cell.dirs):
        f, g, h_act = cell.activations[d]
        bias = _bias_halves(cell, d)
        xw = _projection(cell, xs, d, cell.op("Add", list(bias)) if bias else None)
        rt = cell.transposed_weight(2, d)
        peep = None
        if ctx.input(7):
            p = cell.e.squeeze(cell.direction_of(7, d), [0])
            peep = [cell.gate(p, k, 0) for k in range(3)]  # i, o, f
        h = c = None
        states = [""] * cell.steps
        for t in cell.order(d):
            x_t = cell.step_input(xw, t)
            if h is None:
                like = cell.gate(x_t, 0)
                h, c = cell.initial_state(5, d, like), cell.initial_state(6, d, like)
            gates = cell.op("Add", [x_t, cell.op("MatMul", [h, rt])])
            pre_i, pre_o, pre_f, pre_c = (cell.gate(gates, k) for k in range(4))
            if peep:
                pre_i = cell.op("Add", [pre_i, cell.op("Mul", [peep[0], c])])
            i = cell.activate(f, pre_i)
            if input_forget:
                forget = cell.op("Sub", [cell.scalar(1.0), i])
            else:
                if peep:
                    pre_f = cell.op("Add", [pre_f, cell.op("Mul", [peep[2], c])])
                forget = cell.activate(f, pre_f)
            c = cell.op("Add", [cell.op("Mul", [forget, c]), cell.op("Mul", [i, cell.activate(g, pre_c)])])
            if peep:
                pre_o = cell.op("Add", [pre_o, cell.op("Mul", [peep[1], c])])
            o = cell.activate(f, pre_o)
            h = cell.op("Mul", [o, cell.activate(h_act, c, clip=False)])  # onnxruntime does not clip C here
            states[t] = h
        hs.append(states)
        finals.append([h, c])
    cell.write_outputs(hs, finals)
